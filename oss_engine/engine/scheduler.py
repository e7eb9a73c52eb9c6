"""Scheduler: pure CPU logic, no tensors. Decides each step which requests run and how many tokens each
computes; owns the waiting queue (FCFS) and the running list (in admission order).

Step: first the running requests, each granted min(num_tokens - num_computed, budget) tokens; when the KV
pool cannot hold a grant, the most recently admitted running request is preempted (its blocks freed, its
tokens recomputed later; greedy and seeded outputs are unaffected) until the grant fits or the request
itself was the one preempted. Then, if nothing was preempted, waiting requests are admitted in order,
starting from their longest cached prefix, while the budget, `max_num_seqs` and the pool allow.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from ..config import SchedulerConfig
from .kv_cache import KVCacheManager
from .request import Request, RequestStatus


@dataclass(frozen=True)
class ScheduledRequest:
    request: Request
    num_new_tokens: int  # positions [num_computed, num_computed + num_new_tokens) run this step


@dataclass(frozen=True)
class SchedulerOutput:
    scheduled: list[ScheduledRequest]
    num_preempted: int  # preemptions during this step

    @property
    def num_tokens(self) -> int:
        return sum(s.num_new_tokens for s in self.scheduled)


class Scheduler:
    def __init__(self, cfg: SchedulerConfig, kv: KVCacheManager, enable_prefix_caching: bool):
        self.cfg, self.kv = cfg, kv
        self.enable_prefix_caching = enable_prefix_caching
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.num_preemptions_total = 0

    def add(self, request: Request) -> None:
        self.waiting.append(request)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def schedule(self) -> SchedulerOutput:
        budget = self.cfg.max_num_batched_tokens
        scheduled: list[ScheduledRequest] = []
        preempted = 0
        i = 0
        while i < len(self.running) and budget > 0:
            req = self.running[i]
            num_new = min(req.num_tokens + req.num_pending - req.num_computed_tokens, budget)
            if num_new == 0:  # its last sampled token ends it (async scheduling): nothing to run
                i += 1
                continue
            while not self.kv.allocate(req.request_id, req.token_ids, req.num_computed_tokens, num_new):
                victim = self.running.pop()  # the most recently admitted
                self._preempt(victim)
                preempted += 1
                if victim is req:
                    break
            else:
                scheduled.append(ScheduledRequest(req, num_new))
                budget -= num_new
                i += 1
        if preempted == 0:
            budget = self._admit(scheduled, budget)
        self.num_preemptions_total += preempted
        return SchedulerOutput(scheduled, preempted)

    def _admit(self, scheduled: list[ScheduledRequest], budget: int) -> int:
        while self.waiting and budget > 0 and len(self.running) < self.cfg.max_num_seqs:
            req = self.waiting[0]
            hit = None
            if self.enable_prefix_caching and not req.wants_prompt_logprobs:
                hit = self.kv.find_prefix(req.request_id, req.token_ids)
            computed = hit.num_tokens if hit is not None else 0
            num_new = min(req.num_tokens - computed, budget)
            if not self.kv.allocate(req.request_id, req.token_ids, computed, num_new, hit):
                break
            self.waiting.popleft()
            if hit is not None:
                self.kv.record_prefix_query(req.num_tokens, hit)
            req.num_computed_tokens = computed
            req.status = RequestStatus.RUNNING
            self.running.append(req)
            scheduled.append(ScheduledRequest(req, num_new))
            budget -= num_new
        return budget

    def _preempt(self, req: Request) -> None:
        self.kv.free(req.request_id)
        req.num_computed_tokens = 0
        req.num_preemptions += 1
        req.status = RequestStatus.WAITING
        self.waiting.appendleft(req)  # successive victims: the earliest admitted ends up first

    def finish(self, req: Request, reason: str) -> None:
        """Remove a request (finished or aborted) and free its blocks at once."""
        req.status, req.finish_reason = RequestStatus.FINISHED, reason
        self.kv.free(req.request_id)
        if req in self.running:
            self.running.remove(req)
        elif req in self.waiting:
            self.waiting.remove(req)

    def live_request_ids(self) -> list[str]:
        return [r.request_id for r in self.running]
