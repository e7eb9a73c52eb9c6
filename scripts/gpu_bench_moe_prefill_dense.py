"""GPU machine: would prefill's MoE run faster from bf16 copies of the experts? (an experiment, not a path of
the engine). gpt-oss-20b expert shapes, uniform routing, experts only, graph replay with L2 flushed
(gpu_bench_moe's timer), at prefill sizes:

  mxfp4     the engine's kernels on the MXFP4 weights (`moe_experts_triton`, default tiles: tl.dot_scaled here)
  dense     the same Triton kernels in their bf16 ("dense") mode on dequantized copies of the weights
  grouped   torch._grouped_mm (CUTLASS grouped GEMM on sm_90) on the copies: rows sorted by expert with our
            `group_by_expert`, bias, SwiGLU and the weighted slot sum in torch (deterministic: no atomics)

The copies cost 2 bytes a weight against 4.25 bits: 38 GB more for gpt-oss-20b (24 layers x 1.6 GB), which an
H200 or an 80 GB H100 can hold next to the 13.8 GB of MXFP4 weights, gpt-oss-120b (230 GB) cannot. Every
variant is first checked against the float32 reference (rel L2 < 2e-2). The matmul line is a bf16 8192^3
product measured now; "floor" is the MoE FLOPs at that rate.

Run: PYTHONPATH=.:scripts python scripts/gpu_bench_moe_prefill_dense.py [T,T,...]
Checked on the CPU machine (`grouped_mm_experts` against `moe_experts_ref`, bf16, E = 8, D = I = 64: rel L2
2.9e-3) and run on an H200: docs/performance.md, "Sixth H200 run of the day".
"""

from __future__ import annotations

import functools
import sys

import torch

from gpu_bench_moe import ALPHA, A, D, E, EXPERT_FLOPS, I, LIMIT, batch, ceilings, mxfp4_weight, timed_cells
from oss_engine.kernels.ref.moe import moe_experts_ref, swiglu_ref
from oss_engine.kernels.triton.moe import moe_experts_triton
from oss_engine.kernels.triton.moe_config import triton_config
from oss_engine.kernels.triton.moe_grouping import group_by_expert
from oss_engine.kernels.types import ExpertWeight


def dense_copy(w: ExpertWeight) -> ExpertWeight:
    """The bf16 copy [E, out, in] of an MXFP4 projection (exact: e2m1 times a power of two)."""
    return ExpertWeight(w.bias, dense=torch.stack([w.expert(e, torch.bfloat16) for e in range(w.bias.shape[0])]))


def grouped_mm_experts(x: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor, w1: ExpertWeight,
                       w2: ExpertWeight, limit: float, alpha: float) -> torch.Tensor:
    """moe_experts' contract on dense bf16 weights with torch._grouped_mm: x [T, D] -> [T, D] in x.dtype."""
    T, A_ = ids.shape
    order, bounds = group_by_expert(ids, w1.bias.shape[0])  # sorted row -> pair, [E + 1] first rows
    offs = bounds[1:].to(torch.int32)  # [E] end of each expert's rows
    expert_of_row = ids.reshape(-1)[order]  # [P]
    xs = x[order // A_]  # [P, D]
    u = torch._grouped_mm(xs, w1.dense.transpose(1, 2), offs=offs)  # [P, 2I]: W [E, out, in] read column-major
    act = swiglu_ref(u.float() + w1.bias[expert_of_row].float(), limit, alpha).to(x.dtype)  # [P, I]
    y = torch._grouped_mm(act, w2.dense.transpose(1, 2), offs=offs).float() + w2.bias[expert_of_row].float()
    y = y * weights.reshape(-1)[order, None].float()  # [P, D]
    by_pair = torch.empty_like(y)
    by_pair[order] = y
    return by_pair.view(T, A_, -1).sum(1).to(x.dtype)


def main() -> None:
    Ts = [int(v) for v in sys.argv[1].split(",")] if len(sys.argv) > 1 else [256, 1024, 2048, 8192]
    gen = torch.Generator().manual_seed(0)
    w1, w2 = mxfp4_weight(2 * I, D, gen), mxfp4_weight(D, I, gen)
    d1, d2 = dense_copy(w1), dense_copy(w2)
    gbs, tflops = ceilings()
    print(f"{torch.cuda.get_device_name()}: copy {gbs:,.0f} GB/s, bf16 matmul {tflops:,.1f} TFLOP/s")
    for T in Ts:
        x, weights, ids = batch(T, gen)
        want = moe_experts_ref(x, weights, ids, w1, w2, LIMIT, ALPHA).float()
        points = {"mxfp4": functools.partial(moe_experts_triton, x, weights, ids, w1, w2, LIMIT, ALPHA),
                  "dense": functools.partial(moe_experts_triton, x, weights, ids, d1, d2, LIMIT, ALPHA,
                                             config=triton_config(T * A, E, torch.device("cuda"))),
                  "grouped": functools.partial(grouped_mm_experts, x, weights, ids, d1, d2, LIMIT, ALPHA)}
        floor = T * A * EXPERT_FLOPS / (tflops * 1e12) * 1e6
        cells = timed_cells(points, want, reps=10, show=lambda us: f"{us:,.1f} us ({floor / us:.0%})")
        print(f"T={T:>5} (floor {floor:,.1f} us): " + " | ".join(cells), flush=True)


if __name__ == "__main__":
    main()
