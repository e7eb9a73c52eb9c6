"""POST /v1/chat/completions: OpenAI chat requests -> harmony prompt -> engine -> OpenAI responses (whole or SSE).

Contract:
- every field is bounded and validated before any tokenization; a violation is a 400 whose `param` names
  the field (pydantic constraints through the app's handler, cross-field checks as APIError); an unknown
  model is a 404 `model_not_found`. Unknown fields are ignored, as OpenAI does.
- reasoning (analysis channel) goes to `reasoning_content`, the final channel to `content`, calls to
  functions to `tool_calls`; streamed deltas concatenate to exactly the non-streamed message.
- tool_choice "none" renders the prompt without the tools; "required" and a named function are enforced
  by a constraint on the harmony recipient (oss_engine.chat.tool_choice).
Choices where the OpenAI API is silent for gpt-oss:
- stop strings cut the final answer (`content`) only: reasoning and tool arguments are never cut, and a
  choice that hit one stops generating. Harmony's own stop tokens end every answer.
- ignore_eos also ignores harmony's stop tokens (so a benchmark gets exactly max_tokens tokens).
- logprobs cover every generated token (headers and reasoning included), in generation order.
- finish_reason: "length" when cut by max_tokens, else "tool_calls" when the answer calls a function.
- reasoning_tokens counts whole analysis messages (header and end token included).
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.concurrency import run_in_threadpool

from ..chat.tokenizer import HARMONY_TOKENS
from ..chat.tool_choice import ToolChoiceGrammar
from ..outputs import RequestOutput
from ..sampling_params import (
    MAX_LOGIT_BIAS_ENTRIES,
    MAX_STOP_STRING_CHARS,
    MAX_STOP_STRINGS,
    SamplingParams,
)
from .chat_stream import Choice, Prepared
from .context import ServerContext, get_ctx
from .errors import APIError, error_body
from .sse import SSE_DONE, SSE_HEADERS, SSE_MEDIA_TYPE, sse_event

log = logging.getLogger(__name__)
router = APIRouter()

T = HARMONY_TOKENS
MAX_MESSAGES = 2048
MAX_MESSAGE_CHARS = 1_000_000  # all message texts together, checked before tokenization
MAX_TOOLS = 128
DISCONNECT_POLL_S = 0.25

# ---------------------------------------------------------------------------------------------
# The request.
# ---------------------------------------------------------------------------------------------


class _Model(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")  # strict: "2" is not 2, "yes" is not true


class FunctionCall(_Model):
    name: str = Field(max_length=256)
    arguments: str | dict[str, Any] | None = None


class ToolCall(_Model):
    id: str | None = None
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(_Model):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None  # harmony checks the parts (text only)
    name: str | None = None
    tool_calls: list[ToolCall] | None = Field(None, max_length=MAX_TOOLS)
    tool_call_id: str | None = None
    reasoning_content: str | None = None
    reasoning: str | None = None


class FunctionDef(_Model):
    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolDef(_Model):
    type: Literal["function"]
    function: FunctionDef


class StreamOptions(_Model):
    include_usage: bool = False


def _float(lo: float | None = None, hi: float | None = None, *, gt: float | None = None) -> Any:
    return Field(None, ge=lo, le=hi, gt=gt, allow_inf_nan=False)


class ChatCompletionRequest(_Model):
    model: str
    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    reasoning_effort: Literal["low", "medium", "high"] | None = None
    tools: list[ToolDef] | None = Field(None, max_length=MAX_TOOLS)
    tool_choice: Any = None  # "auto" | "none" | "required" | {"type": "function", "function": {"name"}}
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int = Field(1, ge=1, le=16)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=20)
    stop: Any = None  # a string or a list of strings
    seed: int | None = Field(None, ge=-(2**63), lt=2**64)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = _float(0.0, 2.0)
    top_p: float | None = _float(hi=1.0, gt=0.0)
    presence_penalty: float | None = _float(-2.0, 2.0)
    frequency_penalty: float | None = _float(-2.0, 2.0)
    logit_bias: dict[str, float] | None = Field(None, max_length=MAX_LOGIT_BIAS_ENTRIES)
    user: str | None = None  # accepted, ignored
    # vLLM extras
    top_k: int | None = Field(None, ge=-1)
    min_p: float | None = _float(0.0, 1.0)
    repetition_penalty: float | None = _float(gt=0.0)
    ignore_eos: bool = False
    min_tokens: int = Field(0, ge=0)

    @field_validator("stop")
    @classmethod
    def _check_stop(cls, v: Any) -> list[str]:
        stops = [] if v is None else [v] if isinstance(v, str) else v
        if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
            raise ValueError("must be a string or a list of strings")
        if len(stops) > MAX_STOP_STRINGS:
            raise ValueError(f"must hold at most {MAX_STOP_STRINGS} strings")
        if any(len(s) > MAX_STOP_STRING_CHARS for s in stops):
            raise ValueError(f"strings must be at most {MAX_STOP_STRING_CHARS} characters")
        return [s for s in stops if s]

    @field_validator("tool_choice")
    @classmethod
    def _check_tool_choice(cls, v: Any) -> str | None:
        """Normalized to "auto" | "none" | "required" | "function:NAME"."""
        if v is None or v in ("auto", "none", "required"):
            return v
        fn = v.get("function") if isinstance(v, dict) else None
        if isinstance(fn, dict) and v.get("type") == "function" and isinstance(fn.get("name"), str):
            return "function:" + fn["name"]
        raise ValueError('must be "auto", "none", "required" or {"type": "function", "function": {"name": ...}}')

    @field_validator("logit_bias")
    @classmethod
    def _check_logit_bias(cls, v: dict[str, float] | None) -> dict[str, float] | None:
        for key, bias in (v or {}).items():
            if not re.fullmatch(r"[0-9]{1,9}", key):
                raise ValueError(f"keys must be token ids, got {key[:20]!r}")
            if not -100 <= bias <= 100:
                raise ValueError(f"values must be in [-100, 100] (token {key} has {bias})")
        return v


# ---------------------------------------------------------------------------------------------
# Request -> prompt ids, sampling parameters and the tool_choice constraint.
# ---------------------------------------------------------------------------------------------


def _message_chars(m: ChatMessage) -> int:
    n = len(m.reasoning_content or "") + len(m.reasoning or "")
    if isinstance(m.content, str):
        n += len(m.content)
    for part in m.content if isinstance(m.content, list) else ():
        n += len(part["text"]) if isinstance(part.get("text"), str) else 0
    for call in m.tool_calls or ():
        args = call.function.arguments
        n += len(call.function.name) + (len(args) if isinstance(args, str) else len(str(args or "")))
    return n


def _allowed_tools(body: ChatCompletionRequest) -> tuple[str, ...] | None:
    """The tools a "required" / named tool_choice restricts calls to; None when calls are free."""
    names = [t.function.name for t in body.tools or ()]
    if len(set(names)) != len(names):
        raise APIError(400, "tools: function names must be unique.", param="tools")
    choice = body.tool_choice
    if choice in (None, "auto", "none"):
        return None
    if not names:
        raise APIError(400, f"tool_choice {choice!r} needs tools.", param="tool_choice")
    if choice == "required":
        return tuple(names)
    name = choice.removeprefix("function:")
    if name not in names:
        raise APIError(400, f"tool_choice names function {name!r}, which is not among the tools.",
                       param="tool_choice")
    return (name,)


def _check(body: ChatCompletionRequest, ctx: ServerContext) -> None:
    if body.model != ctx.settings.served_model_name:
        raise APIError(404, f"The model {body.model!r} does not exist.", param="model", code="model_not_found")
    if body.top_logprobs is not None and not body.logprobs:
        raise APIError(400, "top_logprobs requires logprobs to be true.", param="top_logprobs")
    if sum(_message_chars(m) for m in body.messages) > MAX_MESSAGE_CHARS:
        raise APIError(400, f"The messages hold more than {MAX_MESSAGE_CHARS} characters.", param="messages")
    vocab = ctx.tokenizer.vocab_size
    if any(int(k) >= vocab for k in body.logit_bias or {}):
        raise APIError(400, f"logit_bias keys must be token ids below {vocab}.", param="logit_bias")


def _render(body: ChatCompletionRequest, ctx: ServerContext) -> list[int]:
    tools = None if body.tool_choice == "none" or not body.tools else [t.model_dump(exclude_none=True)
                                                                        for t in body.tools]
    messages = [m.model_dump(exclude_none=True) for m in body.messages]
    try:
        return ctx.harmony.render_chat(messages, reasoning_effort=body.reasoning_effort or "medium", tools=tools)
    except ValueError as e:
        raise APIError(400, str(e), param="tools" if str(e).startswith("tools") else "messages") from None


def _sampling_params(body: ChatCompletionRequest, ctx: ServerContext, prompt_len: int) -> SamplingParams:
    s = ctx.settings
    room = max(1, s.max_model_len - prompt_len)  # 1 at least: a full prompt gets context_length_exceeded
    max_tokens = body.max_completion_tokens or body.max_tokens or min(s.default_max_tokens or room, room)
    if body.min_tokens > max_tokens:
        raise APIError(400, f"min_tokens ({body.min_tokens}) exceeds max_tokens ({max_tokens}).", param="min_tokens")
    top_k = body.top_k if body.top_k is not None else -1
    try:
        return SamplingParams(
            n=body.n, max_tokens=max_tokens, min_tokens=body.min_tokens, seed=body.seed,
            temperature=1.0 if body.temperature is None else body.temperature,
            top_p=1.0 if body.top_p is None else body.top_p,
            top_k=-1 if top_k >= ctx.tokenizer.vocab_size else top_k,
            min_p=body.min_p or 0.0, repetition_penalty=body.repetition_penalty or 1.0,
            presence_penalty=body.presence_penalty or 0.0, frequency_penalty=body.frequency_penalty or 0.0,
            logit_bias={int(k): v for k, v in body.logit_bias.items()} if body.logit_bias else None,
            logprobs=(body.top_logprobs or 0) if body.logprobs else None,
            ignore_eos=body.ignore_eos,
            extra_stop_token_ids=() if body.ignore_eos else tuple(ctx.harmony.stop_token_ids),
        )
    except ValueError as e:
        m = re.search(r"SamplingParams\.(\w+)", str(e))
        param = {"logprobs": "top_logprobs"}.get(m.group(1), m.group(1)) if m else None
        raise APIError(400, str(e).replace("SamplingParams.", ""), param=param) from None


async def _prepare(body: ChatCompletionRequest, ctx: ServerContext) -> Prepared:
    _check(body, ctx)
    allowed = _allowed_tools(body)
    prompt_ids = await run_in_threadpool(_render, body, ctx)  # large prompts: off the event loop
    params = _sampling_params(body, ctx, len(prompt_ids))
    grammar = ToolChoiceGrammar(ctx.tokenizer, allowed, max_tokens=params.max_tokens) if allowed else None
    return Prepared(prompt_ids, params, grammar, tuple(body.stop or ()), body.top_logprobs if body.logprobs else None)


# ---------------------------------------------------------------------------------------------
# The route.
# ---------------------------------------------------------------------------------------------


@dataclass
class _Run:
    """One request in flight: what every chunk and the final body repeat, and the choices."""

    id: str
    created: int
    model: str
    prompt_tokens: int
    choices: list[Choice]
    cached_tokens: int = 0

    @property
    def done(self) -> bool:
        return all(c.finish_reason for c in self.choices)

    def apply(self, out: RequestOutput) -> list[tuple[Choice, list[dict], bool]]:
        """Feed one engine output to the choices: (choice, deltas, whether it just finished) per choice."""
        self.cached_tokens = out.num_cached_tokens
        steps = []
        for c in out.outputs:
            choice = self.choices[c.index]
            if choice.finish_reason:
                continue
            lps = None
            if c.logprobs is not None:
                end = len(c.token_ids)
                lps = c.logprobs[end - len(c.delta_token_ids):end]
            deltas = choice.feed(c.delta_token_ids, lps)
            if c.finished or choice.stopped:
                deltas += choice.finish(c.finish_reason)
            steps.append((choice, deltas, bool(choice.finish_reason)))
        return steps

    def usage(self) -> dict:
        completion = sum(c.num_tokens for c in self.choices)
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": completion,
                "total_tokens": self.prompt_tokens + completion,
                "completion_tokens_details": {"reasoning_tokens": sum(c.reasoning_tokens for c in self.choices)},
                "prompt_tokens_details": {"cached_tokens": self.cached_tokens}}

    def chunk(self, choices: list[dict], **extra) -> dict:
        return {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                "choices": choices, **extra}


async def _outputs(gen: AsyncIterator[RequestOutput], request: Request, first: RequestOutput | None = None):
    """The engine's outputs (`first` already taken from `gen`); stops early if the client left. Callers
    close `gen` themselves (closing this iterator before its first step would not), which aborts the
    request in the engine."""
    if first is not None:
        yield first
    polled = time.monotonic()
    async for out in gen:
        yield out
        if time.monotonic() - polled > DISCONNECT_POLL_S:
            polled = time.monotonic()
            if await request.is_disconnected():
                return


async def _complete(run: _Run, gen, request: Request) -> dict:
    async with contextlib.aclosing(gen), contextlib.aclosing(_outputs(gen, request)) as outputs:
        async for out in outputs:
            run.apply(out)
            if run.done:
                break
    for choice in run.choices:  # the engine ended without finishing a choice (it always finishes them)
        choice.finish(None)
    return {"id": run.id, "object": "chat.completion", "created": run.created, "model": run.model,
            "choices": [{"index": c.index, "message": c.message(), "logprobs": c.take_logprobs(),
                         "finish_reason": c.finish_reason} for c in run.choices],
            "usage": run.usage()}


async def _stream(run: _Run, gen, request: Request, first: RequestOutput | None, include_usage: bool):
    extra = {"usage": None} if include_usage else {}
    try:
        async with contextlib.aclosing(gen), contextlib.aclosing(_outputs(gen, request, first)) as outputs:
            for c in run.choices:
                yield sse_event(run.chunk([{"index": c.index, "delta": {"role": "assistant", "content": ""},
                                            "logprobs": None, "finish_reason": None}], **extra))
            async for out in outputs:
                for choice, deltas, finished in run.apply(out):
                    for delta in deltas:
                        yield sse_event(run.chunk([{"index": choice.index, "delta": delta,
                                                    "logprobs": choice.take_logprobs(), "finish_reason": None}],
                                                  **extra))
                    if finished:
                        yield sse_event(run.chunk([{"index": choice.index, "delta": {},
                                                    "logprobs": choice.take_logprobs(),
                                                    "finish_reason": choice.finish_reason}], **extra))
                if run.done:
                    break
        if include_usage:
            yield sse_event(run.chunk([], usage=run.usage()))
        yield SSE_DONE
    except APIError as e:
        yield sse_event(error_body(e.message, e.type, e.param, e.code))
    except Exception:
        log.exception("chat completion stream %s failed", run.id)
        yield sse_event(error_body("Internal server error.", "server_error"))


@router.post("/v1/chat/completions")
async def create_chat_completion(body: ChatCompletionRequest, request: Request):
    ctx = get_ctx(request)
    prep = await _prepare(body, ctx)
    request_id = ctx.engine.new_request_id("chatcmpl")
    run = _Run(request_id, int(time.time()), body.model, len(prep.prompt_ids),
               [Choice(i, ctx, prep) for i in range(body.n)])
    gen = ctx.engine.generate(request_id, prep.prompt_ids, prep.params, constraint_factory=prep.constraint_factory)
    if not body.stream:
        return JSONResponse(await _complete(run, gen, request))
    try:  # errors before the first output (length, capacity, state) are plain error responses
        first = await anext(gen)
    except StopAsyncIteration:
        first = None
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    return StreamingResponse(_stream(run, gen, request, first, include_usage), media_type=SSE_MEDIA_TYPE,
                             headers=SSE_HEADERS)
