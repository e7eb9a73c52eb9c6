"""MXFP4 MoE GEMMs for decode in Gluon (Triton's explicit-layout dialect): the decode path's two per-pair
GEMMs (`moe_decode.py`: same contract, same grid, same combine) with the e2m1 decode and the tensor-core
step written as inline PTX over registers whose lane placement Gluon fixes. CUDA sm_80+ (bf16x2 fma,
mma.sync; griddepcontrol under PDL on sm_90); `moe_decode.py` runs them for DecodeTiles.mxfp4_decode =
"gluon", and its "dot_scaled" kernels and `moe_experts_ref` are the twins the tests compare against.
moe_gluon_grouped.py's two grouped GEMMs (blocks of 8 or 16 sorted rows) stream their weights with the same
machinery (`_row_dot`).

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
refilled in place; DEPTH 4 runs the weights 4 steps ahead and the activations (small, shared, mostly L2
hits, yet more registers a step than the weights) 1. The rounds whose loads all lie before k_end run
unmasked (no predicates, no zeroed destination registers: 209 instead of 223 SASS instructions a step in
the decode path's GEMM 1); the rest are masked per lane quarter (k_end is a multiple of 32, so a quarter is
wholly in or out and the loads stay 16-byte vectors), which covers the K tail and GEMM 2's splits, and a
step that starts past k_end skips its mma. Masked weight words are left undefined: they meet zero
activations and every code decodes to a finite value. At 2 ahead the scale bytes are kept and turned into
factors at the step that uses them (`_row_dot`). On an H200 at one token (scripts/
gpu_probe_moe_decode_limits.py), GEMM 1 at 3 ahead with the factors formed at load time took 19.1 us reading
its weights from HBM and 17.0 us with them in L2: something inside the program, not HBM, set its speed
(~0.6 us a step of 22.5); at 2 ahead with the bytes kept, 16.5-17.1 us from HBM (docs/performance.md).

Twins: `moe_experts_ref` and the Triton kernels (GPU tests); on the CPU machine, test_gluon_moe.py replays
the decode (DECODE_SHIFTS), the pairing (PAIRING) and one word's two mma lane by lane in Python against the
dequantized dot product, and compiles the kernels for sm_90.

PDL: the kernels wait (`_gdc_wait`) before reading their routing (ids, or bounds and order), as moe.py's and
moe_decode.py's do, except the decode path's GEMM 2 (`_pair_gemm2_gluon`): it reads its ids and issues its
first weight loads before the wait and waits before its first activation load (`_row_dot`'s WAIT), so its
weight stream starts while GEMM 1 finishes. That is safe: the ids were written before GEMM 1 (by routing),
and GEMM 2 cannot start before every GEMM 1 program has passed its own wait, which returns only once GEMM
1's predecessor has completed. That read bypasses L1 (`.cg`), which may hold a previous step's line.
20b on an H100, alternating runs: batch 1 500 / 499 -> 505 / 505 tok/s. The grouped GEMM 2 the same way
measured no gain at batch 64 (8,343 / 8,345 -> 8,328 / 8,335) and waits first.
"""

from __future__ import annotations

import torch
from triton.experimental import gluon
from triton.experimental.gluon import language as gl

from ..types import ExpertWeight

SCALE_MIN, SCALE_MAX = 66, 192  # e8m0 scale bytes this path decodes exactly (see the module docstring)

# prmt(a, b, selector): each selector nibble picks a byte of the 8 in (a, b), low byte first
# activation words A0..A3 = (x0, x1), (x2, x3), (x4, x5), (x6, x7) -> (x0, x4), (x1, x5), (x2, x6), (x3, x7):
# (first word, second word, selector) for each result
PAIRING = ((0, 2, 0x5410), (0, 2, 0x7632), (1, 3, 0x5410), (1, 3, 0x7632))
_PAIR_A = gl.constexpr("{\n" + "".join(f"prmt.b32 ${i}, ${4 + a}, ${4 + b}, {sel:#06x};\n"
                                         for i, (a, b, sel) in enumerate(PAIRING)) + "}")

# one weight word q (bytes b0..b3) -> bf16x2 registers (lo b0, lo b2), (hi b0, hi b2), (lo b1, lo b3),
# (hi b1, hi b3): ((q << m) & 0x01C001C0) | ((q << s) & 0x80008000), a negative shift to the right: each
# nibble's magnitude lands in bf16 bits 6-8, its sign in bit 15 (of each half)
DECODE_SHIFTS = ((6, 12), (2, 8), (-2, 4), (-6, 0))  # (m, s) per register
MAGNITUDE_MASK, SIGN_MASK = 0x01C001C0, 0x80008000
FACTOR_BIAS = gl.constexpr(62)  # scale byte s -> bf16 exponent field s + 62: the factor 2**(s - 65)


def _step_asm(tiles: int) -> str:
    """The inline PTX of one word of the even and odd rows for `tiles` token tiles. Operands: outputs $0 ..
    $(4 tiles - 1) (each tile's d0..d3), then inputs: the two rows' words, their bf16x2 scale factors, each
    tile's 4 paired activation registers, each tile's accumulator c0..c3. The decode (module docstring) is
    done once; each tile takes two mma.m16n8k16, the weights as the A operand."""
    o = 4 * tiles  # first input
    qe, qo, fe, fo = (f"${o + i}" for i in range(4))
    lines = [".reg .b32 z, m, v, ea, eb, ec, ed, la, lb, ha, hb, ka, kb, ga, gb;", "mov.b32 z, 0x80008000;"]
    def shifted(q: str, n: int) -> str:
        return f"shl.b32 m, {q}, {n}" if n > 0 else f"shr.b32 m, {q}, {-n}"

    for q, regs in ((qe, ("la", "ha", "ka", "ga")), (qo, ("lb", "hb", "kb", "gb"))):
        for r, (m, sg) in zip(regs, DECODE_SHIFTS):  # DECODE_SHIFTS' registers, times 2**-126
            sign = (f"shl.b32 v, {q}, {sg}; and.b32 v, v, {SIGN_MASK:#010x}" if sg
                    else f"and.b32 v, {q}, {SIGN_MASK:#010x}")
            lines.append(f"{shifted(q, m)}; and.b32 m, m, {MAGNITUDE_MASK:#010x}; {sign}; or.b32 {r}, m, v;")
    lines += [f"fma.rn.bf16x2 {r}, {r}, {fe}, z;" for r in ("la", "ha", "ka", "ga")]
    lines += [f"fma.rn.bf16x2 {r}, {r}, {fo}, z;" for r in ("lb", "hb", "kb", "gb")]
    mma = "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32"
    for tile in range(tiles):
        p = [f"${o + 4 + 4 * tile + i}" for i in range(4)]
        c = ", ".join(f"${o + 4 + 4 * tiles + 4 * tile + i}" for i in range(4))
        d = ", ".join(f"${4 * tile + i}" for i in range(4))
        lines += [f"{mma} {{ea, eb, ec, ed}}, {{la, lb, ha, hb}}, {{{p[0]}, {p[1]}}}, {{{c}}};",
                  f"{mma} {{{d}}}, {{ka, kb, ga, gb}}, {{{p[2]}, {p[3]}}}, {{ea, eb, ec, ed}};"]
    return "{\n" + "\n".join(lines) + "\n}"


_STEP = gl.constexpr(_step_asm(1))
_STEP2 = gl.constexpr(_step_asm(2))  # two token tiles (blocks of 16 rows) sharing one decode
_UNDO = gl.constexpr(18446744073709551616.0)  # 2**64, the part of 2**126 the upcast leaves out


def words_layout(num_warps: int, block_k: int) -> gl.BlockedLayout:
    """[BN / 2, 4, W] int32: lane 4g + t of warp w holds row pair 8 (w + NW r) + g, quarter t, all W words."""
    return gl.BlockedLayout([1, 1, block_k // 32], [8, 4, 1], [num_warps, 1, 1], [2, 1, 0])


def act_layout(num_warps: int, block_k: int) -> gl.BlockedLayout:
    """[R, 4, 4W] int32 activation pairs (R = 1 on the decode path: every lane group the same row; BH in the
    grouped kernels: lane group g's row): lane 4g + t holds quarter t's 4W pairs (2I bf16, contiguous)."""
    return gl.BlockedLayout([1, 1, block_k // 8], [8, 4, 1], [num_warps, 1, 1], [2, 1, 0])


def launch_options(block_k: int, num_warps: int, stages: int) -> dict:
    """The launch keywords every kernel here takes from its tiles: BK, the two layouts, DEPTH (`stages`
    clamped to the 2..4 that `_row_dot` implements) and num_warps."""
    return {"BK": block_k, "L": words_layout(num_warps, block_k), "LA": act_layout(num_warps, block_k),
            "DEPTH": min(4, max(2, stages)), "num_warps": num_warps}


@gluon.jit
def _gdc_wait(PDL: gl.constexpr):
    """launch.wait_for_inputs for Gluon kernels (see launch.py)."""
    if PDL:
        gl.inline_asm_elementwise("griddepcontrol.wait; // dummy $0", "=r", [], dtype=gl.int32, is_pure=False,
                                  pack=1)
        gl.inline_asm_elementwise("griddepcontrol.launch_dependents; // dummy $0", "=r", [], dtype=gl.int32,
                                  is_pure=False, pack=1)


@gluon.jit
def _load_w(src, k0, BH: gl.constexpr, BK: gl.constexpr, L: gl.constexpr, MASKED: gl.constexpr,
            RAW: gl.constexpr, TILED: gl.constexpr):
    """One step's weights: the even and odd rows' words [BH, 4, W] int32 and their bf16x2 scale factors
    [BH, 4, 1] int32, or with RAW their scale bytes [BH, 4, 1] uint8 (`_mma_words` forms the factors: see
    `_row_dot`); src = `_row_dot`'s stream (w_base: int32 view of row n0's bytes). MASKED: a lane's
    quarter (2I values from k0 + 2I t) lies wholly before k_end (a multiple of 32) or wholly after it, so
    the mask is per quarter and the loads stay 16-byte vectors; steps past k_end load nothing. Unmasked
    (the rounds `_row_dot` knows lie before k_end) the loads need no predicate or zeroed registers. TILED:
    the bytes in weights/tiles.py's layout (16-row blocks of 32-byte chunks; `fits` makes K a multiple of
    64, so every chunk is whole and a lane's I <= 16 bytes lie in one): row 2j is row 2 (j % 8) of block
    j // 8 (n0 is a multiple of 16), row 2j + 1 the next, 32 bytes on."""
    w_base, s_base, _, _, _, k_end, s_wn, s_sn, s_sg = src
    I: gl.constexpr = BK // 8
    W: gl.constexpr = BK // 32
    j = gl.arange(0, BH, layout=gl.SliceLayout(1, gl.SliceLayout(2, L)))[:, None, None]  # [BH, 1, 1]
    t = gl.arange(0, 4, layout=gl.SliceLayout(0, gl.SliceLayout(2, L)))[None, :, None]  # [1, 4, 1]
    w = gl.arange(0, W, layout=gl.SliceLayout(0, gl.SliceLayout(1, L)))[None, None, :]  # [1, 1, W]
    group = k0 // 32 + (t * I) // 16  # [1, 4, 1] the scale group of the lane's bytes
    if TILED:
        b = k0 // 2 + t * I  # [1, 4, 1] the lane's first byte along the row
        even = (j // 8) * (4 * s_wn) + (b // 32) * 128 + (j % 8) * 16 + (b % 32) // 4 + w  # [BH, 4, W] words
        even = gl.max_contiguous(gl.multiple_of(even, [1, 1, W]), [1, 1, W])  # W words: one 16-byte vector
        odd = even + 8
    else:
        word = (k0 // 2 + t * I) // 4 + w  # [1, 4, W] int32 word along the row
        even = (2 * j) * (s_wn // 4) + word  # [BH, 4, W]
        odd = even + s_wn // 4
    s_even = (2 * j) * s_sn + group * s_sg  # [BH, 4, 1]
    if MASKED:
        live = (k0 + 2 * I * t < k_end) & (j < BH)  # [BH, 4, 1]
        qe = gl.load(w_base + even, mask=live)  # masked words stay undefined: they meet zero activations,
        qo = gl.load(w_base + odd, mask=live)  # and any code decodes to a finite value
        se = gl.load(s_base + s_even, mask=live, other=127)
        so = gl.load(s_base + s_even + s_sn, mask=live, other=127)
    else:
        qe = gl.load(w_base + even)
        qo = gl.load(w_base + odd)
        se = gl.load(s_base + s_even)
        so = gl.load(s_base + s_even + s_sn)
    if not RAW:
        se = _factor(se)
        so = _factor(so)
    return qe, qo, se, so


@gluon.jit
def _factor(scale):
    """e8m0 scale bytes -> the bf16x2 factor 2**(s - 65) in both halves, int32."""
    return (scale.to(gl.int32) + FACTOR_BIAS) * 0x00800080


@gluon.jit
def _load_a(src, k0, BK: gl.constexpr, LA: gl.constexpr, TT: gl.constexpr, MASKED: gl.constexpr):
    """One step's activation pairs [R, 4, 4W] int32 (pair 4w + j of the lane's quarter), masked as `_load_w`
    (to zero); src's a_base: int32 view of the activations (bf16 pairs), a_rows 0 (one row for every lane)
    or [BH, 1, 1] int32-unit offsets of the row lane group g reads (grouped kernels); with TT = 2 token
    tiles, a_rows2 the second tile's (else unused: the second value repeats the first)."""
    _, _, a_base, a_rows, a_rows2, k_end, _, _, _ = src
    I: gl.constexpr = BK // 8
    W: gl.constexpr = BK // 32
    at = gl.arange(0, 4, layout=gl.SliceLayout(0, gl.SliceLayout(2, LA)))[None, :, None]  # [1, 4, 1]
    aq = gl.arange(0, 4 * W, layout=gl.SliceLayout(0, gl.SliceLayout(1, LA)))[None, None, :]  # [1, 1, 4W]
    pair = (k0 + 2 * I * at) // 2 + aq  # [1, 4, 4W]
    if MASKED:
        a = gl.load(a_base + a_rows + pair, mask=k0 + 2 * I * at < k_end, other=0)
    else:
        a = gl.load(a_base + a_rows + pair)
    if TT == 2:
        if MASKED:
            a2 = gl.load(a_base + a_rows2 + pair, mask=k0 + 2 * I * at < k_end, other=0)
        else:
            a2 = gl.load(a_base + a_rows2 + pair)
    else:
        a2 = a
    return a, a2


@gluon.jit
def _load_step(src, k0, BH: gl.constexpr, BK: gl.constexpr, L: gl.constexpr, LA: gl.constexpr,
               TT: gl.constexpr, MASKED: gl.constexpr, RAW: gl.constexpr, TILED: gl.constexpr):
    """One step's operands: `_load_w`'s four then `_load_a`'s two."""
    return _load_w(src, k0, BH, BK, L, MASKED, RAW, TILED) + _load_a(src, k0, BK, LA, TT, MASKED)


@gluon.jit
def _paired(a, q, BK: gl.constexpr, L: gl.constexpr):
    """Activation pairs [R, 4, 4W] -> the four mma B registers of each word (`_PAIR_A`), in q's shape."""
    W: gl.constexpr = BK // 32
    a = gl.reshape(a, [a.shape[0], 4, W, 2, 2])  # pair 4w + 2 u + v
    a_v0, a_v1 = gl.split(a)  # [R, 4, W, 2] over u
    a0, a2 = gl.split(a_v0)  # pairs 4w, 4w + 2
    a1, a3 = gl.split(a_v1)  # 4w + 1, 4w + 3
    p0, p1, p2, p3 = gl.inline_asm_elementwise(_PAIR_A, "=r,=r,=r,=r,r,r,r,r", [a0, a1, a2, a3],
                                               dtype=(gl.int32, gl.int32, gl.int32, gl.int32), is_pure=True, pack=1)
    return (gl.broadcast(gl.convert_layout(p0, L), q)[0], gl.broadcast(gl.convert_layout(p1, L), q)[0],
            gl.broadcast(gl.convert_layout(p2, L), q)[0], gl.broadcast(gl.convert_layout(p3, L), q)[0])


@gluon.jit
def _mma_words(acc, buf, BK: gl.constexpr, L: gl.constexpr, TT: gl.constexpr):
    """acc: 4 [BH, 4, W] float32 accumulators (d0..d3 of each word's mma) a token tile, TT tiles; buf a
    `_load_step`. Each word's two mma a tile, the decode shared by the tiles."""
    qe, qo, fe, fo, a, a2 = buf
    p0, p1, p2, p3 = _paired(a, qe, BK, L)
    if fe.dtype == gl.uint8:  # `_load_w`'s RAW: scale bytes
        fe = _factor(fe)
        fo = _factor(fo)
    fe = gl.broadcast(fe, qe)[0]
    fo = gl.broadcast(fo, qe)[0]
    if TT == 2:
        r0, r1, r2, r3 = _paired(a2, qe, BK, L)
        out = gl.inline_asm_elementwise(
            _STEP2, "=f,=f,=f,=f,=f,=f,=f,=f,r,r,r,r,r,r,r,r,r,r,r,r,f,f,f,f,f,f,f,f",
            [qe, qo, fe, fo, p0, p1, p2, p3, r0, r1, r2, r3, acc[0], acc[1], acc[2], acc[3], acc[4], acc[5],
             acc[6], acc[7]], dtype=(gl.float32,) * 8, is_pure=True, pack=1)
    else:
        out = gl.inline_asm_elementwise(_STEP, "=f,=f,=f,=f,r,r,r,r,r,r,r,r,f,f,f,f",
                                        [qe, qo, fe, fo, p0, p1, p2, p3, acc[0], acc[1], acc[2], acc[3]],
                                        dtype=(gl.float32,) * 4, is_pure=True, pack=1)
    return out


@gluon.jit
def _step(acc, buf, live, BK: gl.constexpr, L: gl.constexpr, TT: gl.constexpr, MASKED: gl.constexpr):
    """`_mma_words` for one step; in a masked round only if the step starts before k_end (live): the last
    round's steps past k_end cost nothing."""
    if MASKED:
        if live:
            acc = _mma_words(acc, buf, BK, L, TT)
    else:
        acc = _mma_words(acc, buf, BK, L, TT)
    return acc


@gluon.jit
def _round(acc, b0, b1, b2, k0, src, BH: gl.constexpr, BK: gl.constexpr, L: gl.constexpr, LA: gl.constexpr,
           DEPTH: gl.constexpr, TT: gl.constexpr, MASKED: gl.constexpr, RAW: gl.constexpr, TILED: gl.constexpr):
    """DEPTH (2 or 3) steps from k0, each buffer refilled in place DEPTH steps ahead (RAW: `_load_w`'s); at
    DEPTH 2, b2 is not read and the new (acc, b0, b1) come back."""
    k_end = src[5]
    n0 = _load_step(src, k0 + DEPTH * BK, BH, BK, L, LA, TT, MASKED, RAW, TILED)
    acc = _step(acc, b0, k0 < k_end, BK, L, TT, MASKED)
    n1 = _load_step(src, k0 + (DEPTH + 1) * BK, BH, BK, L, LA, TT, MASKED, RAW, TILED)
    acc = _step(acc, b1, k0 + BK < k_end, BK, L, TT, MASKED)
    if DEPTH == 3:
        n2 = _load_step(src, k0 + 5 * BK, BH, BK, L, LA, TT, MASKED, RAW, TILED)
        acc = _step(acc, b2, k0 + 2 * BK < k_end, BK, L, TT, MASKED)
        return acc, n0, n1, n2
    else:
        return acc, n0, n1


@gluon.jit
def _round4(acc, w0, w1, w2, w3, aa, k0, src, BH: gl.constexpr, BK: gl.constexpr, L: gl.constexpr,
            LA: gl.constexpr, TT: gl.constexpr, MASKED: gl.constexpr, TILED: gl.constexpr):
    """DEPTH 4: 4 steps from k0, the weights refilled 4 steps ahead, the activations 1 (aa: step k0's)."""
    k_end = src[5]
    n0 = _load_w(src, k0 + 4 * BK, BH, BK, L, MASKED, False, TILED)
    ab = _load_a(src, k0 + BK, BK, LA, TT, MASKED)
    acc = _step(acc, w0 + aa, k0 < k_end, BK, L, TT, MASKED)
    n1 = _load_w(src, k0 + 5 * BK, BH, BK, L, MASKED, False, TILED)
    aa = _load_a(src, k0 + 2 * BK, BK, LA, TT, MASKED)
    acc = _step(acc, w1 + ab, k0 + BK < k_end, BK, L, TT, MASKED)
    n2 = _load_w(src, k0 + 6 * BK, BH, BK, L, MASKED, False, TILED)
    ab = _load_a(src, k0 + 3 * BK, BK, LA, TT, MASKED)
    acc = _step(acc, w2 + aa, k0 + 2 * BK < k_end, BK, L, TT, MASKED)
    n3 = _load_w(src, k0 + 7 * BK, BH, BK, L, MASKED, False, TILED)
    aa = _load_a(src, k0 + 4 * BK, BK, LA, TT, MASKED)
    acc = _step(acc, w3 + ab, k0 + 3 * BK < k_end, BK, L, TT, MASKED)
    return acc, n0, n1, n2, n3, aa


@gluon.jit
def _row_dot(w_base, s_base, a_base, a_rows, a_rows2, k_lo, k_end, s_wn, s_sn, s_sg, BH: gl.constexpr,
             BK: gl.constexpr, L: gl.constexpr, LA: gl.constexpr, DEPTH: gl.constexpr, TT: gl.constexpr,
             WAIT: gl.constexpr, TILED: gl.constexpr):
    """4 TT [BH, 4] float32 sums, tile by tile: lane (g, t)'s mma outputs summed over its words, row 2j (c0,
    c1) and row 2j + 1 (c2, c3) of W times activation columns 2t (c0, c2) and 2t + 1 (c1, c3), over k_lo ..
    k_end (columns are the lane groups' rows, see a_rows; all the same row on the decode path). k_lo a
    multiple of BK, k_end of 32. Loads run DEPTH (2 or 3) steps ahead of the math: at a few tokens a program
    streams one weight row block from HBM, so the bytes in flight set the speed. DEPTH 4: the weights 4 steps
    ahead and the activations (small, shared by the programs, so mostly L2 hits) 1: a step's activation
    registers outnumber its weight registers, so this buys weight bytes in flight for fewer registers.
    Rounds of DEPTH steps, unrolled so that each buffer is refilled in place (no register moves): first
    those whose loads all lie before k_end, unmasked, then the rest masked, where steps past k_end load
    nothing and skip their mma. DEPTH 2 keeps the scale bytes and forms the factors at the step that uses
    them: formed at load time, the multiply waits on the newest loads where ptxas puts it, next to them
    (ncu on an H200, decode GEMM 1 at 3 ahead: 38% of its stall samples were that wait). At 3 ahead the
    deferred factors took 219 registers instead of 141 and lost; at 4 (grouped, 173 vs 129) it did not gain.
    WAIT (PDL on): the kernel's `_gdc_wait` comes here, after the first DEPTH steps' weight loads and before
    any activation load, so that GEMM 2's weight stream starts while GEMM 1 finishes (see the module
    docstring's PDL note); False where the caller waited already. TILED: the weight bytes in
    weights/tiles.py's layout (`_load_w`)."""
    W: gl.constexpr = BK // 32
    RND: gl.constexpr = DEPTH * BK  # one round
    RAW: gl.constexpr = DEPTH == 2  # keep the scale bytes (above); DEPTH 4 forms the factors at load time
    src = (w_base, s_base, a_base, a_rows, a_rows2, k_end, s_wn, s_sn, s_sg)
    k_full = k_lo + gl.maximum((k_end - k_lo - RND) // RND, 0) * RND  # a round at k0 loads up to k0 + 2 RND
    z = gl.zeros([BH, 4, W], gl.float32, L)
    if TT == 2:
        acc = (z, z, z, z, z, z, z, z)
    else:
        acc = (z, z, z, z)
    if DEPTH == 4:
        w0 = _load_w(src, k_lo, BH, BK, L, True, False, TILED)
        w1 = _load_w(src, k_lo + BK, BH, BK, L, True, False, TILED)
        w2 = _load_w(src, k_lo + 2 * BK, BH, BK, L, True, False, TILED)
        w3 = _load_w(src, k_lo + 3 * BK, BH, BK, L, True, False, TILED)
        _gdc_wait(WAIT)
        aa = _load_a(src, k_lo, BK, LA, TT, True)
        for k0 in range(k_lo, k_full, RND):
            acc, w0, w1, w2, w3, aa = _round4(acc, w0, w1, w2, w3, aa, k0, src, BH, BK, L, LA, TT, False, TILED)
        for k0 in range(k_full, k_end, RND):
            acc, w0, w1, w2, w3, aa = _round4(acc, w0, w1, w2, w3, aa, k0, src, BH, BK, L, LA, TT, True, TILED)
    else:
        b0 = _load_w(src, k_lo, BH, BK, L, True, RAW, TILED)
        b1 = _load_w(src, k_lo + BK, BH, BK, L, True, RAW, TILED)
        if DEPTH == 3:
            b2 = _load_w(src, k_lo + 2 * BK, BH, BK, L, True, RAW, TILED)
        _gdc_wait(WAIT)
        b0 = b0 + _load_a(src, k_lo, BK, LA, TT, True)
        b1 = b1 + _load_a(src, k_lo + BK, BK, LA, TT, True)
        if DEPTH == 3:
            b2 = b2 + _load_a(src, k_lo + 2 * BK, BK, LA, TT, True)
            for k0 in range(k_lo, k_full, RND):
                acc, b0, b1, b2 = _round(acc, b0, b1, b2, k0, src, BH, BK, L, LA, DEPTH, TT, False, RAW, TILED)
            for k0 in range(k_full, k_end, RND):
                acc, b0, b1, b2 = _round(acc, b0, b1, b2, k0, src, BH, BK, L, LA, DEPTH, TT, True, RAW, TILED)
        else:
            for k0 in range(k_lo, k_full, RND):
                acc, b0, b1 = _round(acc, b0, b1, 0, k0, src, BH, BK, L, LA, DEPTH, TT, False, RAW, TILED)
            for k0 in range(k_full, k_end, RND):
                acc, b0, b1 = _round(acc, b0, b1, 0, k0, src, BH, BK, L, LA, DEPTH, TT, True, RAW, TILED)
    if TT == 2:
        sums = (gl.sum(acc[0], axis=2) * _UNDO, gl.sum(acc[1], axis=2) * _UNDO, gl.sum(acc[2], axis=2) * _UNDO,
                gl.sum(acc[3], axis=2) * _UNDO, gl.sum(acc[4], axis=2) * _UNDO, gl.sum(acc[5], axis=2) * _UNDO,
                gl.sum(acc[6], axis=2) * _UNDO, gl.sum(acc[7], axis=2) * _UNDO)
    else:
        sums = (gl.sum(acc[0], axis=2) * _UNDO, gl.sum(acc[1], axis=2) * _UNDO, gl.sum(acc[2], axis=2) * _UNDO,
                gl.sum(acc[3], axis=2) * _UNDO)
    return sums


@gluon.jit
def _pair_gemm1_gluon(x_ptr, ids_ptr, w_ptr, s_ptr, b_ptr, act_ptr,
                      s_xt, s_we, s_wn, s_se, s_sn, s_sg, s_be, s_ap, limit, alpha,
                      K: gl.constexpr, A: gl.constexpr, BN: gl.constexpr, BK: gl.constexpr, L: gl.constexpr,
                      LA: gl.constexpr, DEPTH: gl.constexpr, PDL: gl.constexpr, TILED: gl.constexpr = False):
    """act[p, i] = swiglu(x[p // A] @ W1[ids[p]]^T + b1)[i] for the BN / 2 columns i of W1 rows n0 .. n0 + BN
    (even rows gate, odd up: a row pair j is column n0 / 2 + j). w_ptr the int32 view of the bytes (s_we,
    s_wn in bytes); x_ptr an int32 view of the bf16 rows (s_xt in bf16); x, act and bias rows contiguous.
    TILED: the bytes in weights/tiles.py's layout (`_load_w`)."""
    _gdc_wait(PDL)
    BH: gl.constexpr = BN // 2
    p = gl.program_id(0)
    n0 = gl.program_id(1) * BN
    expert = gl.load(ids_ptr + p).to(gl.int64)
    gate, _, up, _ = _row_dot(w_ptr + (expert * s_we + n0 * s_wn) // 4, s_ptr + expert * s_se + n0 * s_sn,
                              x_ptr + (p // A).to(gl.int64) * (s_xt // 2), 0, 0, 0, K, s_wn, s_sn, s_sg, BH,
                              BK, L, LA, DEPTH, 1, False, TILED)
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
                      PDL: gl.constexpr, TILED: gl.constexpr = False):
    """y[p * S + s, n] = weights[p] * (act[p, split s] @ W2[ids[p]][n, split s] (+ b2[n] on split 0)) for BN
    columns n; K_SPLIT, a multiple of BK, each split's length. act_ptr an int32 view (s_ap in bf16). PDL: the
    wait comes inside `_row_dot`, after the first weight loads (ids is read before it, see the module
    docstring). TILED as GEMM 1's."""
    BH: gl.constexpr = BN // 2
    p = gl.program_id(0)
    n0 = gl.program_id(1) * BN
    s = gl.program_id(2)
    expert = gl.load(ids_ptr + p, cache_modifier=".cg").to(gl.int64)
    k_lo = s * K_SPLIT
    k_end = gl.minimum(k_lo + K_SPLIT, K)
    y0, _, y1, _ = _row_dot(w_ptr + (expert * s_we + n0 * s_wn) // 4, s_ptr + expert * s_se + n0 * s_sn,
                            act_ptr + p.to(gl.int64) * (s_ap // 2), 0, 0, k_lo, k_end, s_wn, s_sn, s_sg, BH,
                            BK, L, LA, DEPTH, 1, PDL, TILED)
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


def takes(x: torch.Tensor, w1: ExpertWeight, w2: ExpertWeight, compute: torch.dtype,
          tiles1: tuple[int, int, int], tiles2: tuple[int, int, int], block_m: int = 8) -> bool:
    """Whether these kernels take a call: MXFP4 weights whose scale bytes are known to lie in SCALE_MIN ..
    SCALE_MAX (ExpertWeight.scale_range, measured at load time), bf16 activations on CUDA, and (block_n,
    block_k, num_warps) tiles for GEMM 1 and GEMM 2 that divide the shapes (`fits`); grouped blocks of 8 or 16
    rows."""
    if not (w1.is_mxfp4 and w2.is_mxfp4 and x.is_cuda and compute == torch.bfloat16 and x.dtype == compute):
        return False
    if not (in_exact_range(w1.scale_range) and in_exact_range(w2.scale_range)):
        return False
    D, I = x.shape[1], w1.bias.shape[1] // 2
    return block_m in (8, 16) and fits(2 * I, D, *tiles1) and fits(D, I, *tiles2)


def in_exact_range(scale_range: tuple[int, int] | None) -> bool:
    """Whether a projection's (min, max) scale bytes (ExpertWeight.scale_range) are known and lie in
    SCALE_MIN .. SCALE_MAX, the bytes this path decodes exactly."""
    return scale_range is not None and SCALE_MIN <= scale_range[0] and scale_range[1] <= SCALE_MAX

