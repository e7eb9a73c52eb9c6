"""Request: one sequence's state as the scheduler and engine see it.

The one invariant: `num_computed_tokens <= num_tokens`; every step grants a running request some of the
tokens in between, and when computed catches up the step's last logits row yields its next token
(`num_tokens` grows by one). Prefill chunks, decodes, prefix hits and recomputation after preemption are
all this one path.

Async scheduling (llm_engine.py) adds one state: `num_pending` = 1 while the request's next token has been
sampled on the device but not yet read by the host. That token sits at position `num_tokens` (one past
`token_ids`), and the scheduler may already grant it (a decode whose input id the runner takes from the
device); once read it is appended to `token_ids` and `num_pending` returns to 0.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

import torch

from ..outputs import Logprobs
from ..sampling_params import SamplingParams


class RequestStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(eq=False)
class Request:
    request_id: str  # unique in the engine (a child of an n > 1 request: "<parent>#<index>")
    parent_id: str
    index: int  # which of the parent's n samples
    prompt_token_ids: list[int]
    params: SamplingParams
    generator: torch.Generator | None  # the request's own, when seeded
    stop_ids: frozenset[int]  # eos (unless ignore_eos) + stop_token_ids + extra stops
    arrival: float
    token_ids: list[int] = field(default_factory=list)  # prompt + generated
    num_computed_tokens: int = 0
    status: RequestStatus = RequestStatus.WAITING
    num_preemptions: int = 0
    finish_reason: str | None = None
    logprobs: list[Logprobs] = field(default_factory=list)
    prompt_logprobs: list[Logprobs | None] = field(default_factory=list)
    first_token_time: float | None = None
    constraint: object | None = None  # has allowed_ids(output_token_ids) -> ids or None (e.g. tool_choice)
    num_pending: int = 0  # 1: a sampled token the host has not read yet, schedulable at position num_tokens

    def __post_init__(self) -> None:
        if not self.token_ids:
            self.token_ids = list(self.prompt_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens:]

    @property
    def num_output_tokens(self) -> int:
        return self.num_tokens - self.num_prompt_tokens

    @property
    def wants_prompt_logprobs(self) -> bool:
        """Prompt logprobs are collected on the first pass over the prompt (never from cached blocks)."""
        return self.params.prompt_logprobs is not None and len(self.prompt_logprobs) < self.num_prompt_tokens

    @property
    def finished(self) -> bool:
        return self.status is RequestStatus.FINISHED
