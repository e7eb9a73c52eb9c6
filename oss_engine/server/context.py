"""What every route handler reads: the settings and the shared services, built once at start-up and kept
on `app.state.ctx` (no module globals)."""

from __future__ import annotations

from dataclasses import dataclass, field

from fastapi import Request


@dataclass(frozen=True)
class ServerSettings:
    served_model_name: str
    max_model_len: int
    api_key: str | None = None
    max_request_bytes: int = 4 << 20  # larger bodies get 413 before they are parsed
    max_queued_requests: int = 256
    shutdown_timeout: float = 30.0
    response_store_size: int = 1000  # /v1/responses kept for previous_response_id, oldest dropped first
    default_max_tokens: int | None = None  # None: whatever fits in max_model_len after the prompt


@dataclass
class ServerContext:
    settings: ServerSettings
    engine: object  # AsyncEngine (or a fake with the same `generate`, `new_request_id`, `stats`, `state`)
    tokenizer: object  # oss_engine.chat.tokenizer.Tokenizer
    harmony: object  # oss_engine.chat.harmony.HarmonyRenderer
    metrics: object  # oss_engine.server.metrics.Metrics
    extras: dict = field(default_factory=dict)  # per-endpoint state (e.g. the responses store)


def get_ctx(request: Request) -> ServerContext:
    return request.app.state.ctx
