"""Mixture-of-experts experts in Triton: the twin of `kernels/ref/moe.py` `moe_experts_ref` (same contract,
read its docstring). Two grouped GEMMs that gather token rows and read MXFP4 (or dense) weights directly.

Legend: T tokens, D hidden, I intermediate, E experts, A experts per token, P = T * A (token, slot) pairs,
BM rows of a block (BLOCK_M), r a sorted row (0 <= r < P), p = t * A + a a pair.

Pipeline, with no host synchronisation (every grid is sized from shapes):
  1. group    order [P] = stable argsort(ids.flat): sorted row r holds pair order[r], rows grouped by
              expert; bounds [E + 1] int32: bounds[e] = first sorted row of expert e (moe_grouping.py's
              `group_by_expert`: one or two Triton launches, torch.sort for the largest steps).
  2. GEMM 1   act[r] = swiglu(x[order[r] // A] @ W1[e]^T + b1[e])            act [P, I] (compute dtype)
  3. GEMM 2   y[order[r]] = weight[order[r]] * (act[r] @ W2[e]^T + b2[e])    y [P, D] (x.dtype)
  4. combine  out[t] = sum over a of y[t * A + a]                            out [T, D] (x.dtype)
              (or, with defer_sum, y returned as a RowSum that the next add_rms_norm sums: `sum_rows`)
GEMM 2 writes each pair's row once and the combine sums the A rows in float32 in a fixed order: deterministic,
unlike atomics into out. The grouped paths' pair rows are in x.dtype: in bf16 each weighted expert output is
rounded once before the sum, as the reference model's bf16 path rounds it, and the [P, D] round trip is half
that of float32 rows (755 MB a layer of a 16,384-token prefill step, 358 us of combine on an H100). The decode
path (moe_decode.py) keeps float32 rows: its GEMM 2 splits its sum, and at a few rows the traffic is nothing.
So in bf16 a pair row is rounded on the grouped paths and not on the decode path; in float32 no path rounds.

Blocks. Expert e owns ceil(count_e / BM) consecutive blocks of BM sorted rows (the last one padded, pad rows
masked). Each GEMM derives its own blocks from `bounds` inside the kernel (`_expert_block`), so the two
GEMMs may use different BM. The axis-0 grid is the static bound ceil(P / BM) + min(E, P) >= sum over e of
ceil(count_e / BM); programs past the last block return at once.
Worked example, E = 4, BM = 16, counts [20, 0, 3, 1]: bounds = [0, 20, 20, 23, 24], blocks per expert
nb = [2, 0, 1, 1], inclusive cumsum [2, 2, 3, 4], grid ceil(24 / 16) + 4 = 6. Program 1: experts with
cumsum <= 1: none -> e = 0, rows [16, 20) (12 pad rows). Program 2: cumsum <= 2 for e = 0 and 1 -> e = 2
(empty expert 1 skipped), rows [20, 23). Program 3 -> e = 3, rows [23, 24). Programs 4, 5 return.
Half tails (GemmTiles.half_tail, the prefill tiles of 128 rows and moe_gluon.py's blocks of 16): a block of
<= BM / 2 rows, which only an expert's last block can be, runs at BM / 2 rows (a runtime branch to the same
code at half width; in the Gluon kernels one mma token tile instead of two: 20b batch 64 +2%). A padded
block costs about what a full one does (the tensor cores and the activation loads work on every pad row, and
the weights are decoded once a block either way), and an expert's last block holds on average half of BM:
at 2048 tokens of gpt-oss-20b (256 rows an expert, uniform routing) 80 blocks of 128 served 64 blocks' rows,
16 of them tails of <= 64 rows. On an H100 (experts only, us, the wgmma GEMM 1 and this GEMM 2 both with half
tails; docs/performance.md): 1024 tokens 822-827 -> 775-779, 2048 tokens 1,228-1,398 -> 1,190-1,282 (in
every round), 8192 and 16384 within the rounds' spread; 20b TTFT 39.6-39.7 -> 38.6-38.7 ms. A half block
still costs more than half a full one: its weights are decoded as often. Same bits either way: a row's sum
runs over k in the same order at any block width (GPU-tested).

GEMM 1 tiles. A program owns BLOCK_N consecutive rows of W1, i.e. BLOCK_N / 2 (gate 2i, up 2i + 1) pairs: one
accumulator [BM, BLOCK_N] (one tall dot keeps the tensor-core warps along the weight rows, so no warp decodes
a weight another warp also decodes), split into gate and up [BM, BLOCK_N / 2] in the epilogue for the bias
and the clamped SwiGLU; each program writes BLOCK_N / 2 activation columns.

Weight decode, chosen by `MoeTritonConfig.mxfp4_decode`. Weights stay in the stored layout: row n of an
[E, out, in/32, 16] block tensor is in/2 contiguous bytes, so a [BN, BK] tile is BN runs of BK/2 contiguous
bytes (16-byte vector loads) plus BN x BK/32 scale bytes, so no load-time re-layout is done. (What would
pay next: a layout whose bytes land in each thread in tensor-core operand order, which the upcast now
reaches through shared memory byte by byte; see the report in the issue.)
  "dot_scaled"       tl.dot_scaled(a bf16 [BM, BK], None, "bf16", w e2m1 [BK/2, BN], scales [BN, BK/32]):
                     Triton's own upcast (a PRMT lookup, then the scale as a bf16 multiply) in registers,
                     then the tensor cores. GPU only (raises in the CPU interpreter). The default on CUDA.
  "dot_scaled_swap"  the same with the weights as the left operand (w [BN, BK/2] @ a^T, acc [BN, BM]);
                     Triton already puts the e2m1 operand on the left for small BM, so this mostly changes
                     register use (it avoids GEMM 2's spills at 128 x 128 tiles).
  "arith"            the e2m1 code c -> float32 bits by integer arithmetic (`_e2m1_to_f32`), times
                     2**(s - 127), cast to the compute dtype, tl.dot. The A operand is read as its even and
                     odd columns (a_even, a_odd [BM, BK/2]) so the low nibbles (elements 2j) meet a_even and
                     the high ones a_odd: acc += a_even @ lo^T + a_odd @ hi^T, no interleave. Portable (the
                     CPU interpreter runs it) but ~14 instructions a weight on sm_90 against ~5.2 for
                     "dot_scaled" (counted in the SASS of both at the decode tiles), so only a fallback there.
  "dense"            bf16 checkpoints: the same kernels reading plain [BN, BK] tiles.
  "gluon", "wgmma"   moe_gluon_grouped.py's kernels for both GEMMs (few rows an expert, `default_config`), or GEMM 1
                     by moe_gluon_wgmma.py (sm_90, prefill: the weights decoded straight into wgmma's register
                     operand) with GEMM 2 as "dot_scaled"; each falls back to these kernels where it does not
                     take the call.
  "grouped_mm"       moe_grouped_mm.py (sm_90, large prefill steps): the experts dequantized to bf16 once a call,
                     then torch._grouped_mm for both GEMMs; falls back to "wgmma" where it does not take the call.
Scale byte 0 decodes as 2**-127 like the reference; byte 255 (NaN in the OCP spec, never produced) is not
special-cased.
A operand addressing: "arith" reads logical column k = 2q + h at q * s_aq + h * s_ah (x: s_aq = 2 s_xk,
s_ah = s_xk; act in the split layout [P, 2, I/2] that GEMM 1 writes for it: s_aq = 1, s_ah = I/2); the
other modes read a natural row, column k at k * s_ah.

PDL (`launch.py`): every kernel here calls `gdc_wait()` first. The GEMMs find their expert (so the weights to
prefetch) only from `bounds`, which the grouping writes, so nothing is read before the wait.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..types import ExpertWeight, RowSum
from . import launch, moe_grouped_mm
from .moe_config import GemmTiles, MoeTritonConfig, default_config, triton_config
from .moe_grouping import group_by_expert
from .swiglu import clamped_swiglu
from .tiles import tiled_offsets

try:  # Gluon (triton.experimental) ships with Triton >= 3.4; without it the "gluon" and "wgmma" modes fall back
    from . import moe_gluon, moe_gluon_grouped, moe_gluon_wgmma
except ImportError:  # pragma: no cover - depends on the installed Triton
    moe_gluon = moe_gluon_grouped = moe_gluon_wgmma = None

_TL_DTYPE = {torch.float32: tl.float32, torch.bfloat16: tl.bfloat16, torch.float16: tl.float16}
_MODES = {"dense": 0, "arith": 1, "dot_scaled": 2, "dot_scaled_swap": 3}


# ----------------------------------------------------------------------------------------------- device code


@triton.jit
def _expert_block(bounds_ptr, pid_m, E: tl.constexpr, E_PAD: tl.constexpr, BLOCK_M: tl.constexpr):
    """Block pid_m -> (expert, first sorted row, end row, blocks in all); see the module docstring."""
    e_idx = tl.arange(0, E_PAD)
    e_mask = e_idx < E
    lo = tl.load(bounds_ptr + e_idx, mask=e_mask, other=0)  # [E_PAD]
    hi = tl.load(bounds_ptr + e_idx + 1, mask=e_mask, other=0)
    nb = (hi - lo + BLOCK_M - 1) // BLOCK_M  # blocks per expert, 0 for pads
    ends = tl.cumsum(nb, axis=0)  # inclusive: expert e owns blocks [ends[e] - nb[e], ends[e])
    expert = tl.sum((ends <= pid_m).to(tl.int32), axis=0)
    first_block = tl.sum(tl.where(e_idx < expert, nb, 0), axis=0)
    start = tl.sum(tl.where(e_idx == expert, lo, 0), axis=0) + (pid_m - first_block) * BLOCK_M
    end = tl.sum(tl.where(e_idx == expert, hi, 0), axis=0)
    return expert, start, end, tl.sum(nb, axis=0)


@triton.jit
def _tile(grid_m, GRID_N: tl.constexpr, GROUP_M: tl.constexpr):
    """This program's (row block, column tile). GROUP_M = 0: the 2-D grid's (axis 0, axis 1), row blocks
    fastest: each column tile sweeps every row block, so with many rows (gathered activations, 47 MB at 8192
    tokens for GEMM 1, 189 MB for GEMM 2) they leave L2 before the next tile reads them again. GROUP_M = G: a
    1-D grid in groups of G row blocks (the last group may be shorter), each group's column tiles in turn with
    its row blocks fastest, so that a group's rows and its experts' weight tiles stay in L2 while reused."""
    if GROUP_M == 0:
        pid_m = tl.program_id(0)
        pid_n = tl.program_id(1)
    else:
        pid = tl.program_id(0)
        in_group = GROUP_M * GRID_N
        first = (pid // in_group) * GROUP_M
        size = tl.minimum(grid_m - first, GROUP_M)
        pid_m = first + (pid % in_group) % size
        pid_n = (pid % in_group) // size
    return pid_m, pid_n


@triton.jit
def _e2m1_to_f32(c):
    """int32 e2m1 codes 0..15 -> float32, exact. Magnitude code m = c & 7 (exponent m >> 1, mantissa m & 1):
    m >= 2 is normal, value 2**((m >> 1) - 1) * (1 + (m & 1) / 2), i.e. float32 bits (m << 22) + (126 << 23)
    (m = 2 -> 127 << 23 = 1.0; m = 7 -> 6.0); m = 1 is 0.5 = 126 << 23 and m = 0 is 0 (= m * (126 << 23));
    bit 3 is the sign."""
    m = c & 7
    bits = tl.where(m > 1, (m << 22) + (126 << 23), (m & 1) * (126 << 23))
    bits = bits.to(tl.uint32) | ((c & 8).to(tl.uint32) << 28)
    return bits.to(tl.float32, bitcast=True)


@triton.jit
def _e8m0_to_f32(s):
    """uint8 scale bytes -> 2**(s - 127) in float32 (exponent field s; s = 0 is the subnormal 2**-127)."""
    f = (s.to(tl.uint32) << 23).to(tl.float32, bitcast=True)
    return tl.where(s == 0, 5.877471754111438e-39, f)


@triton.jit
def _load_a(a_ptr, row_off, rmask, k0, K, s_aq, s_ah, MODE: tl.constexpr, BLOCK_K: tl.constexpr,
            COMPUTE: tl.constexpr):
    """A tile for reduction step k0: (a_even, a_odd) [BM, BK/2] for "arith" (column 2q + h at q * s_aq +
    h * s_ah), else (a, a) [BM, BK] from a natural row (column k at k * s_ah)."""
    if MODE == 1:
        q = k0 // 2 + tl.arange(0, BLOCK_K // 2)  # pair-of-columns index: columns 2q and 2q + 1
        mask = rmask[:, None] & (q < K // 2)[None, :]
        ptrs = a_ptr + row_off[:, None] + q[None, :] * s_aq
        a_even = tl.load(ptrs, mask=mask, other=0.0).to(COMPUTE)
        a_odd = tl.load(ptrs + s_ah, mask=mask, other=0.0).to(COMPUTE)
        return a_even, a_odd
    else:
        k = k0 + tl.arange(0, BLOCK_K)
        mask = rmask[:, None] & (k < K)[None, :]
        a = tl.load(a_ptr + row_off[:, None] + k[None, :] * s_ah, mask=mask, other=0.0).to(COMPUTE)
        return a, a


@triton.jit
def _load_scales(s_ptr, rows, nmask, k0, K, s_sn, s_sg, BLOCK_K: tl.constexpr):
    g = k0 // 32 + tl.arange(0, BLOCK_K // 32)  # [G] scale groups of the step
    gmask = nmask[:, None] & (g < K // 32)[None, :]  # [BN, G]
    return tl.load(s_ptr + rows[:, None] * s_sn + g[None, :] * s_sg, mask=gmask, other=127), g, gmask


@triton.jit
def _w_offsets(rows, byte, s_wn, s_wk, TILED: tl.constexpr):
    """Offsets of byte `byte` of weight rows `rows` (broadcast) from an expert's MXFP4 bytes: rows * s_wn +
    byte * s_wk, or with TILED those of weights/tiles.py's layout (`tiles.tiled_offsets`; s_wk is then 1)."""
    if TILED:
        return tiled_offsets(rows, byte, s_wn)
    else:
        return rows * s_wn + byte * s_wk


@triton.jit
def _mma_step(acc, a0, a1, w_ptr, s_ptr, rows, nmask, k0, K, s_wn, s_wk, s_sn, s_sg,
              MODE: tl.constexpr, BN: tl.constexpr, BLOCK_K: tl.constexpr, COMPUTE: tl.constexpr,
              PRECISION: tl.constexpr, TILED: tl.constexpr):
    """acc += A[:, k0:k0+BK] @ W[rows, k0:k0+BK]^T for one expert's weight (w_ptr, s_ptr at its base).

    acc is [BM, BN], or [BN, BM] in mode 3. Dense: w [out, in] with strides (s_wn, s_wk). MXFP4: w is the
    byte view [out, in/2] (s_wk per byte = 2 values; TILED: weights/tiles.py's layout, `_w_offsets`), scales
    [out, in/32] with strides (s_sn, s_sg).
    """
    if MODE == 0:
        k = k0 + tl.arange(0, BLOCK_K)
        w = tl.load(w_ptr + rows[:, None] * s_wn + k[None, :] * s_wk,
                    mask=nmask[:, None] & (k < K)[None, :], other=0.0).to(COMPUTE)  # [BN, BK]
        acc = tl.dot(a0, tl.trans(w), acc, input_precision=PRECISION)
    elif MODE == 1:
        scales, g, gmask = _load_scales(s_ptr, rows, nmask, k0, K, s_sn, s_sg, BLOCK_K)  # [BN, G]
        j = tl.arange(0, 16)
        byte = g[None, :, None] * 16 + j[None, None, :]  # [1, G, 16]
        packed = tl.load(w_ptr + _w_offsets(rows[:, None, None], byte, s_wn, s_wk, TILED), mask=gmask[:, :, None],
                         other=0).to(tl.int32)  # [BN, G, 16]: byte j of group g holds elements 2j, 2j+1
        factor = _e8m0_to_f32(scales)[:, :, None]  # [BN, G, 1]
        lo = tl.reshape((_e2m1_to_f32(packed & 15) * factor).to(COMPUTE), (BN, BLOCK_K // 2))  # elt k0 + 2q
        hi = tl.reshape((_e2m1_to_f32(packed >> 4) * factor).to(COMPUTE), (BN, BLOCK_K // 2))  # k0 + 2q + 1
        acc = tl.dot(a0, tl.trans(lo), acc, input_precision=PRECISION)
        acc = tl.dot(a1, tl.trans(hi), acc, input_precision=PRECISION)
    elif MODE == 2:
        scales, g, gmask = _load_scales(s_ptr, rows, nmask, k0, K, s_sn, s_sg, BLOCK_K)
        q = k0 // 2 + tl.arange(0, BLOCK_K // 2)  # byte index along in/2
        packed = tl.load(w_ptr + _w_offsets(rows[None, :], q[:, None], s_wn, s_wk, TILED),
                         mask=nmask[None, :] & (q < K // 2)[:, None], other=0)  # [BK/2, BN]
        acc = tl.dot_scaled(a0, None, "bf16", packed, scales, "e2m1", acc, fast_math=True)
    else:
        scales, g, gmask = _load_scales(s_ptr, rows, nmask, k0, K, s_sn, s_sg, BLOCK_K)
        q = k0 // 2 + tl.arange(0, BLOCK_K // 2)
        packed = tl.load(w_ptr + _w_offsets(rows[:, None], q[None, :], s_wn, s_wk, TILED),
                         mask=nmask[:, None] & (q < K // 2)[None, :], other=0)  # [BN, BK/2]
        acc = tl.dot_scaled(packed, scales, "e2m1", tl.trans(a0), None, "bf16", acc, fast_math=True)
    return acc


@triton.jit
def _moe_gemm1_kernel(
    x_ptr, order_ptr, bounds_ptr, w_ptr, s_ptr, b_ptr, act_ptr,
    s_xt, s_xk, s_we, s_wn, s_wk, s_se, s_sn, s_sg, s_be, s_bn, s_ar, s_aq, s_ah,
    limit, alpha, grid_m,
    K: tl.constexpr, N: tl.constexpr, A: tl.constexpr, E: tl.constexpr, E_PAD: tl.constexpr,
    MODE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    COMPUTE: tl.constexpr, PRECISION: tl.constexpr, PDL: tl.constexpr, GROUP_M: tl.constexpr,
    HALF_TAIL: tl.constexpr, TILED: tl.constexpr,
):
    """act[r, i] = swiglu(x[tok(r)] @ W1[e]^T + b1[e])[i] for the block's rows and BLOCK_N / 2 columns i
    (W1 rows n0 .. n0 + BLOCK_N, N = 2I). HALF_TAIL: a block of <= BLOCK_M / 2 rows runs at half the rows
    (module docstring, "Blocks"). TILED: the MXFP4 bytes in weights/tiles.py's layout (`_w_offsets`)."""
    launch.wait_for_inputs(PDL)
    pid_m, pid_n = _tile(grid_m, (N + BLOCK_N - 1) // BLOCK_N, GROUP_M)
    expert, start, end, total = _expert_block(bounds_ptr, pid_m, E, E_PAD, BLOCK_M)
    if pid_m >= total:
        return
    if HALF_TAIL and end - start <= BLOCK_M // 2:  # the block runs at BLOCK_M // 2 rows
        _gemm1_block(x_ptr, order_ptr, w_ptr, s_ptr, b_ptr, act_ptr, s_xt, s_xk, s_we, s_wn, s_wk, s_se, s_sn, s_sg,
                     s_be, s_bn, s_ar, s_aq, s_ah, limit, alpha, expert, start, end, pid_n,
                     K, N, A, MODE, BLOCK_M // 2, BLOCK_N, BLOCK_K, COMPUTE, PRECISION, TILED)
    else:
        _gemm1_block(x_ptr, order_ptr, w_ptr, s_ptr, b_ptr, act_ptr, s_xt, s_xk, s_we, s_wn, s_wk, s_se, s_sn, s_sg,
                     s_be, s_bn, s_ar, s_aq, s_ah, limit, alpha, expert, start, end, pid_n,
                     K, N, A, MODE, BLOCK_M, BLOCK_N, BLOCK_K, COMPUTE, PRECISION, TILED)


@triton.jit
def _gemm1_block(x_ptr, order_ptr, w_ptr, s_ptr, b_ptr, act_ptr, s_xt, s_xk, s_we, s_wn, s_wk, s_se, s_sn, s_sg,
                 s_be, s_bn, s_ar, s_aq, s_ah, limit, alpha, expert, start, end, pid_n,
                 K: tl.constexpr, N: tl.constexpr, A: tl.constexpr, MODE: tl.constexpr, BLOCK_M: tl.constexpr,
                 BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, COMPUTE: tl.constexpr, PRECISION: tl.constexpr,
                 TILED: tl.constexpr):
    """`_moe_gemm1_kernel`'s work for sorted rows [start, min(start + BLOCK_M, end)) of `expert`."""
    rows = start + tl.arange(0, BLOCK_M)  # [BM] sorted rows
    rmask = rows < end
    tok = tl.load(order_ptr + rows, mask=rmask, other=0) // A  # [BM] token of each row
    w_rows = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)  # [BN] interleaved: even gate, odd up
    nmask = w_rows < N
    w_base = w_ptr + expert.to(tl.int64) * s_we
    s_base = s_ptr + expert.to(tl.int64) * s_se
    if MODE == 3:
        acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        # x column k = 2q + h lives at q * (2 s_xk) + h * s_xk
        a0, a1 = _load_a(x_ptr, tok.to(tl.int64) * s_xt, rmask, k0, K, 2 * s_xk, s_xk, MODE, BLOCK_K, COMPUTE)
        acc = _mma_step(acc, a0, a1, w_base, s_base, w_rows, nmask, k0, K, s_wn, s_wk, s_sn, s_sg,
                        MODE, BLOCK_N, BLOCK_K, COMPUTE, PRECISION, TILED)
    if MODE == 3:
        acc = tl.trans(acc)
    acc += tl.load(b_ptr + expert * s_be + w_rows * s_bn, mask=nmask, other=0.0).to(tl.float32)[None, :]
    gate, up = tl.split(tl.reshape(acc, (BLOCK_M, BLOCK_N // 2, 2)))  # [BM, BN/2] each: columns 2i, 2i + 1
    act = clamped_swiglu(gate, up, limit, alpha)  # [BM, BN/2]
    cols = pid_n * (BLOCK_N // 2) + tl.arange(0, BLOCK_N // 2)  # activation columns
    if MODE == 1:  # split layout: column i at (i // 2) * s_aq + (i % 2) * s_ah
        col_off = (cols // 2) * s_aq + (cols % 2) * s_ah
    else:  # natural row: column i at i * s_ah
        col_off = cols * s_ah
    ptrs = act_ptr + rows[:, None].to(tl.int64) * s_ar + col_off[None, :]
    tl.store(ptrs, act.to(act_ptr.dtype.element_ty), mask=rmask[:, None] & (2 * cols < N)[None, :])


@triton.jit
def _moe_gemm2_kernel(
    act_ptr, order_ptr, bounds_ptr, w_ptr, s_ptr, b_ptr, route_w_ptr, y_ptr,
    s_ar, s_aq, s_ah, s_we, s_wn, s_wk, s_se, s_sn, s_sg, s_be, s_bn, s_yp, grid_m,
    K: tl.constexpr, N: tl.constexpr, E: tl.constexpr, E_PAD: tl.constexpr, MODE: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, COMPUTE: tl.constexpr, PRECISION: tl.constexpr,
    PDL: tl.constexpr, GROUP_M: tl.constexpr, HALF_TAIL: tl.constexpr, TILED: tl.constexpr,
):
    """y[order[r], n] = route_w[order[r]] * (act[r] @ W2[e]^T + b2[e])[n] for the block's rows, BLOCK_N n.
    HALF_TAIL and TILED as `_moe_gemm1_kernel`."""
    launch.wait_for_inputs(PDL)
    pid_m, pid_n = _tile(grid_m, (N + BLOCK_N - 1) // BLOCK_N, GROUP_M)
    expert, start, end, total = _expert_block(bounds_ptr, pid_m, E, E_PAD, BLOCK_M)
    if pid_m >= total:
        return
    if HALF_TAIL and end - start <= BLOCK_M // 2:  # the block runs at BLOCK_M // 2 rows
        _gemm2_block(act_ptr, order_ptr, w_ptr, s_ptr, b_ptr, route_w_ptr, y_ptr, s_ar, s_aq, s_ah, s_we, s_wn, s_wk,
                     s_se, s_sn, s_sg, s_be, s_bn, s_yp, expert, start, end, pid_n,
                     K, N, MODE, BLOCK_M // 2, BLOCK_N, BLOCK_K, COMPUTE, PRECISION, TILED)
    else:
        _gemm2_block(act_ptr, order_ptr, w_ptr, s_ptr, b_ptr, route_w_ptr, y_ptr, s_ar, s_aq, s_ah, s_we, s_wn, s_wk,
                     s_se, s_sn, s_sg, s_be, s_bn, s_yp, expert, start, end, pid_n,
                     K, N, MODE, BLOCK_M, BLOCK_N, BLOCK_K, COMPUTE, PRECISION, TILED)


@triton.jit
def _gemm2_block(act_ptr, order_ptr, w_ptr, s_ptr, b_ptr, route_w_ptr, y_ptr, s_ar, s_aq, s_ah, s_we, s_wn, s_wk,
                 s_se, s_sn, s_sg, s_be, s_bn, s_yp, expert, start, end, pid_n,
                 K: tl.constexpr, N: tl.constexpr, MODE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                 BLOCK_K: tl.constexpr, COMPUTE: tl.constexpr, PRECISION: tl.constexpr, TILED: tl.constexpr):
    """`_moe_gemm2_kernel`'s work for sorted rows [start, min(start + BLOCK_M, end)) of `expert`."""
    rows = start + tl.arange(0, BLOCK_M)
    rmask = rows < end
    pair = tl.load(order_ptr + rows, mask=rmask, other=0)  # [BM] p = t * A + a
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    nmask = cols < N
    w_base = w_ptr + expert.to(tl.int64) * s_we
    s_base = s_ptr + expert.to(tl.int64) * s_se
    if MODE == 3:
        acc = tl.zeros((BLOCK_N, BLOCK_M), dtype=tl.float32)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        a0, a1 = _load_a(act_ptr, rows.to(tl.int64) * s_ar, rmask, k0, K, s_aq, s_ah, MODE, BLOCK_K, COMPUTE)
        acc = _mma_step(acc, a0, a1, w_base, s_base, cols, nmask, k0, K, s_wn, s_wk, s_sn, s_sg,
                        MODE, BLOCK_N, BLOCK_K, COMPUTE, PRECISION, TILED)
    if MODE == 3:
        acc = tl.trans(acc)
    bias = tl.load(b_ptr + expert * s_be + cols * s_bn, mask=nmask, other=0.0).to(tl.float32)
    route_w = tl.load(route_w_ptr + pair, mask=rmask, other=0.0).to(tl.float32)
    y = (acc + bias[None, :]) * route_w[:, None]
    tl.store(y_ptr + pair[:, None].to(tl.int64) * s_yp + cols[None, :], y.to(y_ptr.dtype.element_ty),
             mask=rmask[:, None] & nmask[None, :])


@triton.jit
def _combine_kernel(y_ptr, out_ptr, T, D, s_yp, s_ot, A: tl.constexpr, BLOCK_T: tl.constexpr,
                    BLOCK_D: tl.constexpr, PDL: tl.constexpr):
    """out[t, d] = sum over a (in order, float32) of y[t * A + a, d], cast to out's dtype."""
    launch.wait_for_inputs(PDL)
    t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    mask = (t < T)[:, None] & (d < D)[None, :]
    acc = tl.zeros((BLOCK_T, BLOCK_D), dtype=tl.float32)
    for a in tl.static_range(A):
        acc += tl.load(y_ptr + (t * A + a)[:, None].to(tl.int64) * s_yp + d[None, :], mask=mask,
                       other=0.0).to(tl.float32)
    tl.store(out_ptr + t[:, None].to(tl.int64) * s_ot + d[None, :], acc.to(out_ptr.dtype.element_ty), mask=mask)


# ------------------------------------------------------------------------------------------------- host code


def _empty(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Every buffer this module allocates (tests replace it to poison the buffers with NaN)."""
    return torch.empty(shape, dtype=dtype, device=device)


def _weight_args(w: ExpertWeight, mode: str) -> tuple[torch.Tensor, torch.Tensor, tuple[int, ...]]:
    """(weight tensor, scales tensor, (s_we, s_wn, s_wk, s_se, s_sn, s_sg)) as the kernels read them."""
    if mode == "dense":
        d = w.dense  # [E, out, in]
        return d, d, (d.stride(0), d.stride(1), d.stride(2), 0, 0, 0)
    E, out, groups, _ = w.blocks.shape
    b = w.blocks.reshape(E, out, groups * 16)  # [E, out, in/2] bytes; a view for the stored layout
    s = w.scales  # [E, out, in/32]
    return b, s, (b.stride(0), b.stride(1), b.stride(2), s.stride(0), s.stride(1), s.stride(2))


def same_layout(w1: ExpertWeight, w2: ExpertWeight) -> None:
    """The GEMMs take one TILED for both projections: refuse a pair whose byte layouts differ."""
    if w1.tiled != w2.tiled:
        raise ValueError(f"w1 and w2 must share their byte layout, got tiled={w1.tiled} and tiled={w2.tiled}")


def kernel_mode(requested: str, w1: ExpertWeight, compute: torch.dtype) -> tuple[str, dict]:
    """(the mode the GEMMs run, their MODE / COMPUTE / PRECISION constexprs): "dense" for dense weights, else
    the requested MXFP4 decode, "arith" in place of a dot_scaled mode when compute is not bf16 (tl.dot_scaled
    multiplies in bf16 only), and TILED, the weights' byte layout (w2 shares it: `same_layout`).
    Shared by this path and the decode path (moe_decode.py)."""
    mode = requested if w1.is_mxfp4 else "dense"
    if mode not in _MODES or (w1.is_mxfp4 and mode == "dense"):
        raise ValueError(f"unknown MXFP4 decode mode {requested!r}")
    if mode.startswith("dot_scaled") and compute != torch.bfloat16:
        mode = "arith"
    return mode, {"MODE": _MODES[mode], "COMPUTE": _TL_DTYPE[compute],
                  "PRECISION": "ieee" if compute == torch.float32 else "tf32",  # ieee: no tf32 for float32
                  "TILED": w1.tiled}


def act_strides(mode: str, I: int) -> tuple[int, int]:
    """(s_aq, s_ah) of the [P, I] activation GEMM 1 writes and GEMM 2 reads: "arith" keeps it split as
    [P, 2, I/2] (evens, odds), the other modes as natural rows."""
    return (1, I // 2) if mode == "arith" else (2, 1)


def combine(y: torch.Tensor, out: torch.Tensor, rows_per_token: int, pdl: bool) -> torch.Tensor:
    """Step 4, `_combine_kernel`: out[t] = the float32 sum, in order, of y's rows t * rows_per_token .. (cast to
    out's dtype); the grouped paths' A slots, the decode path's A slots times GEMM 2's splits."""
    T, D = out.shape
    block_t, block_d = 16, 128
    _combine_kernel[(triton.cdiv(T, block_t), triton.cdiv(D, block_d))](
        y, out, T, D, y.stride(0), out.stride(0), A=rows_per_token, BLOCK_T=block_t, BLOCK_D=block_d, PDL=pdl,
        launch_pdl=pdl)
    return out


def sum_rows(y: torch.Tensor, out: torch.Tensor, rows_per_token: int, pdl: bool,
             defer_sum: bool) -> torch.Tensor | RowSum:
    """Step 4: `combine` y into out, or, with defer_sum, y as a RowSum that the next add_rms_norm sums in its own
    pass (the same bits: norm.py's docstring)."""
    if defer_sum:
        return RowSum(y, rows_per_token, out.dtype)
    return combine(y, out, rows_per_token, pdl)


def _experts_gluon(x: torch.Tensor, weights: torch.Tensor, w1: ExpertWeight, w2: ExpertWeight, limit: float,
                   alpha: float, cfg: MoeTritonConfig, order: torch.Tensor, bounds: torch.Tensor,
                   out: torch.Tensor, defer_sum: bool) -> torch.Tensor | RowSum:
    """Steps 2-4 with moe_gluon_grouped.py's GEMMs: blocks of block_m (8 or 16, both GEMMs the same) sorted
    rows, the same act, y and combine as the Triton kernels."""
    T, D = x.shape
    P = order.numel()
    A = P // T
    E, two_i = w1.bias.shape
    I = two_i // 2
    pdl = launch.use_pdl(x.device)
    x = x.contiguous()
    bm = cfg.gemm1.block_m
    grid_m = triton.cdiv(P, bm) + min(E, P)  # blocks: as _expert_block's bound
    common = {"E": E, "E_PAD": triton.next_power_of_2(E), "BM": bm, "PDL": pdl}
    act = _empty((P, I), torch.bfloat16, x.device)  # rows in sorted order
    w, s, ws = _weight_args(w1, "dot_scaled")
    t = cfg.gemm1
    moe_gluon_grouped._group_gemm1_gluon[(grid_m, (2 * I) // t.block_n)](
        x.view(torch.int32), order, bounds, w.view(torch.int32), s, w1.bias, act, x.stride(0), ws[0], ws[1],
        *ws[3:], w1.bias.stride(0), act.stride(0), float(limit), float(alpha), K=D, A=A, BN=t.block_n,
        HALF_TAIL=_gluon_half_tail(t), TILED=w1.tiled,
        **moe_gluon.launch_options(t.block_k, t.num_warps, t.num_stages), launch_pdl=pdl, **common)
    y = _empty((P, D), x.dtype, x.device)  # pair rows in x.dtype (module docstring)
    w, s, ws = _weight_args(w2, "dot_scaled")
    t = cfg.gemm2
    moe_gluon_grouped._group_gemm2_gluon[(grid_m, D // t.block_n)](
        act.view(torch.int32), order, bounds, w.view(torch.int32), s, w2.bias, weights.reshape(-1), y,
        act.stride(0), ws[0], ws[1], *ws[3:], w2.bias.stride(0), y.stride(0), K=I, BN=t.block_n,
        HALF_TAIL=_gluon_half_tail(t), TILED=w2.tiled,
        **moe_gluon.launch_options(t.block_k, t.num_warps, t.num_stages), launch_pdl=pdl, **common)
    return sum_rows(y, out, A, pdl, defer_sum)


def _grid(grid_m: int, grid_n: int, group_m: int) -> tuple[int, ...]:
    """The launch grid of a Triton GEMM for `_tile`: 2-D (row blocks, column tiles), or 1-D when grouped."""
    return (grid_m, grid_n) if group_m == 0 else (grid_m * grid_n,)


def _half_tail(t: GemmTiles) -> bool:
    """t.half_tail, checked: the half blocks must still be tensor-core tiles (>= 16 rows; 32 keeps bf16 wgmma
    shapes whole)."""
    assert not t.half_tail or t.block_m >= 32, f"half_tail needs block_m >= 32, got {t.block_m}"
    return t.half_tail


def _gluon_half_tail(t: GemmTiles) -> bool:
    """t.half_tail for moe_gluon_grouped.py's kernels, checked: their half block is one 8-row token tile."""
    assert not t.half_tail or t.block_m == 16, f"the Gluon kernels' half_tail needs blocks of 16, got {t.block_m}"
    return t.half_tail


def moe_experts_triton(x: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor, w1: ExpertWeight,
                       w2: ExpertWeight, limit: float, alpha: float, config: MoeTritonConfig | None = None,
                       compute_dtype: torch.dtype | None = None, defer_sum: bool = False) -> torch.Tensor | RowSum:
    """x [T, D], weights [T, A], ids [T, A] -> [T, D] in x.dtype; the contract of `moe_experts_ref`.

    compute_dtype: the tl.dot operand dtype, bf16 on the GPU and float32 elsewhere by default (the CPU
    interpreter's bf16 dot is wrong); accumulation is float32 in either case.
    defer_sum: return the pair rows as a RowSum (step 4 left to the next add_rms_norm) where the path has them;
    the grouped_mm path sums its sorted rows itself and returns the tensor.
    """
    T, D = x.shape
    A = ids.shape[1]
    E, two_i = w1.bias.shape
    I = two_i // 2
    P = T * A
    out = _empty((T, D), x.dtype, x.device)
    if P == 0:
        return out.zero_()
    same_layout(w1, w2)
    cfg = config or default_config(P, E, x.device, dense=not w1.is_mxfp4)
    compute = compute_dtype or (torch.bfloat16 if x.is_cuda else torch.float32)
    order, bounds = group_by_expert(ids, E)
    if cfg.mxfp4_decode == "grouped_mm":
        if moe_grouped_mm.takes(x, w1, w2, compute):
            return moe_grouped_mm.moe_experts_grouped_mm(x, weights, ids, w1, w2, limit, alpha, order, bounds, out)
        cfg = MoeTritonConfig(cfg.gemm1, cfg.gemm2, "wgmma")
    if cfg.mxfp4_decode == "gluon":
        t1, t2 = cfg.gemm1, cfg.gemm2
        if moe_gluon is not None and t1.block_m == t2.block_m and moe_gluon.takes(
                x, w1, w2, compute, (t1.block_n, t1.block_k, t1.num_warps), (t2.block_n, t2.block_k, t2.num_warps),
                t1.block_m):
            return _experts_gluon(x, weights, w1, w2, limit, alpha, cfg, order, bounds, out, defer_sum)
        cfg = triton_config(P, E, x.device)
    wgmma = False
    if cfg.mxfp4_decode == "wgmma":  # GEMM 1 by moe_gluon_wgmma.py where it takes the call, GEMM 2 dot_scaled
        t1 = cfg.gemm1
        wgmma = moe_gluon_wgmma is not None and compute == torch.bfloat16 and moe_gluon_wgmma.takes(
            x, w1, t1.block_k, t1.num_warps)
        cfg = MoeTritonConfig(t1, cfg.gemm2, "dot_scaled") if wgmma else triton_config(P, E, x.device)
    mode, consts = kernel_mode(cfg.mxfp4_decode, w1, compute)
    route_w = weights.reshape(-1)  # [P]
    pdl = launch.use_pdl(x.device)
    common = {"E": E, "E_PAD": triton.next_power_of_2(E), "PDL": pdl, **consts}

    act = _empty((P, I), compute, x.device)  # rows in sorted order
    s_aq, s_ah = act_strides(mode, I)
    w, s, ws = _weight_args(w1, mode)
    t1 = cfg.gemm1
    if wgmma:  # act in natural rows, as dot_scaled's GEMM 2 reads it
        moe_gluon_wgmma.gemm1(x, order, bounds, w1, act, A, limit, alpha, t1.block_m, t1.block_k, t1.group_m,
                              t1.num_warps, t1.num_stages, _half_tail(t1))
    else:
        grid_m = triton.cdiv(P, t1.block_m) + min(E, P)
        _moe_gemm1_kernel[_grid(grid_m, triton.cdiv(2 * I, t1.block_n), t1.group_m)](
            x, order, bounds, w, s, w1.bias, act, x.stride(0), x.stride(1), *ws,
            w1.bias.stride(0), w1.bias.stride(1), act.stride(0), s_aq, s_ah, float(limit), float(alpha), grid_m,
            K=D, N=2 * I, A=A, BLOCK_M=t1.block_m, BLOCK_N=t1.block_n, BLOCK_K=t1.block_k,
            num_warps=t1.num_warps, num_stages=t1.num_stages, launch_pdl=pdl, GROUP_M=t1.group_m,
            HALF_TAIL=_half_tail(t1), **common)

    y = _empty((P, D), x.dtype, x.device)  # [P, D] pair rows, p = t * A + a, in x.dtype (module docstring)
    w, s, ws = _weight_args(w2, mode)
    t2 = cfg.gemm2
    grid_m = triton.cdiv(P, t2.block_m) + min(E, P)
    _moe_gemm2_kernel[_grid(grid_m, triton.cdiv(D, t2.block_n), t2.group_m)](
        act, order, bounds, w, s, w2.bias, route_w, y, act.stride(0), s_aq, s_ah, *ws,
        w2.bias.stride(0), w2.bias.stride(1), y.stride(0), grid_m, K=I, N=D,
        BLOCK_M=t2.block_m, BLOCK_N=t2.block_n, BLOCK_K=t2.block_k, num_warps=t2.num_warps,
        num_stages=t2.num_stages, launch_pdl=pdl, GROUP_M=t2.group_m, HALF_TAIL=_half_tail(t2), **common)

    return sum_rows(y, out, A, pdl, defer_sum)
