"""RELIABILITY.md battery 11 on the real server: `oss-engine serve` on a corrupt checkpoint (truncated file, bad
header, wrong shape or dtype, missing or extra tensor, missing shard) is refused at start: the process exits with
status 2 within seconds, its log names the file and the tensor in one line (no traceback), and nothing is
served; code in the directory is never executed."""

from __future__ import annotations

import json
import shutil
import struct

import httpx
import pytest
import torch
from safetensors.torch import load_file, save_file

from oss_engine.tiny import make_tiny_checkpoint

from conftest import spawn_server, start_server

FILE = "model.safetensors"


def _truncate(d):
    f = d / FILE
    f.write_bytes(f.read_bytes()[:-100])
    return FILE, "model.layers.1.mlp.experts.gate_up_proj_scales"  # the last tensor's data is cut


def _header_length(d):
    f = d / FILE
    f.write_bytes(struct.pack("<Q", 1 << 40) + f.read_bytes()[8:])
    return FILE, None  # the header cannot be read, so no tensor is named


def _tensors(edit, name, where=FILE):
    def change(d):
        tensors = load_file(d / FILE)
        edit(tensors, name)
        save_file(tensors, d / FILE, metadata={"format": "pt"})
        return where or str(d), name
    return change


def _drop_shard(d):
    index = json.loads((d / "model.safetensors.index.json").read_text())["weight_map"]
    shard = sorted(set(index.values()))[-1]
    (d / shard).unlink()
    return shard, None


CASES = {
    "truncated": _truncate,
    "header": _header_length,
    "shape": _tensors(lambda t, n: t.__setitem__(n, t[n].reshape(-1)[:-1].clone()), "model.layers.0.mlp.router.weight"),
    "dtype": _tensors(lambda t, n: t.__setitem__(n, t[n].to(torch.int32)), "model.layers.0.self_attn.sinks"),
    # a missing tensor is in no file: the directory is named
    "missing": _tensors(lambda t, n: t.pop(n), "model.layers.1.self_attn.k_proj.bias", where=None),
    "extra": _tensors(lambda t, n: t.__setitem__(n, torch.zeros(3)), "model.layers.0.mlp.experts.extra"),
    "shard": _drop_shard,
}


@pytest.fixture(scope="module")
def sharded_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("server-sharded")
    make_tiny_checkpoint(path, fmt="mxfp4", seed=0, num_layers=2, max_shard_bytes=20 << 20)
    return path


@pytest.mark.parametrize("case", list(CASES))
def test_corrupt_checkpoint_is_refused_at_start(case, server_model, sharded_model, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(sharded_model if case == "shard" else server_model, bad)
    marker = tmp_path / "executed"
    (bad / "modeling_evil.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n")
    file, tensor = CASES[case](bad)
    s = spawn_server(bad, tmp_path)
    try:
        assert s.proc.wait(timeout=120) == 2, s.log()
    finally:
        s.proc.kill()
    log = s.log()
    refusal = [line for line in log.splitlines() if "loading the model failed" in line]
    assert len(refusal) == 1 and file in refusal[0], log
    if tensor is not None:
        assert tensor in refusal[0], log
    assert "Traceback" not in log and not marker.exists()
    with pytest.raises(httpx.HTTPError):
        httpx.get(s.url("/health"), timeout=2)  # nothing listens any more


def test_code_in_the_directory_is_never_executed(server_model, tmp_path):
    d = tmp_path / "with_code"
    shutil.copytree(server_model, d)
    marker = tmp_path / "executed"
    (d / "modeling_evil.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n")
    cfg = json.loads((d / "config.json").read_text())
    cfg["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.Evil", "AutoConfig": "modeling_evil.Config"}
    (d / "config.json").write_text(json.dumps(cfg))
    s = start_server(d, tmp_path)
    try:
        r = httpx.post(s.url("/v1/completions"), headers=s.headers(),
                       json={"model": "tiny", "prompt": "hi", "max_tokens": 4})
        assert r.status_code == 200, r.text
    finally:
        assert s.stop() == 0
    assert not marker.exists()
