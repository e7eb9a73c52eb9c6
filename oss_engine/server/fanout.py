"""Running engine iterators for one HTTP request: start them (so an error before output becomes the
request's error response), merge their outputs, and close every one of them on every exit path.

Contract: whatever happens (an error, the consumer stopping early, a cancelled task, a client that
disconnects), each iterator passed in is closed or cancelled, which makes the engine abort its request.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable
from typing import TypeVar

from fastapi import Request

from .errors import APIError

log = logging.getLogger(__name__)

T = TypeVar("T")
_END = object()  # a pump's last queue item


async def _close(gen) -> None:
    try:
        await gen.aclose()
    except Exception:  # closing is best effort; the engine side has its own finally
        log.debug("closing an engine iterator failed", exc_info=True)


async def start_all(gens: list[AsyncIterator[T]]) -> list[T]:
    """The first item of every iterator, awaited concurrently. As soon as one raises before its first
    item (a 400 or 429 from the engine), all are closed and that error is raised (the lowest index
    among those that failed by then)."""
    tasks = [asyncio.ensure_future(gen.__anext__()) for gen in gens]
    ok = False
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in tasks:
            if task.done() and task.exception() is not None:
                err = task.exception()
                if isinstance(err, StopAsyncIteration):
                    err = APIError(500, "The engine ended a request without output.", type="server_error")
                raise err
        ok = True  # FIRST_EXCEPTION without an exception: all are done
        return [task.result() for task in tasks]
    finally:
        if not ok:
            for task in tasks:
                task.cancel()  # an unfinished first step: the cancellation closes its iterator
            for task, gen in zip(tasks, gens):
                if task.done() and not task.cancelled():
                    await _close(gen)


async def merge(gens: list[AsyncIterator[T]], firsts: list[T]) -> AsyncIterator[tuple[int, T]]:
    """(index, item) from all iterators as they arrive, after the already started `firsts` (in index
    order). An exception from any iterator is raised here. Leaving the loop early closes all."""
    queue: asyncio.Queue = asyncio.Queue()  # unbounded: a pump never waits for the consumer
    started = [False] * len(gens)

    async def pump(i: int, gen: AsyncIterator[T]) -> None:
        started[i] = True
        try:
            async for item in gen:
                queue.put_nowait((i, item))
        except Exception as e:  # noqa: BLE001 - handed to the consumer
            queue.put_nowait((i, e))
        finally:
            queue.put_nowait((i, _END))

    pumps = [asyncio.ensure_future(pump(i, gen)) for i, gen in enumerate(gens)]
    try:
        for i, item in enumerate(firsts):
            yield i, item
        live = len(pumps)
        while live:
            i, item = await queue.get()
            if item is _END:
                live -= 1
            elif isinstance(item, Exception):
                raise item
            else:
                yield i, item
    finally:
        for i, (p, gen) in enumerate(zip(pumps, gens)):
            p.cancel()  # a running pump's iterator gets CancelledError at its await and closes
            if not started[i]:  # a pump cancelled before its first step never touches its iterator
                await _close(gen)  # (an iterator paused at a yield closes without suspending)


async def run_unless_disconnected(request: Request, work: Awaitable[T], poll_s: float = 0.5) -> T:
    """Await `work`, cancelling it (and so the engine requests it holds) if the client disconnects
    before it finishes (non-streaming requests; a stream is cancelled by Starlette itself)."""
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=poll_s)
            if done:
                return task.result()
            if await request.is_disconnected():
                task.cancel()
                await asyncio.wait({task})  # its cleanup (closing the engine iterators) has run
                raise APIError(499, "The client closed the request.", code="client_closed_request")
    finally:
        if not task.done():
            task.cancel()
