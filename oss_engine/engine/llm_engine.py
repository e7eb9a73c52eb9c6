"""LLMEngine: requests in, incremental outputs out, one model step at a time.

This first engine admits requests first come, first served while the KV pool can hold each one's whole
budget (prompt + max_tokens), and never preempts: a step runs every admitted request once (the prompt in
one piece, then one token a step). Contract kept for the scheduler that replaces it: `add_request`, `step`,
`abort`, `has_unfinished_requests`.
"""

from __future__ import annotations

import logging
from collections import deque
from dataclasses import dataclass, field

import torch

from ..outputs import CompletionOutput, Logprobs, RequestOutput
from ..sampling_params import SamplingParams
from .runner import ModelRunner, ScheduledSeq
from .sampler import Sampler, top_logprobs

log = logging.getLogger(__name__)


@dataclass
class Request:
    request_id: str
    prompt: str | None
    prompt_ids: list[int]
    params: SamplingParams
    generator: torch.Generator | None
    token_ids: list[int] = field(default_factory=list)  # prompt + generated
    num_computed: int = 0
    block_table: list[int] = field(default_factory=list)
    logprobs: list[Logprobs] = field(default_factory=list)
    prompt_logprobs: list[Logprobs | None] | None = None
    text: str = ""
    finish_reason: str | None = None

    @property
    def output_ids(self) -> list[int]:
        return self.token_ids[len(self.prompt_ids):]


class LLMEngine:
    def __init__(self, runner: ModelRunner, num_blocks: int, max_model_len: int, max_num_seqs: int,
                 eos_token_ids: tuple[int, ...], decode, seed: int = 0):
        self.runner = runner
        self.block_size = runner.block_size
        self.free_blocks = deque(range(num_blocks))
        self.max_model_len, self.max_num_seqs = max_model_len, max_num_seqs
        self.eos_token_ids = set(eos_token_ids)
        self.decode = decode  # token ids -> text, or None when there is no tokenizer
        self.sampler = Sampler(seed, runner.device)
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []

    def add_request(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams,
                    prompt: str | None = None) -> None:
        n = len(prompt_token_ids)
        if n == 0:
            raise ValueError("the prompt is empty")
        if n >= self.max_model_len:
            raise ValueError(f"prompt of {n} tokens does not fit max_model_len {self.max_model_len} "
                             f"(at least one token must be generated)")
        budget = min(n + params.max_tokens, self.max_model_len)
        if self._blocks_for(budget) > len(self.free_blocks) + sum(len(r.block_table) for r in self.running):
            raise ValueError(f"request needs {budget} tokens of KV cache, more than the whole pool holds")
        gen = None
        if params.seed is not None:
            gen = torch.Generator(device=self.runner.device).manual_seed(params.seed)
        self.waiting.append(Request(request_id, prompt, list(prompt_token_ids), params, gen,
                                    token_ids=list(prompt_token_ids)))

    def has_unfinished_requests(self) -> bool:
        return bool(self.waiting or self.running)

    def abort(self, request_id: str) -> None:
        for r in list(self.running):
            if r.request_id == request_id:
                self._free(r)
                self.running.remove(r)
        self.waiting = deque(r for r in self.waiting if r.request_id != request_id)

    def step(self) -> list[RequestOutput]:
        self._admit()
        if not self.running:
            return []
        seqs = [ScheduledSeq(r.token_ids, r.num_computed, len(r.token_ids) - r.num_computed, r.block_table,
                             all_logits=r.num_computed == 0 and r.params.prompt_logprobs is not None)
                for r in self.running]
        step = self.runner.execute(seqs)
        last_rows = [stop - 1 for (_, stop) in step.rows]
        if any(r.num_computed == 0 and r.params.prompt_logprobs is not None for r in self.running):
            for r, (start, stop) in zip(self.running, step.rows):
                if r.num_computed == 0 and r.params.prompt_logprobs is not None:
                    r.prompt_logprobs = self._prompt_logprobs(r, step.logits[start:stop])
        sample = self.sampler.sample(step.logits[last_rows], [r.params for r in self.running],
                                     [r.generator for r in self.running])
        outputs = []
        for r, tok, lp in zip(self.running, sample.token_ids, sample.logprobs):
            r.num_computed = len(r.token_ids)
            r.token_ids.append(tok)
            if lp is not None:
                r.logprobs.append(lp)
            self._check_stop(r, tok)
            outputs.append(self._output(r))
        for r in [r for r in self.running if r.finish_reason is not None]:
            self._free(r)
            self.running.remove(r)
        return outputs

    def _prompt_logprobs(self, r: Request, logits: torch.Tensor) -> list[Logprobs | None]:
        # logits [P, V]: row i predicts prompt token i + 1
        lps = torch.log_softmax(logits, dim=-1)
        k = r.params.prompt_logprobs
        return [None] + [top_logprobs(lps[i], k, r.prompt_ids[i + 1]) for i in range(len(r.prompt_ids) - 1)]

    def _check_stop(self, r: Request, tok: int) -> None:
        p = r.params
        n_out = len(r.output_ids)
        if self.decode is not None:
            r.text = self.decode(r.output_ids)
        stops = set(p.stop_token_ids or ()) | set(p.extra_stop_token_ids)
        if not p.ignore_eos:
            stops |= self.eos_token_ids
        if tok in stops:
            r.finish_reason = "stop"
            if self.decode is not None:
                r.text = self.decode(r.output_ids[:-1])  # the stop token is not part of the text
        elif p.stop and any(s in r.text for s in p.stop):
            cut = min(r.text.find(s) for s in p.stop if s in r.text)
            r.text, r.finish_reason = r.text[:cut], "stop"
        elif n_out >= p.max_tokens or len(r.token_ids) >= self.max_model_len:
            r.finish_reason = "length"

    def _output(self, r: Request) -> RequestOutput:
        comp = CompletionOutput(0, r.text, list(r.output_ids), r.finish_reason,
                                list(r.logprobs) if r.params.logprobs is not None else None)
        return RequestOutput(r.request_id, r.prompt, r.prompt_ids, [comp], r.prompt_logprobs,
                             finished=r.finish_reason is not None)

    def _blocks_for(self, tokens: int) -> int:
        return (tokens + self.block_size - 1) // self.block_size

    def _admit(self) -> None:
        while self.waiting and len(self.running) < self.max_num_seqs:
            r = self.waiting[0]
            need = self._blocks_for(min(len(r.prompt_ids) + r.params.max_tokens, self.max_model_len))
            if need > len(self.free_blocks):
                break
            self.waiting.popleft()
            r.block_table = [self.free_blocks.popleft() for _ in range(need)]
            self.running.append(r)

    def _free(self, r: Request) -> None:
        self.free_blocks.extend(r.block_table)
        r.block_table = []
