"""AsyncEngine with fake engines: outputs flow, early close aborts, capacity gives 429, a step that raises ends
every live request with a terminal error (none hangs) and marks the engine failed, and a request the engine ended
alone with finish_reason "error" gets a 500 while the others finish and the engine stays ready."""

from __future__ import annotations

import asyncio

import pytest

from oss_engine.outputs import CompletionOutput, RequestOutput
from oss_engine.sampling_params import SamplingParams
from oss_engine.server.async_engine import AsyncEngine, EngineState
from oss_engine.server.errors import APIError


class FakeEngine:
    """Emits one token per step per request; `explode_at` makes step number N raise; the requests in `fails`
    end after their second token with finish_reason "error" (as LLMEngine ends one whose own processing failed)."""

    def __init__(self, tokens_per_request: int = 5, explode_at: int | None = None, fails: tuple[str, ...] = ()):
        self.n, self.explode_at, self.steps, self.fails = tokens_per_request, explode_at, 0, fails
        self.live: dict[str, int] = {}
        self.aborted: list[str] = []

    def check_request(self, ids, params):
        if not ids:
            raise ValueError("empty")

    def add_request(self, rid, ids, params, prompt=None, constraint_factory=None):
        self.live[rid] = 0

    def abort(self, rid):
        if self.live.pop(rid, None) is not None:
            self.aborted.append(rid)

    def has_unfinished_requests(self):
        return bool(self.live)

    def stats(self):
        return None

    def step(self):
        self.steps += 1
        if self.explode_at is not None and self.steps >= self.explode_at:
            raise RuntimeError("boom")
        outs = []
        for rid in list(self.live):
            self.live[rid] += 1
            failed = rid in self.fails and self.live[rid] == 2
            done = failed or self.live[rid] >= self.n
            reason = "error" if failed else "length" if done else None
            outs.append(RequestOutput(rid, None, [1], [CompletionOutput(0, "", [7] * self.live[rid], reason,
                                                                        delta_token_ids=[7])], finished=done))
            if done:
                del self.live[rid]
        return outs


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, timeout=20))


async def collect(eng, rid):
    return [o async for o in eng.generate(rid, [1, 2], SamplingParams(max_tokens=5))]


def test_outputs_flow_and_finish():
    eng = AsyncEngine(FakeEngine(), max_running=4, max_queued=4)
    eng.start()
    try:
        outs = run(collect(eng, "a"))
        assert len(outs) == 5 and outs[-1].finished and eng.num_live == 0
    finally:
        eng.stop()


def test_early_close_aborts():
    fake = FakeEngine(tokens_per_request=1000)
    eng = AsyncEngine(fake, max_running=4, max_queued=4)
    eng.start()

    async def take_two():
        gen = eng.generate("a", [1], SamplingParams(max_tokens=1000))
        got = [await gen.__anext__(), await gen.__anext__()]
        await gen.aclose()
        for _ in range(100):
            if "a" in fake.aborted:
                break
            await asyncio.sleep(0.02)
        return got

    try:
        assert len(run(take_two())) == 2 and fake.aborted == ["a"] and eng.num_live == 0
    finally:
        eng.stop()


def test_capacity_and_bad_requests():
    eng = AsyncEngine(FakeEngine(tokens_per_request=1000), max_running=1, max_queued=1)
    eng.start()

    async def scenario():
        gens = [eng.generate(f"r{i}", [1], SamplingParams()) for i in range(2)]
        firsts = [await g.__anext__() for g in gens]
        with pytest.raises(APIError) as e:
            await eng.generate("r3", [1], SamplingParams()).__anext__()
        assert e.value.status == 429 and e.value.headers["Retry-After"]
        with pytest.raises(APIError) as e:
            await eng.generate("r4", [], SamplingParams()).__anext__()
        assert e.value.status == 400
        for g in gens:
            await g.aclose()
        return firsts

    try:
        assert len(run(scenario())) == 2
    finally:
        eng.stop()


def test_a_failing_step_ends_every_live_request():
    eng = AsyncEngine(FakeEngine(tokens_per_request=1000, explode_at=3), max_running=8, max_queued=8)
    eng.start()

    async def many():
        return await asyncio.gather(*(collect(eng, f"r{i}") for i in range(4)), return_exceptions=True)

    try:
        results = run(many())
        assert all(isinstance(r, APIError) and r.status == 500 for r in results), results
        assert "Traceback" not in str(results[0])
        assert eng.state is EngineState.FAILED and eng.num_live == 0
        with pytest.raises(APIError) as e:  # new requests: 503 while failed
            run(collect(eng, "late"))
        assert e.value.status == 503
    finally:
        eng.stop()


def test_a_request_ended_in_error_fails_alone():
    eng = AsyncEngine(FakeEngine(tokens_per_request=5, fails=("r1",)), max_running=8, max_queued=8)
    eng.start()

    async def many():
        return await asyncio.gather(*(collect(eng, f"r{i}") for i in range(3)), return_exceptions=True)

    try:
        ok0, err, ok2 = run(many())
        assert isinstance(err, APIError) and err.status == 500 and err.type == "server_error"
        for outs in (ok0, ok2):
            assert outs[-1].finished and outs[-1].outputs[0].finish_reason == "length" and len(outs) == 5
        assert eng.state is EngineState.READY and eng.num_live == 0
        assert len(run(collect(eng, "next"))) == 5  # the engine serves the next request
    finally:
        eng.stop()
