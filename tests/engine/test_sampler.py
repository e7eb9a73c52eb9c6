"""The batched sampler: processing order and values, filters, the exponential race, seeds, logprobs."""

from __future__ import annotations

import math

import pytest
import torch

from oss_engine.engine.sampler import (
    TOP_P_CANDIDATES,
    Sampler,
    SamplingBatch,
    filter_probs_,
    process_logits,
)
from oss_engine.sampling_params import SamplingParams as SP


def make_batch(params, generators=None, prompt_ids=None, output_ids=None, stop_ids=None) -> SamplingBatch:
    B = len(params)
    return SamplingBatch(list(params), generators or [None] * B, prompt_ids or [[] for _ in range(B)],
                         output_ids or [[] for _ in range(B)], stop_ids or [frozenset() for _ in range(B)])


def draw_counts(logits_row: torch.Tensor, params: SP, draws: int = 20000, seed: int = 0) -> torch.Tensor:
    """Frequencies of each token over `draws` samples of one row (as one batch of identical rows)."""
    sampler = Sampler(seed, "cpu")
    res = sampler.sample(logits_row.expand(draws, -1).contiguous(), make_batch([params] * draws))
    return torch.bincount(torch.tensor(res.token_ids), minlength=logits_row.shape[0]).double() / draws


def test_greedy_is_argmax():
    logits = torch.randn(8, 1000, generator=torch.Generator().manual_seed(0))
    res = Sampler(0, "cpu").sample(logits, make_batch([SP(temperature=0)] * 8))
    assert res.token_ids == logits.argmax(-1).tolist() and res.logprobs == [None] * 8


def test_top_k_1_equals_greedy():
    logits = torch.randn(16, 5000, generator=torch.Generator().manual_seed(1)) * 0.1  # nearly flat
    params = [SP(top_k=1, temperature=2.0, seed=i) for i in range(8)] + [SP(top_k=1)] * 8
    gens = [torch.Generator().manual_seed(i) for i in range(8)] + [None] * 8
    res = Sampler(0, "cpu").sample(logits, make_batch(params, gens))
    assert res.token_ids == logits.argmax(-1).tolist()


def test_temperature_frequencies_match_softmax():
    logits = torch.tensor([1.0, 0.5, 0.0, -0.5, -2.0])
    for t in (0.5, 1.0, 2.0):
        freq = draw_counts(logits, SP(temperature=t))
        expected = torch.softmax(logits.double() / t, -1)
        assert (freq - expected).abs().max() < 0.015, (t, freq, expected)


def test_top_p_keeps_smallest_set_reaching_mass():
    probs = torch.tensor([0.4, 0.3, 0.15, 0.1, 0.05])
    # mass before each token: 0, .4, .7, .85, .95 -> top_p .8 keeps 3 tokens, .65 keeps 2, .3 keeps 1
    for top_p, kept in ((0.8, 3), (0.65, 2), (0.3, 1)):
        freq = draw_counts(probs.log(), SP(top_p=top_p))
        assert freq[kept:].sum() == 0, (top_p, freq)
        expected = probs[:kept].double() / probs[:kept].sum()
        assert (freq[:kept] - expected).abs().max() < 0.015, (top_p, freq)


def test_top_p_exact_boundary():
    probs = torch.tensor([[0.5, 0.25, 0.125, 0.125]])  # dyadic: the sums are exact
    filter_probs_(probs, [SP(top_p=0.75)])  # the first two reach .75 exactly: the third is not needed
    assert probs.tolist() == [[0.5, 0.25, 0.0, 0.0]]


def reference_kept(probs_row: torch.Tensor, p: SP) -> set[int]:
    """Brute force: sort, apply top-k, top-p over the renormalized top-k set, then min-p."""
    order = sorted(range(len(probs_row)), key=lambda i: -float(probs_row[i]))
    vals = [float(probs_row[i]) for i in order]
    k = p.top_k if p.top_k > 0 else len(vals)
    order, vals = order[:k], vals[:k]
    if p.top_p < 1:
        mass, before, n = sum(vals), 0.0, 0
        while n < len(vals) and before < p.top_p * mass:
            before += vals[n]
            n += 1
        order, vals = order[:n], vals[:n]
    return {i for i, v in zip(order, vals) if v >= p.min_p * vals[0]}


@pytest.mark.parametrize("p", [
    SP(top_p=0.9), SP(top_p=0.3), SP(top_k=20), SP(top_k=20, top_p=0.5), SP(min_p=0.2), SP(top_p=0.95, min_p=0.05),
    SP(top_k=300, top_p=0.99),
])
@pytest.mark.parametrize("scale", [4.0, 0.05])  # peaked (nucleus among the candidates) and flat (full sort)
def test_filter_matches_brute_force(p, scale):
    V = 4 * TOP_P_CANDIDATES
    logits = torch.randn(3, V, generator=torch.Generator().manual_seed(2)) * scale
    probs = torch.softmax(logits, -1)
    out = probs.clone()
    filter_probs_(out, [p, SP(), p])  # the middle row has no filter and must stay untouched
    assert torch.equal(out[1], probs[1])
    for r in (0, 2):
        kept = set(out[r].nonzero()[:, 0].tolist())
        assert kept == reference_kept(probs[r], p)
        assert torch.equal(out[r][list(kept)], probs[r][list(kept)])
    if scale < 1 and p.top_p < 1 and p.top_k <= 0:
        assert len(kept) > TOP_P_CANDIDATES  # the full-sort path really ran


def test_min_p_drops_tokens_below_fraction_of_max():
    probs = torch.tensor([0.5, 0.3, 0.1, 0.06, 0.04])  # min_p .15 -> threshold .075: keeps 3
    freq = draw_counts(probs.log(), SP(min_p=0.15))
    assert freq[3:].sum() == 0 and (freq[:3] > 0.05).all()


def test_logit_bias_forces_token_and_checks_vocab():
    logits = torch.randn(4, 1000, generator=torch.Generator().manual_seed(3))
    params = [SP(logit_bias={7: 100.0}), SP(temperature=0, logit_bias={11: 100.0}), SP(temperature=0), SP()]
    res = Sampler(0, "cpu").sample(logits, make_batch(params))
    assert res.token_ids[:3] == [7, 11, int(logits[2].argmax())]
    with pytest.raises(ValueError, match="logit_bias"):
        Sampler(0, "cpu").sample(logits, make_batch([SP(logit_bias={1000: 1.0})] * 4))


def test_min_tokens_masks_stop_ids():
    logits = torch.zeros(3, 50)
    logits[:, 42] = 10.0  # eos is by far the most likely
    logits[:, 5] = 5.0
    params = [SP(temperature=0, min_tokens=3)] * 3
    outputs = [[1, 2], [1, 2, 3], [1, 2]]
    stops = [frozenset({42}), frozenset({42}), frozenset()]
    res = Sampler(0, "cpu").sample(logits, make_batch(params, output_ids=outputs, stop_ids=stops))
    assert res.token_ids == [5, 42, 42]  # masked below min_tokens; free at min_tokens; nothing to mask


TINY = torch.tensor([[2.0, -1.0, 0.5, -0.5, 3.0, 1.0]])
PROMPT, OUTPUT = [0, 1], [1, 2, 2]  # token 0 only in the prompt, 1 in both, 2 twice in the output


@pytest.mark.parametrize("params, expected", [
    (SP(repetition_penalty=2.0), [1.0, -2.0, 0.25, -0.5, 3.0, 1.0]),  # prompt + output tokens 0, 1, 2
    (SP(presence_penalty=0.5), [2.0, -1.5, 0.0, -0.5, 3.0, 1.0]),  # output tokens 1, 2 once
    (SP(frequency_penalty=0.25), [2.0, -1.25, 0.0, -0.5, 3.0, 1.0]),  # token 1 once, token 2 twice
    (SP(presence_penalty=-1.0, frequency_penalty=1.0), [2.0, -1.0, -0.5, -0.5, 3.0, 1.0]),  # 1: -1 + 1; 2: -2 + 1
    (SP(repetition_penalty=0.5, presence_penalty=0.5, frequency_penalty=0.25),  # repetition first: 4, -.5, 1
     [4.0, -1.25, 0.0, -0.5, 3.0, 1.0]),
    (SP(logit_bias={3: 1.5, 5: -1.0}), [2.0, -1.0, 0.5, 1.0, 3.0, 0.0]),
    (SP(min_tokens=4), [2.0, -1.0, 0.5, float("-inf"), 3.0, 1.0]),  # 3 < 4 outputs: stop id 3 masked
    (SP(min_tokens=3), [2.0, -1.0, 0.5, -0.5, 3.0, 1.0]),  # 3 outputs: no mask
])
def test_processing_values(params, expected):
    logits = torch.cat([TINY, TINY])  # row 1 has no processing
    before = logits.clone()
    batch = make_batch([params, SP()], prompt_ids=[PROMPT, PROMPT], output_ids=[OUTPUT, OUTPUT],
                       stop_ids=[frozenset({3}), frozenset({3})])
    out = process_logits(logits, batch)
    assert torch.equal(logits, before)  # the input is never changed
    assert out[0].tolist() == expected and torch.equal(out[1], TINY[0])


def test_processing_skipped_when_nothing_to_do():
    logits = torch.randn(2, 10)
    batch = make_batch([SP(), SP(temperature=0, min_tokens=2)], output_ids=[[1], [1, 2, 3]],
                       stop_ids=[frozenset(), frozenset({3})])
    assert process_logits(logits, batch) is logits


def test_seeded_row_independent_of_batch():
    V = 3000
    g = torch.Generator().manual_seed(4)
    row = torch.randn(V, generator=g)
    others = torch.randn(4, V, generator=g) * 3
    mine = SP(temperature=1.5, top_p=0.9, seed=7)  # flat enough that the nucleus needs the full sort

    def run(in_batch: bool) -> list[int]:
        sampler = Sampler(123 if in_batch else 0, "cpu")
        my_gen = torch.Generator().manual_seed(7)
        tokens = []
        for _ in range(20):
            if not in_batch:
                tokens.append(sampler.sample(row[None], make_batch([mine], [my_gen])).token_ids[0])
                continue
            logits = torch.stack([others[0], others[1], row, others[2], others[3]])
            params = [SP(), SP(seed=9, top_k=500), mine, SP(temperature=0), SP(min_p=0.1, top_k=2000)]
            gens = [None, torch.Generator().manual_seed(9), my_gen, None, None]
            tokens.append(sampler.sample(logits, make_batch(params, gens)).token_ids[2])
        return tokens

    alone = run(False)
    assert len(set(alone)) > 10  # really random
    assert run(True) == alone


def test_unseeded_rows_follow_sampler_seed():
    logits = torch.zeros(4, 1000)
    a = Sampler(5, "cpu").sample(logits, make_batch([SP()] * 4)).token_ids
    b = Sampler(5, "cpu").sample(logits, make_batch([SP()] * 4)).token_ids
    c = Sampler(6, "cpu").sample(logits, make_batch([SP()] * 4)).token_ids
    assert a == b and a != c


def test_logprobs_are_of_raw_logits_and_include_sampled():
    logits = torch.randn(3, 100, generator=torch.Generator().manual_seed(6))
    raw_lp = torch.log_softmax(logits, -1)
    params = [SP(logprobs=2, temperature=0.5, repetition_penalty=1.5, logit_bias={9: 100.0}),  # forced to 9
              SP(logprobs=0, temperature=0), SP()]
    res = Sampler(0, "cpu").sample(logits, make_batch(params, prompt_ids=[[1, 2]] * 3))
    assert res.token_ids[0] == 9 and res.logprobs[2] is None
    top2 = raw_lp[0].topk(2).indices.tolist()
    assert 9 not in top2 and list(res.logprobs[0]) == top2 + [9]
    for t, v in res.logprobs[0].items():
        assert math.isclose(v, float(raw_lp[0, t]), abs_tol=1e-6)  # unbiased, unpenalized, temperature 1
    assert res.logprobs[1] == {res.token_ids[1]: pytest.approx(float(raw_lp[1].max()), abs=1e-6)}


def test_sample_does_not_modify_logits():
    logits = torch.randn(4, 500)
    before = logits.clone()
    params = [SP(temperature=0.7), SP(top_p=0.5, repetition_penalty=1.3), SP(temperature=0), SP(min_p=0.3)]
    Sampler(0, "cpu").sample(logits, make_batch(params, prompt_ids=[[1, 2]] * 4))
    assert torch.equal(logits, before)


def test_batch_rows_must_agree():
    with pytest.raises(ValueError, match="one entry per row"):
        SamplingBatch([SP()], [None, None], [[]], [[]], [frozenset()])


def test_allowed_ids_constrain_greedy_and_sampled_rows():
    from oss_engine.engine.sampler import Sampler, SamplingBatch
    from oss_engine.sampling_params import SamplingParams

    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(0))
    logits[:, 7] = 100.0  # the unconstrained favourite
    params = [SamplingParams(temperature=0.0), SamplingParams(temperature=1.0, seed=1), SamplingParams(temperature=0.0)]
    batch = SamplingBatch(params, [None, torch.Generator().manual_seed(1), None], [[1]] * 3, [[]] * 3,
                          [frozenset()] * 3, allowed=[[3, 4], [10, 11, 12], None])
    out = Sampler(0, "cpu").sample(logits, batch).token_ids
    assert out[0] == [3, 4][int(logits[0, 4] > logits[0, 3])] and out[1] in (10, 11, 12) and out[2] == 7
