"""`LLM`: the offline Python API, shaped like vLLM's (generate from text or token ids, chat in harmony)."""

from __future__ import annotations

from typing import Any, Sequence

from .config import (CacheConfig, ConfigError, EngineConfig, ModelConfig, ParallelConfig, SchedulerConfig,
                     check_rank_devices, default_max_num_batched_tokens, generation_eos_ids, launch_env,
                     resolve_collective_backend, resolve_device, resolve_dtype, resolve_executor_backend)
from .defaults import default_model_dir
from .engine.kv_capacity import log_capacity, plan_kv_blocks
from .engine.llm_engine import LLMEngine
from .engine.runner import ModelRunner
from .kernels import resolve_kernels
from .model.build import build_model
from .outputs import RequestOutput
from .sampling_params import SamplingParams


def _with_executor_backend(par: ParallelConfig, requested: str) -> ParallelConfig:
    """"auto" resolved (torchrun's environment or the world size); under torchrun, the rendezvous address."""
    from dataclasses import replace

    env = launch_env()
    backend = resolve_executor_backend(requested, par.world_size, env)
    if backend != "external_launcher":
        return replace(par, distributed_executor_backend=backend)
    if env.rank != 0:
        raise ConfigError(f"under torchrun only rank 0 makes an LLM; rank {env.rank} runs the worker loop "
                          "(oss_engine.parallel.torchrun.run_worker, which the CLI calls)")
    return replace(par, distributed_executor_backend=backend, master_addr=env.master_addr, master_port=env.master_port)


class LLM:
    def __init__(self, model: str | None = None, *, dtype: str = "auto", device: str = "auto",
                 skip_tokenizer_init: bool = False, seed: int = 0, max_model_len: int | None = None,
                 max_num_seqs: int = 256, max_num_batched_tokens: int | None = None, block_size: int = 16,
                 enable_prefix_caching: bool = True, gpu_memory_utilization: float = 0.9,
                 kv_cache_memory_bytes: int | None = None, num_kv_blocks: int | None = None,
                 debug_checks: bool = False, progress: bool = True, kernels: str = "auto",
                 enforce_eager: bool = False, load_format: str = "auto", tensor_parallel_size: int = 1,
                 pipeline_parallel_size: int = 1, data_parallel_size: int = 1, enable_expert_parallel: bool = False,
                 distributed_timeout_s: float = 300.0, distributed_executor_backend: str = "auto",
                 distributed_backend: str = "auto", async_scheduling: bool = True):
        if model is None:
            model = str(default_model_dir())
        mcfg = ModelConfig.from_dir(model)
        dev = resolve_device(device)
        mlen = max_model_len or mcfg.max_position_embeddings
        if not 1 < mlen <= mcfg.max_position_embeddings:
            raise ConfigError(f"max_model_len must be in [2, {mcfg.max_position_embeddings}], got {mlen}")
        cache = CacheConfig(block_size, enable_prefix_caching, gpu_memory_utilization, kv_cache_memory_bytes,
                            num_kv_blocks)
        tokens = default_max_num_batched_tokens(dev) if max_num_batched_tokens is None else max_num_batched_tokens
        sched = SchedulerConfig(mlen, max_num_seqs, tokens, debug_checks, async_scheduling)
        cache.validate()
        sched.validate()
        if load_format not in ("auto", "dummy"):
            raise ConfigError(f"load_format must be 'auto' or 'dummy' (random weights), got {load_format!r}")
        par = ParallelConfig(tensor_parallel_size, pipeline_parallel_size, data_parallel_size, enable_expert_parallel,
                             backend=resolve_collective_backend(distributed_backend, dev),
                             timeout_s=distributed_timeout_s)
        par = _with_executor_backend(par, distributed_executor_backend)
        par.validate(mcfg)
        if dev.startswith("cuda"):
            import torch

            check_rank_devices(par, dev, torch.cuda.device_count())
        self.config = EngineConfig(model_dir=str(model), model=mcfg, device=dev, dtype=resolve_dtype(dtype, dev),
                                   cache=cache, scheduler=sched, kernels=resolve_kernels(kernels, dev),
                                   enforce_eager=enforce_eager, load_format=load_format,
                                   skip_tokenizer_init=skip_tokenizer_init, seed=seed, parallel=par)
        self.tokenizer = self.harmony = None
        if not skip_tokenizer_init:
            from .chat.tokenizer import load_tokenizer

            self.tokenizer = load_tokenizer(model)
            if mcfg.vocab_size < self.tokenizer.vocab_size:
                raise ConfigError(f"vocab_size {mcfg.vocab_size} is smaller than the o200k_harmony vocabulary "
                                  f"({self.tokenizer.vocab_size}); pass skip_tokenizer_init=True for token-id prompts")
        self.executor = None
        eos = generation_eos_ids(model, mcfg)
        if par.distributed_executor_backend == "uni":
            self.model = build_model(self.config, progress=progress)
            blocks = plan_kv_blocks(self.config, self.model)
            log_capacity(self.config, blocks)
            self.engine = LLMEngine(self.config, ModelRunner(self.config, self.model, blocks), blocks, self.tokenizer,
                                    eos)
        else:
            self.engine = self._start_parallel(eos, progress)
        self._next_id = 0

    def _start_parallel(self, eos: tuple[int, ...], progress: bool):
        """Rank 0 of tp x pp x dp processes: start the workers (or meet those torchrun started) through
        ParallelExecutor, size the KV cache, and put one LLMEngine per data-parallel replica behind a DPEngine."""
        import weakref

        from .engine.dp_engine import DPEngine
        from .parallel.executor import ParallelExecutor, ReplicaRunner

        self.executor = ex = ParallelExecutor(self.config, progress=progress)
        self._finalizer = weakref.finalize(self, ex.close)  # workers never outlive this object or the program
        self.model = ex.model
        blocks = plan_kv_blocks(self.config, self.model)
        log_capacity(self.config, blocks)
        ex.start(blocks)
        engines = [LLMEngine(self.config, ReplicaRunner(ex, r), blocks, self.tokenizer, eos)
                   for r in range(self.config.parallel.data_parallel_size)]
        return DPEngine(engines, ex.execute)

    def weight_memory(self) -> list:
        """Per rank (rank order): the LoadReport of its weights (bytes read from the files, bytes held)."""
        return list(self.executor.load_reports) if self.executor else [self.model.load_report]

    def close(self) -> None:
        """Stop the parallel workers (no-op for one process). The LLM cannot generate afterwards."""
        if self.executor is not None:
            self._finalizer()

    def __enter__(self) -> LLM:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def generate(self, prompts: str | Sequence[str] | None = None,
                 sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
                 *, prompt_token_ids: Sequence[Sequence[int]] | None = None) -> list[RequestOutput]:
        """Complete each prompt (text, or token ids); outputs come back in the prompts' order."""
        params = sampling_params or SamplingParams()
        if (prompts is None) == (prompt_token_ids is None):
            raise ValueError("pass exactly one of prompts or prompt_token_ids")
        if prompts is not None:
            if self.tokenizer is None:
                raise ValueError("text prompts need a tokenizer; this LLM was made with skip_tokenizer_init=True")
            texts = [prompts] if isinstance(prompts, str) else list(prompts)
            items = [(t, self.tokenizer.encode(t)) for t in texts]
        else:
            items = [(None, list(ids)) for ids in prompt_token_ids]  # checked by the engine on admission
        return self._run(items, params)

    def chat(self, messages: list[dict[str, Any]] | list[list[dict[str, Any]]],
             sampling_params: SamplingParams | None = None, *, reasoning_effort: str = "medium",
             tools: list[dict[str, Any]] | None = None) -> list[RequestOutput]:
        """Render each conversation in harmony, generate until <|return|> or <|call|>, and split the answer:
        `.text` holds the final channel, `.reasoning` the analysis channel, `.tool_calls` any function calls."""
        if self.tokenizer is None:
            raise ValueError("chat needs a tokenizer; this LLM was made with skip_tokenizer_init=True")
        from dataclasses import replace

        from .chat.harmony import HarmonyRenderer

        if self.harmony is None:
            self.harmony = HarmonyRenderer()
        convs = [messages] if messages and isinstance(messages[0], dict) else list(messages)
        params = sampling_params or SamplingParams()
        params = replace(params, extra_stop_token_ids=tuple(self.harmony.stop_token_ids))
        items = [(None, self.harmony.render_chat(c, reasoning_effort=reasoning_effort, tools=tools)) for c in convs]
        outs = self._run(items, params)
        for out in outs:
            comp = out.outputs[0]
            parsed = self.harmony.parse_completion(comp.token_ids)
            comp.text, comp.reasoning, comp.tool_calls = parsed.content, parsed.reasoning, list(parsed.tool_calls)
        return outs

    def _run(self, items: list[tuple[str | None, list[int]]],
             params: SamplingParams | Sequence[SamplingParams]) -> list[RequestOutput]:
        per = [params] * len(items) if isinstance(params, SamplingParams) else list(params)
        if len(per) != len(items):
            raise ValueError(f"got {len(per)} sampling params for {len(items)} prompts")
        ids = []
        try:
            for (text, toks), p in zip(items, per):
                rid = str(self._next_id)
                self._next_id += 1
                self.engine.add_request(rid, toks, p, prompt=text)
                ids.append(rid)
            done: dict[str, RequestOutput] = {}
            for out in self.engine.iterate():
                if out.finished:
                    done[out.request_id] = out
        finally:  # an error (or Ctrl-C) leaves no request behind
            for rid in ids:
                self.engine.abort(rid)
        return [done[i] for i in ids]
