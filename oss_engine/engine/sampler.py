"""Turns a step's float32 logits into next tokens (and logprobs), one row per running sequence.

Logprobs are the log-softmax of the model's raw float32 logits (before temperature and filtering), as
vLLM reports them. Seeded rows draw from their own generator, so a seeded request samples the same tokens
whatever else is in the batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..sampling_params import SamplingParams


@dataclass(frozen=True)
class SampleResult:
    token_ids: list[int]
    logprobs: list[dict[int, float] | None]  # per row: top-k ids + the sampled id, or None when not asked


def top_logprobs(logprobs_row: torch.Tensor, k: int, token: int) -> dict[int, float]:
    """The top `k` ids of one row of log-probabilities, plus `token` (the sampled or actual one)."""
    out: dict[int, float] = {}
    if k > 0:
        vals, ids = torch.topk(logprobs_row, k)
        out = dict(zip(ids.tolist(), vals.tolist()))
    out[token] = float(logprobs_row[token])
    return out


def _filtered_probs(row: torch.Tensor, p: SamplingParams) -> torch.Tensor:
    # row [V] float32 logits -> [V] probabilities after temperature, top-k, top-p
    row = row / p.temperature
    if p.top_k > 0 and p.top_k < row.shape[0]:
        kth = torch.topk(row, p.top_k).values[-1]
        row = row.masked_fill(row < kth, float("-inf"))
    probs = torch.softmax(row, dim=-1)
    if p.top_p < 1.0:
        sorted_p, order = probs.sort(descending=True)
        keep = sorted_p.cumsum(0) - sorted_p < p.top_p  # smallest set whose mass reaches top_p
        probs = torch.zeros_like(probs).scatter_(0, order, sorted_p * keep)
        probs = probs / probs.sum()
    return probs


class Sampler:
    def __init__(self, seed: int, device: torch.device):
        self.device = device
        self.generator = torch.Generator(device=device).manual_seed(seed)  # for unseeded requests

    def sample(self, logits: torch.Tensor, params: list[SamplingParams],
               generators: list[torch.Generator | None]) -> SampleResult:
        # logits [B, V] float32, one row per sequence
        tokens: list[int] = []
        lps: list[dict[int, float] | None] = []
        for row, p, gen in zip(logits, params, generators):
            if p.greedy:
                tok = int(torch.argmax(row))
            else:
                probs = _filtered_probs(row, p)
                noise = torch.empty_like(probs).exponential_(generator=gen or self.generator)
                tok = int(torch.argmax(probs / noise))  # exponential race: samples from probs
            tokens.append(tok)
            lps.append(top_logprobs(torch.log_softmax(row, -1), p.logprobs, tok) if p.logprobs is not None else None)
        return SampleResult(tokens, lps)
