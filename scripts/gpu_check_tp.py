"""Multi-GPU correctness (issue 6): gpt-oss-120b shapes (or --preset), random weights made on the GPUs (the same
weights under every layout, weights/dummy.py), greedy tokens of one GPU against TP = N and TP = N with expert
parallel, bf16. A divergence is reported with the single-GPU run's top-2 logit gap at that step (a near-tie when
small). Run on a kind with N GPUs: PYTHONPATH=. python scripts/gpu_check_tp.py --gpus N

NVLink multicast stays off, as the device README requires."""

from __future__ import annotations

import argparse
import gc
import os
import tempfile

os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
os.environ.setdefault("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1")
os.environ.setdefault("NVSHMEM_DISABLE_NVLS", "1")

import torch  # noqa: E402

from oss_engine import LLM, SamplingParams  # noqa: E402
from oss_engine.presets import write_preset_config  # noqa: E402


def run(model_dir: str, prompts, **kw) -> tuple[list[list[int]], list[list[float]]]:
    params = SamplingParams(max_tokens=32, temperature=0.0, ignore_eos=True, logprobs=2)
    with LLM(model_dir, device="cuda", skip_tokenizer_init=True, progress=False, load_format="dummy",
             max_model_len=2048, max_num_seqs=16, kv_cache_memory_bytes=4 << 30, **kw) as llm:
        outs = llm.generate(prompt_token_ids=prompts, sampling_params=params)
    toks = [o.outputs[0].token_ids for o in outs]
    gaps = [[(lambda v: v[0] - v[1])(sorted(lp.values(), reverse=True)[:2]) for lp in o.outputs[0].logprobs]
            for o in outs]
    gc.collect()
    torch.cuda.empty_cache()
    return toks, gaps


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gpus", type=int, default=torch.cuda.device_count())
    ap.add_argument("--preset", default="gpt-oss-120b")
    args = ap.parse_args()
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, 200000, (n,), generator=g).tolist() for n in (17, 64, 200, 512)]
    with tempfile.TemporaryDirectory() as d:
        write_preset_config(d, args.preset)
        want, gaps = run(d, prompts)
        for name, kw in ((f"TP {args.gpus}", dict(tensor_parallel_size=args.gpus)),
                         (f"TP {args.gpus} + EP", dict(tensor_parallel_size=args.gpus, enable_expert_parallel=True))):
            got, _ = run(d, prompts, **kw)
            for i, (a, b) in enumerate(zip(want, got)):
                first = next((j for j, (x, y) in enumerate(zip(a, b)) if x != y), None)
                verdict = "equal" if first is None else f"diverges at token {first} (one-GPU top-2 gap {gaps[i][first]:.3f})"
                print(f"{name:<12} prompt {i} ({len(prompts[i])} tokens): {verdict}", flush=True)


if __name__ == "__main__":
    main()
