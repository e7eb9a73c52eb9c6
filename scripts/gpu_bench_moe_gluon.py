"""GPU machine: moe_gluon_grouped.py's kernels (blocks of 8 sorted rows) against the Triton grouped kernels
(`triton_config`, tl.dot_scaled) and, up to 16 pairs, the decode path, at the gpt-oss-20b expert shapes
(uniform routing, experts only, graph replay with L2 flushed: gpu_bench_moe's timer). Each variant is
checked against the float32 reference first (rel L2 < 2e-2).

Run: PYTHONPATH=.:scripts python scripts/gpu_bench_moe_gluon.py [T,T,...]
"""

from __future__ import annotations

import functools
import sys

import torch

from gpu_bench_moe import ALPHA, A, E, EXPERT_BYTES, LIMIT, D, I, batch, mxfp4_weight, timed_cells
from oss_engine.kernels.ref.moe import moe_experts_ref
from oss_engine.kernels.triton.moe import moe_experts_triton
from oss_engine.kernels.triton.moe_config import GemmTiles, MoeTritonConfig, triton_config
from oss_engine.kernels.triton.moe_decode import moe_experts_decode_triton, use_decode_path


def gluon(t1: GemmTiles, t2: GemmTiles | None = None) -> MoeTritonConfig:
    return MoeTritonConfig(t1, t2 or t1, "gluon")


VARIANTS = {  # name: config (GemmTiles(block_m, block_n, block_k, warps, loads ahead: 4 = weights 4, activations 1))
    "m8d3": gluon(GemmTiles(8, 64, 128, 4, 3)),
    "m8d4": gluon(GemmTiles(8, 64, 128, 4, 4)),
    "m8w2d4": gluon(GemmTiles(8, 32, 128, 2, 4)),
    "m16k64d3": gluon(GemmTiles(16, 64, 64, 4, 3)),
    "m16k64d4": gluon(GemmTiles(16, 64, 64, 4, 4)),
    "m16k128d4": gluon(GemmTiles(16, 64, 128, 4, 4)),
    "m16w2k64d4": gluon(GemmTiles(16, 32, 64, 2, 4)),
}


def main() -> None:
    Ts = [int(v) for v in sys.argv[1].split(",")] if len(sys.argv) > 1 else [2, 4, 8, 16, 32, 64, 128]
    gen = torch.Generator().manual_seed(0)
    w1, w2 = mxfp4_weight(2 * I, D, gen), mxfp4_weight(D, I, gen)
    print(torch.cuda.get_device_name())
    for T in Ts:
        x, weights, ids = batch(T, gen)
        want = moe_experts_ref(x, weights, ids, w1, w2, LIMIT, ALPHA).float()
        points = {"triton": functools.partial(moe_experts_triton, x, weights, ids, w1, w2, LIMIT, ALPHA,
                                              config=triton_config(T * A, E, torch.device("cuda")))}
        if use_decode_path(T * A, E):
            points["decode"] = functools.partial(moe_experts_decode_triton, x, weights, ids, w1, w2, LIMIT, ALPHA)
        for name, cfg in VARIANTS.items():
            points[name] = functools.partial(moe_experts_triton, x, weights, ids, w1, w2, LIMIT, ALPHA, config=cfg)
        cells = timed_cells(points, want, reps=15)
        mb = ids.unique().numel() * EXPERT_BYTES / 1e6
        print(f"T={T:>4} ({ids.unique().numel()} experts, {mb:.0f} MB): " + " | ".join(cells), flush=True)


if __name__ == "__main__":
    main()
