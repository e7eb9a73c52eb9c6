"""GPU machine: the order in which the prefill MoE's Triton GEMMs visit their tiles (GemmTiles.group_m) and
their tiles, at prefill sizes (gpt-oss-20b shapes, uniform routing, experts only, CUDA graph replay with L2
flushed: gpu_bench_moe's timer), each point checked against the reference first. Two rounds, us, and the
experts' TFLOP/s; "ERR" marks a point off the reference.

group 0 is the 2-D grid (row blocks fastest: each column tile sweeps every row block, and at 8192 tokens GEMM
2's 189 MB of activation rows cannot stay in L2 between tiles); group G sweeps the column tiles of G row blocks
at a time.

Run: PYTHONPATH=.:scripts python scripts/gpu_bench_moe_order.py [--tokens 2048,8192] [--sweep order|big|mixed]
"""

from __future__ import annotations

import argparse

import torch

from gpu_bench_moe import A, E, prefill_rounds
from oss_engine.kernels.triton.moe_config import GemmTiles, MoeTritonConfig, triton_config


SWEEPS = {  # --sweep NAME: (block_m, block_n, block_k, warps, stages, group) for GEMM 1 and GEMM 2 alike, or a
    # pair of such tuples (GEMM 1, GEMM 2)
    "order": [(128, 128, 64, 4, 3, g) for g in (0, 4, 8, 16)] + [
        (128, 256, 64, 8, 3, 8), (256, 128, 64, 8, 3, 8), (128, 128, 64, 8, 3, 8), (128, 128, 128, 4, 2, 8),
        (128, 128, 64, 4, 4, 8), (64, 128, 64, 4, 4, 8)],
    "big": [(256, 128, 64, 8, 3, g) for g in (4, 8, 16)] + [
        (256, 128, 64, 8, 4, 8), (256, 128, 128, 8, 2, 8), (256, 256, 64, 8, 3, 8), (256, 64, 64, 8, 4, 8),
        ((256, 128, 64, 8, 3, 8), (128, 128, 64, 4, 3, 8)), ((128, 128, 64, 4, 3, 8), (256, 128, 64, 8, 3, 8))],
    "mixed": [((256, 128, 64, 8, s1, g1), (128, 128, 64, w2, s2, g2)) for s1, g1, w2, s2, g2 in (
        (3, 4, 4, 3, 8), (3, 16, 4, 3, 8), (4, 8, 4, 3, 8), (3, 8, 4, 3, 4), (3, 8, 4, 3, 16), (3, 8, 4, 4, 8),
        (3, 8, 8, 3, 8), (3, 4, 4, 3, 4))],
}


def variants(T: int, sweep: str) -> dict[str, MoeTritonConfig]:
    base = triton_config(T * A, E, torch.device("cuda"))
    out = {"default": base}
    for v in SWEEPS[sweep]:
        t1, t2 = (v, v) if isinstance(v[0], int) else v
        name = " / ".join("{}x{}x{} w{} s{} g{}".format(*t) for t in ((t1,) if t1 == t2 else (t1, t2)))
        out[name] = MoeTritonConfig(GemmTiles(*t1), GemmTiles(*t2), base.mxfp4_decode)
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--tokens", default="2048,8192")
    p.add_argument("--sweep", default="order", choices=sorted(SWEEPS))
    args = p.parse_args()
    prefill_rounds(args.tokens, lambda T: variants(T, args.sweep), sep="\n  ")


if __name__ == "__main__":
    main()
