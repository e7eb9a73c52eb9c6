"""GPU machine: a large prefill step's MoE from bf16 copies of the experts made per call (moe_grouped_mm.py:
the MXFP4 weights dequantized once a layer, then torch._grouped_mm, CUTLASS on sm_90) against the MXFP4 kernels
it replaced at those sizes ("wgmma": moe_gluon_wgmma.py's GEMM 1, `dot_scaled` GEMM 2), and its pieces.

gpt-oss-20b expert shapes (E = 32, A = 4, D = I = 2880), MXFP4 random bytes, uniform routing, CUDA-graph replays
with L2 flushed (the bench's timer), each mode checked against the float32 reference first (err = rel L2).

The first form of this probe (its own dequantization and SwiGLU kernels, before moe_grouped_mm.py existed) ran
on an H100 (docs/performance.md, "Sixteenth session"): `_grouped_mm` 2,827 + 1,543 us for the two GEMMs at
16,384 tokens (769 and 699 TFLOP/s; the bf16 8192^3 matmul 722) against 7,518 us for the engine's experts then;
it refuses a float32 output ("Grouped gemm output dtype must match `mat_a` dtype").

Run: PYTHONPATH=.:scripts python scripts/gpu_probe_prefill_grouped_mm.py [T,T,...] [--dense]
     (default 2048,4096,8192,16384; --dense: bf16 experts, as a bf16 checkpoint loads them)
"""

from __future__ import annotations

import functools
import sys

import torch

from gpu_bench_moe import A, ALPHA, D, E, I, LIMIT, batch, mxfp4_weight, time_graph_flushed
from gpu_bench_moe_decode import rel
from oss_engine.kernels.triton.moe import moe_experts_triton
from oss_engine.kernels.triton.moe_config import default_config
from oss_engine.kernels.triton.moe_grouping import group_by_expert
from oss_engine.kernels.types import ExpertWeight


def timed_configs(cfgs: dict, x, weights, ids, w1, w2, want: torch.Tensor) -> list[str]:
    """One cell a config (name -> MoeTritonConfig): the experts' us and TFLOP/s, after their error against want."""
    cells = []
    for name, cfg in cfgs.items():
        fn = functools.partial(moe_experts_triton, x, weights, ids, w1, w2, LIMIT, ALPHA, config=cfg)
        err = rel(fn(), want)
        us = time_graph_flushed(fn, reps=10)
        cells.append(f"{name} {us:,.1f} ({2 * x.shape[0] * A * 3 * I * D / us / 1e6:,.0f} TF/s, err {err:.1e})")
    return cells


def modes(Ts: list[int]) -> None:
    """The engine's path (moe_grouped_mm.py, `default_config` from 1024 rows an expert) against the MXFP4 kernels
    it replaced ("wgmma": moe_gluon_wgmma.py's GEMM 1, dot_scaled GEMM 2), and its pieces at each size."""
    from oss_engine.kernels.ref.moe import moe_experts_ref
    from oss_engine.kernels.triton import moe_grouped_mm as gmm
    from oss_engine.kernels.triton.moe_config import WGMMA_GEMM1, MoeTritonConfig, triton_config

    gen = torch.Generator().manual_seed(0)
    w1, w2 = mxfp4_weight(2 * I, D, gen), mxfp4_weight(D, I, gen)
    print(f"\nmodes ({torch.cuda.get_device_name()}): us, graph replays, L2 flushed", flush=True)
    for T in Ts:
        x, weights, ids = batch(T, gen)
        P = T * A
        want = moe_experts_ref(x, weights, ids, w1, w2, LIMIT, ALPHA).float()
        base = triton_config(P, E, torch.device("cuda"))
        cfgs = {"wgmma": MoeTritonConfig(WGMMA_GEMM1, base.gemm2, "wgmma"),
                "grouped_mm": MoeTritonConfig(WGMMA_GEMM1, base.gemm2, "grouped_mm")}
        cells = timed_configs(cfgs, x, weights, ids, w1, w2, want)
        default = default_config(P, E, torch.device("cuda")).mxfp4_decode
        print(f"T={T:>5}: " + " | ".join(cells) + f"; default {default}", flush=True)
        order, bounds = group_by_expert(ids, E)
        offs = bounds[1:].to(torch.int32)
        xs = gmm.gather_rows(x, order, A)
        d1, d2 = gmm.dequantize(w1), gmm.dequantize(w2)
        u = torch._grouped_mm(xs, d1.transpose(1, 2), offs=offs)
        act = gmm.swiglu_rows(u, order, ids, w1.bias, LIMIT, ALPHA)
        y = torch._grouped_mm(act, d2.transpose(1, 2), offs=offs)
        out = torch.empty_like(x)
        pieces = {"group": lambda: group_by_expert(ids, E), "gather": lambda: gmm.gather_rows(x, order, A),
                  "deq w1": lambda: gmm.dequantize(w1), "gmm1": lambda: torch._grouped_mm(
                      xs, d1.transpose(1, 2), offs=offs),
                  "swiglu": lambda: gmm.swiglu_rows(u, order, ids, w1.bias, LIMIT, ALPHA),
                  "deq w2": lambda: gmm.dequantize(w2),
                  "gmm2": lambda: torch._grouped_mm(act, d2.transpose(1, 2), offs=offs),
                  "combine": lambda: gmm.combine_sorted(y, order, ids, weights, w2.bias, out)}
        times = {k: time_graph_flushed(f, reps=10) for k, f in pieces.items()}
        print("  pieces: " + ", ".join(f"{k} {v:,.1f}" for k, v in times.items())
              + f"; sum {sum(times.values()):,.1f}", flush=True)


def dense(Ts: list[int]) -> None:
    """bf16 checkpoints (dense experts, no dequantization on this path): the Triton GEMMs' dense mode (what the
    default ran for them below 1024 rows an expert when this was measured) against "grouped_mm" at each size."""
    from oss_engine.kernels.ref.moe import moe_experts_ref
    from oss_engine.kernels.triton.moe_config import MoeTritonConfig, triton_config

    gen = torch.Generator().manual_seed(0)
    q1, q2 = mxfp4_weight(2 * I, D, gen), mxfp4_weight(D, I, gen)
    w1, w2 = (ExpertWeight(w.bias, dense=torch.stack([w.expert(e, torch.bfloat16) for e in range(E)]))
              for w in (q1, q2))
    del q1, q2
    print(f"\ndense bf16 experts ({torch.cuda.get_device_name()}): us, graph replays, L2 flushed", flush=True)
    for T in Ts:
        x, weights, ids = batch(T, gen)
        P = T * A
        want = moe_experts_ref(x, weights, ids, w1, w2, LIMIT, ALPHA).float()
        base = triton_config(P, E, torch.device("cuda"))  # dense weights: the Triton GEMMs' dense mode
        cells = timed_configs({"triton": base, "grouped_mm": MoeTritonConfig(base.gemm1, base.gemm2, "grouped_mm")},
                              x, weights, ids, w1, w2, want)
        default = default_config(P, E, torch.device("cuda"), dense=True).mxfp4_decode
        print(f"T={T:>5} ({P // E} rows an expert): " + " | ".join(cells) + f"; default {default}", flush=True)


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if a != "--dense"]
    sizes = [int(v) for v in args[0].split(",")] if args else [2048, 4096, 8192, 16384]
    (dense if "--dense" in sys.argv else modes)(sizes)
