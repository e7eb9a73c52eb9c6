"""The FastAPI app: routes only translate; the gatekeeping happens once, in one ASGI middleware, before any
route or body parsing:

1. auth: every path but exactly `/health` needs `Authorization: Bearer <key>` when a key is set (compared
   in constant time), so path tricks (`//v1/...`, `%2F`, case) meet the same check;
2. readiness: while the engine is loading, draining or failed, API routes answer 503 with Retry-After;
3. size: a body over `max_request_bytes` is refused with 413 (by Content-Length, or while it streams in).
"""

from __future__ import annotations

import hmac
import json

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from .async_engine import EngineState
from .context import ServerContext, get_ctx
from .errors import error_body, install_error_handlers

PUBLIC_PATHS = frozenset({"/health"})
ALWAYS_SERVED = frozenset({"/health", "/metrics"})  # answered whatever the engine's state


class _Gate:
    def __init__(self, app, ctx: ServerContext):
        self.app, self.ctx = app, ctx
        key = ctx.settings.api_key
        self.expected = f"Bearer {key}".encode() if key else None

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope.get("path", "")
        headers = dict(scope.get("headers") or [])
        if self.expected is not None and path not in PUBLIC_PATHS:
            if not hmac.compare_digest(headers.get(b"authorization", b""), self.expected):
                return await _reply(send, 401, "Invalid or missing API key.", "authentication_error",
                                    code="invalid_api_key", extra=[(b"www-authenticate", b"Bearer")])
        state = getattr(self.ctx.engine, "state", EngineState.READY)
        if path not in ALWAYS_SERVED and state is not EngineState.READY:
            return await _reply(send, 503, f"The server is {state.value}; retry later.", "service_unavailable",
                                extra=[(b"retry-after", b"5")])
        limit = self.ctx.settings.max_request_bytes
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            return await _reply(send, 413, f"The request body exceeds {limit} bytes.", "invalid_request_error")
        return await self.app(scope, _limited(receive, limit), send)


class _TooLarge(Exception):
    pass


def _limited(receive, limit: int):
    seen = 0

    async def wrapped():
        nonlocal seen
        message = await receive()
        if message["type"] == "http.request":
            seen += len(message.get("body", b""))
            if seen > limit:
                raise _TooLarge()
        return message

    return wrapped


async def _reply(send, status: int, message: str, type_: str, code: str | None = None, extra=()) -> None:
    body = json.dumps(error_body(message, type_, None, code)).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *extra]})
    await send({"type": "http.response.body", "body": body})


def create_app(ctx: ServerContext) -> FastAPI:
    from . import chat, completions, responses

    app = FastAPI(title="oss-engine", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.ctx = ctx
    install_error_handlers(app)

    @app.exception_handler(_TooLarge)
    async def _too_large(request: Request, e: _TooLarge) -> JSONResponse:
        return JSONResponse(error_body(f"The request body exceeds {ctx.settings.max_request_bytes} bytes.",
                                       "invalid_request_error"), status_code=413)

    @app.get("/health")
    async def health(request: Request) -> Response:
        state = get_ctx(request).engine.state
        ok = state is EngineState.READY
        return JSONResponse({"status": state.value}, status_code=200 if ok else 503)

    @app.get("/v1/models")
    async def models(request: Request) -> JSONResponse:
        s = get_ctx(request).settings
        return JSONResponse({"object": "list", "data": [{
            "id": s.served_model_name, "object": "model", "created": 0, "owned_by": "oss-engine",
            "max_model_len": s.max_model_len}]})

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        m = get_ctx(request).metrics
        return Response(m.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    app.include_router(chat.router)
    app.include_router(completions.router)
    app.include_router(responses.router)
    app.add_middleware(_Gate, ctx=ctx)
    return app
