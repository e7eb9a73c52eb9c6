"""Decode-step tuning on one GPU, one call: (1) the MoE experts' decode tiles at T = 1 (gpt-oss-20b shapes),
GEMM 1 swept with GEMM 2 at its default, then the reverse; (2) where one attention layer's time goes at
batch 1, context 1024 (each op of `Attention.forward` alone, from CUDA graphs, L2 flushed).

Run: PYTHONPATH=. python scripts/gpu_tune_decode.py
"""

from __future__ import annotations

import functools
import sys
import time

import torch

sys.path.insert(0, "scripts")
from gpu_bench_moe import ALPHA, LIMIT, batch, config_for, mxfp4_weight, time_graph_flushed  # noqa: E402

from oss_engine.kernels.ref.moe import moe_experts_ref  # noqa: E402
from oss_engine.kernels.triton.attention import paged_attention_triton  # noqa: E402
from oss_engine.kernels.triton.moe import GemmTiles, MoeTritonConfig, moe_experts_triton  # noqa: E402
from oss_engine.kernels.triton.norm import add_rms_norm_triton  # noqa: E402
from oss_engine.kernels.triton.rope import rope_store_kv_triton  # noqa: E402
from oss_engine.kernels.triton.route import route_triton  # noqa: E402
from oss_engine.model.forward_batch import AttentionMetadata  # noqa: E402

D, H, K, HD, S = 2880, 64, 8, 64, 16


def moe_sweep(gen) -> None:
    w1, w2 = mxfp4_weight(2 * D, D, gen), mxfp4_weight(D, D, gen)
    x, weights, ids = batch(1, gen)
    base = config_for("default", 1)
    ref = moe_experts_ref(x, weights, ids, w1, w2, LIMIT, ALPHA).float()
    base_us = time_graph_flushed(functools.partial(moe_experts_triton, x, weights, ids, w1, w2, LIMIT, ALPHA,
                                                   config=base))
    print(f"moe T=1 default {base}: {base_us:.1f} us", flush=True)
    for which in ("gemm1", "gemm2"):
        res = []
        for bn in (32, 64, 128):
            for bk in (128, 256, 512):
                for warps, stages in ((2, 4), (4, 3), (4, 4)):
                    t = GemmTiles(16, bn, bk, warps, stages)
                    cfg = MoeTritonConfig(t if which == "gemm1" else base.gemm1, t if which == "gemm2" else base.gemm2,
                                          base.mxfp4_decode)
                    fn = functools.partial(moe_experts_triton, x, weights, ids, w1, w2, LIMIT, ALPHA, config=cfg)
                    try:
                        err = ((fn().float() - ref).norm() / ref.norm()).item()
                        us = time_graph_flushed(fn, reps=10)
                    except Exception as exc:  # noqa: BLE001 - e.g. out of shared memory
                        print(f"  {which} bn={bn} bk={bk} w{warps} s{stages}: {type(exc).__name__}", flush=True)
                        continue
                    res.append((us, bn, bk, warps, stages, err))
        res.sort()
        print(f"moe T=1 {which} best 6 (us, bn, bk, warps, stages, rel err):", flush=True)
        for r in res[:6]:
            print(f"  {r[0]:7.1f} us  bn={r[1]:>3} bk={r[2]:>3} w{r[3]} s{r[4]}  err {r[5]:.1e}", flush=True)


def attention_breakdown(gen, ctx: int = 1024, width: int = 8192) -> None:
    dev = "cuda"
    bf = torch.bfloat16
    h = torch.randn(1, D, generator=gen).to(bf).to(dev)
    wqkv = (torch.randn((H + 2 * K) * HD, D, generator=gen) * D ** -0.5).to(bf).to(dev)
    bqkv = torch.zeros((H + 2 * K) * HD, dtype=bf, device=dev)
    wo = (torch.randn(D, H * HD, generator=gen) * (H * HD) ** -0.5).to(bf).to(dev)
    bo = torch.zeros(D, dtype=bf, device=dev)
    N = width + 8
    kc = torch.randn(N, S, K, HD, generator=gen).to(bf).to(dev)
    vc = torch.randn(N, S, K, HD, generator=gen).to(bf).to(dev)
    tables = torch.zeros(1, width, dtype=torch.int32, device=dev)
    tables[0, : ctx // S] = torch.randperm(N - 1, generator=gen)[: ctx // S].to(torch.int32).to(dev) + 1
    meta = AttentionMetadata(torch.tensor([0, 1], dtype=torch.int32, device=dev),
                             torch.tensor([ctx], dtype=torch.int32, device=dev), tables,
                             (tables[0, (ctx - 1) // S].long() * S + (ctx - 1) % S).view(1), max_query_len=1)
    pos = torch.tensor([ctx - 1], device=dev)
    cos, sin = torch.randn(1, HD // 2, device=dev), torch.randn(1, HD // 2, device=dev)
    sinks = torch.randn(H, device=dev)
    qkv = torch.nn.functional.linear(h, wqkv, bqkv)
    q, k, v = qkv.split([H * HD, K * HD, K * HD], dim=-1)
    q3, k3, v3 = q.view(1, H, HD), k.view(1, K, HD), v.view(1, K, HD)
    qr = rope_store_kv_triton(q3, k3, v3, cos, sin, kc, vc, meta.slot_mapping)
    o = paged_attention_triton(qr, kc, vc, sinks, meta, pos, None, HD ** -0.5, max_query_len=1)
    wn = torch.ones(D, device=dev)
    router_w = (torch.randn(32, D, generator=gen) * D ** -0.5).to(bf).to(dev)
    parts = {
        "qkv linear": lambda: torch.nn.functional.linear(h, wqkv, bqkv),
        "rope + kv store": lambda: rope_store_kv_triton(q3, k3, v3, cos, sin, kc, vc, meta.slot_mapping),
        "paged attention (W=8192)": lambda: paged_attention_triton(qr, kc, vc, sinks, meta, pos, None, HD ** -0.5,
                                                                   max_query_len=1),
        "paged attention, 4 splits": lambda: paged_attention_triton(qr, kc, vc, sinks, meta, pos, None, HD ** -0.5,
                                                                    max_query_len=1, num_splits=4),
        "paged attention, 1 split": lambda: paged_attention_triton(qr, kc, vc, sinks, meta, pos, None, HD ** -0.5,
                                                                   max_query_len=1, num_splits=1),
        "o_proj linear": lambda: torch.nn.functional.linear(o.view(1, H * HD), wo, bo),
        "add + rms norm": lambda: add_rms_norm_triton(h, h, wn, 1e-5),
        "router linear": lambda: torch.nn.functional.linear(h, router_w),
        "route": lambda: route_triton(torch.nn.functional.linear(h, router_w), 4),
        "empty graph": lambda: None,
    }
    print(f"attention layer parts at batch 1, context {ctx} (graph us, L2 flushed):", flush=True)
    for name, fn in parts.items():
        try:
            print(f"  {name:<28}{time_graph_flushed(fn, reps=20):8.1f}", flush=True)
        except Exception as exc:  # noqa: BLE001
            print(f"  {name:<28} failed: {type(exc).__name__}: {str(exc)[:120]}", flush=True)


def main() -> None:
    t0 = time.time()
    gen = torch.Generator().manual_seed(0)
    print(torch.cuda.get_device_name(), flush=True)
    attention_breakdown(gen)
    moe_sweep(gen)
    print(f"total {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
