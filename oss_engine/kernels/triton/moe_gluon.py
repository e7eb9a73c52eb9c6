"""MXFP4 MoE GEMMs for decode in Gluon (Triton's explicit-layout dialect): the decode path's two per-pair
GEMMs (`moe_decode.py`: same contract, same grid, same combine) with the e2m1 decode and the tensor-core
step written as inline PTX over registers whose lane placement Gluon fixes. CUDA sm_80+ (bf16x2 fma,
mma.sync; griddepcontrol under PDL on sm_90); `moe_decode.py` runs them for DecodeTiles.mxfp4_decode =
"gluon", and its "dot_scaled" kernels and `moe_experts_ref` are the twins the tests compare against.

Legend: P pairs (token, slot), BN weight rows (GEMM 1) or output columns (GEMM 2) a program, BH = BN / 2 row
pairs (rows 2j, 2j + 1), BK the reduction step (64 or 128), NW warps, I = BK / 8 weight bytes of a row a lane
a step, W = I / 4 int32 words, lane = 4g + t (g = lane // 4, t = lane % 4).

Why. `tl.dot_scaled` decodes e2m1 at ~5 SASS instructions a weight with 168 registers a thread (the bytes
pass through shared memory one at a time), and that decode, not HBM, limits every MoE GEMM
(docs/performance.md). Here each lane loads its bytes with 16-byte loads straight into registers; the main
loop is ~3.5 instructions a weight (sm_90 SASS: ~1.9 decode, 0.5 scale, the rest mma, loads, re-pairing).

How the tensor cores see it. mma.m16n8k16 (row.col, bf16 in, float32 accumulate) sums over 16 k values that
it reads, in lane 4g + t, as A rows g and g + 8 at k (2t, 2t + 1) and (2t + 8, 2t + 9), and B column g at the
same k. A dot product does not care which stored k each of those 16 positions is, as long as A and B agree,
so the stored weights need no re-layout. The weights are the A operand: lane (g, t) of warp w owns row pair
j = 8 (w + NW r) + g (r < BH / 8 NW): row 2j as mma row g, row 2j + 1 as row g + 8; for each it loads the I
contiguous bytes t*I .. t*I + I - 1 of the step (`words_layout`: [BH, 4, W] int32, one 16-byte load at
BK = 128). One word q (bytes b0..b3; byte i's low nibble is stored k 2i, its high one 2i + 1) feeds two mma
(`_STEP`): the first with A = (lo b0, lo b2 | hi b0, hi b2) of both rows, i.e. stored k (0, 4 | 1, 5), the
second with (lo b1, lo b3 | hi b1, hi b3) = (2, 6 | 3, 7). The activation row is the B operand, the same in
all 8 columns: lane t loads its quarter's 2I contiguous bf16 (`act_layout`) and pairs them once a step to
(x0, x4 | x1, x5) and (x2, x6 | x3, x7) (`_PAIR_A`), shared by the lane's row pairs. Every accumulator column
is then the same; lane (g, t)'s d0 is row 2j's sum and d2 row 2j + 1's, over the 4 lanes t of the mma and,
in the epilogue, the lane's W words. In GEMM 1 rows 2j and 2j + 1 are a gate and its up: the SwiGLU needs no
shuffle.

The upcast, per word: (lo b0, lo b2) = ((q << 6) & 0x01C001C0) | ((q << 12) & 0x80008000) and three like it:
a nibble's 3 magnitude bits to bf16 bits 6-8, its sign to bit 15: the e2m1 value times 2**-126 (exponent
field = the e2m1 exponent, so 0.5 is the bf16 subnormal 2**-127); one bf16x2 fma (x * f + -0) multiplies by
f = 2**(s - 65) from the row's scale byte s, exactly; the accumulator is multiplied by 2**64 in the epilogue.
Product: w * 2**(s - 127), the reference's value. Splitting 2**126 so keeps f a normal bf16 for s <= 192 and
the decoded weight w * 2**(s - 191) a normal bf16 (so exact) for s >= 66: scales 2**-61 .. 2**65 (real
checkpoints use about 2**-10 .. 2**0). The loader measures each projection's range once
(ExpertWeight.scale_range) and moe_decode.py runs these kernels only inside it. With BK <= 128 a lane's I
bytes of a row lie in one 32-value scale group.

Streaming. At a few tokens a program streams its rows from HBM once, so the bytes in flight set the speed:
the loads run DEPTH (2 or 3) steps ahead of the math, the loop unrolled by DEPTH so that each buffer is
refilled in place. Every step is masked per lane quarter (k_end is a multiple of 32, so a quarter is wholly
in or out and the loads stay 16-byte vectors): the K tail, GEMM 2's splits and the up to DEPTH - 1 steps the
last round runs past k_end need no separate code. Masked weight words are left undefined: they meet zero
activations and every code decodes to a finite value.

PDL: both kernels wait (`_gdc_wait`) before reading ids, as moe_decode.py's.
"""

from __future__ import annotations

import torch
from triton.experimental import gluon
from triton.experimental.gluon import language as gl

SCALE_MIN, SCALE_MAX = 66, 192  # e8m0 scale bytes this path decodes exactly (see the module docstring)

# activation words A0..A3 = (x0, x1), (x2, x3), (x4, x5), (x6, x7) -> (x0, x4), (x1, x5), (x2, x6), (x3, x7)
_PAIR_A = gl.constexpr("""{
prmt.b32 $0, $4, $6, 0x5410;
prmt.b32 $1, $4, $6, 0x7632;
prmt.b32 $2, $5, $7, 0x5410;
prmt.b32 $3, $5, $7, 0x7632;
}""")

# the even and odd rows' words of 4 weight bytes ($4, $5), their bf16x2 scale factors ($6, $7), the paired
# activations ($8..$11), the accumulator ($12..$15) -> $0..$3 after two mma.m16n8k16 (weights the A operand)
_STEP = gl.constexpr("""{
.reg .b32 z, m, v, ea, eb, ec, ed, la, lb, ha, hb, ka, kb, ga, gb;
mov.b32 z, 0x80008000;
shl.b32 m, $4, 6; and.b32 m, m, 0x01C001C0; shl.b32 v, $4, 12; and.b32 v, v, 0x80008000; or.b32 la, m, v;
shl.b32 m, $4, 2; and.b32 m, m, 0x01C001C0; shl.b32 v, $4, 8; and.b32 v, v, 0x80008000; or.b32 ha, m, v;
shr.b32 m, $4, 2; and.b32 m, m, 0x01C001C0; shl.b32 v, $4, 4; and.b32 v, v, 0x80008000; or.b32 ka, m, v;
shr.b32 m, $4, 6; and.b32 m, m, 0x01C001C0; and.b32 v, $4, 0x80008000; or.b32 ga, m, v;
shl.b32 m, $5, 6; and.b32 m, m, 0x01C001C0; shl.b32 v, $5, 12; and.b32 v, v, 0x80008000; or.b32 lb, m, v;
shl.b32 m, $5, 2; and.b32 m, m, 0x01C001C0; shl.b32 v, $5, 8; and.b32 v, v, 0x80008000; or.b32 hb, m, v;
shr.b32 m, $5, 2; and.b32 m, m, 0x01C001C0; shl.b32 v, $5, 4; and.b32 v, v, 0x80008000; or.b32 kb, m, v;
shr.b32 m, $5, 6; and.b32 m, m, 0x01C001C0; and.b32 v, $5, 0x80008000; or.b32 gb, m, v;
fma.rn.bf16x2 la, la, $6, z;
fma.rn.bf16x2 ha, ha, $6, z;
fma.rn.bf16x2 ka, ka, $6, z;
fma.rn.bf16x2 ga, ga, $6, z;
fma.rn.bf16x2 lb, lb, $7, z;
fma.rn.bf16x2 hb, hb, $7, z;
fma.rn.bf16x2 kb, kb, $7, z;
fma.rn.bf16x2 gb, gb, $7, z;
mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {ea, eb, ec, ed}, {la, lb, ha, hb}, {$8, $9}, {$12, $13, $14, $15};
mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {$0, $1, $2, $3}, {ka, kb, ga, gb}, {$10, $11}, {ea, eb, ec, ed};
}""")
_UNDO = gl.constexpr(18446744073709551616.0)  # 2**64, the part of 2**126 the upcast leaves out


def words_layout(num_warps: int, block_k: int) -> gl.BlockedLayout:
    """[BN / 2, 4, W] int32: lane 4g + t of warp w holds row pair 8 (w + NW r) + g, quarter t, all W words."""
    return gl.BlockedLayout([1, 1, block_k // 32], [8, 4, 1], [num_warps, 1, 1], [2, 1, 0])


def act_layout(num_warps: int, block_k: int) -> gl.BlockedLayout:
    """[1, 4, 4W] int32 activation pairs: lane 4g + t holds quarter t's 4W pairs (2I bf16, contiguous)."""
    return gl.BlockedLayout([1, 1, block_k // 8], [8, 4, 1], [num_warps, 1, 1], [2, 1, 0])


@gluon.jit
def _gdc_wait(PDL: gl.constexpr):
    """launch.wait_for_inputs for Gluon kernels (see launch.py)."""
    if PDL:
        gl.inline_asm_elementwise("griddepcontrol.wait; // dummy $0", "=r", [], dtype=gl.int32, is_pure=False,
                                  pack=1)
        gl.inline_asm_elementwise("griddepcontrol.launch_dependents; // dummy $0", "=r", [], dtype=gl.int32,
                                  is_pure=False, pack=1)


@gluon.jit
def _load_step(w_base, s_base, a_base, k0, k_end, s_wn, s_sn, s_sg,
               BH: gl.constexpr, BK: gl.constexpr, L: gl.constexpr, LA: gl.constexpr):
    """One step's operands: the even and odd rows' weight words [BH, 4, W] int32, their bf16x2 scale factors
    [BH, 4, 1] int32, the activation pairs [1, 4, 4W] int32 (pair 4w + j of the lane's quarter). A lane's
    quarter (2I values from k0 + 2I t) lies wholly before k_end (a multiple of 32) or wholly after it: the
    mask is per quarter, so the loads stay 16-byte vectors; steps past k_end load nothing.
    w_base: int32 view of row n0's bytes; a_base: int32 view of the activation row (bf16 pairs)."""
    I: gl.constexpr = BK // 8
    W: gl.constexpr = BK // 32
    j = gl.arange(0, BH, layout=gl.SliceLayout(1, gl.SliceLayout(2, L)))[:, None, None]  # [BH, 1, 1]
    t = gl.arange(0, 4, layout=gl.SliceLayout(0, gl.SliceLayout(2, L)))[None, :, None]  # [1, 4, 1]
    w = gl.arange(0, W, layout=gl.SliceLayout(0, gl.SliceLayout(1, L)))[None, None, :]  # [1, 1, W]
    word = (k0 // 2 + t * I) // 4 + w  # [1, 4, W] int32 word along the row
    group = k0 // 32 + (t * I) // 16  # [1, 4, 1] the scale group of the lane's bytes
    even = (2 * j) * (s_wn // 4) + word  # [BH, 4, W]
    s_even = (2 * j) * s_sn + group * s_sg  # [BH, 4, 1]
    live = (k0 + 2 * I * t < k_end) & (j < BH)  # [BH, 4, 1]
    at = gl.arange(0, 4, layout=gl.SliceLayout(0, gl.SliceLayout(2, LA)))[None, :, None]  # [1, 4, 1]
    aq = gl.arange(0, 4 * W, layout=gl.SliceLayout(0, gl.SliceLayout(1, LA)))[None, None, :]  # [1, 1, 4W]
    pair = (k0 + 2 * I * at) // 2 + aq  # [1, 4, 4W]
    qe = gl.load(w_base + even, mask=live)  # masked words stay undefined: they meet zero activations, and
    qo = gl.load(w_base + even + s_wn // 4, mask=live)  # any code decodes to a finite value
    se = gl.load(s_base + s_even, mask=live, other=127)
    so = gl.load(s_base + s_even + s_sn, mask=live, other=127)
    a = gl.load(a_base + pair, mask=k0 + 2 * I * at < k_end, other=0)
    fe = (se.to(gl.int32) + 62) * 0x00800080  # bf16 2**(s - 65) in both halves
    fo = (so.to(gl.int32) + 62) * 0x00800080
    return qe, qo, fe, fo, a


@gluon.jit
def _mma_words(c0, c1, c2, c3, qe, qo, fe, fo, a, BH: gl.constexpr, BK: gl.constexpr, L: gl.constexpr):
    """The accumulator c0..c3 [BH, 4, W] float32 (d0..d3 of each word's mma) += the words' two mma each."""
    W: gl.constexpr = BK // 32
    a = gl.reshape(a, [1, 4, W, 2, 2])  # pair 4w + 2 u + v
    a_v0, a_v1 = gl.split(a)  # [1, 4, W, 2] over u
    a0, a2 = gl.split(a_v0)  # pairs 4w, 4w + 2
    a1, a3 = gl.split(a_v1)  # 4w + 1, 4w + 3
    p0, p1, p2, p3 = gl.inline_asm_elementwise(_PAIR_A, "=r,=r,=r,=r,r,r,r,r", [a0, a1, a2, a3],
                                               dtype=(gl.int32, gl.int32, gl.int32, gl.int32), is_pure=True, pack=1)
    p0 = gl.broadcast(gl.convert_layout(p0, L), qe)[0]
    p1 = gl.broadcast(gl.convert_layout(p1, L), qe)[0]
    p2 = gl.broadcast(gl.convert_layout(p2, L), qe)[0]
    p3 = gl.broadcast(gl.convert_layout(p3, L), qe)[0]
    fe = gl.broadcast(fe, qe)[0]
    fo = gl.broadcast(fo, qe)[0]
    return gl.inline_asm_elementwise(_STEP, "=f,=f,=f,=f,r,r,r,r,r,r,r,r,f,f,f,f",
                                     [qe, qo, fe, fo, p0, p1, p2, p3, c0, c1, c2, c3],
                                     dtype=(gl.float32, gl.float32, gl.float32, gl.float32), is_pure=True, pack=1)


@gluon.jit
def _row_dot(w_base, s_base, a_base, k_lo, k_end, s_wn, s_sn, s_sg,
             BH: gl.constexpr, BK: gl.constexpr, L: gl.constexpr, LA: gl.constexpr, DEPTH: gl.constexpr):
    """(even, odd) [BH, 4] float32: a[k_lo:k_end] @ W^T for rows 2j and 2j + 1 (row pair j), the same in
    every lane t. k_lo a multiple of BK, k_end of 32. Loads run DEPTH (2 or 3) steps ahead of the math: at a
    few tokens a program streams one weight row block from HBM, so the bytes in flight set the speed."""
    W: gl.constexpr = BK // 32
    c0 = gl.zeros([BH, 4, W], gl.float32, L)
    c1 = gl.zeros([BH, 4, W], gl.float32, L)
    c2 = gl.zeros([BH, 4, W], gl.float32, L)
    c3 = gl.zeros([BH, 4, W], gl.float32, L)
    b0 = _load_step(w_base, s_base, a_base, k_lo, k_end, s_wn, s_sn, s_sg, BH, BK, L, LA)
    b1 = _load_step(w_base, s_base, a_base, k_lo + BK, k_end, s_wn, s_sn, s_sg, BH, BK, L, LA)
    if DEPTH == 3:
        b2 = _load_step(w_base, s_base, a_base, k_lo + 2 * BK, k_end, s_wn, s_sn, s_sg, BH, BK, L, LA)
    # unrolled by DEPTH so that each buffer is refilled in place (no register moves); the last round may run
    # up to DEPTH - 1 steps past k_end, on masked (zero) activations
    for k0 in range(k_lo, k_end, DEPTH * BK):
        n0 = _load_step(w_base, s_base, a_base, k0 + DEPTH * BK, k_end, s_wn, s_sn, s_sg, BH, BK, L, LA)
        c0, c1, c2, c3 = _mma_words(c0, c1, c2, c3, b0[0], b0[1], b0[2], b0[3], b0[4], BH, BK, L)
        n1 = _load_step(w_base, s_base, a_base, k0 + (DEPTH + 1) * BK, k_end, s_wn, s_sn, s_sg, BH, BK, L, LA)
        c0, c1, c2, c3 = _mma_words(c0, c1, c2, c3, b1[0], b1[1], b1[2], b1[3], b1[4], BH, BK, L)
        if DEPTH == 3:
            n2 = _load_step(w_base, s_base, a_base, k0 + 5 * BK, k_end, s_wn, s_sn, s_sg, BH, BK, L, LA)
            c0, c1, c2, c3 = _mma_words(c0, c1, c2, c3, b2[0], b2[1], b2[2], b2[3], b2[4], BH, BK, L)
            b2 = n2
        b0 = n0
        b1 = n1
    return gl.sum(c0, axis=2) * _UNDO, gl.sum(c2, axis=2) * _UNDO


@gluon.jit
def _pair_gemm1_gluon(x_ptr, ids_ptr, w_ptr, s_ptr, b_ptr, act_ptr,
                      s_xt, s_we, s_wn, s_se, s_sn, s_sg, s_be, s_ap, limit, alpha,
                      K: gl.constexpr, A: gl.constexpr, BN: gl.constexpr, BK: gl.constexpr, L: gl.constexpr,
                      LA: gl.constexpr, DEPTH: gl.constexpr, PDL: gl.constexpr):
    """act[p, i] = swiglu(x[p // A] @ W1[ids[p]]^T + b1)[i] for the BN / 2 columns i of W1 rows n0 .. n0 + BN
    (even rows gate, odd up: a row pair j is column n0 / 2 + j). w_ptr the int32 view of the bytes (s_we,
    s_wn in bytes); x_ptr an int32 view of the bf16 rows (s_xt in bf16); x, act and bias rows contiguous."""
    _gdc_wait(PDL)
    BH: gl.constexpr = BN // 2
    p = gl.program_id(0)
    n0 = gl.program_id(1) * BN
    expert = gl.load(ids_ptr + p).to(gl.int64)
    gate, up = _row_dot(w_ptr + (expert * s_we + n0 * s_wn) // 4, s_ptr + expert * s_se + n0 * s_sn,
                        x_ptr + (p // A).to(gl.int64) * (s_xt // 2), 0, K, s_wn, s_sn, s_sg, BH, BK, L, LA,
                        DEPTH)
    SL: gl.constexpr = gl.SliceLayout(2, L)
    j = gl.arange(0, BH, layout=gl.SliceLayout(1, SL))[:, None]  # [BH, 1]
    t = gl.arange(0, 4, layout=gl.SliceLayout(0, SL))[None, :]  # [1, 4]
    keep = (t == 0) & (j < BH)  # [BH, 4]: one lane of the four stores
    row = n0 + 2 * j
    gate = gate + gl.load(b_ptr + expert * s_be + row).to(gl.float32)
    up = up + gl.load(b_ptr + expert * s_be + row + 1).to(gl.float32)
    gate = gl.minimum(gate, limit)
    up = gl.minimum(gl.maximum(up, -limit), limit)
    act = gate * (1.0 / (1.0 + gl.exp(-alpha * gate))) * (up + 1.0)
    gl.store(act_ptr + p.to(gl.int64) * s_ap + n0 // 2 + j + 0 * t, act.to(act_ptr.dtype.element_ty), mask=keep)


@gluon.jit
def _pair_gemm2_gluon(act_ptr, ids_ptr, w_ptr, s_ptr, b_ptr, route_w_ptr, y_ptr,
                      s_ap, s_we, s_wn, s_se, s_sn, s_sg, s_be, s_yr,
                      K: gl.constexpr, S: gl.constexpr, K_SPLIT: gl.constexpr, BN: gl.constexpr,
                      BK: gl.constexpr, L: gl.constexpr, LA: gl.constexpr, DEPTH: gl.constexpr,
                      PDL: gl.constexpr):
    """y[p * S + s, n] = weights[p] * (act[p, split s] @ W2[ids[p]][n, split s] (+ b2[n] on split 0)) for BN
    columns n; K_SPLIT, a multiple of BK, each split's length. act_ptr an int32 view (s_ap in bf16)."""
    _gdc_wait(PDL)
    BH: gl.constexpr = BN // 2
    p = gl.program_id(0)
    n0 = gl.program_id(1) * BN
    s = gl.program_id(2)
    expert = gl.load(ids_ptr + p).to(gl.int64)
    k_lo = s * K_SPLIT
    k_end = gl.minimum(k_lo + K_SPLIT, K)
    y0, y1 = _row_dot(w_ptr + (expert * s_we + n0 * s_wn) // 4, s_ptr + expert * s_se + n0 * s_sn,
                      act_ptr + p.to(gl.int64) * (s_ap // 2), k_lo, k_end, s_wn, s_sn, s_sg, BH, BK, L, LA,
                      DEPTH)
    SL: gl.constexpr = gl.SliceLayout(2, L)
    j = gl.arange(0, BH, layout=gl.SliceLayout(1, SL))[:, None]
    t = gl.arange(0, 4, layout=gl.SliceLayout(0, SL))[None, :]
    keep = (t == 0) & (j < BH)
    col = n0 + 2 * j + 0 * t  # [BH, 4] y0's column (y1: col + 1)
    route_w = gl.load(route_w_ptr + p).to(gl.float32)
    y0 = (y0 + gl.load(b_ptr + expert * s_be + col, mask=keep & (s == 0), other=0.0).to(gl.float32)) * route_w
    y1 = (y1 + gl.load(b_ptr + expert * s_be + col + 1, mask=keep & (s == 0), other=0.0).to(gl.float32)) * route_w
    out = y_ptr + (p * S + s).to(gl.int64) * s_yr
    gl.store(out + col, y0, mask=keep)
    gl.store(out + col + 1, y1, mask=keep)


def fits(n: int, k: int, block_n: int, block_k: int, num_warps: int) -> bool:
    """Whether these kernels take an [n, k] weight with these tiles (the decode path falls back otherwise):
    whole tiles of 16 NW rows (8 row pairs a warp), K a multiple of 64."""
    return block_k in (64, 128) and block_n % (16 * num_warps) == 0 and n % block_n == 0 and k % 64 == 0


def scales_in_range(scales: torch.Tensor) -> bool:
    """Whether every e8m0 scale byte is one this path decodes exactly (SCALE_MIN .. SCALE_MAX)."""
    return bool(((scales >= SCALE_MIN) & (scales <= SCALE_MAX)).all())
