"""The loading pipeline refuses any checkpoint that does not describe the model exactly, naming the file
and the tensor, before a model exists (LLM never returns a partial model)."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file

from oss_engine import LLM
from oss_engine.tiny import make_tiny_checkpoint
from oss_engine.weights.checkpoint import CheckpointError
from tests.checkpoint_edits import add, drop, plant_code, reshape, retype, rewrite, truncate


@pytest.fixture(scope="module", params=["mxfp4", "bf16"])
def tiny(request, tmp_path_factory):
    path = tmp_path_factory.mktemp(f"loader-{request.param}")
    make_tiny_checkpoint(path, fmt=request.param, num_layers=2, vocab_size=1024, write_tokenizer=False)
    return request.param, path


def load(path):
    return LLM(str(path), device="cpu", dtype="float32", skip_tokenizer_init=True, progress=False)


def test_loads_every_parameter(tiny):
    fmt, path = tiny
    llm = load(path)
    for name, p in llm.model.named_parameters():
        assert torch.isfinite(p.float()).all(), name
    ref = load_file(path / "model.safetensors")
    q = ref["model.layers.1.self_attn.q_proj.weight"].float()
    v = ref["model.layers.1.self_attn.v_proj.bias"].float()
    qkv = llm.model.layers[1].attn.qkv
    assert torch.equal(qkv.weight[: q.shape[0]], q)  # q rows first
    assert torch.equal(qkv.bias[-v.shape[0]:], v)  # v rows last
    if fmt == "mxfp4":
        experts = llm.model.layers[0].mlp.experts
        assert experts.w1_blocks.dtype == torch.uint8  # kept packed
        s1 = ref["model.layers.0.mlp.experts.gate_up_proj_scales"]
        s2 = ref["model.layers.0.mlp.experts.down_proj_scales"]
        want = ((int(s1.min()), int(s1.max())), (int(s2.min()), int(s2.max())))
        assert experts.scale_ranges == want  # noted by after_load, passed to the kernels
        assert tuple(w.scale_range for w in experts.weights()) == want
    else:
        w = ref["model.layers.0.mlp.experts.down_proj"].float()  # [E, I, D] input-major
        assert torch.equal(llm.model.layers[0].mlp.experts.w2, w.transpose(1, 2))


@pytest.mark.parametrize("edit, tensor, message", [
    (drop("model.layers.1.self_attn.k_proj.bias"), "model.layers.1.self_attn.k_proj.bias", "missing"),
    (add("model.layers.0.mlp.experts.extra"), "model.layers.0.mlp.experts.extra", "unexpected"),
    (reshape("model.layers.0.mlp.router.weight"), "model.layers.0.mlp.router.weight", "shape"),
    (retype("model.layers.0.self_attn.sinks", torch.int32), "model.layers.0.self_attn.sinks", "dtype"),
])
def test_refusals_name_file_and_tensor(tiny, tmp_path, edit, tensor, message):
    _, path = tiny
    bad = rewrite(path, tmp_path / "bad", edit)
    with pytest.raises(CheckpointError, match=message) as e:
        load(bad)
    assert tensor in str(e.value)
    if message != "missing":
        assert "model.safetensors" in str(e.value)


def test_mxfp4_blocks_must_be_uint8(tiny, tmp_path):
    fmt, path = tiny
    if fmt != "mxfp4":
        pytest.skip("mxfp4 only")
    name = "model.layers.1.mlp.experts.down_proj_blocks"
    bad = rewrite(path, tmp_path / "bad", retype(name, torch.int16))
    with pytest.raises(CheckpointError, match="uint8") as e:
        load(bad)
    assert name in str(e.value)


def test_truncated_file_refused_before_a_model_exists(tiny, tmp_path):
    _, path = tiny
    bad = tmp_path / "bad"
    shutil.copytree(path, bad)
    truncate(bad)
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load(bad)


def test_no_code_from_the_directory_is_executed(tiny, tmp_path):
    _, path = tiny
    d = tmp_path / "with_code"
    shutil.copytree(path, d)
    marker = tmp_path / "executed"
    plant_code(d, marker)
    load(d)
    assert not marker.exists()
