"""Async scheduling (llm_engine.py): sampled tokens read by the host one step late, the next step's decode
rows fed from the device. On the real tiny model (float32, CPU) every output must equal the synchronous
engine's: greedy and seeded sampling, stops by token and by length, preemption, prefix caching, n > 1,
logprobs (which sample synchronously inside an async engine), aborts with a token in flight, streaming."""

from __future__ import annotations

import random

import pytest

from oss_engine import LLM, SamplingParams
from oss_engine.tiny import make_tiny_checkpoint

VOCAB = 4096


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("async-tiny")
    make_tiny_checkpoint(path, fmt="mxfp4", seed=5, num_layers=2, vocab_size=VOCAB, sliding_window=8,
                         write_tokenizer=False)
    return path


def make_llm(ckpt, async_scheduling: bool, **kw):
    kw.setdefault("debug_checks", True)
    return LLM(str(ckpt), device="cpu", dtype="float32", skip_tokenizer_init=True, progress=False,
               async_scheduling=async_scheduling, **kw)


@pytest.fixture(scope="module")
def pair(ckpt):
    return make_llm(ckpt, False), make_llm(ckpt, True)


def prompts(n, lo, hi, seed=0, prefix=()):
    rng = random.Random(seed)
    return [list(prefix) + [rng.randrange(VOCAB) for _ in range(rng.randint(lo, hi))] for _ in range(n)]


def completions(outs):
    return [[(c.token_ids, c.finish_reason) for c in o.outputs] for o in outs]


def test_the_engine_runs_async_only_with_a_device_token_runner(pair):
    sync, asyn = pair
    assert not sync.engine._async and asyn.engine._async


def test_greedy_with_token_stops_and_lengths_equals_sync(pair):
    """Varied max_tokens, and stop tokens taken from each prompt's own greedy output (so they do fire, at
    different steps): same tokens and finish reasons."""
    sync, asyn = pair
    ps = prompts(12, 1, 60, seed=1)
    free = sync.generate(prompt_token_ids=ps, sampling_params=SamplingParams(max_tokens=16, temperature=0.0,
                                                                            ignore_eos=True))
    params = [SamplingParams(max_tokens=3 + i, temperature=0.0, ignore_eos=True,
                             stop_token_ids=[o.outputs[0].token_ids[min(i, 10)]] if i % 2 else None)
              for i, o in enumerate(free)]
    want = completions(sync.generate(prompt_token_ids=ps, sampling_params=params))
    got = completions(asyn.generate(prompt_token_ids=ps, sampling_params=params))
    assert got == want
    assert {c[0][1] for c in want} == {"stop", "length"}  # both kinds of stop were exercised


def test_seeded_n2_with_preemption_and_prefix_cache_equals_sync(ckpt):
    shared = prompts(1, 40, 40, seed=2)[0]
    ps = prompts(6, 5, 30, seed=3, prefix=shared)
    params = SamplingParams(max_tokens=20, temperature=1.0, top_p=0.9, seed=11, n=2, ignore_eos=True)
    want = completions(make_llm(ckpt, False).generate(prompt_token_ids=ps, sampling_params=params))
    small = make_llm(ckpt, True, num_kv_blocks=24, block_size=8)
    got = completions(small.generate(prompt_token_ids=ps, sampling_params=params))
    assert got == want
    stats = small.engine.stats()
    assert stats.num_preemptions_total > 0 and stats.prefix_cache_hits > 0
    assert all(v == 0 for v in stats.kv_blocks_used.values())


def test_logprobs_rows_sample_synchronously_and_match(pair):
    """A batch where some requests want logprobs: that step samples synchronously, the others keep their
    in-flight token; tokens and logprobs equal the sync engine's."""
    sync, asyn = pair
    ps = prompts(4, 5, 20, seed=4)
    params = [SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True, logprobs=2 if i % 2 else None)
              for i in range(4)]
    want = sync.generate(prompt_token_ids=ps, sampling_params=params)
    got = asyn.generate(prompt_token_ids=ps, sampling_params=params)
    assert completions(got) == completions(want)
    for g, w in zip(got[1::2], want[1::2]):
        lg, lw = g.outputs[0].logprobs, w.outputs[0].logprobs
        assert len(lg) == 6 and all(a.keys() == b.keys() for a, b in zip(lg, lw))


def test_a_request_ending_by_length_is_not_run_again(pair):
    """max_tokens = 3 on a 10-token prompt: one prefill and two decodes in both modes (no wasted forward)."""
    for llm in pair:
        calls = []
        runner = llm.engine.runner
        real = runner.execute
        runner.execute = lambda seqs, *a: calls.append(len(seqs)) or real(seqs, *a)
        try:
            llm.generate(prompt_token_ids=prompts(1, 10, 10, seed=6),
                         sampling_params=SamplingParams(max_tokens=3, temperature=0.0, ignore_eos=True))
        finally:
            runner.execute = real
        assert calls == [1, 1, 1]


def test_abort_with_a_token_in_flight_and_stream_deltas(pair):
    _, asyn = pair
    eng = asyn.engine
    ps = prompts(2, 8, 8, seed=7)
    eng.add_request("keep", ps[0], SamplingParams(max_tokens=7, temperature=0.0, ignore_eos=True))
    eng.add_request("drop", ps[1], SamplingParams(max_tokens=50, temperature=0.0, ignore_eos=True))
    ids, last = [], None
    for i, out in enumerate(eng.iterate()):
        if out.request_id == "keep":
            ids += out.outputs[0].delta_token_ids
            last = out
        if i == 2:
            assert eng._inflight is not None  # a token of "drop" is on the device right now
            eng.abort("drop")
    assert last.finished and ids == last.outputs[0].token_ids and len(ids) == 7
    assert not eng.has_unfinished_requests() and sum(eng.stats().kv_blocks_used.values()) == 0
    want = pair[0].generate(prompt_token_ids=ps[:1], sampling_params=SamplingParams(max_tokens=7, temperature=0.0,
                                                                                  ignore_eos=True))
    assert ids == want[0].outputs[0].token_ids
