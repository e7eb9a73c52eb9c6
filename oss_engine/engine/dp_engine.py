"""DPEngine: data-parallel replicas behind the LLMEngine interface (what LLM and the server's AsyncEngine use).

Each replica is a whole LLMEngine: its own scheduler, KV cache manager, sampler and requests; a new request
goes to the replica with the fewest unfinished requests (ties: the lowest index). A step schedules every
replica, runs all their batches in one lock-step of the parallel executor (`execute`: one list of
ScheduledSeq per replica -> one StepLogits per replica; a replica with nothing to do runs an empty batch,
because the MoE spans the replicas), then lets each replica sample its own rows.
"""

from __future__ import annotations

from typing import Callable, Iterator

from ..outputs import RequestOutput
from ..sampling_params import SamplingParams
from .llm_engine import EngineStats, LLMEngine
from .runner import ScheduledSeq, StepLogits


class DPEngine:
    def __init__(self, engines: list[LLMEngine],
                 execute: Callable[[list[list[ScheduledSeq]]], list[StepLogits]]):
        self.engines, self.execute = engines, execute
        self.cfg = engines[0].cfg
        self.owner: dict[str, LLMEngine] = {}

    def add_request(self, request_id: str, prompt_token_ids: list[int], sampling_params: SamplingParams,
                    prompt: str | None = None, constraint_factory=None) -> None:
        if request_id in self.owner:
            raise ValueError(f"request id {request_id!r} is already in use")
        engine = min(self.engines, key=lambda e: e.num_unfinished_requests)
        engine.add_request(request_id, prompt_token_ids, sampling_params, prompt, constraint_factory)
        self.owner[request_id] = engine

    def check_request(self, ids: list[int], p: SamplingParams) -> None:
        self.engines[0].check_request(ids, p)  # the replicas share one configuration

    def abort(self, request_id: str) -> None:
        engine = self.owner.pop(request_id, None)
        if engine is not None:
            engine.abort(request_id)

    def has_unfinished_requests(self) -> bool:
        return any(e.has_unfinished_requests() for e in self.engines)

    @property
    def num_unfinished_requests(self) -> int:
        return sum(e.num_unfinished_requests for e in self.engines)

    def step(self) -> list[RequestOutput]:
        pending = [e.schedule_step() for e in self.engines]
        if not any(p.seqs for p in pending):
            return []
        logits = self.execute([p.seqs for p in pending])
        outs = []
        for engine, p, step_logits in zip(self.engines, pending, logits):
            if p.seqs:
                outs += engine.finish_step(p, step_logits)
        for out in outs:
            if out.finished:
                self.owner.pop(out.request_id, None)
        return outs

    def iterate(self) -> Iterator[RequestOutput]:
        while self.has_unfinished_requests():
            yield from self.step()

    def stats(self) -> EngineStats:
        every = [e.stats() for e in self.engines]

        def total(field: str) -> int:
            return sum(getattr(s, field) for s in every)

        def by_group(field: str) -> dict[str, int]:
            return {g: sum(getattr(s, field)[g] for s in every) for g in every[0].kv_blocks_used}

        return EngineStats(num_running=total("num_running"), num_waiting=total("num_waiting"),
                           num_preemptions_total=total("num_preemptions_total"),
                           kv_blocks_used=by_group("kv_blocks_used"), kv_blocks_free=by_group("kv_blocks_free"),
                           kv_usage=max(s.kv_usage for s in every),
                           prefix_cache_queries=total("prefix_cache_queries"),
                           prefix_cache_hits=total("prefix_cache_hits"),
                           num_scheduled_tokens=total("num_scheduled_tokens"), num_steps=every[0].num_steps)
