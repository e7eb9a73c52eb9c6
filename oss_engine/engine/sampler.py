"""Turns a step's float32 logits into next tokens (and logprobs), one row per sampling sequence.

The order is vLLM's:
1. logprobs: log-softmax of the RAW float32 logits (before any processing), as vLLM reports them;
2. logit processing (`process_logits`): logit_bias, min_tokens masking, then the repetition, presence
   and frequency penalties;
3. greedy rows: argmax of the processed logits;
4. sampled rows: temperature, then top-k, top-p, min-p (as one probability threshold per row), then a
   draw by the exponential race.

Everything runs on the whole batch as tensor ops over [B, V]; the Python loops are over rows only where a
row needs something of its own: a seeded row draws its noise from its own generator (so it samples the same
tokens whatever else is batched), and top-p rows whose nucleus is not among the most likely
TOP_P_CANDIDATES tokens fall back to a full sort. Work no row needs is skipped (no penalty tensors without
penalties, no sort without top-p, no copy of the logits when nothing processes them).

Shapes: B rows in the batch, S sampled (non-greedy) rows, F rows with a top-k/top-p/min-p filter,
V vocabulary, K candidate tokens.
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import chain

import torch
import torch.nn.functional as F

from ..sampling_params import SamplingParams

# Top-p looks for its nucleus among this many most likely tokens first (one batched topk); a row whose
# nucleus is larger (a flat distribution) is sorted in full. Either way the result is exact.
TOP_P_CANDIDATES = 256


@dataclass(frozen=True)
class SamplingBatch:
    """What the engine knows about each row that samples this step (row i of the logits is row i here)."""

    params: list[SamplingParams]
    generators: list[torch.Generator | None]  # per row: the request's own generator (seeded) or None
    prompt_ids: list[list[int]]  # for the repetition penalty
    output_ids: Sequence[Sequence[int]]  # generated so far; may be () where params.uses_output_history is False
    stop_ids: list[frozenset[int]]  # per row: ids masked while len(output) < min_tokens (eos + stop_token_ids)
    allowed: list[Sequence[int] | None] | None = None  # per row: the only ids it may produce (a constraint)

    def __post_init__(self) -> None:
        n = len(self.params)
        if not all(len(f) == n for f in (self.generators, self.prompt_ids, self.output_ids, self.stop_ids)):
            raise ValueError("SamplingBatch: every per-row list must have one entry per row")


@dataclass(frozen=True)
class SampleResult:
    token_ids: list[int]
    logprobs: list[dict[int, float] | None]  # per row: top-`logprobs` ids + the sampled id, or None when not asked


def top_logprobs(logprobs_row: torch.Tensor, k: int, token: int) -> dict[int, float]:
    """The top `k` ids of one row of log-probabilities, plus `token` (the sampled or actual one)."""
    out: dict[int, float] = {}
    if k > 0:
        vals, ids = torch.topk(logprobs_row, k)
        out = dict(zip(ids.tolist(), vals.tolist()))
    out[token] = float(logprobs_row[token])
    return out


# ---------------------------------------------------------------------------------------------
# Logit processing: logit_bias, min_tokens, penalties (greedy and sampled rows alike).
# ---------------------------------------------------------------------------------------------


def process_logits(logits: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
    """logits [B, V] -> the logits after logit_bias, min_tokens masking and the penalties, in that order.

    Returns `logits` itself when no row needs any of them, else a new tensor: the input is never changed.
    """
    B, V = logits.shape
    ps = batch.params
    bias_rows = [i for i in range(B) if ps[i].logit_bias]
    min_rows = [i for i in range(B) if batch.stop_ids[i] and len(batch.output_ids[i]) < ps[i].min_tokens]
    rep_rows = [i for i in range(B) if ps[i].repetition_penalty != 1.0]
    out_rows = [i for i in range(B) if (ps[i].presence_penalty or ps[i].frequency_penalty) and batch.output_ids[i]]
    allowed_rows = [i for i in range(B) if batch.allowed is not None and batch.allowed[i] is not None]
    if not (bias_rows or min_rows or rep_rows or out_rows or allowed_rows):
        return logits
    out = logits.clone()
    flat = out.view(-1)  # [B * V]: flat[r * V + t] is out[r, t]
    dev = logits.device
    if bias_rows:
        biases = [ps[i].logit_bias for i in bias_rows]
        bad = [t for b in biases for t in b if t >= V]
        if bad:
            raise ValueError(f"logit_bias token id {bad[0]} is outside the vocabulary [0, {V})")
        keys = _flat_keys(bias_rows, [list(b) for b in biases], V, dev)
        flat.index_add_(0, keys, torch.tensor([v for b in biases for v in b.values()], dtype=out.dtype, device=dev))
    if min_rows:
        keys = _flat_keys(min_rows, [[t for t in batch.stop_ids[i] if t < V] for i in min_rows], V, dev)
        flat.index_fill_(0, keys, float("-inf"))
    if rep_rows:
        # every token of prompt or output: positive logits are divided by the penalty, negative multiplied.
        # A token present twice has its key twice: both writes carry the same value, so it applies once.
        keys = _flat_keys(rep_rows, [batch.prompt_ids[i] + batch.output_ids[i] for i in rep_rows], V, dev)
        penalty = torch.tensor([p.repetition_penalty for p in ps], dtype=out.dtype, device=dev)[keys // V]
        vals = flat[keys]
        flat[keys] = torch.where(vals > 0, vals / penalty, vals * penalty)
    if out_rows:
        # output tokens only: the frequency penalty once per occurrence (index_add_ accumulates duplicates:
        # count x penalty, subtracted one at a time), then the presence penalty once (the same value
        # written for every duplicate, as above)
        keys = _flat_keys(out_rows, [batch.output_ids[i] for i in out_rows], V, dev)
        row = keys // V
        freq = torch.tensor([p.frequency_penalty for p in ps], dtype=out.dtype, device=dev)
        pres = torch.tensor([p.presence_penalty for p in ps], dtype=out.dtype, device=dev)
        flat.index_add_(0, keys, -freq[row])
        flat[keys] = flat[keys] - pres[row]
    if allowed_rows:  # last: a constrained row keeps only its allowed ids, whatever the other processing did
        keys = _flat_keys(allowed_rows, [list(batch.allowed[i]) for i in allowed_rows], V, dev)
        kept = flat[keys]
        out[allowed_rows] = float("-inf")
        flat[keys] = kept
    return out


def _flat_keys(rows: list[int], ids: list[list[int]], V: int, device: torch.device) -> torch.Tensor:
    """Flat indices r * V + t of every token t of ids[j] in row rows[j] (duplicates kept), as int64 [N].
    E.g. rows [0, 2], ids [[5], [1, 1]], V 10 -> [5, 21, 21]. Built through array("q") (torch.tensor of a long
    Python list is several times slower; sorting or unique on the CPU slower still, so none is used)."""
    if not any(ids):
        return torch.empty(0, dtype=torch.long, device=device)
    keys = torch.frombuffer(array("q", chain.from_iterable(ids)), dtype=torch.long)  # [N] token ids
    start = 0
    for r, x in zip(rows, ids):
        if r and x:
            keys[start:start + len(x)] += r * V
        start += len(x)
    return keys.to(device)


# ---------------------------------------------------------------------------------------------
# Sampled rows: top-k / top-p / min-p filtering and the exponential race.
# ---------------------------------------------------------------------------------------------


def _top_k(p: SamplingParams, V: int) -> int:
    return p.top_k if 0 < p.top_k < V else V


def filter_probs_(probs: torch.Tensor, params: list[SamplingParams]) -> None:
    """Zero, in place, the probabilities that top-k, then top-p, then min-p drop.

    probs [S, V]: softmax rows (after temperature). Top-p keeps the smallest set of most likely tokens of the
    top-k distribution whose mass reaches top_p; min-p keeps tokens with prob >= min_p * the largest. The
    three filters are nested prefixes of the sorted row, so each row keeps the tokens at or above one
    threshold, the largest of the three (ties at the threshold are all kept). Rows are not renormalized:
    the exponential race does not need it.
    """
    S, V = probs.shape
    rows = [i for i, p in enumerate(params) if _top_k(p, V) < V or p.top_p < 1 or p.min_p > 0]
    if not rows:
        return
    ps = [params[i] for i in rows]
    ks = [_top_k(p, V) for p in ps]
    K = min(V, max([k for k in ks if k < V] + [TOP_P_CANDIDATES if any(p.top_p < 1 for p in ps) else 1]))
    dev = probs.device
    sub = probs if len(rows) == S else probs.index_select(0, torch.tensor(rows, device=dev))  # [F, V]
    vals = torch.topk(sub, K, dim=-1).values  # [F, K] descending
    cum = vals.cumsum(-1)  # [F, K]: cum[r, j] = mass of the j + 1 most likely tokens
    before = F.pad(cum[:, :-1], (1, 0))  # [F, K]: mass of the tokens more likely than token j
    k = torch.tensor(ks, device=dev)[:, None]  # [F, 1]; V when top-k is off
    kc = k.clamp(max=K)
    zero = torch.zeros((), dtype=vals.dtype, device=dev)
    thr_k = torch.where(k < V, vals.gather(1, kc - 1), zero)
    # top-p over the top-k distribution, whose mass is cum[k - 1] (1 when top-k is off). Token j is in the
    # nucleus when the mass before it is below top_p x that mass: probs .5 .3 .2, top_p .7 -> before 0 .5 .8
    # -> the first two. The nucleus is not among the K candidates only when top-k is off and they all are in.
    top_p = torch.tensor([p.top_p for p in ps], dtype=vals.dtype, device=dev)[:, None]  # [F, 1]
    target = top_p * torch.where(k < V, cum.gather(1, kc - 1), torch.ones((), dtype=vals.dtype, device=dev))
    in_nucleus = (before < target) & (torch.arange(K, device=dev) < kc)  # [F, K]
    count = in_nucleus.sum(-1, keepdim=True)  # [F, 1] >= 1
    thr_p = torch.where(top_p < 1, vals.gather(1, count - 1), zero)
    thr_min = torch.tensor([p.min_p for p in ps], dtype=vals.dtype, device=dev)[:, None] * vals[:, :1]
    thr = torch.maximum(torch.maximum(thr_k, thr_p), thr_min)[:, 0]  # [F]
    unresolved = ((top_p < 1) & (k >= V) & (cum[:, -1:] < target))[:, 0]  # [F]
    if K < V and bool(unresolved.any()):
        u = unresolved.nonzero()[:, 0]  # flat rows: their nucleus needs the full sort (same rule as above)
        s = torch.sort(sub.index_select(0, u), dim=-1, descending=True).values  # [U, V]
        n = (F.pad(s.cumsum(-1)[:, :-1], (1, 0)) < target[u]).sum(-1, keepdim=True)  # [U, 1]
        thr[u] = torch.maximum(s.gather(1, n - 1), thr_min[u])[:, 0]
    # keep x >= thr as F.threshold's x > (the float just below thr)
    below = torch.nextafter(thr, torch.zeros_like(thr)).tolist()
    for r, t in zip(rows, below):
        F.threshold_(probs[r], t, 0.0)


def exponential_race(probs: torch.Tensor, generators: list[torch.Generator | None],
                     shared: torch.Generator) -> torch.Tensor:
    """One token per row of probs [S, V] (unnormalized is fine), drawn with probability probs_j / sum(probs).

    The exponential race: argmax_j probs_j / E_j with E_j ~ Exp(1) i.i.d. The noise E = -log U (U uniform in
    [0, 1), so E > 0) is drawn per row from the row's generator for seeded rows, and in one batched draw from
    `shared` for the others. argmax p / E = argmax log(U) / p, computed in place on U (p = 0 gives -inf).
    Returns int64 [S].
    """
    V = probs.shape[1]
    u = torch.empty_like(probs)
    seeded = [i for i, g in enumerate(generators) if g is not None]
    if not seeded:
        u.uniform_(generator=shared)
    else:
        for i in seeded:
            u[i].uniform_(generator=generators[i])
        unseeded = [i for i, g in enumerate(generators) if g is None]
        if unseeded:
            idx = torch.tensor(unseeded, device=probs.device)
            u[idx] = torch.empty((len(unseeded), V), dtype=u.dtype, device=u.device).uniform_(generator=shared)
    return u.log_().div_(probs).argmax(-1)


class Sampler:
    def __init__(self, seed: int, device: torch.device | str):
        self.device = torch.device(device)
        self.generator = torch.Generator(device=self.device).manual_seed(seed)  # for unseeded rows

    def sample(self, logits: torch.Tensor, batch: SamplingBatch) -> SampleResult:
        # logits [B, V] float32, one row per sequence of the batch; not modified
        token_ids = self.sample_tokens(logits, batch).tolist()
        return SampleResult(token_ids, _logprobs(logits, batch.params, token_ids))

    def sample_tokens(self, logits: torch.Tensor, batch: SamplingBatch) -> torch.Tensor:
        """The next token of every row as a device tensor [B] int64, without reading it on the host (async
        scheduling reads it a step later); logprobs are `sample`'s."""
        B = logits.shape[0]
        ps = batch.params
        x = process_logits(logits, batch)  # [B, V]
        tokens = torch.empty(B, dtype=torch.long, device=logits.device)
        greedy = [i for i in range(B) if ps[i].greedy]
        sampled = [i for i in range(B) if not ps[i].greedy]
        if len(greedy) == B:
            tokens = x.argmax(-1)
        elif greedy:
            idx = torch.tensor(greedy, device=logits.device)
            tokens[idx] = x.index_select(0, idx).argmax(-1)
        if sampled:
            tokens_s = self._sample_rows(x, sampled, batch)
            if len(sampled) == B:
                tokens = tokens_s
            else:
                tokens[torch.tensor(sampled, device=logits.device)] = tokens_s
        return tokens

    def _sample_rows(self, x: torch.Tensor, rows: list[int], batch: SamplingBatch) -> torch.Tensor:
        # x [B, V] processed logits -> int64 [S] tokens of the sampled rows
        ps = [batch.params[i] for i in rows]
        xs = x if len(rows) == x.shape[0] else x.index_select(0, torch.tensor(rows, device=x.device))  # [S, V]
        if any(p.temperature != 1.0 for p in ps):
            xs = xs / torch.tensor([p.temperature for p in ps], dtype=xs.dtype, device=xs.device)[:, None]
        probs = torch.softmax(xs, dim=-1)  # [S, V], a new tensor
        filter_probs_(probs, ps)
        return exponential_race(probs, [batch.generators[i] for i in rows], self.generator)


def _logprobs(logits: torch.Tensor, ps: list[SamplingParams], token_ids: list[int]) -> list[dict[int, float] | None]:
    """Per row: the top `logprobs` ids of the raw logits' log-softmax plus the sampled id, or None."""
    rows = [i for i, p in enumerate(ps) if p.logprobs is not None]
    out: list[dict[int, float] | None] = [None] * len(ps)
    if not rows:
        return out
    dev = logits.device
    raw = logits if len(rows) == len(ps) else logits.index_select(0, torch.tensor(rows, device=dev))  # [L, V]
    lps = torch.log_softmax(raw.float(), dim=-1)  # [L, V]
    chosen = torch.tensor([token_ids[i] for i in rows], device=dev)[:, None]
    chosen_lp = lps.gather(1, chosen)[:, 0].tolist()
    kmax = max(ps[i].logprobs for i in rows)
    top_vals, top_ids = torch.topk(lps, kmax, dim=-1) if kmax else (None, None)  # [L, kmax] descending
    top_vals = top_vals.tolist() if kmax else None
    top_ids = top_ids.tolist() if kmax else None
    for j, i in enumerate(rows):
        k = ps[i].logprobs
        d = dict(zip(top_ids[j][:k], top_vals[j][:k])) if k else {}
        d[token_ids[i]] = chosen_lp[j]
        out[i] = d
    return out
