"""The /v1/completions request (OpenAI's legacy completions, with vLLM's sampling extras), validated.

Every field is bounded here, before any tokenization or engine work; a violation is a pydantic error
on that field (the app turns it into a 400 whose `param` names it). Types are strict (no "16" for 16,
no 1 for true); NaN and infinities are refused. Unknown fields are ignored, as OpenAI does.
What needs the vocabulary (token ids < vocab size) and the cross-field rules (max_tokens 0 only with
echo, best_of == n) are checked by the route (`check_request`), which names the field in its 400.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..sampling_params import (
    LOGIT_BIAS_LIMIT,
    MAX_LOGIT_BIAS_ENTRIES,
    MAX_N,
    MAX_STOP_STRING_CHARS,
    MAX_STOP_STRINGS,
    MAX_STOP_TOKEN_IDS,
    PENALTY_LIMIT,
)
from .errors import bad_request

MAX_PROMPTS = 16  # prompts in one request
MAX_PROMPT_CHARS = 1_000_000  # all text prompts together, checked before tokenization
MAX_COMPLETION_LOGPROBS = 5  # OpenAI's legacy limit
MAX_TOKENS_LIMIT = 1 << 31  # a sanity bound; the engine checks prompt + max_tokens <= max_model_len
DEFAULT_MAX_TOKENS = 16  # OpenAI's default for this endpoint
MAX_NAME_CHARS = 512  # model, user


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


class StreamOptions(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")
    include_usage: bool = False


class CompletionRequest(BaseModel):
    model_config = ConfigDict(strict=True, allow_inf_nan=False, extra="ignore")

    model: str = Field(max_length=MAX_NAME_CHARS)
    # After validation: a non-empty list of strings or a non-empty list of non-empty token-id lists.
    prompt: Any
    max_tokens: int | None = Field(DEFAULT_MAX_TOKENS, ge=0, le=MAX_TOKENS_LIMIT)  # 0 only with echo
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    n: int = Field(1, ge=1, le=MAX_N)
    best_of: int | None = Field(None, ge=1, le=MAX_N)  # accepted only when equal to n (no reranking)
    stream: bool = False
    stream_options: StreamOptions | None = None
    echo: bool = False
    logprobs: int | None = Field(None, ge=0, le=MAX_COMPLETION_LOGPROBS)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=-(2**63), lt=2**64)
    presence_penalty: float | None = Field(None, ge=-PENALTY_LIMIT, le=PENALTY_LIMIT)
    frequency_penalty: float | None = Field(None, ge=-PENALTY_LIMIT, le=PENALTY_LIMIT)
    logit_bias: dict[str, float] | None = None
    user: str | None = Field(None, max_length=MAX_NAME_CHARS)
    suffix: str | None = None  # not supported: must be absent or empty
    # vLLM extras
    top_k: int | None = Field(None, ge=-1, le=MAX_TOKENS_LIMIT)
    min_p: float | None = Field(None, ge=0, le=1)
    repetition_penalty: float | None = Field(None, gt=0, le=10)
    ignore_eos: bool = False
    min_tokens: int = Field(0, ge=0, le=MAX_TOKENS_LIMIT)
    stop_token_ids: list[int] | None = Field(None, max_length=MAX_STOP_TOKEN_IDS)

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, v: Any) -> list[str] | list[list[int]]:
        shape = "prompt must be a string, a list of strings, a list of token ids or a list of token-id lists"
        if isinstance(v, str) or (isinstance(v, list) and v and all(_is_int(t) for t in v)):
            v = [v]
        if not isinstance(v, list) or not v:
            raise ValueError(shape)
        if len(v) > MAX_PROMPTS:
            raise ValueError(f"at most {MAX_PROMPTS} prompts per request, got {len(v)}")
        if all(isinstance(p, str) for p in v):
            if sum(len(p) for p in v) > MAX_PROMPT_CHARS:
                raise ValueError(f"the prompts exceed {MAX_PROMPT_CHARS} characters")
            if any(not p for p in v):
                raise ValueError("a prompt must not be empty")
            return v
        if not all(isinstance(p, list) and p and all(_is_int(t) and t >= 0 for t in p) for p in v):
            raise ValueError(shape + " (token ids are non-negative integers; lists are not empty)")
        return v

    @field_validator("stop")
    @classmethod
    def _stop(cls, v: str | list[str] | None) -> list[str] | None:
        stops = [v] if isinstance(v, str) else v
        if stops is None:
            return None
        if len(stops) > MAX_STOP_STRINGS:
            raise ValueError(f"at most {MAX_STOP_STRINGS} stop strings")
        if any(len(s) > MAX_STOP_STRING_CHARS for s in stops):
            raise ValueError(f"stop strings must be at most {MAX_STOP_STRING_CHARS} characters")
        return [s for s in stops if s] or None  # an empty stop string stops nothing

    @field_validator("logit_bias")
    @classmethod
    def _logit_bias(cls, v: dict[str, float] | None) -> dict[int, float] | None:
        if v is None:
            return None
        if len(v) > MAX_LOGIT_BIAS_ENTRIES:
            raise ValueError(f"at most {MAX_LOGIT_BIAS_ENTRIES} entries")
        out = {}
        for key, bias in v.items():
            if not key.isdigit() or len(key) > 9:
                raise ValueError(f"keys must be token ids, got {key[:20]!r}")
            if not -LOGIT_BIAS_LIMIT <= bias <= LOGIT_BIAS_LIMIT:
                raise ValueError(f"biases must be in [{-LOGIT_BIAS_LIMIT}, {LOGIT_BIAS_LIMIT}]")
            out[int(key)] = float(bias)
        return out

    @field_validator("stop_token_ids")
    @classmethod
    def _stop_token_ids(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and any(t < 0 for t in v):
            raise ValueError("token ids must be non-negative")
        return v

    @field_validator("suffix")
    @classmethod
    def _suffix(cls, v: str | None) -> str | None:
        if v:
            raise ValueError("suffix is not supported")
        return None

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    @property
    def echo_only(self) -> bool:
        """max_tokens == 0 with echo: return the prompt (and its logprobs), generate nothing."""
        return self.echo and self.max_tokens == 0

    @property
    def engine_max_tokens(self) -> int:
        """What the engine generates: 1 for echo_only (its output is dropped), else max_tokens or 16."""
        if self.max_tokens is None:
            return DEFAULT_MAX_TOKENS
        return max(self.max_tokens, 1)


def check_request(body: CompletionRequest, vocab_size: int) -> None:
    """The checks pydantic cannot place on one field; raises APIError 400 naming the field."""
    if body.max_tokens == 0 and not body.echo:
        raise bad_request("max_tokens may be 0 only with echo (prompt scoring).", "max_tokens")
    if body.best_of is not None and body.best_of != body.n:
        raise bad_request("best_of is supported only equal to n.", "best_of")
    if not body.echo_only and body.min_tokens > body.engine_max_tokens:
        raise bad_request("min_tokens must not exceed max_tokens.", "min_tokens")
    if isinstance(body.prompt[0], list) and any(t >= vocab_size for p in body.prompt for t in p):
        raise bad_request(f"prompt token ids must be in [0, {vocab_size}).", "prompt")
    if any(t >= vocab_size for t in (body.logit_bias or {})):
        raise bad_request(f"logit_bias token ids must be in [0, {vocab_size}).", "logit_bias")
    if any(t >= vocab_size for t in (body.stop_token_ids or ())):
        raise bad_request(f"stop_token_ids must be in [0, {vocab_size}).", "stop_token_ids")
