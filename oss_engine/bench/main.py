"""`oss-engine bench`: phases, each announced on a progress line, then one table (and `--json PATH`).

Phases: ceilings (copy bandwidth, matmul rate) -> load (preset config + random weights on the device, or
--model DIR) -> decode at each batch (context 1024) -> prefill (2k and 8k prompts) -> time to first token
(2k prompt) -> [--kernels] one MoE and one attention layer -> [--compare hf] transformers on the same weights.
Every decode figure carries its roofline fraction: (weight + KV bytes of a step / measured bandwidth) / step time.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import torch

from . import engine_bench, hardware, roofline
from ..config import COLLECTIVE_BACKENDS


def add_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group()
    src.add_argument("--preset", choices=["gpt-oss-20b", "gpt-oss-120b"], default=None,
                     help="the published shapes (config only; use with --random-weights)")
    src.add_argument("--model", default=None, help="a checkpoint directory (default: the embedded tiny model)")
    p.add_argument("--random-weights", action="store_true", help="random weights made on the device, no file read")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto")
    p.add_argument("--batch-sizes", default="1,8,64,256", help="decode batch sizes, comma-separated")
    p.add_argument("--context", type=int, default=1024, help="decode prompt length")
    p.add_argument("--decode-steps", type=int, default=256)
    p.add_argument("--decode-warmup", type=int, default=16)
    p.add_argument("--prefill-lens", default="2048,8192", help="prefill prompt lengths, comma-separated")
    p.add_argument("--prefill-tokens", type=int, default=32768, help="tokens per prefill measurement")
    p.add_argument("--ttft-len", type=int, default=2048)
    p.add_argument("--kernels", action="store_true", help="also time one MoE and one attention layer")
    p.add_argument("--compare", choices=["hf"], default=None, help="also run transformers on the same weights")
    p.add_argument("--enforce-eager", action="store_true", help="no CUDA graphs")
    p.add_argument("--no-async-scheduling", dest="async_scheduling", action="store_false",
                   help="read sampled tokens before scheduling the next step")
    p.add_argument("--tensor-parallel-size", "-tp", type=int, default=1)
    p.add_argument("--enable-expert-parallel", action="store_true")
    p.add_argument("--distributed-backend", default="auto", choices=COLLECTIVE_BACKENDS,
                   help="auto: NCCL on CUDA, gloo on CPU; gloo lets several ranks share one GPU (the figures then "
                        "say nothing about speed)")
    p.add_argument("--kv-cache-memory-bytes", type=int, default=None,
                   help="KV budget per rank (needed with several CUDA ranks: profiling runs in one process)")
    p.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    p.add_argument("--max-num-batched-tokens", type=int, default=None,
                   help="tokens a step, the prefill steps' size (default: LLM's, 16384 on a GPU of >= 70 GiB)")
    p.add_argument("--json", default=None, help="write the figures here")
    p.add_argument("--seed", type=int, default=0)


def _progress(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _ints(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x]


def _model_dir(args, tmp: str) -> str:
    if args.preset is None:
        return args.model
    from ..presets import write_preset_config

    return str(write_preset_config(tmp, args.preset))


def _device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"


def run(args) -> dict:
    from ..llm import LLM

    if args.preset and not args.random_weights:
        raise SystemExit("--preset has no weights: add --random-weights (or pass --model DIR)")
    batches, prefill_lens = _ints(args.batch_sizes), _ints(args.prefill_lens)
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = _model_dir(args, tmp)
        from ..config import resolve_device

        device = torch.device(resolve_device(args.device))
        _progress(f"measuring the ceilings of {_device_name(device)}")
        bw = hardware.copy_bandwidth(device, nbytes=(1 << 30) if device.type == "cuda" else (1 << 26))
        mm = hardware.matmul_rate(device, n=8192 if device.type == "cuda" else 512)
        _progress(f"copy {bw / 1e9:,.0f} GB/s, matmul {mm / 1e12:,.1f} TFLOP/s; loading the model")
        longest = max([args.context + args.decode_steps + args.decode_warmup, *prefill_lens, args.ttft_len]) + 4
        # every prefill prompt of a measurement may share a step (else --batch-sizes 1 would prefill one at a time)
        seqs = max([*batches, *(max(1, args.prefill_tokens // n) for n in prefill_lens)])
        t0 = time.perf_counter()
        llm = LLM(model_dir, device=args.device, dtype=args.dtype, skip_tokenizer_init=True, progress=False,
                  load_format="dummy" if args.random_weights else "auto", seed=args.seed,
                  max_model_len=longest, max_num_seqs=seqs, enable_prefix_caching=False,
                  enforce_eager=args.enforce_eager, async_scheduling=args.async_scheduling,
                  gpu_memory_utilization=args.gpu_memory_utilization,
                  max_num_batched_tokens=args.max_num_batched_tokens,
                  tensor_parallel_size=args.tensor_parallel_size, enable_expert_parallel=args.enable_expert_parallel,
                  distributed_backend=args.distributed_backend, kv_cache_memory_bytes=args.kv_cache_memory_bytes)
        try:
            return _measure(args, llm, device, bw, mm, t0, batches, prefill_lens, rng)
        finally:
            llm.close()


def _measure(args, llm, device, bw, mm, t0, batches, prefill_lens, rng) -> dict:
    m = llm.config.model
    single = llm.config.parallel.world_size == 1
    res: dict = {"device": _device_name(device),
                 "model": args.preset or args.model or "embedded tiny model", "dtype": llm.config.dtype,
                 "kernels": llm.config.kernels,
                 "cuda_graphs": single and getattr(llm.engine.runner, "graphs", None) is not None,
                 "tensor_parallel_size": args.tensor_parallel_size,
                 "expert_parallel": args.enable_expert_parallel, "collective_backend": llm.config.parallel.backend,
                 "load_seconds": time.perf_counter() - t0, "copy_bandwidth_GBs": bw / 1e9,
                 "matmul_TFLOPs": mm / 1e12}
    res["weight_bytes_per_rank"] = [r.param_bytes for r in llm.weight_memory()]
    res["weight_bytes"] = sum(res["weight_bytes_per_rank"])
    res["max_num_batched_tokens"] = llm.config.scheduler.max_num_batched_tokens
    st = llm.engine.stats()
    blocks = {g: st.kv_blocks_used[g] + st.kv_blocks_free[g] for g in st.kv_blocks_used}
    res["kv_capacity_tokens"] = max(blocks.values()) * llm.config.cache.block_size
    res["decode"] = []
    for B in batches:
        _progress(f"decode batch {B}, context {args.context}")
        d = engine_bench.decode_rate(llm, B, args.context, args.decode_steps, args.decode_warmup, rng)
        ctx = args.context + args.decode_warmup + args.decode_steps // 2  # the mean context while timed
        limit = roofline.decode_limit_tok_s(m, B, ctx, bw)
        res["decode"].append({**asdict(d), "limit_tok_s": limit,
                              "roofline_fraction": None if d.tok_s is None else d.tok_s / limit})
    res["prefill"] = []
    for n in prefill_lens:
        _progress(f"prefill {n}-token prompts")
        passes = engine_bench.prefill_rate(llm, n, max(1, args.prefill_tokens // n), rng)
        rate = statistics.median(passes)
        flops = roofline.prefill_flops_per_token(m, n)
        res["prefill"].append({"prompt_len": n, "tok_s": rate, "passes_tok_s": passes,
                               "TFLOPs": rate * flops / 1e12,
                               "matmul_fraction": rate * flops / mm})
    _progress(f"time to first token, {args.ttft_len}-token prompt")
    res["ttft_ms"] = 1e3 * engine_bench.time_to_first_token(llm, args.ttft_len, rng)
    if args.kernels and not single:
        _progress("--kernels skipped: single layers are timed in one process only")
    if args.kernels and single:
        from .kernel_bench import layer_times

        _progress("one MoE layer and one attention layer")
        res["layers"] = [asdict(k) for k in layer_times(llm, bw, mm)]
    if device.type == "cuda":
        res["peak_gpu_memory_bytes"] = torch.cuda.max_memory_allocated(device)
    if args.compare == "hf":
        res["hf"] = _compare_hf(llm, res, device) if single else {"skipped": "needs one process"}
    return res


def _compare_hf(llm, res: dict, device: torch.device) -> dict:
    from .hf_compare import build_hf, hf_bytes_needed, hf_decode_rate

    need = hf_bytes_needed(llm)
    free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else need + 1
    if need > free:
        _progress(f"skipping transformers: its bf16 model needs {need / 2**30:.1f} GiB, {free / 2**30:.1f} GiB free")
        return {"skipped": f"needs {need / 2**30:.1f} GiB, {free / 2**30:.1f} GiB free"}
    _progress("transformers on the same weights, batch 1")
    hf = build_hf(llm)
    passes = hf_decode_rate(hf, llm.config.model.vocab_size, 128, 64)
    del hf
    rate = statistics.median(passes)
    ours = next((d["tok_s"] for d in res["decode"] if d["batch"] == 1), None)
    return {"decode_batch1_tok_s": rate, "passes_tok_s": passes, "ratio": None if ours is None else ours / rate}


def format_table(res: dict) -> str:
    lines = [f"oss-engine bench: {res['model']} on {res['device']} ({res['dtype']}, kernels {res['kernels']}, "
             f"CUDA graphs {'on' if res['cuda_graphs'] else 'off'})",
             f"ceilings: copy {res['copy_bandwidth_GBs']:,.0f} GB/s, matmul {res['matmul_TFLOPs']:,.1f} TFLOP/s; "
             f"weights {res['weight_bytes'] / 1e9:.2f} GB; KV cache {res['kv_capacity_tokens']:,} tokens"
             + (f"; peak memory {res['peak_gpu_memory_bytes'] / 1e9:.1f} GB" if "peak_gpu_memory_bytes" in res else "")
             + (f"; steps of <= {res['max_num_batched_tokens']:,} tokens" if "max_num_batched_tokens" in res else ""),
             "", f"{'phase':<28}{'tok/s':>12}{'limit':>12}{'fraction':>10}"]
    for d in res["decode"]:
        rate = "n/a (pool)" if d["tok_s"] is None else f"{d['tok_s']:,.0f}"
        frac = "" if d["roofline_fraction"] is None else f"{100 * d['roofline_fraction']:.0f}%"
        lines.append(f"{'decode batch ' + str(d['batch']) + ', ctx ' + str(d['context']):<28}{rate:>12}"
                     f"{d['limit_tok_s']:>12,.0f}{frac:>10}")
    for p in res["prefill"]:
        lines.append(f"{'prefill ' + str(p['prompt_len']) + '-token prompts':<28}{p['tok_s']:>12,.0f}"
                     f"{p['TFLOPs']:>9,.0f} TF{100 * p['matmul_fraction']:>9.0f}%"
                     f"  (median of {min(p['passes_tok_s']):,.0f}-{max(p['passes_tok_s']):,.0f})")
    lines.append(f"{'time to first token':<28}{res['ttft_ms']:>9,.1f} ms")
    for k in res.get("layers", []):
        lines.append(f"{k['layer'] + ' layer, ' + str(k['tokens']) + ' tokens':<28}{k['us']:>9,.1f} us"
                     f"{k['floor_us']:>9,.1f} us{100 * k['floor_us'] / k['us']:>9.0f}%")
    hf = res.get("hf")
    if hf is not None and "skipped" in hf:
        lines.append(f"transformers: skipped ({hf['skipped']})")
    elif hf is not None:
        ratio = "n/a" if hf["ratio"] is None else f"{hf['ratio']:.1f}x"
        lines.append(f"transformers: {hf['decode_batch1_tok_s']:,.1f} tok/s at batch 1 (median of "
                     f"{min(hf['passes_tok_s']):,.1f}-{max(hf['passes_tok_s']):,.1f}); ours / theirs {ratio}")
    return "\n".join(lines)


def main(args) -> int:
    res = run(args)
    print(format_table(res))
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=2))
    return 0
