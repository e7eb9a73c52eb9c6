"""GPU machine: what limits the decode path's Gluon GEMMs at one token (gpt-oss-20b shapes, 4 pairs)?

Each GEMM alone, 8 launches back to back in one CUDA graph (so no launch gap and no flush), per launch:
  hbm   every launch reads 4 other experts (8 sets cycling: 280 MB, more than L2), so weights come from HBM
  l2    every launch reads the same 4 experts (GEMM 1 35 MB, GEMM 2 18 MB: mostly L2 hits)
  one   every pair reads expert 0 (8.8 / 4.4 MB: L2 hits)
If `one` is near `hbm`, the kernel is bound by its own instruction stream or latency chain, not HBM.
Tiles: (block_n, block_k, warps, depth) per GEMM; PDL on as in the engine. Then GEMM 1 over shorter K (the
intercept of time against steps is its fixed cost), and P = 8 pairs over half K against 4 over all of it
with GEMM 2 split 2-4 ways (what more, shorter programs would buy). Results: docs/performance.md.

Run: PYTHONPATH=.:scripts python scripts/gpu_probe_moe_decode_limits.py
`--once` runs each GEMM twice at the engine's tiles (moe_decode.GLUON_TILES) and stops, for a profiler, e.g.
  ncu --clock-control none -k regex:_pair_gemm -s 2 -c 2 --section WarpStateStats --section SchedulerStats \
      --section SourceCounters -o rep python scripts/gpu_probe_moe_decode_limits.py --once
  ncu -i rep.ncu-rep --page source --csv --print-source sass   # stall samples per SASS instruction
(run on the H200: docs/performance.md, "Sixth H200 run of the day").
"""

from __future__ import annotations

import sys

import torch

from gpu_bench_moe import ALPHA, A, D, I, LIMIT, mxfp4_weight
from oss_engine.bench.hardware import median_seconds
from oss_engine.kernels.triton import launch, moe_gluon
from oss_engine.kernels.triton.moe import _weight_args
from oss_engine.kernels.triton.moe_decode import GLUON_TILES

TILES = [(32, 128, 2, 3), (16, 128, 1, 3)]
LAUNCHES = 8


def gemm1(x, ids, w1, act, tiles, K=D, G=moe_gluon):
    """GEMM 1 of the decode path from module G (moe_gluon, or a timing-only copy of it)."""
    bn, bk, nw, depth = tiles
    w, s, ws = _weight_args(w1, "dot_scaled")
    G._pair_gemm1_gluon[(ids.numel(), 2 * I // bn)](
        x.view(torch.int32), ids, w.view(torch.int32), s, w1.bias, act, x.stride(0), ws[0], ws[1], *ws[3:],
        w1.bias.stride(0), act.stride(0), LIMIT, ALPHA, K=K, A=A, BN=bn, PDL=True, launch_pdl=True,
        **G.launch_options(bk, nw, depth))


def gemm2(act, ids, w2, route_w, y, tiles, split=2, G=moe_gluon):
    """GEMM 2 of the decode path from module G, as `gemm1`."""
    bn, bk, nw, depth = tiles
    k_split = -(-(-(-I // split)) // bk) * bk
    w, s, ws = _weight_args(w2, "dot_scaled")
    G._pair_gemm2_gluon[(ids.numel(), D // bn, split)](
        act.view(torch.int32), ids, w.view(torch.int32), s, w2.bias, route_w, y, act.stride(0), ws[0], ws[1],
        *ws[3:], w2.bias.stride(0), y.stride(0), K=I, S=split, K_SPLIT=k_split, BN=bn, PDL=True,
        launch_pdl=True, **G.launch_options(bk, nw, depth))


def per_launch_us(fn, reps: int = 20) -> float:
    """fn (LAUNCHES launches) captured in a CUDA graph: us a launch, median of `reps` replays."""
    fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return 1e6 * median_seconds(graph.replay, torch.device("cuda"), reps) / LAUNCHES


def operands():
    """The GEMMs' operands at one token (seed 0): w1, w2, x [1, D], act [A, I], route_w [A], y [2A, D] (split 2),
    and the expert id sets a launch reads ("hbm", "l2", "one": the module docstring)."""
    gen = torch.Generator().manual_seed(0)
    w1, w2 = mxfp4_weight(2 * I, D, gen), mxfp4_weight(D, I, gen)
    x = torch.randn(1, D, generator=gen).to(torch.bfloat16).cuda()
    act = torch.randn(A, I, generator=gen).to(torch.bfloat16).cuda()
    route_w = torch.full((A,), 0.25, device="cuda")
    y = torch.empty(2 * A, D, device="cuda")
    sets = {"hbm": [torch.arange(4 * i, 4 * i + 4, device="cuda", dtype=torch.int32) for i in range(LAUNCHES)],
            "l2": [torch.arange(4, device="cuda", dtype=torch.int32)] * LAUNCHES,
            "one": [torch.zeros(4, device="cuda", dtype=torch.int32)] * LAUNCHES}
    return w1, w2, x, act, route_w, y, sets


def main() -> None:
    assert launch.use_pdl(torch.device("cuda"))
    w1, w2, x, act, route_w, y, sets = operands()
    y8 = torch.empty(4 * A, D, device="cuda")
    act8 = torch.empty(2 * A, I, dtype=torch.bfloat16, device="cuda")
    if "--once" in sys.argv:  # for a profiler: each GEMM once at the engine's tiles, after one untimed warm-up
        t = GLUON_TILES
        for _ in range(2):
            gemm1(x, sets["hbm"][1], w1, act, (t.block_n1, t.block_k1, t.warps1, t.stages1))
            gemm2(act, sets["hbm"][1], w2, route_w, y, (t.block_n2, t.block_k2, t.warps2, t.stages2), t.split2)
        torch.cuda.synchronize()
        return
    mb1, mb2 = 4 * 2 * I * D * 4.25 / 8 / 1e6, 4 * I * D * 4.25 / 8 / 1e6
    print(torch.cuda.get_device_name(), f"GEMM 1 {mb1:.1f} MB, GEMM 2 {mb2:.1f} MB a launch (4 experts)")
    for tiles in TILES:
        cells = []
        for name, id_sets in sets.items():
            t1 = per_launch_us(lambda: [gemm1(x, ids, w1, act, tiles) for ids in id_sets])
            t2 = per_launch_us(lambda: [gemm2(act, ids, w2, route_w, y, tiles) for ids in id_sets])
            cells.append(f"{name} {t1:5.1f} {t2:5.1f}")
        print(f"bn {tiles[0]:>2} bk {tiles[1]:>3} warps {tiles[2]} depth {tiles[3]}: g1 g2 us  " + " | ".join(cells),
              flush=True)
    for K in (128, 384, 768, 1536, 2880):  # fixed cost: the intercept of time against steps
        cells = []
        for name, id_sets in sets.items():
            t1 = per_launch_us(lambda: [gemm1(x, ids, w1, act, TILES[0], K) for ids in id_sets])
            cells.append(f"{name} {t1:5.1f}")
        print(f"GEMM 1 K {K:>4} ({K // 128} steps): " + " | ".join(cells), flush=True)
    x2 = torch.cat([x, x])  # P = 8 pairs over half K: what a split of the reduction in two would give
    for tiles in [(32, 128, 2, 2), (32, 128, 2, 3), (32, 128, 2, 4), (32, 64, 2, 3)]:
        cells = []
        for name, id_sets in sets.items():
            base = per_launch_us(lambda: [gemm1(x, ids, w1, act, tiles) for ids in id_sets])
            t1 = per_launch_us(lambda: [gemm1(x2, torch.cat([ids, ids]), w1, act8, tiles, D // 2) for ids in id_sets])
            g2 = [per_launch_us(lambda: [gemm2(act, ids, w2, route_w, y8, tiles, sp) for ids in id_sets])
                  for sp in (2, 3, 4)]
            cells.append(f"{name} g1 {base:5.1f} P8/2 {t1:5.1f} g2 S2-4 " + " ".join(f"{v:5.1f}" for v in g2))
        print(f"{tiles}: " + " | ".join(cells), flush=True)
    print(f"HBM floor at 4.8 TB/s: g1 {mb1 / 4.8:.1f} us, g2 {mb2 / 4.8:.1f} us")


if __name__ == "__main__":
    main()
