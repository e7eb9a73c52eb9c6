"""GPU machine: the op table's MoE experts at T tokens (gpt-oss-20b shapes, uniform routing, the engine's
default kernels and tiles for that T), four calls and stop: a target for a profiler. The first three compile
and warm up; profile the last one's GEMMs, e.g. at 8 tokens (grouped blocks of 8, 2 GEMM launches a call):
  ncu --clock-control none -k regex:_group_gemm -s 6 -c 2 --section SpeedOfLight --section Occupancy \\
      --section WarpStateStats --section SchedulerStats python scripts/gpu_once_moe.py 8
(at 1 or 2 tokens the decode path runs: -k regex:_pair_gemm).

Run: PYTHONPATH=.:scripts python scripts/gpu_once_moe.py T
"""

from __future__ import annotations

import sys

import torch

from gpu_bench_moe import ALPHA, A, D, E, I, LIMIT, batch, mxfp4_weight
from oss_engine.kernels import get_ops


def main() -> None:
    T = int(sys.argv[1])
    gen = torch.Generator().manual_seed(0)
    w1, w2 = mxfp4_weight(2 * I, D, gen), mxfp4_weight(D, I, gen)
    x, weights, ids = batch(T, gen)
    moe = get_ops("triton").moe_experts
    print(f"T={T}: {ids.unique().numel()} of {E} experts, {T * A} pairs", flush=True)
    for _ in range(4):
        moe(x, weights, ids, w1, w2, LIMIT, ALPHA)
    torch.cuda.synchronize()


if __name__ == "__main__":
    main()
