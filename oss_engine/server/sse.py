"""Server-sent events, as the OpenAI streaming endpoints send them: `[event: NAME\\n]data: JSON\\n\\n`, and
the chat/completions terminator `data: [DONE]\\n\\n`.

JSON is compact, non-ASCII kept as is (UTF-8 on the wire), and never NaN/Infinity (invalid JSON:
callers clamp such numbers first; json.dumps raises ValueError otherwise).
"""

from __future__ import annotations

import json

SSE_DONE = "data: [DONE]\n\n"
SSE_MEDIA_TYPE = "text/event-stream"
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # no proxy buffering of the stream


def sse_event(obj: dict, event: str | None = None) -> str:
    data = json.dumps(obj, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    return f"event: {event}\ndata: {data}\n\n" if event else f"data: {data}\n\n"
