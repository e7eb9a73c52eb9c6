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
import functools

import torch

from gpu_bench_moe import ALPHA, A, D, E, EXPERT_FLOPS, I, LIMIT, batch, mxfp4_weight, timed_cells
from oss_engine.kernels.ref.moe import moe_experts_ref
from oss_engine.kernels.triton.moe import GemmTiles, MoeTritonConfig, moe_experts_triton, triton_config


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
    gen = torch.Generator().manual_seed(0)
    w1, w2 = mxfp4_weight(2 * I, D, gen), mxfp4_weight(D, I, gen)
    print(torch.cuda.get_device_name(), flush=True)
    cases = {int(T): batch(int(T), gen) for T in args.tokens.split(",")}
    wants = {T: moe_experts_ref(x, w, ids, w1, w2, LIMIT, ALPHA).float() for T, (x, w, ids) in cases.items()}
    for rnd in range(2):
        for T, (x, weights, ids) in cases.items():
            points = {name: functools.partial(moe_experts_triton, x, weights, ids, w1, w2, LIMIT, ALPHA, config=cfg)
                      for name, cfg in variants(T, args.sweep).items()}
            tflops = T * A * EXPERT_FLOPS / 1e6
            cells = timed_cells(points, wants[T], reps=10,
                                show=lambda us: f"{us:.1f} ({tflops / us:.0f} TF/s)")
            print(f"r{rnd} T={T}:\n  " + "\n  ".join(cells), flush=True)


if __name__ == "__main__":
    main()
