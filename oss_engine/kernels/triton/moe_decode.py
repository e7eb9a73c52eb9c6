"""MoE experts for a few tokens (decode) in Triton: the contract of `moe_experts_triton` / `moe_experts_ref`
(read the latter's docstring), built for batches where experts get about one row each.

Legend: T tokens, D hidden, I intermediate, E experts, A experts per token, P = T * A (token, slot) pairs,
p = t * A + a a pair, S the split of GEMM 2's reduction, BN / BK a tile's columns / reduction step.

Why a second path. The grouped path (`moe.py`) sorts the pairs by expert (one launch), runs its two GEMMs over
blocks of BLOCK_M sorted rows and sums the slots (one more launch). At decode a block holds one real row, so
the grouping buys nothing and its launch and the block lookup at the top of every GEMM program sit on the
critical path. Here every pair streams its own expert's rows, found with one load of ids[p]:
  GEMM 1   act[p] = swiglu(x[p // A] @ W1[ids[p]]^T + b1[ids[p]])               grid (P, 2I / BN1)
  GEMM 2   y[p * S + s] = weights[p] * (act[p] @ W2[ids[p]]^T)[split s] (+ b2 on s = 0)
                                                                             grid (P, D / BN2, S)
  combine  out[t] = sum over the A * S rows t * A * S .. of y, in a fixed order (moe.py's `combine`)
Splitting GEMM 2's reduction I into S chunks gives it as many programs as GEMM 1 (D = I but W2 has half
W1's rows); the combine sums the splits with the slots, so the result stays deterministic. With defer_sum the
combine is left to the next add_rms_norm (y returned as a RowSum: moe.py's `sum_rows`).
Two tokens routed to one expert read its rows twice (the second read mostly from L2 when their programs run
together): this path is for a few tokens per step (`use_decode_path`).

Tiles: the tensor-core dot needs 16 rows, so the A operand is the pair's one row and 15 masked rows; the
weight decode (Triton's e2m1 upcast in "dot_scaled", or `_mma_step`'s other modes) is moe.py's. The defaults
were measured on an H200 at the gpt-oss-20b shapes (scripts/gpu_bench_moe_decode.py): 32-row W tiles of 256
columns, 2 warps, 2 pipeline stages (each stage also holds the 16-row A tile, so 4 stages left few programs
per SM: 55.7 vs 48.9 us at one token), GEMM 2 split in 2. Against the grouped path: 48.9 vs 64.4 us at 1 token,
84.8 vs 93.5 at 2, equal at 4, and 259.9 vs 197.5 at 8 tokens (32 pairs, where blocks start to be shared).
On CUDA both paths now default to moe_gluon.py's kernels (`GLUON_TILES` here, moe_config.py's `default_config`),
where the crossing moved down (scripts/gpu_bench_moe_gluon.py, H200): decode path 37.2 us at 1 token
(grouped 71.8), 60.6 vs 66.7 at 2, but 99.3 vs 89.1 at 4 tokens: MAX_DECODE_PAIRS = 8.

PDL (`launch.py`): every kernel here calls `launch.wait_for_inputs` (Gluon: `_gdc_wait`) first: a pair
learns its expert, so which weights to read, only from ids, which the routing writes; nothing is prefetched.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ..types import ExpertWeight, RowSum
from . import launch

from .moe import (_load_a, _mma_step, _weight_args, act_strides, kernel_mode, moe_gluon,  # None: no Gluon
                  same_layout, sum_rows)
from .swiglu import clamped_swiglu

MAX_DECODE_PAIRS = 8  # pairs up to which the op table takes this path (see use_decode_path)


@dataclass(frozen=True)
class DecodeTiles:
    block_n1: int = 32  # GEMM 1: W1 rows per program (block_n1 / 2 activations)
    block_k1: int = 256
    warps1: int = 2
    stages1: int = 2
    block_n2: int = 32  # GEMM 2: output columns per program
    block_k2: int = 256
    split2: int = 2  # S: GEMM 2 reduction chunks
    warps2: int = 2
    stages2: int = 2
    mxfp4_decode: str = "dot_scaled"  # as MoeTritonConfig.mxfp4_decode, or "gluon" (moe_gluon.py)


# stages: the loads run 2 (GEMM 1, its scale factors formed at use: see moe_gluon._row_dot) and 3 steps ahead;
# 20b batch 1 (H200, alternating runs): 570 / 570 tok/s with GEMM 1 at 3 ahead, 580 / 578 with this
GLUON_TILES = DecodeTiles(32, 128, 2, 2, 32, 128, 2, 2, 3, "gluon")


def default_decode_tiles(device: torch.device) -> DecodeTiles:
    """CUDA: moe_gluon.py's kernels where Gluon is there (MXFP4 calls they do not fit fall back to
    `triton_decode_tiles`); the interpreter: few programs and steps keep the CPU tests fast."""
    if device.type != "cuda":
        return DecodeTiles(64, 64, 4, 1, 64, 64, 2, 4, 1, "arith")
    return GLUON_TILES if moe_gluon is not None else triton_decode_tiles()


def triton_decode_tiles() -> DecodeTiles:
    """The Triton kernels' CUDA defaults (the docstring's measurements)."""
    return DecodeTiles(mxfp4_decode="dot_scaled" if hasattr(tl, "dot_scaled") else "arith")


def use_decode_path(num_pairs: int, num_experts: int) -> bool:
    """A few pairs, at most about one per expert: stream per pair (no grouping launch, no shared blocks)."""
    return num_pairs <= min(MAX_DECODE_PAIRS, num_experts)


@triton.jit
def _pair_gemm1_kernel(
    x_ptr, ids_ptr, w_ptr, s_ptr, b_ptr, act_ptr,
    s_xt, s_xk, s_we, s_wn, s_wk, s_se, s_sn, s_sg, s_be, s_bn, s_ap, s_aq, s_ah,
    limit, alpha,
    K: tl.constexpr, N: tl.constexpr, A: tl.constexpr, MODE: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr, COMPUTE: tl.constexpr, PRECISION: tl.constexpr, PDL: tl.constexpr,
    TILED: tl.constexpr,
):
    """act[p, i] = swiglu(x[p // A] @ W1[ids[p]]^T + b1)[i] for BLOCK_N / 2 columns i (W1 rows n0 .. n0 + BN)."""
    launch.wait_for_inputs(PDL)  # before ids: the expert, so the weights to read, is only known from them
    p = tl.program_id(0)
    expert = tl.load(ids_ptr + p).to(tl.int64)
    r = tl.arange(0, 16)  # the dot's 16 rows: row 0 is the pair's, the rest masked
    rmask = r == 0
    row_off = tl.zeros([16], tl.int64) + (p // A).to(tl.int64) * s_xt
    w_rows = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)  # [BN] interleaved: even gate, odd up
    nmask = w_rows < N
    acc = tl.zeros((16, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        a0, a1 = _load_a(x_ptr, row_off, rmask, k0, K, 2 * s_xk, s_xk, MODE, BLOCK_K, COMPUTE)
        acc = _mma_step(acc, a0, a1, w_ptr + expert * s_we, s_ptr + expert * s_se, w_rows, nmask, k0, K,
                        s_wn, s_wk, s_sn, s_sg, MODE, BLOCK_N, BLOCK_K, COMPUTE, PRECISION, TILED)
    acc += tl.load(b_ptr + expert * s_be + w_rows * s_bn, mask=nmask, other=0.0).to(tl.float32)[None, :]
    gate, up = tl.split(tl.reshape(acc, (16, BLOCK_N // 2, 2)))  # [16, BN/2] each: columns 2i, 2i + 1
    act = clamped_swiglu(gate, up, limit, alpha)
    cols = tl.program_id(1) * (BLOCK_N // 2) + tl.arange(0, BLOCK_N // 2)
    if MODE == 1:  # split layout, as moe.py's GEMM 1 writes it for "arith"
        col_off = (cols // 2) * s_aq + (cols % 2) * s_ah
    else:
        col_off = cols * s_ah
    ptrs = act_ptr + p.to(tl.int64) * s_ap + r[:, None] * 0 + col_off[None, :]
    tl.store(ptrs, act.to(act_ptr.dtype.element_ty), mask=rmask[:, None] & (2 * cols < N)[None, :])


@triton.jit
def _pair_gemm2_kernel(
    act_ptr, ids_ptr, w_ptr, s_ptr, b_ptr, route_w_ptr, y_ptr,
    s_ap, s_aq, s_ah, s_we, s_wn, s_wk, s_se, s_sn, s_sg, s_be, s_bn, s_yr,
    K: tl.constexpr, N: tl.constexpr, S: tl.constexpr, K_SPLIT: tl.constexpr, MODE: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, COMPUTE: tl.constexpr, PRECISION: tl.constexpr,
    PDL: tl.constexpr, TILED: tl.constexpr,
):
    """y[p * S + s, n] = weights[p] * (act[p, split s] @ W2[ids[p]][n, split s] (+ b2[n] on split 0)).
    K_SPLIT, a multiple of BLOCK_K, is each split's reduction length (the last may be shorter)."""
    launch.wait_for_inputs(PDL)  # before ids, as GEMM 1
    p = tl.program_id(0)
    s = tl.program_id(2)
    expert = tl.load(ids_ptr + p).to(tl.int64)
    r = tl.arange(0, 16)
    rmask = r == 0
    row_off = tl.zeros([16], tl.int64) + p.to(tl.int64) * s_ap
    cols = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    nmask = cols < N
    acc = tl.zeros((16, BLOCK_N), dtype=tl.float32)
    k_lo = s * K_SPLIT
    k_end = tl.minimum(k_lo + K_SPLIT, K)  # the masks' bound: a multiple of 32, like K
    for j in range(0, K_SPLIT // BLOCK_K):
        k0 = k_lo + j * BLOCK_K
        a0, a1 = _load_a(act_ptr, row_off, rmask, k0, k_end, s_aq, s_ah, MODE, BLOCK_K, COMPUTE)
        acc = _mma_step(acc, a0, a1, w_ptr + expert * s_we, s_ptr + expert * s_se, cols, nmask, k0, k_end,
                        s_wn, s_wk, s_sn, s_sg, MODE, BLOCK_N, BLOCK_K, COMPUTE, PRECISION, TILED)
    bias = tl.load(b_ptr + expert * s_be + cols * s_bn, mask=nmask & (s == 0), other=0.0).to(tl.float32)
    y = (acc + bias[None, :]) * tl.load(route_w_ptr + p).to(tl.float32)
    row = (p * S + s).to(tl.int64)
    tl.store(y_ptr + row * s_yr + r[:, None] * 0 + cols[None, :], y, mask=rmask[:, None] & nmask[None, :])


def _empty(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Every buffer this module allocates (tests replace it to poison the buffers with NaN)."""
    return torch.empty(shape, dtype=dtype, device=device)


def _gemm2_split(I: int, tiles: DecodeTiles) -> tuple[int, int]:
    """(S, K_SPLIT): GEMM 2's reduction I cut into S chunks of whole block_k2 steps, none empty."""
    S = max(1, min(tiles.split2, triton.cdiv(I, tiles.block_k2)))
    k_split = triton.cdiv(triton.cdiv(I, S), tiles.block_k2) * tiles.block_k2
    return triton.cdiv(I, k_split), k_split


def _experts_gluon(x: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor, w1: ExpertWeight, w2: ExpertWeight,
                   limit: float, alpha: float, tiles: DecodeTiles, out: torch.Tensor,
                   defer_sum: bool) -> torch.Tensor | RowSum:
    """The decode path with moe_gluon.py's GEMMs (same buffers, grids and combine as the Triton kernels)."""
    T, D = x.shape
    A = ids.shape[1]
    I = w1.bias.shape[1] // 2
    P = T * A
    pdl = launch.use_pdl(x.device)
    flat_ids = ids.reshape(-1)  # [P]
    route_w = weights.reshape(-1)  # [P]
    x = x.contiguous()
    act = _empty((P, I), torch.bfloat16, x.device)
    w, s, ws = _weight_args(w1, "dot_scaled")  # bytes [E, 2I, D/2], scales [E, 2I, D/32]
    moe_gluon._pair_gemm1_gluon[(P, (2 * I) // tiles.block_n1)](
        x.view(torch.int32), flat_ids, w.view(torch.int32), s, w1.bias, act, x.stride(0), ws[0], ws[1], *ws[3:],
        w1.bias.stride(0), act.stride(0), float(limit), float(alpha), K=D, A=A, BN=tiles.block_n1, PDL=pdl,
        TILED=w1.tiled, launch_pdl=pdl, **moe_gluon.launch_options(tiles.block_k1, tiles.warps1, tiles.stages1))

    S, k_split = _gemm2_split(I, tiles)
    y = _empty((P * S, D), torch.float32, x.device)  # row p * S + s
    w, s, ws = _weight_args(w2, "dot_scaled")
    moe_gluon._pair_gemm2_gluon[(P, D // tiles.block_n2, S)](
        act.view(torch.int32), flat_ids, w.view(torch.int32), s, w2.bias, route_w, y, act.stride(0), ws[0], ws[1],
        *ws[3:], w2.bias.stride(0), y.stride(0), K=I, S=S, K_SPLIT=k_split, BN=tiles.block_n2, PDL=pdl,
        TILED=w2.tiled, launch_pdl=pdl, **moe_gluon.launch_options(tiles.block_k2, tiles.warps2, tiles.stages2))

    return sum_rows(y, out, A * S, pdl, defer_sum)


def moe_experts_decode_triton(x: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor, w1: ExpertWeight,
                              w2: ExpertWeight, limit: float, alpha: float, tiles: DecodeTiles | None = None,
                              compute_dtype: torch.dtype | None = None,
                              defer_sum: bool = False) -> torch.Tensor | RowSum:
    """x [T, D], weights [T, A], ids [T, A] -> [T, D] in x.dtype, or a RowSum of it (defer_sum); the contract of
    `moe_experts_triton`."""
    T, D = x.shape
    A = ids.shape[1]
    E, two_i = w1.bias.shape
    I = two_i // 2
    P = T * A
    out = _empty((T, D), x.dtype, x.device)
    if P == 0:
        return out.zero_()
    same_layout(w1, w2)
    tiles = tiles or default_decode_tiles(x.device)
    compute = compute_dtype or (torch.bfloat16 if x.is_cuda else torch.float32)
    if tiles.mxfp4_decode == "gluon":
        t1, t2 = (tiles.block_n1, tiles.block_k1, tiles.warps1), (tiles.block_n2, tiles.block_k2, tiles.warps2)
        if moe_gluon is not None and moe_gluon.takes(x, w1, w2, compute, t1, t2):
            return _experts_gluon(x, weights, ids, w1, w2, limit, alpha, tiles, out, defer_sum)
        tiles = triton_decode_tiles()
    if w1.is_mxfp4 and tiles.mxfp4_decode == "dot_scaled_swap":  # its [BN, BM] accumulator: grouped path only
        raise ValueError("MXFP4 decode mode 'dot_scaled_swap' not available on the decode path")
    mode, common = kernel_mode(tiles.mxfp4_decode, w1, compute)
    pdl = launch.use_pdl(x.device)
    flat_ids = ids.reshape(-1)  # [P]
    route_w = weights.reshape(-1)  # [P]

    act = _empty((P, I), compute, x.device)
    s_aq, s_ah = act_strides(mode, I)
    w, s, ws = _weight_args(w1, mode)
    _pair_gemm1_kernel[(P, triton.cdiv(2 * I, tiles.block_n1))](
        x, flat_ids, w, s, w1.bias, act, x.stride(0), x.stride(1), *ws, w1.bias.stride(0), w1.bias.stride(1),
        act.stride(0), s_aq, s_ah, float(limit), float(alpha), K=D, N=2 * I, A=A, BLOCK_N=tiles.block_n1,
        BLOCK_K=tiles.block_k1, num_warps=tiles.warps1, num_stages=tiles.stages1, PDL=pdl, launch_pdl=pdl,
        **common)

    S, k_split = _gemm2_split(I, tiles)
    y = _empty((P * S, D), torch.float32, x.device)  # row p * S + s
    w, s, ws = _weight_args(w2, mode)
    _pair_gemm2_kernel[(P, triton.cdiv(D, tiles.block_n2), S)](
        act, flat_ids, w, s, w2.bias, route_w, y, act.stride(0), s_aq, s_ah, *ws, w2.bias.stride(0),
        w2.bias.stride(1), y.stride(0), K=I, N=D, S=S, K_SPLIT=k_split, BLOCK_N=tiles.block_n2,
        BLOCK_K=tiles.block_k2, num_warps=tiles.warps2, num_stages=tiles.stages2, PDL=pdl, launch_pdl=pdl,
        **common)

    return sum_rows(y, out, A * S, pdl, defer_sum)
