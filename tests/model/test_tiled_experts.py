"""The model with its MXFP4 experts re-laid tiled at load (weights/tiles.py, asked for by Ops.tiled_experts)
computes the same logits, bit for bit, and the same greedy tokens as with the standard layout: on the CPU with
the reference table (which decodes tiled experts through ExpertWeight.expert), on the GPU with the Triton table
(every MoE kernel reading the tiled bytes: prefill chunks and one-token steps, CUDA graphs on)."""

from __future__ import annotations

import pytest
import torch

from oss_engine import LLM
from oss_engine.model.moe import MXFP4Experts
from oss_engine.tiny import make_tiny_checkpoint

from ..conftest import PARITY_SPEC
from .model_runs import assert_same_logits_and_tokens, load_with_switches

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


@pytest.fixture(scope="module")
def mxfp4_checkpoint(tmp_path_factory):
    """Rows of 64 bytes (W1: 128 values) and 48 (W2: 96 values, a narrower last chunk): the default 64-value
    rows are one 32-byte chunk, whose tiled layout is the standard one."""
    path = tmp_path_factory.mktemp("tiny-tiled")
    make_tiny_checkpoint(path, fmt="mxfp4", seed=2, write_tokenizer=False,
                         **dict(PARITY_SPEC, hidden_size=128, intermediate_size=96))
    return path


def load(path, device: str, tiles: bool) -> LLM:
    """A bf16 LLM whose op table asks (or not) for tiled experts; asserts every expert module followed it."""
    llm = load_with_switches(path, dtype="bfloat16", device=device, tiled_experts=tiles)
    experts = [mod for mod in llm.model.modules() if isinstance(mod, MXFP4Experts)]
    assert experts and all(e.tiled == tiles for e in experts)
    return llm


@pytest.mark.parametrize("device", DEVICES)
def test_tiled_experts_same_logits_and_tokens(mxfp4_checkpoint, device):
    std = load(mxfp4_checkpoint, device, False)
    til = load(mxfp4_checkpoint, device, True)
    mlp_std, mlp_til = std.model.layers[0].mlp.experts, til.model.layers[0].mlp.experts
    for name in ("w1_blocks", "w2_blocks"):  # the bytes did move
        assert not torch.equal(getattr(mlp_std, name), getattr(mlp_til, name)), name
    assert_same_logits_and_tokens(std, til, seed=5)
