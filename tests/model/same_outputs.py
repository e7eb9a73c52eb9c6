"""The check that two loadings of one checkpoint compute alike, bit for bit: shared by the tests of the op table's
layout and fusion switches (test_tiled_experts.py, test_deferred_moe_sum.py)."""

from __future__ import annotations

import torch

from oss_engine import LLM, SamplingParams

from .test_parity_hf import our_logits, prompt


def assert_same_logits_and_tokens(want: LLM, got: LLM, seed: int) -> None:
    """Equal logits for a 40-token prompt, computed whole and then one token a step (the decode kernels), and
    equal greedy tokens (16 each) for a batch of three prompts (the grouped kernels on the GPU)."""
    ids = prompt(seed, 40)
    for chunks in (None, [1] * len(ids)):
        a, b = our_logits(want, ids, chunks), our_logits(got, ids, chunks)
        assert torch.isfinite(a).all() and torch.equal(b, a), chunks
    params = SamplingParams(max_tokens=16, temperature=0.0, ignore_eos=True)
    prompts = [prompt(seed + 1), prompt(seed + 2, 30), prompt(seed + 3, 9)]
    outs = [[o.outputs[0].token_ids for o in llm.generate(prompt_token_ids=prompts, sampling_params=params)]
            for llm in (want, got)]
    assert outs[0] == outs[1] and all(len(t) == 16 for t in outs[0])
