"""Several processes (gloo, CPU, float32) against one: greedy tokens identical and logits within 1e-5
relative, in both checkpoint formats, for TP 2 and 4, EP 2 and 4, TP 2 x EP, PP 2 (3 layers: stages of 2 and
1) and DP 2; plus the per-rank weight memory each run reports. On a GPU (`gpu` marker): TP 2, TP 4 and TP 2 x EP
with every rank on one GPU over gloo, against one process on that GPU.

The checkpoint: 3 layers, 8 experts top-2, H 8, K 4, hd 16, D 64, intermediate 96 (3 MXFP4 blocks: TP 4
gives 32, 32, 32, 0), vocab 1003 (not a multiple of the tp sizes). With expert parallel the experts spread
over tp x dp ranks (vLLM): "EP 2" is dp 2 with EP, "EP 4" tp 2 x dp 2 with EP, "TP 2 x EP" tp 2 with EP.
One process group per case; every check of that case runs in it.
"""

from __future__ import annotations

import pytest
import torch

from oss_engine import LLM, SamplingParams
from oss_engine.engine.runner import ScheduledSeq
from oss_engine.tiny import make_tiny_checkpoint

SPEC = dict(num_layers=3, num_experts=8, experts_per_token=2, hidden_size=64, intermediate_size=96,
            num_attention_heads=8, num_key_value_heads=4, head_dim=16, vocab_size=1003, write_tokenizer=False)
COMMON = dict(device="cpu", dtype="float32", skip_tokenizer_init=True, progress=False, num_kv_blocks=48,
              max_model_len=256, distributed_timeout_s=60)
ON_GPU = {**COMMON, "device": "cuda"}
GREEDY = SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True)
CASES = {
    "tp2": dict(tensor_parallel_size=2),
    "tp4": dict(tensor_parallel_size=4),
    "ep2": dict(data_parallel_size=2, enable_expert_parallel=True),
    "ep4": dict(tensor_parallel_size=2, data_parallel_size=2, enable_expert_parallel=True),
    "tp2xep": dict(tensor_parallel_size=2, enable_expert_parallel=True),
    "pp2": dict(pipeline_parallel_size=2),
    "dp2": dict(data_parallel_size=2),
}


def prompts() -> list[list[int]]:
    g = torch.Generator().manual_seed(7)
    return [torch.randint(0, 1003, (n,), generator=g).tolist() for n in (4, 19, 33)]


def logits_every_position(llm: LLM, ids: list[int]) -> torch.Tensor:
    """Prefill in two chunks (the second reads the first's KV cache), all rows' logits [len(ids), V]."""
    runner = llm.engine.engines[0].runner if hasattr(llm.engine, "engines") else llm.engine.runner
    blocks = {g: list(range(3)) for g in ("full_attention", "sliding_attention")}
    first = runner.execute([ScheduledSeq(ids, 0, 20, blocks, all_logits=True)]).logits
    rest = runner.execute([ScheduledSeq(ids, 20, len(ids) - 20, blocks, all_logits=True)]).logits
    return torch.cat([first, rest])


@pytest.fixture(scope="module", params=["mxfp4", "bf16"])
def reference(request, tmp_path_factory):
    path = tmp_path_factory.mktemp(f"par-{request.param}")
    make_tiny_checkpoint(path, fmt=request.param, seed=5, **SPEC)
    llm = LLM(str(path), **COMMON)
    tokens = [o.outputs[0].token_ids for o in llm.generate(prompt_token_ids=prompts(), sampling_params=GREEDY)]
    return dict(path=path, tokens=tokens, logits=logits_every_position(llm, prompts()[2]),
                report=llm.weight_memory()[0])


@pytest.mark.parametrize("case", list(CASES))
def test_parallel_matches_one_process(reference, case):
    kwargs = CASES[case]
    with LLM(str(reference["path"]), **COMMON, **kwargs) as llm:
        tokens = [o.outputs[0].token_ids for o in llm.generate(prompt_token_ids=prompts(), sampling_params=GREEDY)]
        logits = logits_every_position(llm, prompts()[2])
        reports = llm.weight_memory()
        if case in ("dp2", "ep2"):  # both replicas took requests (3 prompts: 2 and 1)
            assert all(e.stats().prefix_cache_queries > 0 for e in llm.engine.engines)
    assert tokens == reference["tokens"]
    ref = reference["logits"]
    assert logits.shape == ref.shape
    rel = float((logits - ref).norm() / ref.norm())
    worst = float((logits - ref).abs().max() / ref.abs().max())
    assert rel < 1e-5 and worst < 1e-5, (rel, worst)

    total = reference["report"]
    world = len(reports)
    assert world == (kwargs.get("tensor_parallel_size", 1) * kwargs.get("pipeline_parallel_size", 1)
                     * kwargs.get("data_parallel_size", 1))
    assert all(r.bytes_read < total.bytes_read for r in reports)  # nobody reads the whole checkpoint
    # Each rank holds about total / ranks. Bounds for this tiny model: the first 3 of 4 tp ranks hold a third
    # of every expert (96 = 3 blocks) and the pipeline stages hold 2 and 1 layers. Data-parallel replicas
    # replicate attention and the vocabulary (only the MoE spans them; 1.76 x total / ranks for dp 2 here,
    # where the vocabulary is half the model): there each rank must just hold less than the whole model.
    shares = [r.param_bytes / (total.param_bytes / world) for r in reports]
    print(case, "param bytes per rank / (total / ranks):", [round(s, 3) for s in shares])
    if kwargs.get("data_parallel_size", 1) > 1:
        assert max(shares) < world, shares
    else:
        assert max(shares) <= {"tp4": 1.3, "pp2": 1.3}.get(case, 1.25), shares


@pytest.fixture(scope="module")
def gpu_reference(tmp_path_factory):
    path = tmp_path_factory.mktemp("par-gpu")
    make_tiny_checkpoint(path, seed=5, **SPEC)
    with LLM(str(path), **ON_GPU) as llm:
        tokens = [o.outputs[0].token_ids for o in llm.generate(prompt_token_ids=prompts(), sampling_params=GREEDY)]
        logits = logits_every_position(llm, prompts()[2])
    return dict(path=path, tokens=tokens, logits=logits)


@pytest.mark.gpu
@pytest.mark.parametrize("case", ["tp2", "tp4", "tp2xep"])
def test_ranks_sharing_one_gpu_over_gloo_match_one_process(gpu_reference, case):
    """The sharded GPU kernels and the collectives of a step, every rank on one GPU (gloo stages the collectives
    through host memory): float32 greedy tokens equal, logits within 1e-4 of one process on the same GPU.

    The bound is the CPU cases' 1e-5 widened after one H200 run (2026-12-06, the bound then 1e-5): tokens equal
    in all three cases, logits within 1e-5 for tp4 and tp2xep, but 5.06e-5 for tp2, while the same comparison
    under the Triton interpreter on CPU gives 4e-7. The cause: on CUDA the Triton MoE multiplies bf16 operands
    whatever the model's dtype (float32 under the interpreter), so a float32 difference of an ulp in x, from
    another summation order, can round an operand to the next bf16. One process on an H100 against itself (a
    prompt prefilled in two steps instead of one) differs by up to 2.9e-4 at a position (2026-12-07). A wrong
    shard moves the logits by O(1)."""
    with LLM(str(gpu_reference["path"]), **ON_GPU, distributed_backend="gloo",
             **CASES[case]) as llm:
        assert llm.executor is not None and len(llm.weight_memory()) == llm.config.parallel.world_size > 1
        tokens = [o.outputs[0].token_ids for o in llm.generate(prompt_token_ids=prompts(), sampling_params=GREEDY)]
        logits = logits_every_position(llm, prompts()[2])
    assert tokens == gpu_reference["tokens"]
    ref = gpu_reference["logits"]
    assert logits.shape == ref.shape and logits.device.type == "cuda"
    rel = float((logits - ref).norm() / ref.norm())
    assert rel < 1e-4, rel
