"""The engine on a real tiny model (float32, CPU): batching, chunking, prefix caching, preemption and
sliding-window memory change nothing in the tokens; accounting stays exact."""

from __future__ import annotations

import random

import pytest

from oss_engine import LLM, SamplingParams
from oss_engine.tiny import make_tiny_checkpoint

GREEDY = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)
VOCAB = 4096


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("engine-tiny")
    make_tiny_checkpoint(path, fmt="mxfp4", seed=3, num_layers=3, vocab_size=VOCAB, sliding_window=8,
                         write_tokenizer=False)
    return path


def make_llm(ckpt, **kw):
    kw.setdefault("debug_checks", True)
    return LLM(str(ckpt), device="cpu", dtype="float32", skip_tokenizer_init=True, progress=False, **kw)


@pytest.fixture(scope="module")
def llm(ckpt):
    return make_llm(ckpt)


def prompts(n, lo, hi, seed=0, prefix=()):
    rng = random.Random(seed)
    return [list(prefix) + [rng.randrange(VOCAB) for _ in range(rng.randint(lo, hi))] for _ in range(n)]


def tokens(outs):
    return [o.outputs[0].token_ids for o in outs]


def test_batch_invariance_32_prompts(llm):
    ps = prompts(32, 1, 200)
    together = tokens(llm.generate(prompt_token_ids=ps, sampling_params=GREEDY))
    alone = [tokens(llm.generate(prompt_token_ids=[p], sampling_params=GREEDY))[0] for p in ps]
    assert together == alone
    assert len({tuple(t) for t in alone}) > 20  # varied outputs: the comparison means something


def test_chunked_prefill_budget_7_equals_unchunked(ckpt, llm):
    ps = prompts(6, 20, 90, seed=1)
    chunked = make_llm(ckpt, max_num_batched_tokens=7)
    want = tokens(llm.generate(prompt_token_ids=ps, sampling_params=GREEDY))
    assert tokens(chunked.generate(prompt_token_ids=ps, sampling_params=GREEDY)) == want
    # prompt logprobs survive chunking too
    p = SamplingParams(max_tokens=2, temperature=0.0, prompt_logprobs=1)
    a = chunked.generate(prompt_token_ids=ps[:1], sampling_params=p)[0].prompt_logprobs
    b = llm.generate(prompt_token_ids=ps[:1], sampling_params=p)[0].prompt_logprobs
    assert len(a) == len(ps[0]) and a[0] is None
    assert all(x.keys() == y.keys() and all(abs(x[k] - y[k]) < 1e-4 for k in x) for x, y in zip(a[1:], b[1:]))


def test_prefix_caching_hits_and_changes_nothing(ckpt):
    shared = prompts(1, 64, 64, seed=2)[0]
    ps = prompts(8, 3, 40, seed=3, prefix=shared)
    on, off = make_llm(ckpt), make_llm(ckpt, enable_prefix_caching=False)
    first = tokens(on.generate(prompt_token_ids=ps[:1], sampling_params=GREEDY))
    rest = tokens(on.generate(prompt_token_ids=ps[1:], sampling_params=GREEDY))
    stats = on.engine.stats()
    assert stats.prefix_cache_hits >= 7 * 64 - 7 * 16  # each later request reuses (almost) all 64 shared tokens
    assert first + rest == tokens(off.generate(prompt_token_ids=ps, sampling_params=GREEDY))
    assert off.engine.stats().prefix_cache_hits == 0


def test_preemption_with_a_tiny_pool_changes_nothing_and_frees_everything(ckpt, llm):
    ps = prompts(12, 10, 60, seed=4)
    params = SamplingParams(max_tokens=24, temperature=0.0, ignore_eos=True)
    small = make_llm(ckpt, num_kv_blocks=12, block_size=8)  # 96 tokens per group for 12 requests of <= 84
    assert tokens(small.generate(prompt_token_ids=ps, sampling_params=params)) == \
        tokens(llm.generate(prompt_token_ids=ps, sampling_params=params))
    stats = small.engine.stats()
    assert stats.num_preemptions_total > 0
    assert all(v == 0 for v in stats.kv_blocks_used.values())


def test_seeded_sampling_preempted_or_not(ckpt, llm):
    ps = prompts(8, 10, 50, seed=5)
    params = SamplingParams(max_tokens=20, temperature=1.0, top_p=0.9, seed=7, ignore_eos=True)
    small = make_llm(ckpt, num_kv_blocks=10, block_size=8)
    got = tokens(small.generate(prompt_token_ids=ps, sampling_params=params))
    assert small.engine.stats().num_preemptions_total > 0
    assert got == tokens(llm.generate(prompt_token_ids=ps, sampling_params=params))
    assert got[0] == tokens(llm.generate(prompt_token_ids=ps[:1], sampling_params=params))[0]


def test_sliding_layers_hold_at_most_window_plus_block_size(ckpt):
    llm = make_llm(ckpt, block_size=4, max_num_batched_tokens=16)
    eng, S, W = llm.engine, 4, 8
    for i, p in enumerate(prompts(4, 30, 60, seed=6)):
        eng.add_request(str(i), p, SamplingParams(max_tokens=30, temperature=0.0, ignore_eos=True))
    worst = 0
    while eng.has_unfinished_requests():
        eng.step()
        for r in eng.scheduler.running:
            held = [b for b in eng.kv.block_tables(r.request_id)["sliding_attention"]]
            live = eng.kv.held_blocks(r.request_id, "sliding_attention")
            first = next(i for i, b in enumerate(live) if b is not None)
            tokens_held = r.num_computed_tokens - first * S
            worst = max(worst, tokens_held)
            assert tokens_held <= W + S, (r.request_id, tokens_held, held)
    assert worst > W  # the bound was actually approached


def test_n_samples_share_the_prompt(ckpt):
    llm = make_llm(ckpt)
    p = prompts(1, 40, 40, seed=8)[0]
    out = llm.generate(prompt_token_ids=[p], sampling_params=SamplingParams(n=4, max_tokens=10, seed=1,
                                                                              ignore_eos=True))[0]
    assert [c.index for c in out.outputs] == [0, 1, 2, 3]
    assert len({tuple(c.token_ids) for c in out.outputs}) > 1
    assert llm.engine.stats().prefix_cache_hits >= 3 * 32  # three samples reused the prompt's full blocks


def test_abort_frees_blocks_at_once_and_infeasible_is_refused(llm):
    eng = llm.engine
    eng.add_request("a", prompts(1, 50, 50)[0], SamplingParams(max_tokens=50, ignore_eos=True))
    eng.step()
    assert sum(eng.stats().kv_blocks_used.values()) > 0
    eng.abort("a")
    assert sum(eng.stats().kv_blocks_used.values()) == 0 and not eng.has_unfinished_requests()
    with pytest.raises(ValueError, match="maximum context length"):
        eng.add_request("b", [1] * 10, SamplingParams(max_tokens=llm.config.max_model_len))
    assert not eng.has_unfinished_requests()


def test_pool_infeasible_is_refused(ckpt):
    small = make_llm(ckpt, num_kv_blocks=4, block_size=4)
    with pytest.raises(ValueError, match="whole pool"):
        small.generate(prompt_token_ids=[[1] * 10], sampling_params=SamplingParams(max_tokens=20))
    assert not small.engine.has_unfinished_requests()


def test_stream_deltas_add_up(llm):
    eng = llm.engine
    eng.add_request("s", prompts(1, 10, 10)[0], SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True))
    ids, last = [], None
    for out in eng.iterate():
        ids += out.outputs[0].delta_token_ids
        last = out
    assert last.finished and ids == last.outputs[0].token_ids and len(ids) == 6


class _Raises:
    """A constraint that allows any token for `ok` calls, then raises (a fault injected into one request)."""

    def __init__(self, ok: int):
        self.ok = ok

    def allowed_ids(self, output_ids):
        if len(output_ids) >= self.ok:
            raise RuntimeError("injected constraint fault")
        return None


@pytest.mark.parametrize("async_scheduling", [True, False])
@pytest.mark.parametrize("fault", ["detokenizer", "constraint"])
def test_one_requests_fault_ends_it_alone(ckpt, async_scheduling, fault):
    """RELIABILITY.md battery 9: one request's detokenizer or constraint raising mid-generation ends that
    request with finish_reason "error" and frees its blocks; the step does not raise, the other requests'
    tokens equal their run without the faulty one, and the engine serves the next request."""
    llm = make_llm(ckpt, async_scheduling=async_scheduling)
    eng = llm.engine
    ps = prompts(3, 5, 40, seed=11)
    want = tokens(llm.generate(prompt_token_ids=[ps[0], ps[2]], sampling_params=GREEDY))
    for i, p in enumerate(ps):
        eng.add_request(f"r{i}", p, GREEDY, constraint_factory=(lambda: _Raises(3)) if fault == "constraint"
                        and i == 1 else None)
    if fault == "detokenizer":
        detok = eng.parents["r1"].detoks[0]
        real, calls = detok.push, []

        def push(tok):
            calls.append(tok)
            if len(calls) == 3:
                raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "injected detokenizer fault")
            return real(tok)
        detok.push = push
    done = {}
    for out in eng.iterate():
        if out.finished:
            done[out.request_id] = out.outputs[0]
    assert set(done) == {"r0", "r1", "r2"}
    assert done["r1"].finish_reason == "error" and len(done["r1"].token_ids) == 3
    assert [done["r0"].token_ids, done["r2"].token_ids] == want
    assert done["r0"].finish_reason == done["r2"].finish_reason == "length"
    assert sum(eng.stats().kv_blocks_used.values()) == 0 and not eng.has_unfinished_requests()
    assert tokens(llm.generate(prompt_token_ids=[ps[0]], sampling_params=GREEDY)) == want[:1]
