"""SamplingParams, as in vLLM: what to generate for one prompt and when to stop.

Every field is validated at construction; a violation raises ValueError naming the field. Names and
semantics follow vLLM (penalties as in its sampler: repetition over prompt + output, presence and
frequency over the output only). What needs the model's vocabulary (logit_bias ids < vocab size) is
checked by the engine.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

MAX_N = 16  # completions per prompt
MAX_LOGPROBS = 20  # top logprobs per position
MAX_STOP_STRINGS = 16
MAX_STOP_STRING_CHARS = 1024
MAX_STOP_TOKEN_IDS = 64
MAX_LOGIT_BIAS_ENTRIES = 300
LOGIT_BIAS_LIMIT = 100.0  # each bias lies in [-100, 100]
PENALTY_LIMIT = 2.0  # presence and frequency penalties lie in [-2, 2]
GREEDY_TEMPERATURE = 1e-5  # below this temperature sampling is greedy argmax (vLLM's _SAMPLING_EPS)


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 16
    temperature: float = 1.0  # < GREEDY_TEMPERATURE (e.g. 0) means greedy argmax
    top_p: float = 1.0  # keep the smallest set of most likely tokens whose mass reaches top_p
    top_k: int = -1  # -1 or 0: all tokens
    seed: int | None = None  # a seed makes this request's sampling reproducible whatever else is batched
    stop: list[str] | None = None  # cut from the text; the finish reason is "stop"
    stop_token_ids: list[int] | None = None
    ignore_eos: bool = False
    logprobs: int | None = None  # per generated token: the top `logprobs` ids plus the sampled one
    prompt_logprobs: int | None = None  # per prompt position (the first is None)
    n: int = 1  # completions for this prompt
    min_p: float = 0.0  # drop tokens whose probability is below min_p * the largest probability
    repetition_penalty: float = 1.0  # > 1 discourages every token of prompt or output (divides > 0 logits)
    presence_penalty: float = 0.0  # subtracted once from each token already in the output
    frequency_penalty: float = 0.0  # subtracted count times from each token already in the output
    logit_bias: dict[int, float] | None = None  # token id -> added to its logit before sampling
    min_tokens: int = 0  # stop tokens and EOS are masked until this many tokens were generated
    extra_stop_token_ids: tuple[int, ...] = field(default=(), repr=False)  # set by chat (harmony stops)

    def __post_init__(self) -> None:
        def bad(name: str, why: str) -> ValueError:
            return ValueError(f"SamplingParams.{name} {why}, got {getattr(self, name)!r}")

        if not _is_int(self.n) or not 1 <= self.n <= MAX_N:
            raise bad("n", f"must be an integer in [1, {MAX_N}]")
        if not _is_int(self.max_tokens) or self.max_tokens < 1:
            raise bad("max_tokens", "must be an integer >= 1")
        if not _is_int(self.min_tokens) or not 0 <= self.min_tokens <= self.max_tokens:
            raise bad("min_tokens", f"must be an integer in [0, max_tokens={self.max_tokens}]")
        if not (_is_number(self.temperature) and self.temperature >= 0):
            raise bad("temperature", "must be a finite number >= 0")
        if not (_is_number(self.top_p) and 0 < self.top_p <= 1):
            raise bad("top_p", "must be in (0, 1]")
        if not _is_int(self.top_k) or self.top_k < -1:
            raise bad("top_k", "must be -1 or 0 (disabled) or >= 1")
        if not (_is_number(self.min_p) and 0 <= self.min_p <= 1):
            raise bad("min_p", "must be in [0, 1]")
        if not (_is_number(self.repetition_penalty) and self.repetition_penalty > 0):
            raise bad("repetition_penalty", "must be a finite number > 0")
        for name in ("presence_penalty", "frequency_penalty"):
            v = getattr(self, name)
            if not (_is_number(v) and -PENALTY_LIMIT <= v <= PENALTY_LIMIT):
                raise bad(name, f"must be in [{-PENALTY_LIMIT}, {PENALTY_LIMIT}]")
        if self.seed is not None and not (_is_int(self.seed) and -(2**63) <= self.seed < 2**64):
            raise bad("seed", "must be None or a 64-bit integer")
        for name in ("logprobs", "prompt_logprobs"):
            v = getattr(self, name)
            if v is not None and (not _is_int(v) or not 0 <= v <= MAX_LOGPROBS):
                raise bad(name, f"must be an integer in [0, {MAX_LOGPROBS}]")
        self._check_stops(bad)
        self._check_logit_bias(bad)

    def _check_stops(self, bad) -> None:
        if self.stop is not None:
            if not isinstance(self.stop, list) or not all(isinstance(s, str) and s for s in self.stop):
                raise bad("stop", "must be a list of non-empty strings")
            if len(self.stop) > MAX_STOP_STRINGS:
                raise bad("stop", f"must hold at most {MAX_STOP_STRINGS} strings")
            if any(len(s) > MAX_STOP_STRING_CHARS for s in self.stop):
                raise bad("stop", f"strings must be at most {MAX_STOP_STRING_CHARS} characters")
        for name in ("stop_token_ids", "extra_stop_token_ids"):
            ids = getattr(self, name)
            if ids is None:
                continue
            if not isinstance(ids, (list, tuple)) or not all(_is_int(t) and t >= 0 for t in ids):
                raise bad(name, "must be a list of non-negative token ids")
        if self.stop_token_ids is not None and len(self.stop_token_ids) > MAX_STOP_TOKEN_IDS:
            raise bad("stop_token_ids", f"must hold at most {MAX_STOP_TOKEN_IDS} ids")

    def _check_logit_bias(self, bad) -> None:
        if self.logit_bias is None:
            return
        if not isinstance(self.logit_bias, dict):
            raise bad("logit_bias", "must be a dict of token id -> bias")
        if len(self.logit_bias) > MAX_LOGIT_BIAS_ENTRIES:
            raise bad("logit_bias", f"must hold at most {MAX_LOGIT_BIAS_ENTRIES} entries")
        for token, bias in self.logit_bias.items():
            if not (_is_int(token) and token >= 0):
                raise bad("logit_bias", f"keys must be non-negative token ids ({token!r} is not)")
            if not (_is_number(bias) and -LOGIT_BIAS_LIMIT <= bias <= LOGIT_BIAS_LIMIT):
                raise bad("logit_bias", f"values must be in [{-LOGIT_BIAS_LIMIT}, {LOGIT_BIAS_LIMIT}] "
                                        f"(token {token} has {bias!r})")

    @property
    def greedy(self) -> bool:
        return self.temperature < GREEDY_TEMPERATURE

    @property
    def uses_output_history(self) -> bool:
        """Whether sampling reads the tokens generated so far (penalties, min_tokens)."""
        return (self.repetition_penalty != 1.0 or bool(self.presence_penalty) or bool(self.frequency_penalty)
                or self.min_tokens > 0)

    @property
    def has_penalties(self) -> bool:
        return self.repetition_penalty != 1.0 or self.presence_penalty != 0.0 or self.frequency_penalty != 0.0
