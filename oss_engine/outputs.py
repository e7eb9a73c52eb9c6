"""What the engine, `LLM.generate` and `LLM.chat` return (vLLM's shapes).

Each engine step returns, for every request that advanced, a RequestOutput holding the cumulative state
(text, token ids, logprobs) and what this step added (`delta_*`), which the server streams.
"""

from __future__ import annotations

from dataclasses import dataclass, field

Logprobs = dict[int, float]  # token id -> log-probability


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    # "stop" | "length" | None while running; "abort" (cancelled) or "error" (this request's own processing
    # failed: its detokenizer or constraint raised; the engine and the other requests went on)
    finish_reason: str | None
    logprobs: list[Logprobs] | None = None
    delta_text: str = ""
    delta_token_ids: list[int] = field(default_factory=list)
    reasoning: str | None = None  # chat: the analysis channel, apart from the final text
    tool_calls: list = field(default_factory=list)  # chat: ParsedToolCall(name, arguments)

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    prompt_logprobs: list[Logprobs | None] | None = None
    finished: bool = False
    num_cached_tokens: int = 0  # prompt tokens served from the prefix cache
