"""RELIABILITY.md battery 9 over HTTP on 127.0.0.1: the server's own app, AsyncEngine and engine, served by uvicorn
in this process so that faults can be injected into the engine (a test hook in the server would be a hidden
switch in production code). One request whose detokenizer raises gets a terminal error (a 500 in the OpenAI shape,
or an error event ending its stream) while the greedy canaries batched with it answer as they do alone and the
server stays healthy; a step that raises gives every in-flight request a terminal error (none hangs) and /health
then reports the failed state."""

from __future__ import annotations

import asyncio
import json
import threading
import time

import httpx
import pytest
import uvicorn

from oss_engine import LLM
from oss_engine.engine import llm_engine
from oss_engine.engine.detokenizer import Detokenizer
from oss_engine.server.app import create_app
from oss_engine.server.context import ServerSettings
from oss_engine.server.serve import attach_engine, build_context

from conftest import free_port

CANARIES = [f"canary {i}: the quick brown fox" for i in range(3)]


class InProcessServer:
    """`LLM` on the tiny checkpoint served by the server's app on 127.0.0.1 (uvicorn on a thread)."""

    def __init__(self, model_dir):
        self.llm = LLM(str(model_dir), dtype="float32", device="cpu", progress=False, max_model_len=512)
        self.ctx = build_context(ServerSettings(served_model_name="tiny", max_model_len=512))
        self.engine = attach_engine(self.ctx, self.llm)
        port = free_port()
        self.base = f"http://127.0.0.1:{port}"
        self.server = uvicorn.Server(uvicorn.Config(create_app(self.ctx), host="127.0.0.1", port=port,
                                                    lifespan="off", log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "uvicorn did not start"
            time.sleep(0.05)

    def close(self):
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.engine.stop()


@pytest.fixture
def served(server_model):
    s = InProcessServer(server_model)
    yield s
    s.close()


def _completion(prompt: str, **kw) -> dict:
    return {"model": "tiny", "prompt": prompt, "max_tokens": 24, "temperature": 0, "ignore_eos": True, **kw}


async def _post(c: httpx.AsyncClient, base: str, body: dict):
    """(status, JSON body) of a plain request; (200, [events]) of a streamed one, the events parsed."""
    if not body.get("stream"):
        r = await c.post(base + "/v1/completions", json=body)
        return r.status_code, r.json()
    events = []
    async with c.stream("POST", base + "/v1/completions", json=body) as r:
        async for line in r.aiter_lines():
            if line.startswith("data: "):
                events.append(line[6:] if line == "data: [DONE]" else json.loads(line[6:]))
    return r.status_code, events


def _text(status_body) -> str:
    status, body = status_body
    assert status == 200, body
    if isinstance(body, list):  # a stream: every event but the last [DONE] carries text
        assert body[-1] == "[DONE]", body[-3:]
        return "".join(e["choices"][0]["text"] for e in body[:-1])
    return body["choices"][0]["text"]


def _run(base: str, bodies: list[dict]):
    async def all_():
        async with httpx.AsyncClient(timeout=120) as c:
            return await asyncio.gather(*(_post(c, base, b) for b in bodies))
    return asyncio.run(asyncio.wait_for(all_(), timeout=180))


def test_one_requests_detokenizer_fault_ends_it_alone(served, monkeypatch):
    alone = [_text(r) for r in _run(served.base, [_completion(p) for p in CANARIES])]
    canary_ids = {t for p in CANARIES for t in served.llm.tokenizer.encode(p)}
    canary_ids |= {t for text in alone for t in served.llm.tokenizer.encode(text)}
    magic = next(t for t in range(300, 10_000) if t not in canary_ids)  # a token no canary reads or writes

    class Faulty(Detokenizer):
        """Raises at a request's third `magic` token: its first two are out (a stream has begun)."""

        def push(self, token_id: int):
            self.seen = getattr(self, "seen", 0) + (token_id == magic)
            if self.seen == 3:
                raise UnicodeDecodeError("utf-8", b"\xff", 0, 1, "injected detokenizer fault")
            return super().push(token_id)

    monkeypatch.setattr(llm_engine, "Detokenizer", Faulty)
    forced = {"logit_bias": {str(magic): 100}}  # the faulty requests sample `magic` first
    bodies = ([_completion(p) for p in CANARIES] + [_completion(p, stream=True) for p in CANARIES]
              + [_completion("doomed", **forced), _completion("doomed too", stream=True, **forced)])
    got = _run(served.base, bodies)
    assert [_text(r) for r in got[:6]] == alone + alone
    status, body = got[6]
    assert status == 500 and body["error"]["type"] == "server_error", body
    status, events = got[7]
    assert status == 200 and "error" in events[-1] and "[DONE]" not in events, events
    assert any(e["choices"][0]["text"] for e in events[:-1]), events  # the stream had begun
    assert "Traceback" not in json.dumps(body) + json.dumps(events)
    assert httpx.get(served.base + "/health").status_code == 200
    assert sum(served.llm.engine.stats().kv_blocks_used.values()) == 0
    assert _text(_run(served.base, [_completion(CANARIES[0])])[0]) == alone[0]  # served as before


def test_a_failing_step_ends_every_in_flight_request(served, monkeypatch):
    engine, real, steps = served.llm.engine, served.llm.engine.step, []

    def step():  # raises once all four requests are in and have run a few steps
        steps.append(len(engine.parents))
        if steps.count(4) >= 3:
            raise RuntimeError("injected step fault")
        return real()

    monkeypatch.setattr(engine, "step", step)
    bodies = [_completion(p, max_tokens=200) for p in CANARIES] + [_completion("streamed", max_tokens=200,
                                                                              stream=True)]
    got = _run(served.base, bodies)
    for status, body in got[:3]:
        assert status == 500 and body["error"]["type"] == "server_error", body
    status, events = got[3]
    assert status == 200 and "error" in events[-1] and "[DONE]" not in events, events
    health = httpx.get(served.base + "/health")
    assert health.status_code == 503 and health.json() == {"status": "failed"}
    r = httpx.post(served.base + "/v1/completions", json=_completion("late"))
    assert r.status_code == 503 and r.json()["error"]["message"]  # refused at once, in the OpenAI shape
