"""The op table (kernels/__init__.py) end to end: the Triton table runs a tiny gpt-oss model through the Triton
kernels it names (on the CPU in Triton's interpreter, float32: paged attention, RoPE + KV store, add + RMSNorm,
routing, the MoE's decode and grouped paths; its linears go through torch off CUDA) to the reference table's
logits and greedy tokens, for MXFP4 and bf16 checkpoints; and with each of its switches on (the deferred MoE sum,
the tiled expert layout) to the same bits as without it. On a GPU the switches' cases run compiled."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from oss_engine import LLM, SamplingParams
from oss_engine.tiny import make_tiny_checkpoint
from tests.conftest import PARITY_SPEC
from tests.model.model_runs import load_with_switches, our_logits, prompt
from triton_cases import DEV, INTERPRET, rel_l2


# rows of more than one 32-byte chunk (W1: 64 bytes, W2: 48), so that the tiled layout differs from the standard one
WIDE = dict(hidden_size=128, intermediate_size=96)
CHUNKS = (None, [1] * 3 + [13])  # the whole prompt (the grouped MoE path), then one token a step (the decode path)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict:
    """fmt -> a tiny checkpoint directory, written on first use."""
    made = {}

    def get(fmt: str):
        if fmt not in made:
            made[fmt] = tmp_path_factory.mktemp(f"tiny-table-{fmt}")
            spec = dict(PARITY_SPEC, **WIDE if fmt == "mxfp4-wide" else {})
            make_tiny_checkpoint(made[fmt], fmt=fmt.removesuffix("-wide"), seed=4, write_tokenizer=False, **spec)
        return made[fmt]
    return get


OFF = {"defer_moe_sum": False, "tiled_experts": False}  # the switches the table has (Ops fields)


def load(path, kernels: str, **switches) -> LLM:
    """A float32 LLM on DEV with the named op table: its switches as the table sets them when none is named, else
    all off but those named."""
    llm = load_with_switches(path, dtype="float32", device=DEV, kernels=kernels, enforce_eager=True,
                             **(dict(OFF, **switches) if switches else {}))
    assert llm.model.ops.name == kernels
    return llm


@pytest.mark.skipif(not INTERPRET, reason="compiled, the MoE multiplies bf16 operands even in a float32 model: "
                    "tests/model/test_parity_bf16.py compares the GPU table")
@pytest.mark.parametrize("fmt", ["mxfp4", "bf16"])
def test_triton_table_runs_the_model_to_the_reference(checkpoints, fmt):
    ref, tri = load(checkpoints(fmt), "ref"), load(checkpoints(fmt), "triton")
    ids = prompt(8, 16)
    for chunks in CHUNKS:
        want, got = our_logits(ref, ids, chunks), our_logits(tri, ids, chunks)
        assert got.shape == want.shape and want.std() > 0.1
        assert rel_l2(got, want) < 1e-5, chunks
    params = SamplingParams(max_tokens=3, temperature=0.0, ignore_eos=True)
    prompts = [prompt(41, 12), prompt(42, 5)]  # one batch: varlen attention, both sequences' rows in one MoE
    outs = [[o.outputs[0].token_ids for o in llm.generate(prompt_token_ids=prompts, sampling_params=params)]
            for llm in (ref, tri)]
    assert outs[0] == outs[1] and all(len(t) == 3 for t in outs[0])


@pytest.mark.parametrize("switch,fmt", [("defer_moe_sum", "mxfp4"), ("tiled_experts", "mxfp4-wide")])
def test_switches_keep_the_bits(checkpoints, switch, fmt):
    """The deferred MoE sum (the norm kernel summing the MoE's rows) and the tiled expert layout (every MoE kernel
    reading tiled bytes) change no bit of the logits. MXFP4 only: dense experts are never tiled, and their rows
    take the same sum (test_triton_moe.py's deferred case)."""
    std, on = load(checkpoints(fmt), "triton", **{switch: False}), load(checkpoints(fmt), "triton", **{switch: True})
    used = {"defer_moe_sum": any(layer.mlp.defer_sum for layer in on.model.layers),
            "tiled_experts": all(layer.mlp.experts.tiled for layer in on.model.layers)}
    assert used[switch]
    ids = prompt(9, 16)
    for chunks in CHUNKS:
        want, got = our_logits(std, ids, chunks), our_logits(on, ids, chunks)
        assert torch.isfinite(want).all() and torch.equal(got, want), chunks
