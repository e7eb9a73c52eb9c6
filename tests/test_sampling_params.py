"""SamplingParams: vLLM's fields, validated at construction with errors that name the field."""

from __future__ import annotations

import dataclasses

import pytest

from oss_engine.sampling_params import MAX_LOGPROBS, MAX_N, SamplingParams


def test_defaults_and_exports():
    p = SamplingParams()
    assert (p.n, p.min_p, p.repetition_penalty, p.presence_penalty, p.frequency_penalty) == (1, 0.0, 1.0, 0.0, 0.0)
    assert p.logit_bias is None and p.min_tokens == 0 and not p.greedy and not p.has_penalties
    assert (MAX_N, MAX_LOGPROBS) == (16, 20)


def test_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        SamplingParams().n = 2


@pytest.mark.parametrize("temperature, greedy", [(0, True), (0.0, True), (1e-6, True), (1e-3, False), (1.5, False)])
def test_greedy_below_epsilon(temperature, greedy):
    assert SamplingParams(temperature=temperature).greedy is greedy


@pytest.mark.parametrize("kwargs", [
    dict(n=16), dict(min_p=1.0), dict(min_p=0.0), dict(repetition_penalty=0.01), dict(repetition_penalty=5.0),
    dict(presence_penalty=-2.0), dict(frequency_penalty=2.0), dict(logit_bias={0: -100, 201087: 100.0}),
    dict(logit_bias={i: 1.0 for i in range(300)}), dict(min_tokens=16, max_tokens=16), dict(top_k=0),
    dict(stop=["x" * 1024] * 16), dict(stop_token_ids=list(range(64))), dict(logprobs=MAX_LOGPROBS),
    dict(seed=2**64 - 1), dict(seed=-(2**63)),
])
def test_valid_edges(kwargs):
    p = SamplingParams(**kwargs)
    assert all(getattr(p, k) == v for k, v in kwargs.items())


@pytest.mark.parametrize("name, value", [
    ("n", 0), ("n", MAX_N + 1), ("n", 1.0), ("n", True),
    ("min_p", -0.01), ("min_p", 1.01), ("min_p", float("nan")),
    ("repetition_penalty", 0.0), ("repetition_penalty", -1.0), ("repetition_penalty", float("inf")),
    ("presence_penalty", 2.01), ("presence_penalty", -2.01), ("frequency_penalty", 3), ("frequency_penalty", None),
    ("logit_bias", {-1: 1.0}), ("logit_bias", {"5": 1.0}), ("logit_bias", {5: 100.5}), ("logit_bias", {5: -101}),
    ("logit_bias", {5: float("nan")}), ("logit_bias", {i: 0.0 for i in range(301)}), ("logit_bias", [(1, 2.0)]),
    ("min_tokens", -1), ("min_tokens", 17), ("min_tokens", 2.0),
    ("stop", ["s"] * 17), ("stop", ["x" * 1025]), ("stop", "abc"), ("stop", [""]),
    ("stop_token_ids", list(range(65))), ("stop_token_ids", [-1]), ("stop_token_ids", [1.0]),
    ("max_tokens", 0), ("temperature", -0.1), ("temperature", float("nan")), ("top_p", 0.0), ("top_p", 1.1),
    ("top_k", -2), ("logprobs", MAX_LOGPROBS + 1), ("prompt_logprobs", -1), ("seed", 2**64), ("seed", 1.5),
])
def test_violation_names_the_field(name, value):
    kwargs = {name: value}
    if name == "min_tokens":
        kwargs["max_tokens"] = 16
    with pytest.raises(ValueError, match=f"SamplingParams.{name} "):
        SamplingParams(**kwargs)


def test_has_penalties():
    assert SamplingParams(repetition_penalty=1.2).has_penalties
    assert SamplingParams(presence_penalty=-0.5).has_penalties
    assert SamplingParams(frequency_penalty=0.1).has_penalties
