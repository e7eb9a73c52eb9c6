"""`oss-engine serve`: start the HTTP server at once (health answers 503 while the model loads), load the
model on a background thread, then serve. A model that fails to load (a corrupt checkpoint: the error names the
file and tensor) stops the server, exit status 2 (1 for an unexpected error). SIGTERM/SIGINT: refuse new
requests (503), let in-flight ones finish within `shutdown_timeout`, stop the engine, exit 0. One listening
socket: the API port."""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from dataclasses import dataclass

import uvicorn

from .async_engine import AsyncEngine, EngineState
from .context import ServerContext, ServerSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServeOptions:
    host: str
    port: int
    settings: ServerSettings
    llm_kwargs: dict  # passed to oss_engine.LLM


class _Loading:
    """Stands in for the engine until the model is loaded (or failed to load)."""

    def __init__(self):
        self.state = EngineState.LOADING

    def stats(self):
        return None


def attach_engine(ctx: ServerContext, llm) -> AsyncEngine:
    """Serve `llm` (an oss_engine.LLM) through ctx: an AsyncEngine over its engine, started, with its tokenizer
    and harmony renderer; ctx's routes answer from then on."""
    from ..chat.harmony import HarmonyRenderer

    engine = AsyncEngine(llm.engine, max_running=llm.config.scheduler.max_num_seqs,
                         max_queued=ctx.settings.max_queued_requests, metrics=ctx.metrics)
    ctx.tokenizer, ctx.harmony = llm.tokenizer, HarmonyRenderer(llm.tokenizer)
    engine.start()
    ctx.engine = engine
    return engine


def _load(ctx: ServerContext, opts: ServeOptions, server: uvicorn.Server) -> None:
    from ..llm import LLM

    try:
        llm = LLM(**opts.llm_kwargs)
        ctx.extras["llm"] = llm
        if llm.executor is not None:  # a dead parallel worker brings the whole server down
            llm.executor.workers.on_failure.append(lambda message: _worker_died(ctx, server, message))
        attach_engine(ctx, llm)
        log.info("oss-engine is serving %s on http://%s:%d", opts.settings.served_model_name, opts.host, opts.port)
    except (ValueError, OSError) as e:  # a bad checkpoint or setting (it names the file and tensor): refused
        log.error("loading the model failed: %s", e)
        _refuse(ctx, server, 2)  # as the other commands exit on these
    except Exception:
        log.exception("loading the model failed")
        _refuse(ctx, server, 1)


def _refuse(ctx: ServerContext, server: uvicorn.Server, status: int) -> None:
    """A model that did not load stops the server, which then exits with `status`: nothing is served from a
    partial model, and a supervisor sees why."""
    ctx.extras["exit_status"] = status
    ctx.engine.state = EngineState.FAILED
    server.should_exit = True


def _worker_died(ctx: ServerContext, server: uvicorn.Server, message: str) -> None:
    log.error("a parallel worker died (%s): shutting the server down", message)
    ctx.engine.state = EngineState.FAILED
    server.should_exit = True


class _Server(uvicorn.Server):
    """uvicorn's server, plus: the first exit signal turns the engine to draining (new requests get 503)."""

    def __init__(self, config: uvicorn.Config, ctx: ServerContext):
        super().__init__(config)
        self.ctx = ctx

    def handle_exit(self, sig, frame) -> None:
        engine = self.ctx.engine
        if getattr(engine, "state", None) is EngineState.READY:
            engine.state = EngineState.DRAINING
            log.info("received signal %s: draining (up to %.0f s for in-flight requests)", sig,
                     self.ctx.settings.shutdown_timeout)
        super().handle_exit(sig, frame)


def build_context(settings: ServerSettings) -> ServerContext:
    from .metrics import Metrics

    ctx = ServerContext(settings=settings, engine=_Loading(), tokenizer=None, harmony=None, metrics=None)
    ctx.metrics = Metrics(lambda: ctx.engine.stats())
    return ctx


def serve(opts: ServeOptions) -> int:
    from .app import create_app

    ctx = build_context(opts.settings)
    app = create_app(ctx)
    config = uvicorn.Config(app, host=opts.host, port=opts.port, log_level="info", lifespan="off",
                            timeout_graceful_shutdown=int(opts.settings.shutdown_timeout) or 1)
    server = _Server(config, ctx)
    threading.Thread(target=_load, args=(ctx, opts, server), name="oss-engine-load", daemon=True).start()
    # uvicorn drains on SIGTERM/SIGINT and then re-raises the signal through the handler that was installed
    # before it; a no-op there lets a drained server exit with status 0.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    asyncio.run(server.serve())
    engine = ctx.engine
    if isinstance(engine, AsyncEngine):
        engine.stop()
    if "llm" in ctx.extras:
        ctx.extras["llm"].close()  # parallel workers stop with the server
    return ctx.extras.get("exit_status", 0 if engine.state is not EngineState.FAILED else 1)
