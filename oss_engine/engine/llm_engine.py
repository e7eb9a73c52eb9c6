"""LLMEngine: requests in, incremental outputs out, one model step at a time.

`step()` is: schedule -> run the model on one flat varlen batch -> sample the requests that caught up ->
detokenize and check stops -> report. The nouns: Request, Scheduler (what runs), KVCacheManager (where its
KV lives), ModelRunner (the model), Sampler (next tokens), Detokenizer (text and stop strings).
A request with n > 1 becomes n child requests ("<id>#<i>") that share the prompt's cached blocks.

Async scheduling (`SchedulerConfig.async_scheduling`, with a runner that takes device-resident input ids):
a step's sampled tokens stay on the device and the host reads them one step later, after it has scheduled
and launched the next step, whose decode rows take those tokens as input ids on the device. So the host's
bookkeeping (appending tokens, stop checks, detokenizing, outputs, scheduling, staging) overlaps the GPU's
forward pass instead of leaving the GPU idle between steps (vLLM's async scheduling). Costs: outputs come
one `step()` later, and a request stopped by a sampled token (eos, a stop token or string) has already
been scheduled for one more token, computed and thrown away. A request whose next token must end it by
length is not scheduled again. Steps whose sampling reads logprobs stay synchronous.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Iterator, Protocol

import torch

from ..config import EngineConfig
from ..outputs import CompletionOutput, RequestOutput
from ..sampling_params import SamplingParams
from .detokenizer import Detokenizer
from .kv_cache import GroupSpec, KVCacheManager
from .request import Request
from .runner import ScheduledSeq, StepLogits
from .sampler import Sampler, SamplingBatch, top_logprobs
from .scheduler import Scheduler, SchedulerOutput

log = logging.getLogger(__name__)


class ContextLengthError(ValueError):
    """prompt + max_tokens beyond max_model_len (the server's 400 `context_length_exceeded`)."""

    def __init__(self, prompt_tokens: int, max_tokens: int, max_model_len: int):
        super().__init__(f"This model's maximum context length is {max_model_len} tokens. However, you requested "
                         f"{prompt_tokens + max_tokens} tokens ({prompt_tokens} in the prompt, {max_tokens} for the "
                         f"completion). Please reduce the prompt or max_tokens.")
        self.prompt_tokens, self.max_tokens, self.max_model_len = prompt_tokens, max_tokens, max_model_len


class Runner(Protocol):
    """The model seam: the engine needs only this (tests inject a fake)."""

    device: torch.device

    def execute(self, seqs: list[ScheduledSeq]) -> StepLogits: ...


@dataclass(frozen=True)
class EngineStats:
    num_running: int
    num_waiting: int
    num_preemptions_total: int
    kv_blocks_used: dict[str, int]
    kv_blocks_free: dict[str, int]
    kv_usage: float  # used / total of the fullest cache group
    prefix_cache_queries: int  # prompt tokens looked up
    prefix_cache_hits: int  # of which served from the cache
    num_scheduled_tokens: int  # in the last step
    num_steps: int


@dataclass(frozen=True)
class PendingStep:
    sched: SchedulerOutput
    seqs: list[ScheduledSeq]  # empty: nothing to run this step


@dataclass(frozen=True)
class _InFlight:
    """A step's sampled tokens that the host has not read yet (async scheduling)."""

    reqs: list[Request]  # row i of `tokens` is reqs[i]'s next token
    tokens: torch.Tensor  # [n] int64 on the runner's device: the next step's input ids
    host: torch.Tensor  # [n] int64 on the CPU, filled by a non-blocking copy
    ready: torch.cuda.Event | None  # recorded after that copy (None on the CPU: already there)


@dataclass
class _Parent:
    request_id: str
    prompt: str | None
    children: list[Request]
    detoks: list[Detokenizer]
    texts: list[str] = field(default_factory=list)  # per child: the text so far
    deltas: list[str] = field(default_factory=list)  # per child: text not yet reported

    def __post_init__(self) -> None:
        self.texts = [""] * len(self.children)
        self.deltas = [""] * len(self.children)


class LLMEngine:
    def __init__(self, cfg: EngineConfig, runner: Runner, num_blocks: dict[str, int], tokenizer=None,
                 eos_token_ids: tuple[int, ...] = ()):
        self.cfg, self.runner, self.tokenizer = cfg, runner, tokenizer
        windows = {g: (cfg.model.sliding_window if g == "sliding_attention" else None) for g in num_blocks}
        self.kv = KVCacheManager([GroupSpec(g, n, windows[g]) for g, n in sorted(num_blocks.items())],
                                 cfg.cache.block_size, cfg.cache.enable_prefix_caching)
        self.scheduler = Scheduler(cfg.scheduler, self.kv, cfg.cache.enable_prefix_caching)
        self.sampler = Sampler(cfg.seed, runner.device)
        self.eos_token_ids = frozenset(eos_token_ids)
        self.parents: dict[str, _Parent] = {}
        self.requests: dict[str, Request] = {}
        self._last_step_tokens = 0
        self._num_steps = 0
        self._async = cfg.scheduler.async_scheduling and getattr(runner, "supports_device_tokens", False)
        self._inflight: _InFlight | None = None

    # ---- requests in -------------------------------------------------------------------------------

    def add_request(self, request_id: str, prompt_token_ids: list[int], sampling_params: SamplingParams,
                    prompt: str | None = None, constraint_factory=None) -> None:
        """Queue a request; raises ValueError (nothing queued) for one that can never run.

        `constraint_factory()`, when given, makes one constraint per sample: an object whose
        `allowed_ids(output_token_ids)` returns the only token ids the next step may produce, or None.
        """
        p = sampling_params
        if request_id in self.parents:
            raise ValueError(f"request id {request_id!r} is already in use")
        self.check_request(prompt_token_ids, p)
        stop_ids = frozenset(p.stop_token_ids or ()) | frozenset(p.extra_stop_token_ids)
        if not p.ignore_eos:
            stop_ids |= self.eos_token_ids
        now = time.monotonic()
        children, detoks = [], []
        for i in range(p.n):
            seed = None if p.seed is None else p.seed + i  # n seeded samples differ, reproducibly
            gen = None if seed is None else torch.Generator(device=self.runner.device).manual_seed(seed)
            rid = request_id if p.n == 1 else f"{request_id}#{i}"
            children.append(Request(rid, request_id, i, list(prompt_token_ids), p, gen, stop_ids, now,
                                    constraint=constraint_factory() if constraint_factory else None))
            detoks.append(Detokenizer(self.tokenizer, p.stop, skip_special=True))
        self.parents[request_id] = _Parent(request_id, prompt, children, detoks)
        for child in children:
            self.requests[child.request_id] = child
            self.scheduler.add(child)

    def check_request(self, ids: list[int], p: SamplingParams) -> None:
        """Raise ValueError (ContextLengthError for the length) if the request can never run. Reads only
        the configuration and the pool sizes, so any thread may call it."""
        n, limit = len(ids), self.cfg.max_model_len
        if n == 0:
            raise ValueError("the prompt is empty")
        V = self.cfg.model.vocab_size
        bad = next((t for t in ids if not isinstance(t, int) or not 0 <= t < V), None)
        if bad is not None:
            raise ValueError(f"prompt token id {bad!r} is out of range [0, {V})")
        if n + p.max_tokens > limit:
            raise ContextLengthError(n, p.max_tokens, limit)
        for group, need in self.kv.blocks_needed(n + p.max_tokens).items():
            if need > self.kv.num_blocks(group):
                raise ValueError(f"prompt + max_tokens needs {need} KV blocks ({group}) but the whole pool has "
                                 f"{self.kv.num_blocks(group)}")
        for t in (p.logit_bias or {}):
            if t >= V:
                raise ValueError(f"logit_bias token id {t} is out of range [0, {V})")

    def abort(self, request_id: str) -> None:
        """Drop a request (all its samples) and free its KV blocks at once. Unknown ids are ignored."""
        parent = self.parents.pop(request_id, None)
        if parent is None:
            return
        for child in parent.children:
            if not child.finished:
                self.scheduler.finish(child, "abort")
            self.requests.pop(child.request_id, None)

    def has_unfinished_requests(self) -> bool:
        return bool(self.parents)

    @property
    def num_unfinished_requests(self) -> int:
        return len(self.parents)

    # ---- one step ----------------------------------------------------------------------------------

    def step(self) -> list[RequestOutput]:
        if self._async:
            return self._step_async()
        pending = self.schedule_step()
        if not pending.seqs:
            return []
        return self.finish_step(pending, self.runner.execute(pending.seqs))

    def _step_async(self) -> list[RequestOutput]:
        """schedule -> launch the model (pending rows read last step's tokens on the device) -> read last
        step's tokens, check stops, report -> advance and launch this step's sampling, left in flight."""
        inflight, self._inflight = self._inflight, None
        pending = self.schedule_step(inflight)
        logits = self.runner.execute(pending.seqs, inflight.tokens if inflight else None) if pending.seqs else None
        outs = self._outputs(self._resolve(inflight)) if inflight else []  # overlaps the GPU's forward pass
        if logits is not None:
            outs += self.finish_step(pending, logits, in_flight=True)
        return outs

    def schedule_step(self, inflight: _InFlight | None = None) -> PendingStep:
        """The first half of `step`: what the model runs next (split so that data-parallel replicas can
        run their batches in one lock-step; see dp_engine.py). With `inflight`, a request whose token is
        still on the device runs it from there (its row in `inflight.tokens`)."""
        sched = self.scheduler.schedule()
        self._num_steps += 1
        self._last_step_tokens = sched.num_tokens
        src = {id(r): i for i, r in enumerate(inflight.reqs)} if inflight else {}
        return PendingStep(sched, [
            ScheduledSeq(s.request.token_ids, s.request.num_computed_tokens, s.num_new_tokens,
                         self.kv.block_tables(s.request.request_id), all_logits=s.request.wants_prompt_logprobs,
                         pending_row=src[id(s.request)] if s.request.num_pending else -1)
            for s in sched.scheduled])

    def finish_step(self, pending: PendingStep, logits: StepLogits, in_flight: bool = False) -> list[RequestOutput]:
        """The second half of `step`: advance, sample, detokenize, report. `in_flight` (async scheduling):
        the sampled tokens are left on the device for the next step to read."""
        sampling, allowed, failed = self._constrain(self._advance(pending.sched, logits))
        sample = self._sample_async if in_flight else self._sample
        touched = sample(sampling, allowed, logits)
        if self.cfg.scheduler.debug_checks:
            self.kv.check_accounting(self.scheduler.live_request_ids())
        return self._outputs(touched, failed)

    def _advance(self, sched: SchedulerOutput, step: StepLogits) -> list[tuple[Request, int]]:
        """Move num_computed forward; collect prompt logprobs; return (request, logits row) of those that sample."""
        sampling = []
        for s, (start, stop) in zip(sched.scheduled, step.rows):
            r = s.request
            if r.finished:  # stopped by the token read after this step was scheduled (async scheduling)
                continue
            if r.wants_prompt_logprobs:
                self._prompt_logprobs(r, step.logits[start:stop])
            r.num_computed_tokens += s.num_new_tokens
            self.kv.release_out_of_window(r.request_id, r.num_computed_tokens)
            if r.num_computed_tokens == r.num_tokens:
                sampling.append((r, stop - 1))
        return sampling

    def _prompt_logprobs(self, r: Request, logits: torch.Tensor) -> None:
        # logits [n, V]: row j sits at position p = num_computed + j and predicts the token at p + 1
        if r.num_computed_tokens == 0:
            r.prompt_logprobs = [None]  # (re)started from the beginning
        lps = torch.log_softmax(logits, dim=-1)
        k = r.params.prompt_logprobs
        for j in range(logits.shape[0]):
            p = r.num_computed_tokens + j
            if p + 1 < r.num_prompt_tokens:
                r.prompt_logprobs.append(top_logprobs(lps[j], k, r.prompt_token_ids[p + 1]))

    def _constrain(self, sampling: list[tuple[Request, int]]
                   ) -> tuple[list[tuple[Request, int]], list, list[Request]]:
        """Each sampling request's allowed ids from its constraint (None: any), the requests whose constraint
        raised taken out and ended alone (`_fail`): (the sampling left, their allowed ids, the failed)."""
        kept, allowed, failed = [], [], []
        for r, row in sampling:
            try:
                ids = r.constraint.allowed_ids(r.output_token_ids) if r.constraint else None
            except Exception as e:  # noqa: BLE001 - one request's constraint: that request alone
                self._fail(r, e)
                failed.append(r)
                continue
            kept.append((r, row))
            allowed.append(ids)
        return kept, allowed, failed

    def _fail(self, r: Request, exc: Exception) -> None:
        """One request's own host-side work (its constraint, detokenizer or stop checks) raised: end that
        request alone with finish_reason "error", its blocks freed at once; the step and every other request
        go on (RELIABILITY.md battery 9). The server answers it with a 500 in the OpenAI shape."""
        log.error("request %s failed in its own processing; ending it alone", r.request_id, exc_info=exc)
        if not r.finished:
            self.scheduler.finish(r, "error")

    def _sampling_batch(self, sampling: list[tuple[Request, int]], allowed: list, step: StepLogits
                        ) -> tuple[torch.Tensor, SamplingBatch]:
        """(the sampling rows' logits [n, V], what the sampler needs to know of them)."""
        reqs = [r for r, _ in sampling]
        batch = SamplingBatch(params=[r.params for r in reqs], generators=[r.generator for r in reqs],
                              prompt_ids=[r.prompt_token_ids for r in reqs],
                              output_ids=[r.output_token_ids if r.params.uses_output_history else () for r in reqs],
                              stop_ids=[r.stop_ids for r in reqs], allowed=allowed)
        rows = [row for _, row in sampling]
        logits = step.logits if rows == list(range(step.logits.shape[0])) else step.logits[rows]  # decode: all rows
        return logits, batch

    def _sample(self, sampling: list[tuple[Request, int]], allowed: list, step: StepLogits) -> list[Request]:
        if not sampling:
            return []
        reqs = [r for r, _ in sampling]
        result = self.sampler.sample(*self._sampling_batch(sampling, allowed, step))
        now = time.monotonic()
        for r, tok, lp in zip(reqs, result.token_ids, result.logprobs):
            self._take_token(r, tok, lp, now)
        return reqs

    def _sample_async(self, sampling: list[tuple[Request, int]], allowed: list, step: StepLogits
                      ) -> list[Request]:
        """Launch the sampling and leave its tokens in flight (read by the next step), or, when a row wants
        logprobs, sample synchronously as `_sample`. Returns the requests that got a token now."""
        reqs = [r for r, _ in sampling]
        if not reqs or any(r.params.logprobs is not None for r in reqs):
            return self._sample(sampling, allowed, step)
        tokens = self.sampler.sample_tokens(*self._sampling_batch(sampling, allowed, step))  # [n] on the device
        ready = None
        if tokens.is_cuda:
            host = torch.empty(tokens.shape, dtype=tokens.dtype, pin_memory=True)
            host.copy_(tokens, non_blocking=True)
            ready = torch.cuda.Event()
            ready.record()
        else:
            host = tokens
        for r in reqs:  # schedulable next step unless this token ends the request by length anyway
            ends = r.num_output_tokens + 1 >= r.params.max_tokens or r.num_tokens + 1 >= self.cfg.max_model_len
            r.num_pending = 0 if ends else 1
        self._inflight = _InFlight(reqs, tokens, host, ready)
        return []

    def _resolve(self, inflight: _InFlight) -> list[Request]:
        """Read a step's in-flight tokens (waiting for that copy only, not for later work), append them and
        check stops. Returns the requests that got a token (not those aborted meanwhile)."""
        if inflight.ready is not None:
            inflight.ready.synchronize()
        now = time.monotonic()
        touched = []
        for r, tok in zip(inflight.reqs, inflight.host.tolist()):
            r.num_pending = 0
            if not r.finished:
                self._take_token(r, tok, None, now)
                touched.append(r)
        return touched

    def _take_token(self, r: Request, tok: int, lp, now: float) -> None:
        r.token_ids.append(tok)
        r.first_token_time = r.first_token_time or now
        if lp is not None:
            r.logprobs.append(lp)
        try:
            reason = self._stop_reason(r, tok)
        except Exception as e:  # noqa: BLE001 - one request's detokenizer or stop check: that request alone
            self._fail(r, e)
            return
        if reason is not None:
            self.scheduler.finish(r, reason)

    def _stop_reason(self, r: Request, tok: int) -> str | None:
        parent = self.parents[r.parent_id]
        detok = parent.detoks[r.index]
        reason = None
        if tok in r.stop_ids:  # the stop token stays in token_ids; its text is not part of the output
            reason = "stop"
        else:
            d = detok.push(tok)
            parent.texts[r.index] = d.text
            parent.deltas[r.index] += d.delta_text
            if d.stopped:
                return "stop"  # the text is already cut before the stop string
            if r.num_output_tokens >= r.params.max_tokens or r.num_tokens >= self.cfg.max_model_len:
                reason = "length"
        if reason is not None:
            parent.deltas[r.index] += detok.finish()  # text held back in case a stop string followed
            parent.texts[r.index] = detok.text
        return reason

    # ---- outputs -----------------------------------------------------------------------------------

    def _outputs(self, touched: list[Request], failed: list[Request] = ()) -> list[RequestOutput]:
        """One output for each parent of a request that got a token (`touched`) or was ended without one
        (`failed`)."""
        outs = []
        stepped = set(touched)  # Requests hash by identity
        for pid in dict.fromkeys(r.parent_id for r in [*touched, *failed]):
            parent = self.parents[pid]
            comps = []
            for child in parent.children:
                new = [child.token_ids[-1]] if child in stepped else []
                delta, parent.deltas[child.index] = parent.deltas[child.index], ""
                comps.append(CompletionOutput(child.index, parent.texts[child.index], child.output_token_ids,
                                              child.finish_reason,
                                              list(child.logprobs) if child.params.logprobs is not None else None,
                                              delta_text=delta, delta_token_ids=new))
            finished = all(c.finished for c in parent.children)
            first = parent.children[0]
            outs.append(RequestOutput(pid, parent.prompt, first.prompt_token_ids, comps,
                                      first.prompt_logprobs if first.params.prompt_logprobs is not None else None,
                                      finished=finished))
            if finished:
                self.parents.pop(pid)
                for c in parent.children:
                    self.requests.pop(c.request_id, None)
        return outs

    def iterate(self) -> Iterator[RequestOutput]:
        """Step until every request finished, yielding each incremental output (the streaming iterator)."""
        while self.has_unfinished_requests():
            yield from self.step()

    def stats(self) -> EngineStats:
        pc = self.kv.prefix_cache_stats()
        groups = self.kv.group_names()
        return EngineStats(
            num_running=len(self.scheduler.running), num_waiting=len(self.scheduler.waiting),
            num_preemptions_total=self.scheduler.num_preemptions_total,
            kv_blocks_used={g: self.kv.num_used_blocks(g) for g in groups},
            kv_blocks_free={g: self.kv.num_free_blocks(g) for g in groups},
            kv_usage=self.kv.usage(), prefix_cache_queries=pc.queries, prefix_cache_hits=pc.hits,
            num_scheduled_tokens=self._last_step_tokens, num_steps=self._num_steps)

