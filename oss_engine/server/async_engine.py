"""AsyncEngine: the LLMEngine on its own thread, driven by commands from the event loop.

The event loop never waits for a model step: `generate` checks a request (pure reads), queues an "add"
command and awaits the request's outputs on an asyncio queue that the engine thread feeds. Leaving the
iterator early (a client that disconnects, a cancelled task) queues an "abort", which frees the request's
KV blocks at the start of the next loop turn. An exception inside a step ends every live request with a
terminal error and marks the engine failed (health turns 503); nothing hangs. A request whose own processing
failed (the engine ends it alone with finish_reason "error") gets a 500; the engine stays ready.
"""

from __future__ import annotations

import asyncio
import enum
import itertools
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from ..engine.llm_engine import ContextLengthError, EngineStats, LLMEngine
from ..outputs import RequestOutput
from ..sampling_params import SamplingParams
from .errors import APIError

log = logging.getLogger(__name__)


class EngineState(enum.Enum):
    LOADING = "loading"
    READY = "ready"
    DRAINING = "draining"
    FAILED = "failed"
    STOPPED = "stopped"


class EngineFailed(Exception):
    """Delivered to every live request when a step raised."""


@dataclass(frozen=True)
class _Add:
    request_id: str
    prompt_token_ids: list[int]
    params: SamplingParams
    prompt: str | None
    constraint_factory: object


@dataclass(frozen=True)
class _Abort:
    request_id: str


class _RequestTimer:
    """Feeds one request's timings and token counts to the metrics (no-op without metrics)."""

    def __init__(self, metrics, prompt_tokens: int):
        self.metrics, self.prompt_tokens = metrics, prompt_tokens
        self.start = self.last = time.monotonic()
        self.first = True
        self.generated = 0

    def output(self, out: RequestOutput) -> None:
        new = sum(len(c.delta_token_ids) for c in out.outputs)
        if not new or self.metrics is None:
            self.generated += new
            return
        now = time.monotonic()
        if self.first:
            self.metrics.ttft.observe(now - self.start)
            self.first = False
        else:
            self.metrics.itl.observe(now - self.last)
        self.last = now
        self.generated += new

    def done(self, status: str) -> None:
        if self.metrics is None:
            return
        m = self.metrics
        m.requests.labels(status=status).inc()
        m.prompt_tokens.inc(self.prompt_tokens)
        m.generation_tokens.inc(self.generated)
        m.e2e.observe(time.monotonic() - self.start)


class AsyncEngine:
    def __init__(self, engine: LLMEngine, *, max_running: int, max_queued: int, metrics=None):
        self.engine, self.metrics = engine, metrics
        self.capacity = max_running + max_queued  # live requests at most; more get 429
        self.state = EngineState.LOADING
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._sinks: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self._stats: EngineStats | None = None
        self._ids = itertools.count()
        self._thread = threading.Thread(target=self._run, name="oss-engine-loop", daemon=True)
        self._stop = threading.Event()

    # ---- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> None:
        self._stats = self.engine.stats()
        self.state = EngineState.READY
        self._thread.start()

    async def drain(self, timeout: float) -> bool:
        """Refuse new requests, let live ones finish (up to `timeout` s); True if all finished."""
        if self.state is EngineState.READY:
            self.state = EngineState.DRAINING
        deadline = time.monotonic() + timeout
        while self._sinks and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return not self._sinks

    def stop(self) -> None:
        self._stop.set()
        self._commands.put(None)
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        if self.state is not EngineState.FAILED:
            self.state = EngineState.STOPPED

    @property
    def num_live(self) -> int:
        return len(self._sinks)

    def stats(self) -> EngineStats | None:
        return self._stats  # refreshed by the engine thread after every step

    def new_request_id(self, prefix: str) -> str:
        return f"{prefix}-{next(self._ids)}-{time.time_ns() % 10**9:09d}"

    # ---- requests ----------------------------------------------------------------------------------

    async def generate(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams, *,
                       prompt: str | None = None, constraint_factory=None) -> AsyncIterator[RequestOutput]:
        """Incremental outputs of one request (see RequestOutput.delta_*), the last one finished.

        Raises APIError before the first output: 400 for a request that can never run (code
        `context_length_exceeded` for the length), 429 when running + queued capacity is full, 503 while
        not ready. Closing the iterator before the end aborts the request.
        """
        if self.state is not EngineState.READY:
            raise APIError(503, f"The engine is {self.state.value}; try again later.", type="service_unavailable",
                           headers={"Retry-After": "5"})
        try:
            self.engine.check_request(prompt_token_ids, params)
        except ContextLengthError as e:
            raise APIError(400, str(e), param="messages", code="context_length_exceeded") from None
        except ValueError as e:
            raise APIError(400, str(e)) from None
        if len(self._sinks) >= self.capacity:
            raise APIError(429, "The server is at capacity (running and queued requests); retry shortly.",
                           type="rate_limit_error", headers={"Retry-After": "1"})
        sink: asyncio.Queue = asyncio.Queue()
        self._sinks[request_id] = (asyncio.get_running_loop(), sink)
        self._commands.put(_Add(request_id, list(prompt_token_ids), params, prompt, constraint_factory))
        timer = _RequestTimer(self.metrics, len(prompt_token_ids))
        status = "abort"
        try:
            while True:
                item = await sink.get()
                if isinstance(item, BaseException):
                    status = "error"
                    raise item
                if item.finished and any(c.finish_reason == "error" for c in item.outputs):
                    status = "error"  # this request's own processing failed; the engine is fine
                    raise APIError(500, "The engine failed while serving this request.", type="server_error")
                timer.output(item)
                if item.finished:
                    status = item.outputs[0].finish_reason or "stop"
                yield item
                if item.finished:
                    return
        finally:
            self._sinks.pop(request_id, None)
            timer.done(status)
            if status == "abort":
                self._commands.put(_Abort(request_id))

    # ---- the engine thread -------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                idle = not self.engine.has_unfinished_requests()
                self._apply_commands(block=idle)
                if self._stop.is_set():
                    break
                if self.engine.has_unfinished_requests():
                    outs = self.engine.step()
                    self._stats = self.engine.stats()
                    for out in outs:
                        self._deliver(out.request_id, out)
        except Exception:  # a failing step: every live request gets a terminal error, none hangs
            log.exception("engine step failed; failing all live requests")
            self.state = EngineState.FAILED
            for rid in list(self._sinks):
                self._deliver(rid, APIError(500, "The engine failed while serving this request.",
                                            type="server_error"))

    def _apply_commands(self, block: bool) -> None:
        try:
            cmd = self._commands.get(timeout=0.5) if block else self._commands.get_nowait()
        except queue.Empty:
            return
        while cmd is not None:
            if isinstance(cmd, _Add):
                if cmd.request_id in self._sinks:  # not aborted while queued
                    try:
                        self.engine.add_request(cmd.request_id, cmd.prompt_token_ids, cmd.params, cmd.prompt,
                                                constraint_factory=cmd.constraint_factory)
                    except ValueError as e:
                        self._deliver(cmd.request_id, APIError(400, str(e)))
            elif isinstance(cmd, _Abort):
                self.engine.abort(cmd.request_id)
            try:
                cmd = self._commands.get_nowait()
            except queue.Empty:
                cmd = None
        self._stats = self.engine.stats()

    def _deliver(self, request_id: str, item) -> None:
        target = self._sinks.get(request_id)
        if target is None:  # the client is gone: make sure the engine forgets the request
            if isinstance(item, RequestOutput) and not item.finished:
                self.engine.abort(request_id)
            return
        loop, sink = target
        try:
            loop.call_soon_threadsafe(sink.put_nowait, item)
        except RuntimeError:  # the loop closed
            self.engine.abort(request_id)
