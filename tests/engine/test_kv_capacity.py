"""KV capacity from a memory budget, split between the cache groups, and the capacity log line."""

from __future__ import annotations

import dataclasses
import logging
import math

import pytest

from oss_engine import LLM
from oss_engine.config import ConfigError
from oss_engine.engine.kv_capacity import profile_lengths, profile_step, sliding_blocks_needed
from oss_engine.engine.runner import kv_bytes_per_block
from oss_engine.tiny import make_tiny_checkpoint


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("cap")
    make_tiny_checkpoint(path, num_layers=4, vocab_size=512, write_tokenizer=False)
    return path


def test_budget_split_and_logged(ckpt, caplog):
    budget = 8 << 20
    with caplog.at_level(logging.INFO):
        llm = LLM(str(ckpt), device="cpu", skip_tokenizer_init=True, progress=False, kv_cache_memory_bytes=budget,
                  max_num_seqs=8, max_num_batched_tokens=256)
    cfg, kv = llm.config, llm.engine.kv
    sliding, full = kv.num_blocks("sliding_attention"), kv.num_blocks("full_attention")
    assert sliding == sliding_blocks_needed(cfg)
    per_full, per_sliding = kv_bytes_per_block(cfg, "full_attention"), kv_bytes_per_block(cfg, "sliding_attention")
    assert full == (budget - (sliding + 1) * per_sliding - per_full) // per_full  # + 1: the pad blocks
    used = (full + 1) * per_full + (sliding + 1) * per_sliding
    assert budget - per_full < used <= budget  # the budget is spent, never exceeded
    tokens = full * cfg.cache.block_size
    assert f"KV cache: {full} blocks, {tokens} tokens, max concurrency {tokens / cfg.max_model_len:.2f}" in caplog.text
    runner_k = llm.engine.runner.kv_caches[1][0]  # layer 1 is full attention
    assert runner_k.shape[0] == full + 1 and llm.engine.runner.kv_caches[0][0].shape[0] == sliding + 1


def test_budget_too_small_for_one_request_is_a_clear_error(ckpt):
    with pytest.raises(ConfigError, match="max_model_len"):
        LLM(str(ckpt), device="cpu", skip_tokenizer_init=True, progress=False, kv_cache_memory_bytes=64 << 10)


def test_num_kv_blocks_override(ckpt):
    llm = LLM(str(ckpt), device="cpu", skip_tokenizer_init=True, progress=False, num_kv_blocks=50)
    assert {g: llm.engine.kv.num_blocks(g) for g in llm.engine.kv.group_names()} == \
        {"full_attention": 50, "sliding_attention": 50}
    assert math.isclose(llm.engine.stats().kv_usage, 0.0)


def with_limits(cfg, tokens: int, seqs: int, max_len: int):
    return dataclasses.replace(cfg, scheduler=dataclasses.replace(
        cfg.scheduler, max_num_batched_tokens=tokens, max_num_seqs=seqs, max_model_len=max_len))


def test_profile_lengths_fill_the_largest_step(ckpt):
    """The profiling step holds a whole step's tokens even where one sequence cannot (max_model_len below
    max_num_batched_tokens), as few sequences as max_model_len allows, and no more than max_num_seqs."""
    cfg = LLM(str(ckpt), device="cpu", skip_tokenizer_init=True, progress=False, num_kv_blocks=50).config
    assert profile_lengths(with_limits(cfg, 16384, 256, 8196)) == [8196, 8188]  # the bench's 8k-prompt engine
    assert profile_lengths(with_limits(cfg, 8192, 256, 8192)) == [8192]
    assert profile_lengths(with_limits(cfg, 2048, 256, 4096)) == [2048]
    assert profile_lengths(with_limits(cfg, 1000, 256, 300)) == [300, 300, 300, 100]
    assert profile_lengths(with_limits(cfg, 1000, 2, 300)) == [300, 300]  # max_num_seqs caps the step


def test_profile_step_runs_every_sequence(ckpt):
    """The throwaway step (on the CPU here; on CUDA its peak memory sizes the KV cache) holds the planned
    prompts in blocks of their own and computes one logits row for each."""
    llm = LLM(str(ckpt), device="cpu", skip_tokenizer_init=True, progress=False, num_kv_blocks=50)
    cfg = with_limits(llm.config, 96, 8, 40)
    runner, seqs = profile_step(cfg, llm.engine.runner.model)
    assert [s.num_new for s in seqs] == profile_lengths(cfg) == [40, 40, 16]
    for g in set(cfg.model.layer_types):
        blocks = [b for s in seqs for b in s.block_tables[g]]
        assert len(blocks) == len(set(blocks))  # no two prompts share a block
    out = runner.execute(seqs)
    assert out.logits.shape == (3, cfg.model.vocab_size) and [b - a for a, b in out.rows] == [1, 1, 1]
    assert bool(out.logits.isfinite().all())
