"""moe.py's GEMM 1 for prefill on Hopper tensor cores (wgmma, sm_90), the e2m1 weights decoded in registers
straight into wgmma's register A operand (moe.py's "wgmma" mode; GEMM 2 stays Triton's `dot_scaled`).

Why. At prefill (hundreds of rows an expert) moe.py's Triton `dot_scaled` GEMMs ran at ~360 TFLOP/s on an H100
(docs/performance.md): their upcast passes through shared memory. Here each program holds 16 NW weight rows
(64 a warpgroup: wgmma M = 64) against BT sorted pair rows (wgmma N = BT): the weights are the A operand,
decoded from their bytes in registers by moe_gluon.py's upcast (one word of 8 e2m1 codes -> 4 bf16x2 registers,
scaled by the row's factor), and the activation rows are the B operand, streamed into shared memory.

How the registers line up. wgmma's register A operand for bf16 is, per k16 block, lane (g, t) of warp w holding
rows 16w + g and 16w + g + 8 at k (2t, 2t + 1) and (2t + 8, 2t + 9): as an int32 tensor of bf16 pairs, a
DotOperandLayout(k_width=1) over [64, BK / 2] with lane t at pair slots j = 8q + t and 8q + 4 + t. A lane
loads its words t * NC .. t * NC + NC - 1 of each row's step (NC = BK / 32: contiguous bytes) and the upcast
turns word w = t * NC + c into R_m = (stored k 8w + m, 8w + m + 4), m < 4; R_m goes to pair slot j = 16c + 4m
+ t. Joined, permuted and reshaped so, the decoded registers are that layout with no data movement (the sm_90
PTX's wgmma reads them as they are; test_gluon_moe_wgmma.py checks: no shared memory or shuffle on the way).
So MMA k-slot s = 2j + h multiplies stored k `stored_k(s)` = 8 (t NC + c) + m + 4h: the activations must be
permuted the same way within each BK step (`x_permutation`; `gemm1` gathers x[:, perm] once by
`gather_columns`, 47 MB at 8192 tokens).

Blocks: BT sorted rows of one expert (moe.py's "Blocks"); with HALF_TAIL (GemmTiles.half_tail, on in
moe_config.WGMMA_GEMM1) a block of <= BT / 2 rows, an expert's last, runs the same code with wgmma N = BT / 2.

Rows: fragment row 16w + g is weight row n0 + 2 (8w + g) (a gate), row 16w + g + 8 the next (its up), so the
SwiGLU pairs in one lane as in moe_gluon.py. Scales: the factor 2**(s - 65) rides in the upcast's fma (exact
for scale bytes 66..192, moe_gluon.in_exact_range); the accumulator is multiplied by 2**64 at the end.

Pipelining (`_ring_mainloop`): the activation tiles stream by cp.async into a ring of STAGES slots, the weight
words are loaded two steps ahead, and each step's wgmma is issued before the next step's upcast. ptxas
serializes these wgmma (its note C7513: the next upcast is given the A registers of the wgmma in flight), so
what overlaps the tensor cores with the upcast is the second program an SM: two warpgroups of 126 registers
fit twice. Measured on an H100 (docs/performance.md, experts only, us): 2048 tokens 1,336-1,356 against the
`dot_scaled` default's 1,531-1,583; 8192 tokens 4,221-4,311 against 4,545-4,592. The unserialized form (two
steps an iteration, their A registers distinct: 184 registers, one program an SM) was slower (1,511-1,526
and 4,773); so were one warpgroup, 64-row blocks, four slots and GEMM 2 by the same kernel (branch
`wip/wgmma-prefill`). Twins: moe.py's Triton GEMM 1 and `moe_experts_ref` (GPU tests).
"""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (async_copy, fence_async_shared, warpgroup_mma,
                                                             warpgroup_mma_wait)

from ..types import ExpertWeight
from . import launch
from .moe_gluon import DECODE_SHIFTS, MAGNITUDE_MASK, SIGN_MASK, _UNDO, _factor, in_exact_range
from .moe_gluon_grouped import _expert_block

ROWS_PER_WARP = 16  # weight rows a program: 16 a warp, 64 a warpgroup (wgmma M = 64)
GATHER_TILE = (1, 4096, 4)  # `gather_columns`: rows, columns, warps a program (H100 sweep, docs/performance.md)


def _upcast_asm() -> str:
    """One word $4 and its factor $5 -> the 4 bf16x2 registers $0..$3 of moe_gluon.py's upcast (DECODE_SHIFTS),
    each times the factor (x * f + -0)."""
    lines = [".reg .b32 z, m, v;", "mov.b32 z, 0x80008000;"]
    for i, (mshift, sshift) in enumerate(DECODE_SHIFTS):
        mag = f"shl.b32 m, $4, {mshift}" if mshift > 0 else f"shr.b32 m, $4, {-mshift}"
        sign = (f"shl.b32 v, $4, {sshift}; and.b32 v, v, {SIGN_MASK:#010x}" if sshift
                else f"and.b32 v, $4, {SIGN_MASK:#010x}")
        lines.append(f"{mag}; and.b32 m, m, {MAGNITUDE_MASK:#010x}; {sign}; or.b32 $${i}, m, v;")
        lines.append(f"fma.rn.bf16x2 ${i}, ${i}, $5, z;")
    return "{\n" + "\n".join(lines).replace("$$", "$") + "\n}"


_UPCAST = gl.constexpr(_upcast_asm())


def stored_k(s: int, block_k: int) -> int:
    """The stored k (within a BK step) that MMA k-slot s multiplies (module docstring)."""
    nc = block_k // 32
    j, h = divmod(s, 2)
    c, rest = divmod(j, 16)
    m, t = divmod(rest, 4)
    return 8 * (t * nc + c) + m + 4 * h


def x_permutation(k: int, block_k: int, device) -> torch.Tensor:
    """[K] int64 on device: x[:, perm] puts at column k0 + s the stored column k0 + stored_k(s) of each BK step.
    Made once per (k, block_k, device) and kept, except while a CUDA graph is being captured: a tensor made
    then belongs to the graph's memory pool, so it is made anew (device ops only, no host copy)."""
    if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
        return _permutation(k, block_k, device)
    return _kept_permutation(k, block_k, device)


def _permutation(k: int, block_k: int, device) -> torch.Tensor:
    """`x_permutation`, made: `stored_k` of every slot of a step in device ops, repeated for each step."""
    slot = torch.arange(block_k, device=device)
    j, h = slot // 2, slot % 2
    c, rest = j // 16, j % 16
    m, t = rest // 4, rest % 4
    step = 8 * (t * (block_k // 32) + c) + m + 4 * h
    return (torch.arange(0, k, block_k, device=device)[:, None] + step[None, :]).reshape(-1)


_kept_permutation = functools.lru_cache(maxsize=16)(_permutation)


@triton.jit
def _gather_columns_kernel(x_ptr, perm_ptr, out_ptr, T, s_xt, s_ot, K: tl.constexpr, BLOCK_T: tl.constexpr,
                           BLOCK_K: tl.constexpr):
    # out[t, j] = x[t, perm[j]] for a [BLOCK_T, BLOCK_K] tile (x's columns unit-strided)
    t = (tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)).to(tl.int64)  # [BT]
    j = tl.program_id(1) * BLOCK_K + tl.arange(0, BLOCK_K)  # [BK]
    src = tl.load(perm_ptr + j, mask=j < K, other=0)
    ok = (t < T)[:, None] & (j < K)[None, :]
    v = tl.load(x_ptr + t[:, None] * s_xt + src[None, :], mask=ok)
    tl.store(out_ptr + t[:, None] * s_ot + j[None, :], v, mask=ok)


def gather_columns(x: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
    """x [T, K] (unit column stride), perm [K] -> x[:, perm] contiguous, by a Triton gather: torch's advanced
    indexing took 218 us at 16,384 x 2,880 bf16 on an H100 (0.86 TB/s), 5.2 ms of a 20b prefill step."""
    T, K = x.shape
    assert x.stride(1) == 1 and perm.shape == (K,)
    out = torch.empty((T, K), dtype=x.dtype, device=x.device)
    if T:
        bt, bk, nw = GATHER_TILE
        _gather_columns_kernel[(triton.cdiv(T, bt), triton.cdiv(K, bk))](x, perm, out, T, x.stride(0), out.stride(0),
                                                                        K=K, BLOCK_T=bt, BLOCK_K=bk, num_warps=nw)
    return out


def words_layout(block_k: int, num_warps: int = 4) -> gl.DistributedLinearLayout:
    """[16 NW, BK / 8] int32 words of one step: warp w rows 16w .. 16w + 15, lane (g, t) rows g, g + 8 and
    words t NC .. t NC + NC - 1 (NC = BK / 32)."""
    nc = block_k // 32
    regs = [[0, 1 << i] for i in range(nc.bit_length() - 1)] + [[8, 0]]
    warps = [[16 << i, 0] for i in range(num_warps.bit_length() - 1)]
    return gl.DistributedLinearLayout(reg_bases=regs, lane_bases=[[0, nc], [0, 2 * nc], [1, 0], [2, 0], [4, 0]],
                                      warp_bases=warps, block_bases=[], shape=[16 * num_warps, 4 * nc])


@gluon.jit
def _load_words(w_base, s_base, wrow, word, k0, s_wn, s_sn, s_sg, TILED: gl.constexpr):
    """One step's weight words [R, BK/8] int32 and each word's scale byte (words_layout). TILED: the bytes in
    weights/tiles.py's layout (16-row blocks of 8-word chunks, whole: `takes` makes K a multiple of BK)."""
    if TILED:
        kw = k0 // 8 + word  # [1, BK/8] word along the row
        off = (wrow // 16) * (16 * s_wn) + (kw // 8) * 128 + (wrow % 16) * 8 + kw % 8
        q = gl.load(w_base + gl.max_contiguous(gl.multiple_of(off, [1, 4]), [1, 4]))
    else:
        q = gl.load(w_base + wrow * s_wn + k0 // 8 + word)
    s = gl.load(s_base + wrow * s_sn + ((k0 + 8 * word) // 32) * s_sg)
    return q, s


@gluon.jit
def _upcast(q, s, R: gl.constexpr, BK: gl.constexpr, NC: gl.constexpr, A_L: gl.constexpr, P_L: gl.constexpr):
    """Words and scale bytes -> the step's weights [R, BK] bf16 in wgmma's register A layout (module docstring)."""
    r0, r1, r2, r3 = gl.inline_asm_elementwise(_UPCAST, "=r,=r,=r,=r,r,r", [q, _factor(s)],
                                               dtype=(gl.int32, gl.int32, gl.int32, gl.int32), is_pure=True,
                                               pack=1)
    m = gl.join(gl.join(r0, r2), gl.join(r1, r3))  # [R, BK/8, 2, 2]: (word, m // 2, m % 2)
    m = gl.permute(gl.reshape(m, [R, 4, NC, 4]), (0, 2, 3, 1))  # (row, c, m, t)
    p = gl.convert_layout(gl.reshape(m, [R, BK // 2]), P_L)  # pair slot j = 16c + 4m + t
    lo = (p & 0xFFFF).to(gl.int16).to(gl.bfloat16, bitcast=True)
    hi = (p >> 16).to(gl.int16).to(gl.bfloat16, bitcast=True)
    return gl.convert_layout(gl.reshape(gl.join(lo, hi), [R, BK]), A_L)


@gluon.jit
def _swiglu_store(acc, b_base, act_ptr, c0, s_ar, start, end, limit, alpha, R: gl.constexpr, BT: gl.constexpr,
                  NW: gl.constexpr):
    """acc [R, BT] (fragment rows: gate, up as `_group_gemm1_wgmma`'s wrow) times 2**64, plus the bias, clamped
    SwiGLU, stored as act[start + token, c0 + j] (bf16, j = 8w + g)."""
    acc = acc * _UNDO
    g4 = gl.reshape(acc, [NW, 2, 8, BT])  # (warp, gate | up, g, token)
    gate, up = gl.split(gl.permute(g4, (0, 2, 3, 1)))  # [NW, 8, BT] each
    gate = gl.reshape(gate, [R // 2, BT])  # activation column j = 8w + g
    up = gl.reshape(up, [R // 2, BT])
    OL: gl.constexpr = gate.type.layout
    j = gl.arange(0, R // 2, layout=gl.SliceLayout(1, OL))[:, None]
    col = gl.arange(0, BT, layout=gl.SliceLayout(0, OL))[None, :]
    gate = gl.minimum(gate + gl.load(b_base + 2 * j).to(gl.float32), limit)
    up = gl.minimum(gl.maximum(up + gl.load(b_base + 2 * j + 1).to(gl.float32), -limit), limit)
    act = gate * (1.0 / (1.0 + gl.exp(-alpha * gate))) * (up + 1.0)
    orow = start + col
    gl.store(act_ptr + orow.to(gl.int64) * s_ar + c0 + j, act.to(gl.bfloat16), mask=orow < end)


@gluon.jit
def _ring_mainloop(x_rows, rmask, w_base, s_base, wrow, word, s_wn, s_sn, s_sg, K: gl.constexpr,
                   BT: gl.constexpr, BK: gl.constexpr, STAGES: gl.constexpr, TILED: gl.constexpr):
    """sum over K of W[wrow] (upcast, the A operand) times the B rows x_rows [BT, BK] (step 0's addresses,
    permuted activations; rows off rmask read as zero): acc [16 NW, BT] float32 in wgmma's layout, times
    2**-64 (module docstring). The activation tiles stream by cp.async into a ring of STAGES slots (STAGES - 1
    steps ahead, no registers held), the weight words and scale bytes are loaded two steps ahead, and each
    step's wgmma is issued before the next step's upcast (serialized by ptxas: module docstring). Per step i:
    wait for slot i's copies and (barrier) for every warp to finish step i - 1, refill the slot step i - 1 used
    with step i + STAGES - 1, load step i + 2's words, issue the wgmma, upcast step i + 1, wait for the wgmma."""
    NW: gl.constexpr = gl.num_warps()
    R: gl.constexpr = 16 * NW
    NC: gl.constexpr = BK // 32
    NSTEPS: gl.constexpr = K // BK
    MMA_L: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[NW, 1], instr_shape=[16, BT, 16])
    A_L: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=MMA_L, k_width=2)
    P_L: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=MMA_L, k_width=1)
    SL: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BT, BK], gl.bfloat16)
    xs = gl.allocate_shared_memory(gl.bfloat16, [STAGES, BT, BK], SL)
    for st in gl.static_range(STAGES - 1):  # steps 0 .. STAGES - 2
        async_copy.async_copy_global_to_shared(xs.index(st), x_rows + min(st, NSTEPS - 1) * BK, mask=rmask)
        async_copy.commit_group()
    q, s = _load_words(w_base, s_base, wrow, word, 0, s_wn, s_sn, s_sg, TILED)
    a = _upcast(q, s, R, BK, NC, A_L, P_L)
    q, s = _load_words(w_base, s_base, wrow, word, gl.minimum(BK, K - BK), s_wn, s_sn, s_sg, TILED)  # step 1
    acc = gl.zeros([R, BT], gl.float32, MMA_L)
    for i in range(NSTEPS):
        async_copy.wait_group(STAGES - 2)  # this thread's copies of step i have landed
        fence_async_shared()  # ... and are visible to wgmma's reads
        gl.thread_barrier()  # every thread's, and every warp is past step i - 1's wgmma
        nxt = gl.minimum(i + STAGES - 1, NSTEPS - 1)  # past the end: a copy nobody reads
        async_copy.async_copy_global_to_shared(xs.index((i + STAGES - 1) % STAGES), x_rows + nxt * BK, mask=rmask)
        async_copy.commit_group()
        q2, s2 = _load_words(w_base, s_base, wrow, word, gl.minimum((i + 2) * BK, K - BK), s_wn, s_sn, s_sg, TILED)
        acc = warpgroup_mma(a, xs.index(i % STAGES).permute((1, 0)), acc, is_async=True)
        a_next = _upcast(q, s, R, BK, NC, A_L, P_L)  # step i + 1, beside the wgmma
        acc, a = warpgroup_mma_wait(0, deps=[acc, a])
        a = a_next
        q = q2
        s = s2
    async_copy.wait_group(0)
    return acc


@gluon.jit
def _group_gemm1_wgmma(xp_ptr, order_ptr, bounds_ptr, w_ptr, s_ptr, b_ptr, act_ptr, grid_m,
                       s_xt, s_we, s_wn, s_se, s_sn, s_sg, s_be, s_ar, limit, alpha,
                       K: gl.constexpr, N: gl.constexpr, A: gl.constexpr, E: gl.constexpr, E_PAD: gl.constexpr,
                       BT: gl.constexpr, BK: gl.constexpr, GROUP_M: gl.constexpr, W_L: gl.constexpr,
                       STAGES: gl.constexpr, HALF_TAIL: gl.constexpr, TILED: gl.constexpr = False):
    """act[r, i] = swiglu(x[tok(r)] @ W1[e]^T + b1[e])[i] for BT sorted rows and R / 2 columns i (R = 16 NW
    weight rows: one warpgroup of 64 rows each 4 warps); xp_ptr: the permuted activations (`x_permutation`),
    w_ptr: W1's bytes as int32 words [E, N, K / 8]. Tiles in moe.py's `_tile` order (groups of GROUP_M row
    blocks). HALF_TAIL: a block of <= BT / 2 rows (an expert's last) runs with wgmma N = BT / 2 (moe.py's
    "Blocks"). TILED: W1's bytes in weights/tiles.py's layout (`_load_words`)."""
    NW: gl.constexpr = gl.num_warps()
    R: gl.constexpr = 16 * NW
    GRID_N: gl.constexpr = N // R
    pid = gl.program_id(0)  # moe.py's `_tile`: groups of GROUP_M row blocks
    first = (pid // (GROUP_M * GRID_N)) * GROUP_M
    size = gl.minimum(grid_m - first, GROUP_M)
    pid_m = first + (pid % (GROUP_M * GRID_N)) % size
    pid_n = (pid % (GROUP_M * GRID_N)) // size
    expert, start, end, total = _expert_block(bounds_ptr, pid_m, E, E_PAD, BT, NW)
    if pid_m < total:
        n0 = pid_n * R
        if HALF_TAIL and end - start <= BT // 2:  # the block runs at BT // 2 rows
            _gemm1_block(xp_ptr, order_ptr, w_ptr, s_ptr, b_ptr, act_ptr, expert, start, end, n0, s_xt, s_wn, s_se,
                         s_sn, s_sg, s_be, s_we, s_ar, limit, alpha, K, A, BT // 2, BK, W_L, STAGES, TILED)
        else:
            _gemm1_block(xp_ptr, order_ptr, w_ptr, s_ptr, b_ptr, act_ptr, expert, start, end, n0, s_xt, s_wn, s_se,
                         s_sn, s_sg, s_be, s_we, s_ar, limit, alpha, K, A, BT, BK, W_L, STAGES, TILED)


@gluon.jit
def _gemm1_block(xp_ptr, order_ptr, w_ptr, s_ptr, b_ptr, act_ptr, expert, start, end, n0, s_xt, s_wn, s_se, s_sn,
                 s_sg, s_be, s_we, s_ar, limit, alpha, K: gl.constexpr, A: gl.constexpr, BT: gl.constexpr,
                 BK: gl.constexpr, W_L: gl.constexpr, STAGES: gl.constexpr, TILED: gl.constexpr):
    """`_group_gemm1_wgmma`'s work for sorted rows [start, min(start + BT, end)) of `expert` against weight
    rows n0 .. n0 + R."""
    NW: gl.constexpr = gl.num_warps()
    R: gl.constexpr = 16 * NW
    XL: gl.constexpr = gl.BlockedLayout([1, 8], [4, 8], [NW, 1], [1, 0])
    e = expert.to(gl.int64)
    rho = gl.arange(0, R, layout=gl.SliceLayout(1, W_L))[:, None]  # fragment row
    wrow = n0 + 2 * (8 * (rho // 16) + rho % 8) + (rho % 16) // 8  # its weight row: gate, up
    word = gl.arange(0, BK // 8, layout=gl.SliceLayout(0, W_L))[None, :]
    rows = start + gl.arange(0, BT, layout=gl.SliceLayout(1, XL))[:, None]  # sorted rows
    kk = gl.arange(0, BK, layout=gl.SliceLayout(0, XL))[None, :]
    rmask, _ = gl.broadcast(rows < end, kk)  # [BT, BK], constant along a row (whole 16-byte copies)
    tok = (gl.load(order_ptr + rows, mask=rows < end, other=0) // A).to(gl.int64)
    acc = _ring_mainloop(xp_ptr + tok * s_xt + kk, rmask, w_ptr + e * s_we, s_ptr + e * s_se, wrow, word,
                         s_wn, s_sn, s_sg, K, BT, BK, STAGES, TILED)
    _swiglu_store(acc, b_ptr + e * s_be + n0, act_ptr, n0 // 2, s_ar, start, end, limit, alpha, R, BT, NW)


def takes(x: torch.Tensor, w1: ExpertWeight, block_k: int, num_warps: int) -> bool:
    """Whether `gemm1` runs for these operands: CUDA sm_90, bf16, MXFP4 in the exact scale range,
    whole 16 NW-row tiles and whole BK steps."""
    if not (x.is_cuda and x.dtype == torch.bfloat16 and w1.blocks is not None):
        return False
    if not launch.is_sm90(x.device):
        return False
    E, n, groups, _ = w1.blocks.shape
    return n % (ROWS_PER_WARP * num_warps) == 0 and (groups * 32) % block_k == 0 and in_exact_range(w1.scale_range)


def gemm1(x: torch.Tensor, order: torch.Tensor, bounds: torch.Tensor, w1: ExpertWeight, act: torch.Tensor,
          num_experts_per_token: int, limit: float, alpha: float, block_t: int, block_k: int, group_m: int,
          num_warps: int, stages: int, half_tail: bool = False) -> None:
    """moe.py's GEMM 1 (act [P, I] bf16, rows in sorted order) by `_group_gemm1_wgmma`: BT = block_t rows a
    block, 16 num_warps weight rows a program, `stages` (>= 3) activation slots, blocks of <= BT / 2 rows at
    half width if half_tail; `takes` must hold."""
    assert stages >= 3, "the ring refills the slot of the step before: 3 slots at least"
    P = order.numel()
    E, N, groups, _ = w1.blocks.shape
    K = groups * 32
    xp = gather_columns(x, x_permutation(K, block_k, x.device))  # [T, K]
    words = w1.blocks.view(torch.int32).reshape(E, N, K // 8)  # 4 bytes = 8 codes a word
    grid_m = triton.cdiv(P, block_t) + min(E, P)
    _group_gemm1_wgmma[(grid_m * (N // (ROWS_PER_WARP * num_warps)),)](
        xp, order, bounds, words, w1.scales, w1.bias, act, grid_m,
        xp.stride(0), words.stride(0), words.stride(1), w1.scales.stride(0), w1.scales.stride(1),
        w1.scales.stride(2), w1.bias.stride(0), act.stride(0), float(limit), float(alpha),
        K=K, N=N, A=num_experts_per_token, E=E, E_PAD=triton.next_power_of_2(E), BT=block_t, BK=block_k,
        GROUP_M=group_m, W_L=words_layout(block_k, num_warps), STAGES=stages, HALF_TAIL=half_tail,
        TILED=w1.tiled, num_warps=num_warps)
