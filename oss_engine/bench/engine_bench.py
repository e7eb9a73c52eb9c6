"""End-to-end rates through the real engine (scheduler, runner, CUDA graphs, sampler), greedy, random prompts.

- decode: B requests with C-token prompts; once every request has its first token, `warmup` steps run
  untimed, then `steps` steps are timed: rate = B x steps / seconds (PERFORMANCE.md's method: the decode
  steps alone, context growing from C). Not measurable (None) when the KV pool cannot hold the B requests
  at once (a preemption happened, or fewer than B ran).
- prefill: n prompts of L tokens, one output token each; rate = n x L / seconds from submission to the last
  finish, the median of 3 passes (the first pass of each shape compiles kernels and is not timed).
- time to first token: one L-token prompt on an idle engine, submission to its first token, median of 3.
Every pass draws fresh prompts, and the benchmark's LLM runs without prefix caching.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from itertools import count

import torch

from ..sampling_params import SamplingParams
from .hardware import sync

_ids = count()


@dataclass(frozen=True)
class DecodeResult:
    batch: int
    context: int
    tok_s: float | None  # None: the pool could not hold the batch
    step_ms: float | None


def _prompts(n: int, length: int, vocab: int, rng: random.Random) -> list[list[int]]:
    return [[rng.randrange(vocab) for _ in range(length)] for _ in range(n)]


def _submit(engine, prompts: list[list[int]], max_tokens: int) -> list[str]:
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
    rids = []
    for p in prompts:
        rid = f"bench-{next(_ids)}"
        engine.add_request(rid, p, params)
        rids.append(rid)
    return rids


def _drain(engine) -> None:
    while engine.has_unfinished_requests():
        engine.step()


def decode_rate(llm, batch: int, context: int, steps: int, warmup: int, rng: random.Random) -> DecodeResult:
    engine, dev = llm.engine, torch.device(llm.config.device)
    vocab = llm.config.model.vocab_size
    preempted = engine.stats().num_preemptions_total
    rids = _submit(engine, _prompts(batch, context, vocab, rng), warmup + steps + 2)
    have: dict[str, int] = {}
    while len(have) < batch:  # prefill until every request has its first token
        for out in engine.step():
            have[out.request_id] = len(out.outputs[0].token_ids)
    for _ in range(warmup):
        engine.step()
    sync(dev)
    running = engine.stats().num_running
    t0 = time.perf_counter()
    for _ in range(steps):
        engine.step()
    sync(dev)
    seconds = time.perf_counter() - t0
    ok = running == batch and engine.stats().num_preemptions_total == preempted
    for rid in rids:
        engine.abort(rid)
    if not ok:
        return DecodeResult(batch, context, None, None)
    return DecodeResult(batch, context, batch * steps / seconds, 1e3 * seconds / steps)


def prefill_rate(llm, prompt_len: int, num_prompts: int, rng: random.Random,
                 reps: int = 3) -> list[float]:
    """Tokens a second of `reps` timed passes (after one untimed pass), in the order they ran; the bench reports
    their median. A pass right after a large decode batch can read 1-3% low (docs/performance.md, seventeenth
    session), so one pass is not the figure."""
    engine, dev = llm.engine, torch.device(llm.config.device)
    vocab = llm.config.model.vocab_size
    rates = []
    for i in range(reps + 1):
        prompts = _prompts(num_prompts, prompt_len, vocab, rng)
        sync(dev)
        t0 = time.perf_counter()
        _submit(engine, prompts, 1)
        _drain(engine)
        sync(dev)
        if i:
            rates.append(num_prompts * prompt_len / (time.perf_counter() - t0))
    return rates


def time_to_first_token(llm, prompt_len: int, rng: random.Random, reps: int = 3) -> float:
    """Seconds, median of `reps` (after one untimed pass)."""
    engine, dev = llm.engine, torch.device(llm.config.device)
    vocab = llm.config.model.vocab_size
    times = []
    for i in range(reps + 1):
        prompt = _prompts(1, prompt_len, vocab, rng)
        sync(dev)
        t0 = time.perf_counter()
        (rid,) = _submit(engine, prompt, 2)
        while not any(o.outputs[0].token_ids for o in engine.step()):
            pass
        if i:
            times.append(time.perf_counter() - t0)
        engine.abort(rid)
    return sorted(times)[len(times) // 2]
