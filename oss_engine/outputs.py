"""What `LLM.generate` and `LLM.chat` return (vLLM's shapes)."""

from __future__ import annotations

from dataclasses import dataclass, field

Logprobs = dict[int, float]  # token id -> log-probability


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    finish_reason: str | None  # "stop" | "length" | None while running
    logprobs: list[Logprobs] | None = None
    reasoning: str | None = None  # chat: the analysis channel, apart from the final text
    tool_calls: list = field(default_factory=list)  # chat: ParsedToolCall(name, arguments)


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    prompt_logprobs: list[Logprobs | None] | None = None
    finished: bool = False
