"""One gpt-oss-20b MoE layer's experts at decode sizes on one GPU: the per-pair decode path (`moe_decode.py`)
with several tile sets against the grouped path (`moe.py`).
Checks every variant against the reference in bf16 (rel L2 < 2e-2), then times CUDA-graph replays with L2
flushed (median us, the bench's timer).

Run: PYTHONPATH=.:scripts python scripts/gpu_bench_moe_decode.py [NAME,NAME...]   (default: every variant)
"""

from __future__ import annotations

import functools
import sys
import time

import torch

from oss_engine.bench.kernel_bench import graph_us
from oss_engine.kernels.ref.moe import moe_experts_ref
from oss_engine.kernels.triton.moe import moe_experts_triton
from oss_engine.kernels.triton.moe_decode import (
    DecodeTiles,
    default_decode_tiles,
    moe_experts_decode_triton,
    triton_decode_tiles,
)
from gpu_bench_moe import ALPHA, A, D, I, LIMIT, batch, mxfp4_weight

DECODE = {  # name: DecodeTiles(bn1, bk1, warps1, stages1, bn2, bk2, split2, warps2, stages2)
    "default": None,
    "triton": triton_decode_tiles(),
    "s4": DecodeTiles(32, 256, 2, 4, 32, 256, 2, 2, 4),
    "bn64k128": DecodeTiles(64, 128, 2, 2, 64, 128, 2, 2, 2),
    "bn64w4": DecodeTiles(64, 256, 4, 2, 64, 256, 2, 4, 2),
    "bn128w4": DecodeTiles(128, 256, 4, 2, 128, 256, 4, 4, 2),
    "split1": DecodeTiles(32, 256, 2, 2, 32, 256, 1, 2, 2),
    "split4": DecodeTiles(32, 256, 2, 2, 32, 256, 4, 2, 2),
    "w1": DecodeTiles(32, 256, 1, 2, 32, 256, 2, 1, 2),
    "w4": DecodeTiles(32, 256, 4, 2, 32, 256, 2, 4, 2),
    "s3": DecodeTiles(32, 256, 2, 3, 32, 256, 2, 2, 3),
    # moe_gluon.py's kernels (stages: how many steps ahead the loads run, 2 or 3)
    "gluon-d2": DecodeTiles(32, 128, 2, 2, 32, 128, 2, 2, 2, "gluon"),
    "gluon-d3": DecodeTiles(32, 128, 2, 3, 32, 128, 2, 2, 3, "gluon"),
    "gluon-w1-d3": DecodeTiles(32, 128, 1, 3, 32, 128, 2, 1, 3, "gluon"),
    "gluon-bn64-d3": DecodeTiles(64, 128, 2, 3, 64, 128, 2, 2, 3, "gluon"),
    "gluon-w4-d3": DecodeTiles(64, 128, 4, 3, 64, 128, 2, 4, 3, "gluon"),
    "gluon-bk64-d3": DecodeTiles(32, 64, 2, 3, 32, 64, 2, 2, 3, "gluon"),
    "gluon-s4-d3": DecodeTiles(32, 128, 2, 3, 32, 128, 4, 2, 3, "gluon"),
    "gluon-s4-d2": DecodeTiles(32, 128, 2, 2, 32, 128, 4, 2, 2, "gluon"),
    "gluon-d4": DecodeTiles(32, 128, 2, 4, 32, 128, 2, 2, 4, "gluon"),
    "gluon-w4-d4": DecodeTiles(64, 128, 4, 4, 64, 128, 2, 4, 4, "gluon"),
    "gluon-s4-d4": DecodeTiles(32, 128, 2, 4, 32, 128, 4, 2, 4, "gluon"),
}


def rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def main() -> None:
    t0 = time.time()
    dev = torch.device("cuda")
    print(f"{torch.cuda.get_device_name()}  torch {torch.__version__}")
    gen = torch.Generator().manual_seed(0)
    w1, w2 = mxfp4_weight(2 * I, D, gen), mxfp4_weight(D, I, gen)
    print(f"default decode tiles: {default_decode_tiles(dev)}")
    for T in (1, 2, 4, 8):
        x, weights, ids = batch(T, gen)
        ref = moe_experts_ref(x, weights, ids, w1, w2, LIMIT, ALPHA)
        runs = {}
        if T * A <= 16:
            for name, tiles in DECODE.items():
                if len(sys.argv) > 1 and name not in sys.argv[1].split(","):
                    continue
                runs["dec-" + name] = functools.partial(moe_experts_decode_triton, x, weights, ids, w1, w2, LIMIT,
                                                        ALPHA, tiles=tiles)
        runs["grp"] = functools.partial(moe_experts_triton, x, weights, ids, w1, w2, LIMIT, ALPHA)  # its defaults
        line = []
        for name, fn in runs.items():
            try:
                err = rel(fn(), ref)
                us = graph_us(fn, dev, 20)
            except Exception as exc:  # noqa: BLE001 - report, go on
                print(f"T={T:>2} {name}: {type(exc).__name__}: {str(exc).splitlines()[0][:120]}")
                continue
            line.append(f"{name} {us:.1f}" + ("" if err < 2e-2 else f" ERR {err:.1e}"))
        print(f"T={T:>2} ({ids.unique().numel()} experts): " + " | ".join(line), flush=True)

    print(f"\ntotal {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
