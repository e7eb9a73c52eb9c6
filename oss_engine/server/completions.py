"""POST /v1/completions: OpenAI's legacy text completions (vLLM-compatible), translated to engine requests.

Each prompt is one engine request with `n` samples; all run concurrently. Choice index arithmetic:
index = prompt_index * n + sample_index, e.g. 2 prompts with n = 3 give choices 0-2 for the first
prompt and 3-5 for the second.

Every engine request is started before the response begins, so an error before output (400
context_length_exceeded, 429 at capacity, ...) is the response; a later error in a stream is sent as
`data: {"error": {...}}` and the stream ends (no [DONE]). The engine iterators are closed on every exit
path (see fanout.py), which aborts their requests when a client goes away.

Logprobs use the legacy shape {"tokens", "token_logprobs", "top_logprobs", "text_offset"}: every
generated token, including a stop token that ended generation (shown by its name, e.g. "<|return|>",
whose text is not in the choice's text); each token string is that token decoded alone (a character split
over tokens shows as U+FFFD), and text_offset is the running sum of those strings' lengths, so offsets
match the text exactly only when every token decodes on its own. With echo, the prompt's tokens come first
(the first one's logprob is null). max_tokens = 0 with echo scores the prompt and generates nothing.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass, field

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from ..outputs import CompletionOutput, RequestOutput
from ..sampling_params import SamplingParams
from .completions_protocol import CompletionRequest, check_request
from .context import ServerContext, ServerSettings, get_ctx
from .errors import APIError, bad_request, error_body
from .fanout import merge, run_unless_disconnected, start_all
from .sse import SSE_DONE, SSE_HEADERS, SSE_MEDIA_TYPE, sse_event

log = logging.getLogger(__name__)

router = APIRouter()

MIN_LOGPROB = -9999.0  # -inf (a masked token) as JSON can carry it, as OpenAI and vLLM do
_THREAD_TOKENIZE_CHARS = 20_000  # longer prompts are tokenized off the event loop
_PARAM_IN_MESSAGE = re.compile(r"SamplingParams\.(\w+)")


def check_model(name: str, settings: ServerSettings) -> None:
    if name != settings.served_model_name:
        raise APIError(404, f"The model `{name}` does not exist.", param="model", code="model_not_found")


@dataclass(frozen=True)
class Prompt:
    ids: list[int]
    text: str | None  # the text as sent; None for a token-id prompt


async def _prompts(body: CompletionRequest, tokenizer) -> list[Prompt]:
    if isinstance(body.prompt[0], list):
        return [Prompt(list(p), None) for p in body.prompt]

    def encode() -> list[Prompt]:
        return [Prompt(tokenizer.encode(p), p) for p in body.prompt]

    if sum(len(p) for p in body.prompt) > _THREAD_TOKENIZE_CHARS:
        return await asyncio.to_thread(encode)
    return encode()


def _sampling_params(body: CompletionRequest) -> SamplingParams:
    try:
        return SamplingParams(
            max_tokens=body.engine_max_tokens, n=body.n,
            temperature=1.0 if body.temperature is None else body.temperature,
            top_p=1.0 if body.top_p is None else body.top_p,
            top_k=-1 if body.top_k is None else body.top_k,
            min_p=body.min_p or 0.0, repetition_penalty=body.repetition_penalty or 1.0,
            presence_penalty=body.presence_penalty or 0.0, frequency_penalty=body.frequency_penalty or 0.0,
            logit_bias=body.logit_bias, seed=body.seed, stop=body.stop, stop_token_ids=body.stop_token_ids,
            ignore_eos=body.ignore_eos, min_tokens=0 if body.echo_only else body.min_tokens,
            logprobs=body.logprobs,
            prompt_logprobs=body.logprobs if body.echo and body.logprobs is not None else None,
        )
    except ValueError as e:  # a bound the request model does not repeat
        m = _PARAM_IN_MESSAGE.search(str(e))
        raise bad_request(str(e), m.group(1) if m else None) from None


def _logprob(v: float) -> float:
    return v if math.isfinite(v) else MIN_LOGPROB


@dataclass
class LegacyLogprobs:
    """The legacy logprobs object of one choice, grown token by token."""

    tokens: list[str] = field(default_factory=list)
    token_logprobs: list[float | None] = field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] = field(default_factory=list)
    text_offset: list[int] = field(default_factory=list)
    next_offset: int = 0

    def add(self, tokenizer, token_ids: list[int], logprobs: list[dict[int, float] | None]) -> None:
        """`logprobs[j]`: id -> logprob of the top ids and token_ids[j] itself, or None (a first prompt
        token)."""
        for token, lps in zip(token_ids, logprobs):
            text = tokenizer.decode([token])
            self.tokens.append(text)
            self.text_offset.append(self.next_offset)
            self.next_offset += len(text)
            if lps is None:
                self.token_logprobs.append(None)
                self.top_logprobs.append(None)
                continue
            self.token_logprobs.append(_logprob(lps[token]) if token in lps else None)
            top: dict[str, float] = {}
            for tid, v in sorted(lps.items(), key=lambda kv: -kv[1]):
                top.setdefault(tokenizer.decode([tid]), _logprob(v))
            self.top_logprobs.append(top)

    def as_dict(self) -> dict:
        return {"tokens": self.tokens, "token_logprobs": self.token_logprobs, "top_logprobs": self.top_logprobs,
                "text_offset": self.text_offset}


@dataclass
class _Choice:
    """Streaming state of one choice."""

    index: int
    prompt: Prompt
    sent_tokens: int = 0  # generated tokens already reported
    started: bool = False
    finished: bool = False
    offset: int = 0  # text_offset of the next token


class _Completion:
    """One request's engine runs and the OpenAI objects made from their outputs."""

    def __init__(self, ctx: ServerContext, body: CompletionRequest, prompts: list[Prompt], params: SamplingParams):
        self.ctx, self.body, self.prompts, self.params = ctx, body, prompts, params
        self.tokenizer = ctx.tokenizer
        self.id = f"cmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model = ctx.settings.served_model_name

    async def start(self) -> tuple[list[AsyncIterator[RequestOutput]], list[RequestOutput]]:
        engine = self.ctx.engine
        gens = [engine.generate(engine.new_request_id("cmpl"), p.ids, self.params, prompt=p.text)
                for p in self.prompts]
        try:
            return gens, await start_all(gens)
        except APIError as e:
            if e.code == "context_length_exceeded":
                e.param = "prompt"
            raise

    # ---- pieces of a choice ------------------------------------------------------------------------

    def _echo_text(self, prompt: Prompt) -> str:
        if not self.body.echo:
            return ""
        return prompt.text if prompt.text is not None else self.tokenizer.decode(prompt.ids)

    def _prompt_logprobs(self, lp: LegacyLogprobs, prompt: Prompt, out: RequestOutput) -> None:
        prompt_lps = out.prompt_logprobs or [None] * len(prompt.ids)
        lp.add(self.tokenizer, prompt.ids, prompt_lps)

    def _usage(self, lasts: list[RequestOutput]) -> dict:
        prompt_tokens = sum(len(p.ids) for p in self.prompts)
        completion_tokens = 0 if self.body.echo_only else sum(len(c.token_ids) for o in lasts for c in o.outputs)
        return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens}

    def _object(self, choices: list[dict], usage: dict | None, with_usage_key: bool = True) -> dict:
        obj = {"id": self.id, "object": "text_completion", "created": self.created, "model": self.model,
               "choices": choices}
        if with_usage_key:
            obj["usage"] = usage
        return obj

    # ---- whole ---------------------------------------------------------------------------------------

    async def complete(self) -> dict:
        gens, firsts = await self.start()
        lasts = list(firsts)
        async with aclosing(merge(gens, firsts)) as outputs:
            async for i, out in outputs:
                lasts[i] = out
        choices = []
        for i, (prompt, out) in enumerate(zip(self.prompts, lasts)):
            for comp in sorted(out.outputs, key=lambda c: c.index):
                choices.append(self._whole_choice(i * self.body.n + comp.index, prompt, out, comp))
        return self._object(choices, self._usage(lasts))

    def _whole_choice(self, index: int, prompt: Prompt, out: RequestOutput, comp: CompletionOutput) -> dict:
        body = self.body
        text = self._echo_text(prompt) + ("" if body.echo_only else comp.text)
        logprobs = None
        if body.logprobs is not None:
            lp = LegacyLogprobs()
            if body.echo:
                self._prompt_logprobs(lp, prompt, out)
            if not body.echo_only:
                lp.add(self.tokenizer, comp.token_ids, comp.logprobs or [None] * len(comp.token_ids))
            logprobs = lp.as_dict()
        reason = "length" if body.echo_only else comp.finish_reason
        return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": reason}

    # ---- streamed ------------------------------------------------------------------------------------

    async def stream(self, gens, firsts) -> AsyncIterator[str]:
        n, usage_key = self.body.n, self.body.include_usage
        states = {i * n + j: _Choice(i * n + j, p) for i, p in enumerate(self.prompts) for j in range(n)}
        lasts = list(firsts)
        try:
            async with aclosing(merge(gens, firsts)) as outputs:
                async for i, out in outputs:
                    lasts[i] = out
                    for comp in out.outputs:
                        choice = self._stream_choice(states[i * n + comp.index], out, comp)
                        if choice is not None:
                            yield sse_event(self._object([choice], None, usage_key))
            if usage_key:
                yield sse_event(self._object([], self._usage(lasts)))
            yield SSE_DONE
        except APIError as e:
            yield sse_event(error_body(e.message, e.type, e.param, e.code))
        except Exception:  # the stream has begun: report, never a traceback
            log.exception("completion stream %s failed", self.id)
            yield sse_event(error_body("Internal server error.", "server_error"))

    def _stream_choice(self, st: _Choice, out: RequestOutput, comp: CompletionOutput) -> dict | None:
        """The chunk choice for what `comp` added since the last one, or None if it added nothing."""
        if st.finished:
            return None
        body = self.body
        if body.echo_only and not comp.finished:
            return None
        lp = LegacyLogprobs(next_offset=st.offset) if body.logprobs is not None else None
        text = ""
        if not st.started:
            st.started = True
            text = self._echo_text(st.prompt)
            if lp is not None and body.echo:
                self._prompt_logprobs(lp, st.prompt, out)
        if not body.echo_only:
            text += comp.delta_text
            new_ids = comp.token_ids[st.sent_tokens:]
            if lp is not None and new_ids:
                lp.add(self.tokenizer, new_ids, (comp.logprobs or [])[st.sent_tokens:] or [None] * len(new_ids))
            st.sent_tokens = len(comp.token_ids)
        reason = ("length" if body.echo_only else comp.finish_reason) if comp.finished else None
        st.finished = reason is not None
        if not text and reason is None and (lp is None or not lp.tokens):
            return None
        if lp is not None:
            st.offset = lp.next_offset
        return {"index": st.index, "text": text, "logprobs": lp.as_dict() if lp is not None else None,
                "finish_reason": reason}


@router.post("/v1/completions")
async def create_completion(body: CompletionRequest, request: Request) -> Response:
    ctx = get_ctx(request)
    check_model(body.model, ctx.settings)
    check_request(body, ctx.tokenizer.vocab_size)
    params = _sampling_params(body)
    run = _Completion(ctx, body, await _prompts(body, ctx.tokenizer), params)
    if body.stream:
        gens, firsts = await run.start()
        return StreamingResponse(run.stream(gens, firsts), media_type=SSE_MEDIA_TYPE, headers=SSE_HEADERS)
    return JSONResponse(await run_unless_disconnected(request, run.complete()))
