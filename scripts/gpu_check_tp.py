"""Tensor- and expert-parallel correctness on the GPU (issue 6): gpt-oss-120b shapes (or --preset), random weights
made on the GPUs (the same weights under every layout, weights/dummy.py), greedy tokens of one GPU against TP = N
and TP = N with expert parallel, bf16. A divergence is reported with the single-GPU run's top-2 logprob gap at
that step (a near-tie when small). Because a rounding difference can flip a router's top-4 choice, and random
weights give flat output distributions, greedy tokens may part early without a fault; so every layout's logits at
each position of one prompt are also compared with one GPU's, next to the rounding floor: one GPU against itself
with that prompt prefilled in two steps instead of one (other kernels and summation orders, the same math).

    PYTHONPATH=. python scripts/gpu_check_tp.py --ranks 2 4 8

With random weights the bf16 model is chaotic: on one H100 the floor itself left the argmax equal at 39% (20b) and
5% (120b) of the positions (2026-12-07), so bf16 runs show only that every layout runs. What tells a fault from
rounding: `--dtype float32 --kernels ref` (float32 throughout: the floor ~1e-5, tokens equal) and `--dtype float32
--layers 2` (the Triton kernels at the shard shapes; their MoE takes bf16 operands, the floor ~1e-3).

On a machine with N GPUs the ranks meet over NCCL, a GPU each. With fewer GPUs than ranks (`--backend auto` picks
this) they meet over gloo and share the GPUs: every sharded kernel shape and every collective of a step runs as on
N GPUs, but each collective passes through host memory, so the timings printed say nothing about speed. Each rank
holds its own KV cache of --kv-gib. `--device cpu --dtype float32 --layers 2` runs the same checks on the reference
kernels at the real widths (uneven intermediate splits included) on any machine. NVLink multicast stays off, as the
device README requires. Imports only the engine, model and parallel modules (the GPU image has no server stack)."""

from __future__ import annotations

import argparse
import gc
import json
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("NCCL_NVLS_ENABLE", "0")
os.environ.setdefault("TORCH_SYMM_MEM_DISABLE_MULTICAST", "1")
os.environ.setdefault("NVSHMEM_DISABLE_NVLS", "1")

import torch  # noqa: E402

from oss_engine import LLM, SamplingParams  # noqa: E402
from oss_engine.engine.runner import ScheduledSeq  # noqa: E402
from oss_engine.presets import write_preset_config  # noqa: E402


def prompt_logits(llm: LLM, ids: list[int], chunks: int) -> torch.Tensor:
    """Logits of every position of `ids`, prefilled in `chunks` steps (the later ones read the earlier ones' KV
    cache) on blocks 0.. of a cache the finished generate left free: [len(ids), V] float32."""
    runner = llm.engine.engines[0].runner if hasattr(llm.engine, "engines") else llm.engine.runner
    blocks = {g: list(range(-(-len(ids) // 16))) for g in ("full_attention", "sliding_attention")}
    cuts = [len(ids) * i // chunks for i in range(chunks + 1)]
    return torch.cat([runner.execute([ScheduledSeq(ids, a, b - a, blocks, all_logits=True)]).logits.clone()
                      for a, b in zip(cuts, cuts[1:])])


def compare(a: torch.Tensor, b: torch.Tensor) -> str:
    """Per position: relative L2 difference of the logits (median, max) and how often the argmax agrees."""
    rel = (a - b).norm(dim=1) / b.norm(dim=1)
    same = (a.argmax(1) == b.argmax(1)).float().mean()
    return f"logits rel. difference median {rel.median():.2e}, max {rel.max():.2e}; argmax equal {same:.0%}"


def first_difference(a: list[int], b: list[int]) -> int | None:
    return next((j for j, (x, y) in enumerate(zip(a, b)) if x != y), None)


def run(model_dir: str, device: str, prompts, max_tokens: int, kv_gib: float, dtype: str, kernels: str,
        **kw) -> tuple[list[list[int]], list[list[float]], list[torch.Tensor]]:
    """-> (greedy tokens per prompt, top-2 logprob gap at each step of each prompt, the logits of every position
    of prompt 1 prefilled in one step and (one process only) in two)."""
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True, logprobs=2)
    t0 = time.perf_counter()
    with LLM(model_dir, device=device, dtype=dtype, skip_tokenizer_init=True, progress=False, load_format="dummy",
             max_model_len=2048, max_num_seqs=16, kv_cache_memory_bytes=int(kv_gib * (1 << 30)), kernels=kernels,
             **kw) as llm:
        t1 = time.perf_counter()
        outs = llm.generate(prompt_token_ids=prompts, sampling_params=params)
        t2 = time.perf_counter()
        logits = [prompt_logits(llm, prompts[1], n) for n in ((1,) if kw else (1, 2))]
    print(f"  ({dtype}, {kw or 'one process'}: start {t1 - t0:.0f} s, generate {t2 - t1:.1f} s)", flush=True)
    toks = [o.outputs[0].token_ids for o in outs]
    gaps = [[(lambda v: v[0] - v[1])(sorted(lp.values(), reverse=True)[:2]) for lp in o.outputs[0].logprobs]
            for o in outs]
    del llm  # the model's memory goes back before the next layout starts (the parent holds no rank's weights)
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return toks, gaps, logits


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ranks", type=int, nargs="+", default=[max(2, torch.cuda.device_count())])
    ap.add_argument("--preset", default="gpt-oss-120b")
    ap.add_argument("--backend", default="auto", choices=["auto", "nccl", "gloo"],
                    help="auto: NCCL when there is a GPU a rank, else gloo with the ranks sharing the GPUs")
    ap.add_argument("--kv-gib", type=float, default=1.0, help="KV cache a rank")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--no-ep", action="store_true", help="tensor parallel only")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--kernels", default="auto",
                    help="auto (Triton on CUDA), or ref: the torch reference ops (eager), float32-exact on the GPU too "
                         "(the Triton MoE takes bf16 operands on CUDA whatever --dtype)")
    ap.add_argument("--device", default="cuda", help="cuda, or cpu (gloo, the reference kernels)")
    ap.add_argument("--layers", type=int, default=0, help="keep only the first N layers (0: all)")
    ap.add_argument("--noise", action="store_true",
                    help="also compare one process in float32 with one in --dtype: how far rounding alone moves")
    args = ap.parse_args()
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, 200000, (n,), generator=g).tolist() for n in (17, 64, 200, 512)]
    where = f"{torch.cuda.device_count()} x {torch.cuda.get_device_name()}" if args.device == "cuda" else "CPU"
    print(f"{args.preset}{f' cut to {args.layers} layers' if args.layers else ''}, {where}, {args.dtype}, "
          f"kernels {args.kernels}, "
          f"{len(prompts)} prompts of {[len(p) for p in prompts]} tokens, {args.max_tokens} greedy tokens each",
          flush=True)
    diverged = 0
    with tempfile.TemporaryDirectory() as d:
        write_preset_config(d, args.preset)
        if args.layers:
            cfg = json.loads(Path(d, "config.json").read_text())
            cfg["num_hidden_layers"], cfg["layer_types"] = args.layers, cfg["layer_types"][:args.layers]
            Path(d, "config.json").write_text(json.dumps(cfg))
        want, gaps, (one, two) = run(d, args.device, prompts, args.max_tokens, args.kv_gib, args.dtype, args.kernels)
        print(f"one process, prompt 1 prefilled in two steps against one (the rounding floor): {compare(two, one)}",
              flush=True)
        if args.noise:
            exact, _, _ = run(d, args.device, prompts, args.max_tokens, args.kv_gib, "float32", args.kernels)
            for i, (a, b) in enumerate(zip(want, exact)):
                first = first_difference(a, b)
                verdict = "equal" if first is None else f"diverges at token {first} (top-2 gap {gaps[i][first]:.4f})"
                print(f"one process, float32 against {args.dtype}: prompt {i}: {verdict}", flush=True)
        for n in args.ranks:
            backend = args.backend
            if backend == "auto":
                backend = "nccl" if args.device == "cuda" and torch.cuda.device_count() >= n else "gloo"
            layouts = [(f"TP {n}", dict(tensor_parallel_size=n))]
            if not args.no_ep:
                layouts.append((f"TP {n} + EP", dict(tensor_parallel_size=n, enable_expert_parallel=True)))
            for name, kw in layouts:
                got, _, (mine,) = run(d, args.device, prompts, args.max_tokens, args.kv_gib, args.dtype,
                                      args.kernels, distributed_backend=backend, **kw)
                print(f"{name:<10} ({backend}) prompt 1, every position: {compare(mine, one)}", flush=True)
                for i, (a, b) in enumerate(zip(want, got)):
                    first = first_difference(a, b)
                    if first is None:
                        verdict = "equal"
                    else:
                        diverged += 1
                        verdict = f"diverges at token {first} (one-process top-2 gap {gaps[i][first]:.4f})"
                    print(f"{name:<10} ({backend}) prompt {i} ({len(prompts[i])} tokens): {verdict}", flush=True)
    print(f"{diverged} divergence(s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
