"""SamplingParams, as in vLLM: what to generate for one prompt and when to stop."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

MAX_LOGPROBS = 20


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 16
    temperature: float = 1.0  # 0 means greedy argmax
    top_p: float = 1.0
    top_k: int = -1  # -1: all tokens
    seed: int | None = None  # a seed makes this request's sampling reproducible whatever else is batched
    stop: list[str] | None = None  # cut from the text; the finish reason is "stop"
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    logprobs: int | None = None  # per generated token: the top `logprobs` ids plus the sampled one
    prompt_logprobs: int | None = None  # per prompt position (the first is None)
    extra_stop_token_ids: tuple[int, ...] = field(default=(), repr=False)  # set by chat (harmony stops)

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> ValueError:
            return ValueError(f"SamplingParams.{name} {why}, got {getattr(self, name)!r}")

        if not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            raise bad("max_tokens", "must be an integer >= 1")
        if not (isinstance(self.temperature, (int, float)) and math.isfinite(self.temperature) and self.temperature >= 0):
            raise bad("temperature", "must be a finite number >= 0")
        if not (isinstance(self.top_p, (int, float)) and 0 < self.top_p <= 1):
            raise bad("top_p", "must be in (0, 1]")
        if not isinstance(self.top_k, int) or (self.top_k != -1 and self.top_k < 1):
            raise bad("top_k", "must be -1 (disabled) or >= 1")
        for name in ("logprobs", "prompt_logprobs"):
            v = getattr(self, name)
            if v is not None and (not isinstance(v, int) or not 0 <= v <= MAX_LOGPROBS):
                raise bad(name, f"must be an integer in [0, {MAX_LOGPROBS}]")
        if self.stop is not None and (not isinstance(self.stop, list) or not all(isinstance(s, str) and s for s in self.stop)):
            raise bad("stop", "must be a list of non-empty strings")
        if self.stop_token_ids is not None and not all(isinstance(t, int) and t >= 0 for t in self.stop_token_ids):
            raise bad("stop_token_ids", "must be a list of non-negative token ids")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0
