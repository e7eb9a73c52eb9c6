"""How many KV blocks each cache group gets.

Budget (the runner's pad block per group included): `num_kv_blocks` (per group, an explicit override) else
`kv_cache_memory_bytes`, else on CUDA `gpu_memory_utilization` x device memory minus the peak of a profiling
pass (the weights plus the activations of a `max_num_batched_tokens` step, `profile_lengths`), else on CPU 1 GiB.

The main group is capped at MAX_BLOCKS (2^21, 33.5M tokens at block size 16: beyond any real model's need).

Split: a sliding-window layer never needs more than the blocks covering window - 1 earlier positions plus
the step's new tokens, so the sliding group gets what `max_num_seqs` requests need at most (plus one full
token budget of prefill), and the full-attention group gets the rest.
"""

from __future__ import annotations

import logging
import math

import torch

from ..config import LAYER_FULL, LAYER_SLIDING, ConfigError, EngineConfig
from .runner import ModelRunner, ScheduledSeq, kv_bytes_per_block

log = logging.getLogger(__name__)

CPU_DEFAULT_KV_BYTES = 1 << 30
MAX_BLOCKS = 1 << 21


def sliding_blocks_needed(cfg: EngineConfig) -> int:
    S, W, sc = cfg.cache.block_size, cfg.model.sliding_window, cfg.scheduler
    per_seq = math.ceil((W - 1) / S) + 2  # window behind the first query, plus the block being written
    return sc.max_num_seqs * per_seq + math.ceil(sc.max_num_batched_tokens / S)


def profile_lengths(cfg: EngineConfig) -> list[int]:
    """The prompt lengths of the profiling step: the largest step the scheduler can form, `max_num_batched_tokens`
    tokens (at most `max_num_seqs` sequences of at most `max_model_len`), in as few sequences as those allow.
    Worked example: 16,384 tokens a step, max_model_len 8,196 -> [8196, 8188]."""
    sc, L = cfg.scheduler, cfg.max_model_len
    total = min(sc.max_num_batched_tokens, sc.max_num_seqs * L)
    return [L] * (total // L) + ([total % L] if total % L else [])


def profile_step(cfg: EngineConfig, model) -> tuple[ModelRunner, list[ScheduledSeq]]:
    """The largest step (`profile_lengths`, random prompt ids) on a throwaway runner and cache, ready to run."""
    S = cfg.cache.block_size
    lens = profile_lengths(cfg)
    blocks = [math.ceil(n / S) for n in lens]
    groups = set(cfg.model.layer_types)
    runner = ModelRunner(cfg, model, {g: sum(blocks) for g in groups}, capture_graphs=False)
    seqs, first = [], 0
    for n, b in zip(lens, blocks):
        ids = torch.randint(0, cfg.model.vocab_size, (n,)).tolist()  # never profile on zeros
        seqs.append(ScheduledSeq(ids, 0, n, {g: list(range(first, first + b)) for g in groups}))
        first += b
    return runner, seqs


def profile_peak_bytes(cfg: EngineConfig, model) -> int:
    """Peak CUDA memory of the largest step (`profile_step`) with a throwaway cache: the activations of a step
    grow with its tokens, whatever the number of sequences that bring them."""
    runner, seqs = profile_step(cfg, model)
    torch.cuda.reset_peak_memory_stats(cfg.device)
    runner.execute(seqs)
    torch.cuda.synchronize(cfg.device)
    peak = torch.cuda.max_memory_allocated(cfg.device)
    del runner
    torch.cuda.empty_cache()
    return peak


def plan_kv_blocks(cfg: EngineConfig, model) -> dict[str, int]:
    groups = sorted(set(cfg.model.layer_types))
    c = cfg.cache
    if c.num_kv_blocks is not None:
        return {g: c.num_kv_blocks for g in groups}
    if c.kv_cache_memory_bytes is not None:
        budget = c.kv_cache_memory_bytes
    elif cfg.device.startswith("cuda") and cfg.parallel.world_size > 1:
        raise ConfigError("with several ranks on CUDA pass kv_cache_memory_bytes (per rank) or num_kv_blocks: the "
                          "profiling pass runs on one process only")
    elif cfg.device.startswith("cuda"):
        total = torch.cuda.get_device_properties(cfg.device).total_memory
        budget = int(total * c.gpu_memory_utilization) - profile_peak_bytes(cfg, model)
    else:
        budget = CPU_DEFAULT_KV_BYTES
    per = {g: kv_bytes_per_block(cfg, g, model.shard) for g in groups}  # this rank's share
    budget -= sum(per.values())  # each group's pad block (engine/runner.py)
    out: dict[str, int] = {}
    if LAYER_SLIDING in groups and LAYER_FULL in groups:
        most = cfg.scheduler.max_num_seqs * math.ceil(cfg.max_model_len / c.block_size)
        out[LAYER_SLIDING] = min(sliding_blocks_needed(cfg), most, max(budget // 2 // per[LAYER_SLIDING], 1))
        budget -= out[LAYER_SLIDING] * per[LAYER_SLIDING]
    main = LAYER_FULL if LAYER_FULL in groups else LAYER_SLIDING
    need = math.ceil(cfg.max_model_len / c.block_size)
    # a small model on a large GPU would otherwise get hundreds of millions of blocks, and the block pool's
    # bookkeeping is per block (Python objects)
    out[main] = min(budget // per[main], MAX_BLOCKS)
    if out[main] < need:
        raise ConfigError(f"the KV cache budget holds {max(out[main], 0) * c.block_size} tokens, fewer than one "
                          f"request of max_model_len {cfg.max_model_len}: lower max_model_len or raise "
                          f"kv_cache_memory_bytes / gpu_memory_utilization")
    return out


def log_capacity(cfg: EngineConfig, blocks: dict[str, int]) -> str:
    main = LAYER_FULL if LAYER_FULL in blocks else LAYER_SLIDING
    tokens = blocks[main] * cfg.cache.block_size
    line = (f"KV cache: {blocks[main]} blocks, {tokens} tokens, max concurrency "
            f"{tokens / cfg.max_model_len:.2f} at max_model_len {cfg.max_model_len}"
            + (f" (sliding-window layers: {blocks[LAYER_SLIDING]} blocks)" if len(blocks) > 1 else ""))
    log.info(line)
    return line
