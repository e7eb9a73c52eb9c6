"""POST /v1/responses and GET /v1/responses/{id}: OpenAI's Responses API for gpt-oss.

A request -> chat messages (stored conversation of previous_response_id + this input, with the
instructions in front) -> harmony prompt -> one engine request -> output items (responses_output.py).

Contract and the choices where the API is silent:
- an unknown (or evicted, or never stored) previous_response_id is a 400 `previous_response_not_found`
  with param "previous_response_id", as OpenAI answers; GET of an unknown id is a 404.
- instructions are not carried over to a follow-up (as OpenAI): the stored conversation excludes them.
- tool_choice "none" renders the prompt without the tools; "required" and a named function are enforced
  by the harmony recipient constraint (oss_engine.chat.tool_choice). gpt-oss makes at most one call per
  response (generation stops at `<|call|>`), so parallel_tool_calls is reported false.
- status "incomplete" (reason max_output_tokens) when the answer was cut by the token limit; a stream
  then ends with `response.incomplete` instead of `response.completed`, as OpenAI does.
- stream events carry a sequence_number increasing from 0; an error after the stream began is an
  `error` event, after which the stream ends. Errors before any output are the HTTP response.
- store (default true) keeps the response (completed or incomplete) in a bounded in-memory store.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from ..chat.tool_choice import ToolChoiceGrammar
from ..outputs import RequestOutput
from ..sampling_params import SamplingParams
from .completions import check_model
from .context import ServerContext, get_ctx
from .errors import APIError, bad_request
from .fanout import merge, run_unless_disconnected, start_all
from .response_store import ResponseStore, StoredResponse
from .responses_output import OutputBuilder, new_id
from .responses_protocol import ResponsesRequest, item_to_message, message_chars
from .sse import SSE_HEADERS, SSE_MEDIA_TYPE, sse_event

log = logging.getLogger(__name__)

router = APIRouter()

STORE_KEY = "responses_store"  # in ctx.extras
_THREAD_RENDER_CHARS = 20_000  # larger conversations are rendered off the event loop


def response_store(ctx: ServerContext) -> ResponseStore:
    if STORE_KEY not in ctx.extras:
        ctx.extras[STORE_KEY] = ResponseStore(ctx.settings.response_store_size)
    return ctx.extras[STORE_KEY]


@dataclass(frozen=True)
class _Prepared:
    conversation: list[dict]  # chat messages: the stored history and this input (no instructions)
    prompt_ids: list[int]
    params: SamplingParams
    constraint_factory: ToolChoiceGrammar | None


async def _prepare(body: ResponsesRequest, ctx: ServerContext) -> _Prepared:
    history: list[dict] = []
    if body.previous_response_id is not None:
        prev = response_store(ctx).get(body.previous_response_id)
        if prev is None:
            raise APIError(400, f"Previous response with id '{body.previous_response_id}' not found.",
                           param="previous_response_id", code="previous_response_not_found")
        history = prev.messages
    conversation = history + body.input
    messages = ([{"role": "developer", "content": body.instructions}] if body.instructions else []) + conversation

    names = [t.name for t in body.tools or ()]
    if len(set(names)) != len(names):
        raise bad_request("tools: function names must be unique.", "tools")
    try:
        allowed = body.allowed_tool_names()
    except ValueError as e:
        raise bad_request(f"{e}.", "tool_choice") from None
    tools = None if body.tool_choice == "none" or not body.tools else [t.as_chat_tool() for t in body.tools]

    def render() -> list[int]:
        return ctx.harmony.render_chat(messages, reasoning_effort=body.effort, tools=tools)

    try:
        if sum(message_chars(m) for m in messages) > _THREAD_RENDER_CHARS:
            ids = await asyncio.to_thread(render)
        else:
            ids = render()
    except ValueError as e:
        raise bad_request(str(e), "tools" if str(e).startswith("tools") else "input") from None

    s = ctx.settings
    room = max(1, s.max_model_len - len(ids))  # 1 at least: a full prompt gets context_length_exceeded
    max_tokens = body.max_output_tokens or min(s.default_max_tokens or room, room)
    params = SamplingParams(max_tokens=max_tokens, temperature=1.0 if body.temperature is None else body.temperature,
                            top_p=1.0 if body.top_p is None else body.top_p,
                            extra_stop_token_ids=tuple(ctx.harmony.stop_token_ids))
    grammar = ToolChoiceGrammar(ctx.tokenizer, allowed) if allowed else None
    return _Prepared(conversation, ids, params, grammar)


class _Run:
    """One response: its engine request, its output builder and the response objects."""

    def __init__(self, ctx: ServerContext, body: ResponsesRequest, prep: _Prepared):
        self.ctx, self.body, self.prep = ctx, body, prep
        self.id = new_id("resp")
        self.created_at = int(time.time())
        self.builder = OutputBuilder(ctx.harmony.streaming_parser(), ctx.tokenizer)
        self._fed = 0  # completion ids fed to the builder
        self._seq = 0  # the next stream event's sequence_number

    async def start(self) -> tuple[AsyncIterator[RequestOutput], RequestOutput]:
        engine = self.ctx.engine
        gen = engine.generate(engine.new_request_id("resp"), self.prep.prompt_ids, self.prep.params,
                              constraint_factory=self.prep.constraint_factory)
        try:
            [first] = await start_all([gen])
        except APIError as e:
            if e.code == "context_length_exceeded":
                e.param = "input"
            raise
        return gen, first

    def _feed(self, out: RequestOutput) -> list[dict]:
        ids = out.outputs[0].token_ids
        events = self.builder.feed(ids[self._fed:])
        self._fed = len(ids)
        return events

    def response(self, status: str, last: RequestOutput | None = None, output: list[dict] | None = None) -> dict:
        body = self.body
        usage = None
        if last is not None:
            usage = {"input_tokens": len(self.prep.prompt_ids),
                     "input_tokens_details": {"cached_tokens": last.num_cached_tokens, "cache_write_tokens": 0},
                     "output_tokens": self.builder.num_tokens,
                     "output_tokens_details": {"reasoning_tokens": self.builder.reasoning_tokens},
                     "total_tokens": len(self.prep.prompt_ids) + self.builder.num_tokens}
        tools = [{"type": "function", "name": t.name, "description": t.description, "parameters": t.parameters,
                  "strict": t.strict} for t in body.tools or ()]
        return {
            "id": self.id, "object": "response", "created_at": self.created_at, "status": status,
            "background": False, "error": None,
            "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
            "instructions": body.instructions, "max_output_tokens": body.max_output_tokens,
            "metadata": body.metadata or {}, "model": self.ctx.settings.served_model_name,
            "output": output or [], "parallel_tool_calls": False,
            "previous_response_id": body.previous_response_id,
            "reasoning": {"effort": body.effort, "summary": None}, "store": body.store,
            "temperature": self.prep.params.temperature, "top_p": self.prep.params.top_p,
            "text": {"format": {"type": "text"}}, "tool_choice": body.tool_choice, "tools": tools,
            "truncation": "disabled", "usage": usage, "user": body.user,
        }

    def _finish(self, last: RequestOutput) -> tuple[list[dict], dict]:
        """Close the output; the remaining events and the final response (stored if asked)."""
        incomplete = last.outputs[0].finish_reason == "length"
        events = self.builder.finish(incomplete)
        final = self.response("incomplete" if incomplete else "completed", last, self.builder.items)
        if self.body.store:
            output_messages = [m for m in (item_to_message(item, "output") for item in self.builder.items) if m]
            response_store(self.ctx).put(self.id, StoredResponse(final, self.prep.conversation + output_messages))
        return events, final

    async def whole(self) -> dict:
        gen, last = await self.start()
        self._feed(last)
        async with aclosing(merge([gen], [last])) as outputs:
            async for _, out in outputs:
                self._feed(out)
                last = out
        return self._finish(last)[1]

    def _event(self, event: dict) -> str:
        event["sequence_number"] = self._seq
        self._seq += 1
        return sse_event(event, event=event["type"])

    async def events(self, gen: AsyncIterator[RequestOutput], first: RequestOutput) -> AsyncIterator[str]:
        try:
            yield self._event({"type": "response.created", "response": self.response("in_progress")})
            yield self._event({"type": "response.in_progress", "response": self.response("in_progress")})
            last = first
            async with aclosing(merge([gen], [first])) as outputs:
                async for _, out in outputs:
                    last = out
                    for event in self._feed(out):
                        yield self._event(event)
            events, final = self._finish(last)
            for event in events:
                yield self._event(event)
            kind = "response.completed" if final["status"] == "completed" else "response.incomplete"
            yield self._event({"type": kind, "response": final})
        except APIError as e:
            yield self._event({"type": "error", "code": e.code, "message": e.message, "param": e.param})
        except Exception:  # the stream has begun: report, never a traceback
            log.exception("response stream %s failed", self.id)
            yield self._event({"type": "error", "code": "server_error", "message": "Internal server error.",
                               "param": None})


@router.post("/v1/responses")
async def create_response(body: ResponsesRequest, request: Request) -> Response:
    ctx = get_ctx(request)
    check_model(body.model, ctx.settings)
    run = _Run(ctx, body, await _prepare(body, ctx))
    if body.stream:
        gen, first = await run.start()
        return StreamingResponse(run.events(gen, first), media_type=SSE_MEDIA_TYPE, headers=SSE_HEADERS)
    return JSONResponse(await run_unless_disconnected(request, run.whole()))


@router.get("/v1/responses/{response_id}")
async def get_response(response_id: str, request: Request) -> Response:
    stored = response_store(get_ctx(request)).get(response_id)
    if stored is None:
        raise APIError(404, f"No response found with id '{response_id[:256]}'.", type="invalid_request_error",
                       param="response_id", code="response_not_found")
    return JSONResponse(stored.response)
