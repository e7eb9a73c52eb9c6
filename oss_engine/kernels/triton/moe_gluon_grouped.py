"""moe.py's two grouped MoE GEMMs in Gluon (its "gluon" mode, small batches): a program owns a block of BM = 8 or
16 sorted rows of one expert (one or two mma column tiles of 8 tokens) and BN weight rows, and streams those
rows once with moe_gluon.py's machinery (`_row_dot`: the 16-byte weight loads, the e2m1 upcast in registers,
mma.sync, loads DEPTH steps ahead), so each weight is decoded once for all the block's rows. moe.py's
`_experts_gluon` launches them; `default_config` (moe_config.py) picks them up to 16 rows an expert. Twins:
`moe_experts_ref` and moe.py's Triton kernels (the GPU tests in test_gluon_moe.py).

Legend as moe_gluon.py's, and moe.py's for the blocks: BM rows a block, TT = BM / 8 token tiles, E experts,
`order` / `bounds` from moe_grouping.py. Blocks: expert e owns ceil(count_e / BM) consecutive blocks
(`_expert_block`, the Gluon form of moe.py's); with HALF_TAIL (BM = 16) an expert's last block of <= 8 rows
runs one token tile (moe.py's "Blocks").

PDL: both kernels wait (`_gdc_wait`) before reading bounds and order (the grouping's output).
"""

from __future__ import annotations

from triton.experimental import gluon
from triton.experimental.gluon import language as gl

from .moe_gluon import _gdc_wait, _row_dot


@gluon.jit
def _add(a, b):
    return a + b


@gluon.jit
def _expert_block(bounds_ptr, pid_m, E: gl.constexpr, E_PAD: gl.constexpr, BM: gl.constexpr, NW: gl.constexpr):
    """Block pid_m of BM sorted rows -> (expert, first row, end row, blocks in all): moe.py's `_expert_block`
    (its docstring has a worked example)."""
    lay: gl.constexpr = gl.BlockedLayout([1], [32], [NW], [0])
    e_idx = gl.arange(0, E_PAD, layout=lay)
    e_mask = e_idx < E
    lo = gl.load(bounds_ptr + e_idx, mask=e_mask, other=0)
    hi = gl.load(bounds_ptr + e_idx + 1, mask=e_mask, other=0)
    nb = (hi - lo + BM - 1) // BM  # blocks per expert, 0 for pads
    ends = gl.associative_scan(nb, 0, _add)  # inclusive: expert e owns blocks [ends[e] - nb[e], ends[e])
    expert = gl.sum((ends <= pid_m).to(gl.int32), axis=0)
    first_block = gl.sum(gl.where(e_idx < expert, nb, 0), axis=0)
    start = gl.sum(gl.where(e_idx == expert, lo, 0), axis=0) + (pid_m - first_block) * BM
    end = gl.sum(gl.where(e_idx == expert, hi, 0), axis=0)
    return expert, start, end, gl.sum(nb, axis=0)


@gluon.jit
def _block_rows(order_ptr, start, end, tile, BH: gl.constexpr, LA: gl.constexpr):
    """Token tile `tile`'s sorted row for lane group g, start + 8 tile + g clamped to the block ([BH, 1, 1] in
    LA's family; a clamped row's results are computed and never stored), and its pair order[row]."""
    g = gl.arange(0, BH, layout=gl.SliceLayout(1, gl.SliceLayout(2, LA)))[:, None, None] % 8
    row = gl.minimum(start + 8 * tile + g, end - 1)
    return row, gl.load(order_ptr + row)


@gluon.jit
def _group_gemm1_gluon(x_ptr, order_ptr, bounds_ptr, w_ptr, s_ptr, b_ptr, act_ptr,
                       s_xt, s_we, s_wn, s_se, s_sn, s_sg, s_be, s_ar, limit, alpha,
                       K: gl.constexpr, A: gl.constexpr, E: gl.constexpr, E_PAD: gl.constexpr, BM: gl.constexpr,
                       BN: gl.constexpr, BK: gl.constexpr, L: gl.constexpr, LA: gl.constexpr, DEPTH: gl.constexpr,
                       PDL: gl.constexpr, HALF_TAIL: gl.constexpr, TILED: gl.constexpr = False):
    """moe.py's GEMM 1 for a block of BM (8 or 16: one or two mma column tiles) sorted rows of one expert:
    act[r, i] = swiglu(x[order[r] // A] @ W1[e]^T + b1[e])[i] for the BN / 2 columns i of W1 rows
    n0 .. n0 + BN. Pointers and strides as _pair_gemm1_gluon (s_ar: act's row stride). HALF_TAIL (BM = 16): a
    block of <= 8 rows, an expert's last, runs one token tile (moe.py's "Blocks"). TILED as `_load_w`'s."""
    _gdc_wait(PDL)
    NW: gl.constexpr = gl.num_warps()
    pid_m = gl.program_id(0)
    expert, start, end, total = _expert_block(bounds_ptr, pid_m, E, E_PAD, BM, NW)
    if pid_m < total:
        n0 = gl.program_id(1) * BN
        if HALF_TAIL and end - start <= 8:
            _group_gemm1_rows(x_ptr, order_ptr, w_ptr, s_ptr, b_ptr, act_ptr, expert, start, end, n0, s_xt, s_we,
                              s_wn, s_se, s_sn, s_sg, s_be, s_ar, limit, alpha, K, A, BN, BK, L, LA, DEPTH, 1,
                              TILED)
        else:
            _group_gemm1_rows(x_ptr, order_ptr, w_ptr, s_ptr, b_ptr, act_ptr, expert, start, end, n0, s_xt, s_we,
                              s_wn, s_se, s_sn, s_sg, s_be, s_ar, limit, alpha, K, A, BN, BK, L, LA, DEPTH, BM // 8,
                              TILED)


@gluon.jit
def _group_gemm1_rows(x_ptr, order_ptr, w_ptr, s_ptr, b_ptr, act_ptr, expert, start, end, n0, s_xt, s_we, s_wn,
                      s_se, s_sn, s_sg, s_be, s_ar, limit, alpha, K: gl.constexpr, A: gl.constexpr,
                      BN: gl.constexpr, BK: gl.constexpr, L: gl.constexpr, LA: gl.constexpr, DEPTH: gl.constexpr,
                      TT: gl.constexpr, TILED: gl.constexpr):
    """`_group_gemm1_gluon`'s work for sorted rows [start, min(start + 8 TT, end)) of `expert`."""
    BH: gl.constexpr = BN // 2
    e = expert.to(gl.int64)
    _, pair = _block_rows(order_ptr, start, end, 0, BH, LA)
    _, pair2 = _block_rows(order_ptr, start, end, TT - 1, BH, LA)
    sums = _row_dot(w_ptr + (e * s_we + n0 * s_wn) // 4, s_ptr + e * s_se + n0 * s_sn, x_ptr,
                    (pair // A).to(gl.int64) * (s_xt // 2), (pair2 // A).to(gl.int64) * (s_xt // 2), 0, K,
                    s_wn, s_sn, s_sg, BH, BK, L, LA, DEPTH, TT, False, TILED)
    SL: gl.constexpr = gl.SliceLayout(2, L)
    j = gl.arange(0, BH, layout=gl.SliceLayout(1, SL))[:, None]  # [BH, 1]
    t = gl.arange(0, 4, layout=gl.SliceLayout(0, SL))[None, :]  # [1, 4]
    b_gate = gl.load(b_ptr + e * s_be + n0 + 2 * j).to(gl.float32)
    b_up = gl.load(b_ptr + e * s_be + n0 + 2 * j + 1).to(gl.float32)
    for c in gl.static_range(2 * TT):  # tile c // 2, lane column 2t + c % 2: row start + 8 (c // 2) + 2t + c % 2
        gate = gl.minimum(sums[4 * (c // 2) + c % 2] + b_gate, limit)
        up = gl.minimum(gl.maximum(sums[4 * (c // 2) + 2 + c % 2] + b_up, -limit), limit)
        act = gate * (1.0 / (1.0 + gl.exp(-alpha * gate))) * (up + 1.0)
        row = start + 8 * (c // 2) + 2 * t + c % 2
        gl.store(act_ptr + row.to(gl.int64) * s_ar + n0 // 2 + j, act.to(act_ptr.dtype.element_ty),
                 mask=(row < end) & (j < BH))


@gluon.jit
def _group_gemm2_gluon(act_ptr, order_ptr, bounds_ptr, w_ptr, s_ptr, b_ptr, route_w_ptr, y_ptr,
                       s_ar, s_we, s_wn, s_se, s_sn, s_sg, s_be, s_yp,
                       K: gl.constexpr, E: gl.constexpr, E_PAD: gl.constexpr, BM: gl.constexpr, BN: gl.constexpr,
                       BK: gl.constexpr, L: gl.constexpr, LA: gl.constexpr, DEPTH: gl.constexpr, PDL: gl.constexpr,
                       HALF_TAIL: gl.constexpr, TILED: gl.constexpr = False):
    """moe.py's GEMM 2 for a block of BM (8 or 16) sorted rows: y[order[r], n] = route_w[order[r]] * (act[r] @
    W2[e]^T + b2[e])[n] for BN columns n. act_ptr an int32 view (s_ar in bf16). HALF_TAIL and TILED as GEMM 1's."""
    _gdc_wait(PDL)  # first: the pair kernel's early weight loads measured no gain here (module docstring)
    NW: gl.constexpr = gl.num_warps()
    pid_m = gl.program_id(0)
    expert, start, end, total = _expert_block(bounds_ptr, pid_m, E, E_PAD, BM, NW)
    if pid_m < total:
        n0 = gl.program_id(1) * BN
        if HALF_TAIL and end - start <= 8:
            _group_gemm2_rows(act_ptr, order_ptr, w_ptr, s_ptr, b_ptr, route_w_ptr, y_ptr, expert, start, end, n0,
                              s_ar, s_we, s_wn, s_se, s_sn, s_sg, s_be, s_yp, K, BN, BK, L, LA, DEPTH, 1, TILED)
        else:
            _group_gemm2_rows(act_ptr, order_ptr, w_ptr, s_ptr, b_ptr, route_w_ptr, y_ptr, expert, start, end, n0,
                              s_ar, s_we, s_wn, s_se, s_sn, s_sg, s_be, s_yp, K, BN, BK, L, LA, DEPTH, BM // 8,
                              TILED)


@gluon.jit
def _group_gemm2_rows(act_ptr, order_ptr, w_ptr, s_ptr, b_ptr, route_w_ptr, y_ptr, expert, start, end, n0,
                      s_ar, s_we, s_wn, s_se, s_sn, s_sg, s_be, s_yp, K: gl.constexpr, BN: gl.constexpr,
                      BK: gl.constexpr, L: gl.constexpr, LA: gl.constexpr, DEPTH: gl.constexpr, TT: gl.constexpr,
                      TILED: gl.constexpr):
    """`_group_gemm2_gluon`'s work for sorted rows [start, min(start + 8 TT, end)) of `expert`."""
    BH: gl.constexpr = BN // 2
    e = expert.to(gl.int64)
    row, _ = _block_rows(order_ptr, start, end, 0, BH, LA)
    row2, _ = _block_rows(order_ptr, start, end, TT - 1, BH, LA)
    sums = _row_dot(w_ptr + (e * s_we + n0 * s_wn) // 4, s_ptr + e * s_se + n0 * s_sn, act_ptr,
                    row.to(gl.int64) * (s_ar // 2), row2.to(gl.int64) * (s_ar // 2), 0, K, s_wn, s_sn, s_sg, BH,
                    BK, L, LA, DEPTH, TT, False, TILED)
    SL: gl.constexpr = gl.SliceLayout(2, L)
    j = gl.arange(0, BH, layout=gl.SliceLayout(1, SL))[:, None]
    t = gl.arange(0, 4, layout=gl.SliceLayout(0, SL))[None, :]
    col = n0 + 2 * j  # [BH, 1]: W2 row 2j's output column (2j + 1: col + 1)
    b_even = gl.load(b_ptr + e * s_be + col).to(gl.float32)
    b_odd = gl.load(b_ptr + e * s_be + col + 1).to(gl.float32)
    for c in gl.static_range(2 * TT):
        r = start + 8 * (c // 2) + 2 * t + c % 2  # [1, 4]
        live = (r < end) & (j < BH)
        pair = gl.load(order_ptr + r, mask=r < end, other=0)
        rw = gl.load(route_w_ptr + pair, mask=r < end, other=0.0).to(gl.float32)
        out = y_ptr + pair.to(gl.int64) * s_yp
        gl.store(out + col, ((sums[4 * (c // 2) + c % 2] + b_even) * rw).to(y_ptr.dtype.element_ty), mask=live)
        gl.store(out + col + 1, ((sums[4 * (c // 2) + 2 + c % 2] + b_odd) * rw).to(y_ptr.dtype.element_ty),
                 mask=live)
