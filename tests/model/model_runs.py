"""Loading and running an LLM for the tests that compare models: a load with the op table's switches set, random
prompts, logits at every position through the paged cache, and the check that two loadings of one checkpoint
compute alike bit for bit (the op table's layout and fusion switches: test_tiled_experts.py,
test_deferred_moe_sum.py, tests/kernels/test_op_table.py)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from oss_engine import LLM, SamplingParams
from oss_engine.engine.runner import ScheduledSeq
from oss_engine.model import build

PROMPT_LEN = 80  # longer than the tiny checkpoints' sliding window (8) and original_max_position_embeddings (64)


def load_with_switches(path, *, dtype: str, device: str, kernels: str = "auto", enforce_eager: bool = False,
                       **switches: bool) -> LLM:
    """An LLM of the checkpoint at `path` whose op table has the named switches (Ops fields: tiled_experts,
    defer_moe_sum) set as given; the others as the table sets them."""
    table = build.get_ops
    with pytest.MonkeyPatch.context() as m:
        m.setattr(build, "get_ops", lambda name: dataclasses.replace(table(name), **switches))
        return LLM(str(path), dtype=dtype, device=device, skip_tokenizer_init=True, progress=False, kernels=kernels,
                   enforce_eager=enforce_eager)


def prompt(seed: int, n: int = PROMPT_LEN) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 201088, (n,), generator=g).tolist()


def our_logits(llm: LLM, ids: list[int], chunks: list[int] | None = None) -> torch.Tensor:
    """Logits at every position, computing the prompt in the given chunk sizes through the paged cache."""
    runner = llm.engine.runner
    blocks = list(range(-(-len(ids) // runner.block_size)))  # the same blocks in every cache group
    out, done = [], 0
    for n in chunks or [len(ids)]:
        step = runner.execute([ScheduledSeq(ids, done, n, {g: blocks for g in runner.groups}, all_logits=True)])
        out.append(step.logits)
        done += n
    return torch.cat(out)


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
