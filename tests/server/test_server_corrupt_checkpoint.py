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

from oss_engine.tiny import make_tiny_checkpoint
from tests.checkpoint_edits import FILE, add, drop, edit_tensors, plant_code, reshape, retype, truncate

from conftest import spawn_server, start_server


def _truncate(d):
    truncate(d)
    return FILE, "model.layers.1.mlp.experts.gate_up_proj_scales"  # the last tensor's data is cut


def _header_length(d):
    f = d / FILE
    f.write_bytes(struct.pack("<Q", 1 << 40) + f.read_bytes()[8:])
    return FILE, None  # the header cannot be read, so no tensor is named


def _tensors(edit, name, where=FILE):
    """A case that applies edit(name) (tests/checkpoint_edits.py) to the tensors; where: the path the refusal
    names (None: the directory)."""
    def change(d):
        edit_tensors(d, edit(name))
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
    "shape": _tensors(reshape, "model.layers.0.mlp.router.weight"),
    "dtype": _tensors(lambda n: retype(n, torch.int32), "model.layers.0.self_attn.sinks"),
    "missing": _tensors(drop, "model.layers.1.self_attn.k_proj.bias", where=None),  # in no file: the directory
    "extra": _tensors(add, "model.layers.0.mlp.experts.extra"),
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
    plant_code(bad, marker)
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
    plant_code(d, marker)
    s = start_server(d, tmp_path)
    try:
        r = httpx.post(s.url("/v1/completions"), headers=s.headers(),
                       json={"model": "tiny", "prompt": "hi", "max_tokens": 4})
        assert r.status_code == 200, r.text
    finally:
        assert s.stop() == 0
    assert not marker.exists()
