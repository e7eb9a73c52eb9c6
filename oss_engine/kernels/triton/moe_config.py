"""The tiles and modes of moe.py's MoE experts (`MoeTritonConfig`), and which the op table runs at each size
(`default_config`, `triton_config`). The GPU thresholds and tiles are H200 or H100 measurements, each given in
the docstrings with its script (the sweeps are in docs/performance.md); the CPU interpreter's tiles only keep
the tests fast. Pure host code: nothing here launches.

Legend: P (token, slot) pairs, E experts, rows an expert = P / E (uniform routing's mean).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import triton.language as tl

from . import launch, moe_grouped_mm

try:  # Gluon (triton.experimental) ships with Triton >= 3.4; without it the "gluon" and "wgmma" modes fall back
    from . import moe_gluon, moe_gluon_wgmma
except ImportError:  # pragma: no cover - depends on the installed Triton
    moe_gluon = moe_gluon_wgmma = None


@dataclass(frozen=True)
class GemmTiles:
    block_m: int = 16  # sorted rows per program (>= 16)
    block_n: int = 32  # output columns per program (GEMM 1: W1 rows, i.e. block_n / 2 activations)
    block_k: int = 128  # reduction step, a multiple of 32 (one scale group)
    num_warps: int = 4
    num_stages: int = 3
    group_m: int = 0  # Triton kernels: 0 = 2-D grid, row blocks fastest; G = 1-D grid, G row blocks a column sweep
    # a block of <= block_m / 2 rows (an expert's last) runs at block_m / 2 rows: Triton / wgmma tiles of >= 32
    # rows (moe.py `_half_tail`), the Gluon kernels' blocks of 16 (`_gluon_half_tail`)
    half_tail: bool = False


@dataclass(frozen=True)
class MoeTritonConfig:
    gemm1: GemmTiles
    gemm2: GemmTiles
    # "arith" | "dot_scaled" | "dot_scaled_swap" (ignored for dense weights) | "gluon": both GEMMs by
    # moe_gluon.py | "wgmma": GEMM 1 by moe_gluon_wgmma.py (sm_90; gemm1: block_m rows, num_warps, num_stages
    # activation slots), GEMM 2 by "dot_scaled" | "grouped_mm": both by moe_grouped_mm.py (bf16 copies made per
    # call, torch._grouped_mm), falling back to "wgmma" where it does not take the call
    mxfp4_decode: str = "arith"


GLUON_MAX_ROWS = 16  # mean rows an expert up to which the default is moe_gluon_grouped.py's kernels
WGMMA_MIN_ROWS = 32  # mean rows an expert above which GEMM 1 defaults to moe_gluon_wgmma.py on sm_90
WGMMA_GEMM1 = GemmTiles(128, 128, 64, 8, 3, group_m=8, half_tail=True)  # BT 128, two warpgroups, 3 slots


def default_config(num_pairs: int, num_experts: int, device: torch.device, dense: bool = False) -> MoeTritonConfig:
    """Up to GLUON_MAX_ROWS rows an expert on CUDA: moe_gluon_grouped.py's kernels, falling back to `triton_config`
    for calls they do not take; otherwise `triton_config`. Measured on an H200 at the gpt-oss-20b expert
    shapes (scripts/gpu_bench_moe_gluon.py, experts only, L2 flushed), against the Triton kernels: up to 4
    rows an expert, blocks of 8 rows (one mma column tile), 64 weight rows, 4 warps, 128 k a step, the
    weights 4 steps ahead and the activations 1: T = 8 189 -> 125 us, T = 32 266 -> 189 (3 steps ahead for
    both: 135 and 201); up to 16 rows, blocks of 16 (two tiles share each decode) with 64 k a step, loads 3
    ahead: T = 64 272 -> 227, T = 128 367 -> 337 (blocks of 8 there: 248 and 429; the 4-ahead variant of
    blocks of 16: 268 and 383); their last block of <= 8 rows runs one tile (half tails: moe.py's docstring, "Blocks").
    Above WGMMA_MIN_ROWS rows an expert on sm_90, GEMM 1 by moe_gluon_wgmma.py (falling back to `triton_config`
    where it does not take the call). On an H100, experts only (scripts/gpu_bench_moe_wgmma.py, two rounds, us,
    dot_scaled -> wgmma): T = 256 (32 rows an expert) 451-460 -> 499-503, so not there; T = 512 669-680 ->
    623-632; T = 1024 1,012-1,018 -> 895-903; T = 2048 1,562-1,582 -> 1,384-1,404; T = 8192 4,530-4,619 ->
    4,183-4,200; T = 16384 8,544-8,575 -> 7,963-8,011. From moe_grouped_mm.GROUPED_MM_MIN_ROWS rows an expert
    on sm_90 with torch._grouped_mm (from GROUPED_MM_MIN_ROWS_DENSE for `dense` bf16 weights, which need no
    dequantization there), both GEMMs by moe_grouped_mm.py (its docstring has the figures)."""
    rows_per_expert = num_pairs / max(1, num_experts)
    if device.type == "cuda" and moe_gluon is not None and rows_per_expert <= GLUON_MAX_ROWS:
        t = GemmTiles(8, 64, 128, 4, 4) if rows_per_expert <= 4 else GemmTiles(16, 64, 64, 4, 3, half_tail=True)
        return MoeTritonConfig(t, t, "gluon")
    base = triton_config(num_pairs, num_experts, device)
    if (device.type == "cuda" and moe_gluon_wgmma is not None and rows_per_expert > WGMMA_MIN_ROWS
            and launch.is_sm90(device)):
        least = moe_grouped_mm.GROUPED_MM_MIN_ROWS_DENSE if dense else moe_grouped_mm.GROUPED_MM_MIN_ROWS
        grouped = rows_per_expert >= least and moe_grouped_mm.available(device)
        return MoeTritonConfig(WGMMA_GEMM1, base.gemm2, "grouped_mm" if grouped else "wgmma")
    return base


def triton_config(num_pairs: int, num_experts: int, device: torch.device) -> MoeTritonConfig:
    """Tiles per regime, by mean rows per expert. Decode (<= 8 rows an expert): BM = 16 and narrow N tiles
    of 2 warps, so that few tokens still make hundreds of programs per GEMM and no two warps decode the
    same weights. Above that, a block should hold all of an expert's rows: each weight is then
    decoded once, and the e2m1 decode is what limits these GEMMs. Measured on an H200 at the gpt-oss-20b
    expert shapes (scripts/gpu_sweep_moe_rows.py, experts only, L2 flushed), against the previous tiles:
    16 rows an expert (T = 128) 426 -> 365 us with BM = 32; 32 rows (T = 256) 649 -> 474 and 64 rows (T = 512)
    981 -> 640 with BM = 64, BK = 64; prefill (T = 2048, 256 rows) 1,792 -> 1,559 with 4 warps instead of 8.
    At up to 8 rows BM = 16 stays best (T = 64: BM = 32 356 us); there one 64 x 128 tile of 2 warps and 3
    stages for both GEMMs (GEMM 2 had 32 x 256 and GEMM 1 4 stages) took T = 8 202 -> 187 us, T = 32
    289 -> 268 and T = 64 295 -> 273. Above 64 rows an expert the tiles are visited in groups of 8 row blocks
    (moe.py `_tile`; scripts/gpu_bench_moe_order.py on an H100): T = 8192 5,658-5,725 -> 4,692-4,807 us, T = 2048
    1,562-1,722 -> 1,527-1,633. From 512 rows an expert GEMM 1 takes 256-row blocks of 8 warps: both GEMMs so
    gave 4,582-4,605 us at T = 8192 in the same call (but 1,670-1,723 at T = 2048, 256 rows) and 20b prefill of
    2k prompts 53,100-53,198 -> 55,461-55,661 tok/s; GEMM 1 alone so, in a later call, 4,495-4,502 against
    4,599-4,673 for both (T = 4096: 2,520-2,556 against 2,601-2,611). GEMM 2's 128-row tiles run an expert's
    last block at 64 rows when it holds no more (half tails: moe.py's docstring, "Blocks"), as WGMMA_GEMM1 does.
    docs/performance.md has the sweeps."""
    if device.type != "cuda":  # the interpreter: few programs and steps keep the CPU tests fast
        t = GemmTiles(16, 64, 64, 4, 1)
        return MoeTritonConfig(t, t, "arith")
    mode = "dot_scaled" if hasattr(tl, "dot_scaled") else "arith"
    rows_per_expert = num_pairs / max(1, num_experts)
    if rows_per_expert <= 8:
        t = GemmTiles(16, 64, 128, 2, 3)
    elif rows_per_expert <= 16:
        t = GemmTiles(32, 128, 64, 4, 4)
    elif rows_per_expert <= 64:
        t = GemmTiles(64, 128, 64, 4, 4)
    else:
        t = GemmTiles(128, 128, 64, 4, 3, group_m=8)
        t2 = dataclasses.replace(t, half_tail=True)
        if rows_per_expert >= 512:  # GEMM 1 in 256-row blocks of 8 warps
            return MoeTritonConfig(GemmTiles(256, 128, 64, 8, 3, group_m=8), t2, mode)
        return MoeTritonConfig(t, t2, mode)
    return MoeTritonConfig(t, t, mode)
