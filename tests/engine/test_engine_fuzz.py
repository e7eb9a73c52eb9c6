"""The engine with a fake model (no weights): thousands of random arrivals, aborts and steps over a small
pool, with the KV accounting check after every step; no leak, no hang, every request ends."""

from __future__ import annotations

import random

import torch

from oss_engine.config import CacheConfig, EngineConfig, ModelConfig, SchedulerConfig
from oss_engine.engine.llm_engine import LLMEngine
from oss_engine.engine.runner import ScheduledSeq, StepLogits
from oss_engine.sampling_params import SamplingParams

V = 64


class FakeRunner:
    """Random logits with the real runner's row contract."""

    device = torch.device("cpu")

    def __init__(self, seed: int):
        self.g = torch.Generator().manual_seed(seed)

    def execute(self, seqs: list[ScheduledSeq]) -> StepLogits:
        rows, n = [], 0
        for s in seqs:
            assert 0 <= s.num_computed and s.num_computed + s.num_new <= len(s.token_ids) and s.num_new > 0
            k = s.num_new if s.all_logits else int(s.num_computed + s.num_new == len(s.token_ids))
            rows.append((n, n + k))
            n += k
        return StepLogits(torch.randn(n, V, generator=self.g), rows)


def engine(num_blocks: int, seed: int, prefix_caching: bool = True) -> LLMEngine:
    model = ModelConfig.from_dict({
        "model_type": "gpt_oss", "num_hidden_layers": 2, "num_local_experts": 4, "num_experts_per_tok": 2,
        "hidden_size": 32, "intermediate_size": 32, "num_attention_heads": 2, "num_key_value_heads": 1,
        "head_dim": 16, "sliding_window": 8, "vocab_size": V, "rope_theta": 150000, "max_position_embeddings": 256,
        "rope_scaling": {"rope_type": "yarn", "factor": 4.0, "beta_fast": 32.0, "beta_slow": 1.0,
                         "original_max_position_embeddings": 64}})
    cfg = EngineConfig("fake", model, "cpu", "float32", CacheConfig(block_size=4, enable_prefix_caching=prefix_caching),
                       SchedulerConfig(max_model_len=128, max_num_seqs=6, max_num_batched_tokens=24, debug_checks=True),
                       seed=seed)
    blocks = {"full_attention": num_blocks, "sliding_attention": num_blocks}
    return LLMEngine(cfg, FakeRunner(seed), blocks, tokenizer=None, eos_token_ids=(0,))


def random_request(rng: random.Random, prefixes: list[list[int]]) -> tuple[list[int], SamplingParams]:
    prompt = list(rng.choice(prefixes)) + [rng.randrange(1, V) for _ in range(rng.randint(1, 20))]
    params = SamplingParams(max_tokens=rng.randint(1, 30), temperature=rng.choice([0.0, 1.0]),
                            n=rng.choice([1, 1, 1, 2, 3]), seed=rng.choice([None, rng.randrange(100)]),
                            ignore_eos=rng.random() < 0.5,
                            prompt_logprobs=rng.choice([None, None, None, 1]))
    return prompt, params


def run_fuzz(seed: int, steps: int, num_blocks: int, prefix_caching: bool = True) -> None:
    rng = random.Random(seed)
    eng = engine(num_blocks, seed, prefix_caching)
    prefixes = [[rng.randrange(1, V) for _ in range(rng.randint(0, 40))] for _ in range(4)]
    live: set[str] = set()
    finished: set[str] = set()
    next_id = 0
    for _ in range(steps):
        r = rng.random()
        if r < 0.3:
            prompt, params = random_request(rng, prefixes)
            eng.add_request(str(next_id), prompt, params)
            live.add(str(next_id))
            next_id += 1
        elif r < 0.4 and live:
            rid = rng.choice(sorted(live))
            eng.abort(rid)
            live.discard(rid)
        for out in eng.step():
            if out.finished:
                assert out.request_id in live and len(out.outputs) >= 1
                for c in out.outputs:
                    assert c.finish_reason in ("stop", "length")
                live.discard(out.request_id)
                finished.add(out.request_id)
    for _ in range(10_000):  # drain: everything left must finish
        if not eng.has_unfinished_requests():
            break
        for out in eng.step():
            live.discard(out.request_id) if out.finished else None
    assert not eng.has_unfinished_requests() and not live
    stats = eng.stats()
    assert all(v == 0 for v in stats.kv_blocks_used.values()), stats
    eng.kv.check_accounting([])
    assert len(finished) > 0


def test_fuzz_small_pool_with_prefix_caching():
    run_fuzz(seed=0, steps=3000, num_blocks=40)


def test_fuzz_tiny_pool_forces_preemption():
    eng_seed = 1
    run_fuzz(seed=eng_seed, steps=2000, num_blocks=34)


def test_fuzz_without_prefix_caching():
    run_fuzz(seed=2, steps=2000, num_blocks=60, prefix_caching=False)
