"""Batch-1 linear layers of gpt-oss on one GPU: `gemv_triton` (CUDA-core GEMV) with several tile sets against
cuBLAS (F.linear), at the qkv, o_proj, router and lm_head shapes, bf16. Checks against F.linear in float32,
then times CUDA-graph replays after a read-only L2 flush (median us) and prints GB/s.

Run: PYTHONPATH=. python scripts/gpu_bench_gemv.py [SHAPE ...]  (names from SHAPES, e.g. "router 20b"; all by default)
"""

from __future__ import annotations

import sys

import torch
import torch.nn.functional as F

from oss_engine.kernels.triton.gemv import GemvTiles, gemv_triton
from gpu_probe_flush import graph_us, read_fn

SHAPES = {"qkv": (5120, 2880), "o_proj": (2880, 4096), "router 20b": (32, 2880), "router 120b": (128, 2880),
          "lm_head": (201088, 2880)}
TILES = [GemvTiles(8, 512, 4, 2), GemvTiles(2, 512, 4, 3),  # the defaults (Triton's pipeliner)
         # registers `depth` steps ahead
         GemvTiles(8, 512, 4, 1, 2), GemvTiles(8, 512, 4, 1, 3), GemvTiles(8, 256, 4, 1, 3),
         GemvTiles(4, 512, 4, 1, 3), GemvTiles(16, 256, 4, 1, 3), GemvTiles(4, 256, 2, 1, 3),
         GemvTiles(2, 512, 4, 1, 3), GemvTiles(8, 256, 2, 1, 3),
         GemvTiles(16, 512, 8, 1, 2), GemvTiles(4, 1024, 4, 1, 2)]
SMALL_N_TILES = [GemvTiles(8, 512, 4, 2), GemvTiles(4, 512, 4, 2), GemvTiles(2, 512, 4, 2), GemvTiles(1, 512, 4, 2),
                 GemvTiles(1, 1024, 4, 2), GemvTiles(1, 256, 2, 2), GemvTiles(2, 256, 2, 3), GemvTiles(1, 512, 2, 3),
                 # the whole row in one step (every weight load before the PDL wait)
                 GemvTiles(1, 4096, 4, 1), GemvTiles(1, 4096, 8, 1), GemvTiles(2, 4096, 8, 1),
                 GemvTiles(1, 2048, 4, 2)]


def main() -> None:
    dev = torch.device("cuda")
    flush = read_fn(torch.empty(256 << 20, dtype=torch.uint8, device=dev), 256 << 10)
    print(torch.cuda.get_device_name())
    names = sys.argv[1:] or list(SHAPES)
    for name, (N, K) in ((n, SHAPES[n]) for n in names):
        w = torch.randn(N, K, device=dev, dtype=torch.bfloat16)
        b = torch.randn(N, device=dev, dtype=torch.bfloat16)
        x = torch.randn(1, K, device=dev, dtype=torch.bfloat16)
        ref = F.linear(x.float(), w.float(), b.float())
        mb = N * K * 2 / 1e6
        base = graph_us(lambda: F.linear(x, w, b), flush)
        cells = [f"cuBLAS {base:.1f} ({mb * 1e3 / base:.0f} GB/s)"]
        best = None
        for t in TILES if N >= 1024 else SMALL_N_TILES:  # routers: few rows, more programs
            try:
                err = ((gemv_triton(x, w, b, t).float() - ref).norm() / ref.norm()).item()
                us = graph_us(lambda: gemv_triton(x, w, b, t), flush)
            except Exception as exc:  # noqa: BLE001 - report, go on
                cells.append(f"{t}: {type(exc).__name__}")
                continue
            cells.append(f"{t.block_n}/{t.block_k}/w{t.num_warps}" + (f"d{t.depth}" if t.depth else f"s{t.num_stages}")
                         + f" {us:.1f}"
                         + ("" if err < 1e-2 else f" ERR {err:.1e}"))
            best = min(best or (us, t), (us, t), key=lambda p: p[0])
        print(f"{name} [{N} x {K}, {mb:.1f} MB]: " + " | ".join(cells))
        print(f"   best {best[0]:.1f} us ({mb * 1e3 / best[0]:.0f} GB/s) {best[1]}", flush=True)


if __name__ == "__main__":
    main()
