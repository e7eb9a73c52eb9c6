"""The Gluon MXFP4 GEMMs (`moe_gluon.py`) against their twins: the per-pair GEMM 2 alone against a float64
matmul of the dequantized weights (every e2m1 code, scales across the documented range: the products are
exact in bf16, so only the float32 summation differs); the decode path and the grouped path in "gluon" mode
against `moe_experts_ref` and against the Triton "dot_scaled" kernels. Gluon's inline PTX runs on a GPU
only: those tests carry the gpu marker. On the CPU machine the kernels are compiled for sm_90.
"""

import math
from dataclasses import replace

import pytest
import torch

pytest.importorskip("triton")
pytest.importorskip("triton.experimental.gluon")

from oss_engine.kernels.ref.moe import moe_experts_ref
from oss_engine.kernels.triton import moe_gluon
from oss_engine.kernels.triton import moe as moe_mod
from oss_engine.kernels.triton import moe_config
from oss_engine.kernels.triton.moe_config import GemmTiles, MoeTritonConfig
from oss_engine.kernels.triton import moe_decode as dec_mod
from oss_engine.kernels.triton.moe_decode import DecodeTiles, moe_experts_decode_triton
from oss_engine.kernels.types import ExpertWeight, RowSum
from oss_engine.weights.mxfp4 import dequantize_mxfp4
from test_triton_moe import ALPHA, bf16_case, make_weight, to_bf16
from triton_cases import INTERPRET, rel_l2, run_compile_check

GLUON = DecodeTiles(32, 128, 2, 2, 32, 128, 2, 2, 2, "gluon")
GLUON_BK64 = DecodeTiles(64, 64, 2, 3, 32, 64, 3, 1, 4, "gluon")  # loads 3 steps ahead; weights 4 in GEMM 2


# ------------------------------------------------ the scheme replayed in Python, lane by lane (CPU, no PTX)

E2M1 = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0]


def prmt(a: int, b: int, sel: int) -> int:
    """PTX prmt.b32 (default mode): result byte i = byte (sel >> 4i) & 7 of the 8 bytes of (a, b)."""
    src = [(a >> (8 * i)) & 0xFF for i in range(4)] + [(b >> (8 * i)) & 0xFF for i in range(4)]
    return sum(src[(sel >> (4 * i)) & 7] << (8 * i) for i in range(4))


def shift(q: int, n: int) -> int:
    return (q << n) & 0xFFFFFFFF if n > 0 else q >> -n


def halves(r: int) -> tuple[float, float]:
    """A bf16x2 register's (low, high) values."""
    bits = torch.tensor([r & 0xFFFF, r >> 16], dtype=torch.int32).to(torch.int16)
    lo, hi = bits.view(torch.bfloat16).double().tolist()
    return lo, hi


def decode(q: int) -> list[int]:
    """moe_gluon's decode of one word, from the same table as its PTX."""
    return [(shift(q, m) & moe_gluon.MAGNITUDE_MASK) | (shift(q, sg) & moe_gluon.SIGN_MASK)
            for m, sg in moe_gluon.DECODE_SHIFTS]


def test_decode_places_every_code():
    """The four registers of a word hold (lo b0, lo b2), (hi b0, hi b2), (lo b1, lo b3), (hi b1, hi b3) times
    2**-126, for every byte value in every position (0.5 as the bf16 subnormal 2**-127)."""
    gen = torch.Generator().manual_seed(0)
    words = [v * 0x01010101 for v in range(256)] + torch.randint(0, 2**32, (2000,), generator=gen).tolist()
    for q in words:
        b = [(q >> (8 * i)) & 0xFF for i in range(4)]
        want = [(b[0] & 15, b[2] & 15), (b[0] >> 4, b[2] >> 4), (b[1] & 15, b[3] & 15), (b[1] >> 4, b[3] >> 4)]
        for reg, (c_lo, c_hi) in zip(decode(q), want):
            lo, hi = halves(reg)
            assert (lo * 2.0**126, hi * 2.0**126) == (E2M1[c_lo], E2M1[c_hi]), (hex(q), hex(reg))
            assert math.copysign(1, lo) == math.copysign(1, E2M1[c_lo])  # -0 keeps its sign


def test_one_word_two_mma_equal_the_dot_product():
    """One step of a row pair as the tensor cores see it: the 4 lanes t of an mma group each decode their word
    of the even and odd rows, times the bf16x2 factor of their scale byte, pair their activations
    (PAIRING), and two mma.m16n8k16 (A = weights: rows g and g + 8; B = activations) sum over the 16 logical k
    each. Row sums times 2**64 equal the dequantized weights' dot product with the activations, the lanes'
    k being their stored k."""
    gen = torch.Generator().manual_seed(1)
    for trial in range(50):
        scales = torch.randint(moe_gluon.SCALE_MIN, moe_gluon.SCALE_MAX + 1, (2,), generator=gen).tolist()
        words = torch.randint(0, 2**32, (2, 4), generator=gen).tolist()  # [row even / odd][lane t]
        x = torch.randn(4, 8, generator=gen).to(torch.bfloat16)  # lane t's 8 stored k of the word
        xbits = x.view(torch.int16).to(torch.int32).bitwise_and(0xFFFF).tolist()
        got = [0.0, 0.0]
        for t in range(4):
            acts = [xbits[t][2 * j] | (xbits[t][2 * j + 1] << 16) for j in range(4)]  # A0..A3
            pairs = [prmt(acts[a], acts[b], sel) for a, b, sel in moe_gluon.PAIRING]  # P0..P3
            for row in range(2):
                factor = 2.0 ** (scales[row] - 65)  # the bf16x2 fma's factor, (s + 62) << 7
                assert halves((scales[row] + moe_gluon.FACTOR_BIAS.value) * 0x00800080)[0] == factor
                regs = decode(words[row][t])
                # mma 1: A = (regs[0] | regs[1]) with B = (P0 | P1); mma 2: (regs[2] | regs[3]) with (P2 | P3)
                for w_reg, a_reg in ((regs[0], pairs[0]), (regs[1], pairs[1]), (regs[2], pairs[2]),
                                     (regs[3], pairs[3])):
                    got[row] += sum(wv * factor * av for wv, av in zip(halves(w_reg), halves(a_reg)))
        for row in range(2):
            w = [E2M1[(words[row][t] >> (4 * k)) & 15] * 2.0 ** (scales[row] - 127) for t in range(4) for k in range(8)]
            want = sum(wv * xv for wv, xv in zip(w, x.double().flatten().tolist()))
            assert math.isclose(got[row] * 2.0**64, want, rel_tol=1e-12, abs_tol=1e-300), (trial, row)


def test_fits():
    assert moe_gluon.fits(5760, 2880, 32, 128, 2) and moe_gluon.fits(2880, 2880, 32, 64, 2)
    assert not moe_gluon.fits(2880, 2880, 128, 128, 2)  # 2880 rows are not whole 128-row tiles
    assert not moe_gluon.fits(640, 320, 32, 64, 4)  # 4 warps need 64-row tiles (8 row pairs a warp)
    assert not moe_gluon.fits(5760, 2880, 32, 256, 2)  # a lane's bytes would span two scale groups
    assert not moe_gluon.fits(640, 96, 32, 64, 2)  # K not a multiple of 64
    assert not moe_gluon.fits(640, 320, 24, 64, 2)  # BN not whole n8 tiles of every warp


def test_in_exact_range():
    """The loader's measured (min, max) scale bytes decide whether these kernels take a weight."""
    assert moe_gluon.in_exact_range((66, 192)) and moe_gluon.in_exact_range((120, 127))
    assert not moe_gluon.in_exact_range((65, 127))  # the decoded weight would be a bf16 subnormal
    assert not moe_gluon.in_exact_range((127, 193))  # the factor 2**(s - 65) would overflow bf16's normals
    assert not moe_gluon.in_exact_range(None)  # never measured: take no chance


def test_compiles_for_sm90_without_shared_memory():
    """The four kernels at the gpt-oss-20b shapes (K tail masked at BK = 128) and their default depths compile
    for sm_90: no shared memory (the operands stay in registers) and at most the dot_scaled kernel's 168
    registers (at 168, six 2-warp programs fit an SM: the decode path's 720 GEMM 1 programs run in one wave).
    With PDL the grouped kernels and GEMM 1 load nothing before their wait, the decode GEMM 2 its ids and
    first weights. With the weights tiled (weights/tiles.py) the same bounds hold and the words load in as many
    instructions (`build_both`: the four default tiles' kernels)."""
    run_compile_check(r'''
import re
from triton.experimental.gluon._runtime import GluonASTSource
from oss_engine.kernels.triton import moe_gluon as G
from oss_engine.kernels.triton import moe_gluon_grouped as GG

def build(fn, consts, ptrs, floats=(), num_warps=2):
    consts = {"TILED": False, **consts}  # a constexpr left out here would compile as a runtime argument
    sig = {n: "constexpr" if n in consts else ptrs.get(n, "fp32" if n in floats else "i32") for n in fn.arg_names}
    div = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(fn.arg_names)
           if sig[n] not in ("constexpr", "fp32")}
    k = triton.compile(GluonASTSource(fn, sig, consts, attrs=div), target=GPUTarget("cuda", 90, 32),
                       options={"num_warps": num_warps})
    ptx = k.asm["ptx"]
    assert "ld.shared" not in ptx and "st.shared" not in ptx, "shared memory used"
    assert "mma.sync.aligned.m16n8k16" in ptx and "griddepcontrol.wait" in ptx
    regs = int(re.search(r"REG:(\d+)", cuobjdump(k, "-res-usage")).group(1))
    assert regs <= 168, f"{regs} registers (dot_scaled's decode kernel: 168)"
    return ptx

def build_both(fn, consts, ptrs, floats=(), num_warps=2):
    """`build` with the standard and the tiled layout (weights/tiles.py): both within the bounds, the tiled words
    loaded in as many (16-byte) instructions; the standard PTX back."""
    ptx, tiled = (build(fn, dict(consts, TILED=t), ptrs, floats, num_warps) for t in (False, True))
    assert ptx.count("ld.global") == tiled.count("ld.global"), (fn.__name__, ptx.count("ld.global"),
                                                                  tiled.count("ld.global"))
    return ptx

def loads_before_wait(ptx):  # global loads the PTX issues before its griddepcontrol.wait
    return ptx[:ptx.index("griddepcontrol.wait")].count("ld.global")

def opts(stages, block_k=128, num_warps=2):  # the launch keywords the wrappers pass (launch_options), less
    o = G.launch_options(block_k, num_warps, stages)  # num_warps, which `build` takes
    assert o.pop("num_warps") == num_warps
    return o

# GEMM 1 waits before any load (its routing is its predecessor's output); the decode GEMM 2 issues its ids
# read and its first weight loads before the wait (the module docstring's PDL note)
ptx = build_both(G._pair_gemm1_gluon, dict(K=2880, A=4, BN=32, PDL=True, **opts(2)),
                 dict(x_ptr="*i32", ids_ptr="*i64", w_ptr="*i32", s_ptr="*u8", b_ptr="*bf16", act_ptr="*bf16"),
                 floats=("limit", "alpha"))
assert loads_before_wait(ptx) == 0
ptx = build_both(G._pair_gemm2_gluon, dict(K=2880, S=2, K_SPLIT=1536, BN=32, PDL=True, **opts(3)),
                 dict(act_ptr="*i32", ids_ptr="*i64", w_ptr="*i32", s_ptr="*u8", b_ptr="*bf16",
                      route_w_ptr="*bf16", y_ptr="*fp32"))
assert loads_before_wait(ptx) > 3 and "ld.global.cg" in ptx
ptx = build_both(GG._group_gemm1_gluon, dict(K=2880, A=4, E=32, E_PAD=32, BM=8, BN=32, PDL=True, HALF_TAIL=False,
                                          **opts(4)),
                 dict(x_ptr="*i32", order_ptr="*i64", bounds_ptr="*i32", w_ptr="*i32", s_ptr="*u8", b_ptr="*bf16",
                      act_ptr="*bf16"), floats=("limit", "alpha"))
assert loads_before_wait(ptx) == 0
ptx = build(GG._group_gemm2_gluon, dict(K=2880, E=32, E_PAD=32, BM=8, BN=32, PDL=True, HALF_TAIL=False, **opts(3)),
            dict(act_ptr="*i32", order_ptr="*i64", bounds_ptr="*i32", w_ptr="*i32", s_ptr="*u8", b_ptr="*bf16",
                 route_w_ptr="*bf16", y_ptr="*fp32"))
assert loads_before_wait(ptx) == 0
# blocks of 16 with half tails at their default tiles (moe_config.default_config: 64-wide steps, 4 warps, 3 ahead):
# one token tile or two, both compiled
o16 = opts(3, 64, 4)
build(GG._group_gemm1_gluon, dict(K=2880, A=4, E=32, E_PAD=32, BM=16, BN=64, PDL=True, HALF_TAIL=True, **o16),
      dict(x_ptr="*i32", order_ptr="*i64", bounds_ptr="*i32", w_ptr="*i32", s_ptr="*u8", b_ptr="*bf16",
           act_ptr="*bf16"), floats=("limit", "alpha"), num_warps=4)
build_both(GG._group_gemm2_gluon, dict(K=2880, E=32, E_PAD=32, BM=16, BN=64, PDL=True, HALF_TAIL=True, **o16),
           dict(act_ptr="*i32", order_ptr="*i64", bounds_ptr="*i32", w_ptr="*i32", s_ptr="*u8", b_ptr="*bf16",
                route_w_ptr="*bf16", y_ptr="*bf16"), num_warps=4)
for stages in (2, 4):  # the decode GEMM 2's other depths' prologues (3 above)
    ptx = build(G._pair_gemm2_gluon, dict(K=2880, S=2, K_SPLIT=1536, BN=32, PDL=True, **opts(stages)),
                dict(act_ptr="*i32", ids_ptr="*i64", w_ptr="*i32", s_ptr="*u8", b_ptr="*bf16",
                     route_w_ptr="*bf16", y_ptr="*fp32"))
    assert loads_before_wait(ptx) > 3, stages
print("ok")
''')


def every_code_weight(E: int, out: int, inp: int, scales: list[int], gen: torch.Generator) -> ExpertWeight:
    """Random bytes (every e2m1 code, -0 included) with row r's scale byte scales[r % len(scales)]."""
    blocks = torch.randint(0, 256, (E, out, inp // 32, 16), generator=gen, dtype=torch.uint8)
    s = torch.tensor(scales, dtype=torch.uint8)[torch.arange(out) % len(scales)]
    return ExpertWeight(torch.zeros(E, out), blocks=blocks, scales=s[None, :, None].expand(E, out, inp // 32)
                        .contiguous())


@pytest.mark.gpu
@pytest.mark.skipif(INTERPRET, reason="inline PTX: a GPU only")
@pytest.mark.parametrize("bk,nw,bn,depth", [(128, 2, 32, 2), (64, 2, 32, 3), (128, 1, 32, 3), (128, 4, 64, 4)])
def test_gemm2_exact_codes_and_scales(bk, nw, bn, depth):
    """y = act @ W^T for one pair with every code and scales 2**-61, 2**-10, 2**0, 2**3, 2**65 (bytes 66,
    117, 127, 130, 192): each column within 1e-5 of float64 (the bf16 products are exact); K = 320 leaves a
    masked tail at BK = 128."""
    dev = torch.device("cuda")
    gen = torch.Generator().manual_seed(bk + nw)
    D, I = 2 * bn, 320
    w = every_code_weight(1, D, I, [66, 117, 127, 130, 192], gen)
    act = torch.randn(1, I, generator=gen).to(torch.bfloat16)
    want = act.double() @ dequantize_mxfp4(w.blocks[0], w.scales[0], dtype=torch.float64).T  # [1, D]
    blocks, scales = w.blocks.to(dev).reshape(1, D, I // 2), w.scales.to(dev)
    y = torch.full((1, D), float("nan"), device=dev)
    moe_gluon._pair_gemm2_gluon[(1, D // bn, 1)](
        act.to(dev).view(torch.int32), torch.zeros(1, dtype=torch.long, device=dev), blocks.view(torch.int32), scales,
        torch.zeros(1, D, dtype=torch.bfloat16, device=dev), torch.ones(1, device=dev), y, I, blocks.stride(0),
        blocks.stride(1), scales.stride(0), scales.stride(1), scales.stride(2), D, D, K=I, S=1, K_SPLIT=I, BN=bn,
        BK=bk, L=moe_gluon.words_layout(nw, bk), LA=moe_gluon.act_layout(nw, bk), DEPTH=depth, PDL=False,
        num_warps=nw)
    err = ((y.cpu().double() - want).abs() / want.abs().clamp_min(1e-300))[0]
    assert torch.isfinite(y).all() and err.max() < 1e-5, f"worst column {err.argmax()}: {err.max():.2e}"


def check_against_twins(monkeypatch, module, fmt, T, kind, run, twin):
    """A bf16 case on CUDA (E = 16, top-4, D = I = 320: K tails; scale ranges measured, as the loader does):
    run(case) must call module's `_experts_gluon` once (a spy) and come within 2e-2 of the float32 reference
    and 2e-3 of twin(case), the Triton kernels (both multiply bf16 operands exactly; only the summation
    order differs). case = (x, weights, ids, w1, w2, limit)."""
    calls = []
    real = module._experts_gluon
    monkeypatch.setattr(module, "_experts_gluon", lambda *a, **k: calls.append(1) or real(*a, **k))
    case = bf16_case(fmt, kind, T, E=16, A=4, D=320, I=320, seed=T)
    out = run(*case)
    ref = moe_experts_ref(*case, ALPHA)
    other = twin(*case)
    assert calls == [1], "the Gluon kernels did not run"
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    assert rel_l2(out, ref) < 2e-2
    assert rel_l2(out, other) < 2e-3


@pytest.mark.gpu
@pytest.mark.skipif(INTERPRET, reason="inline PTX: a GPU only")
@pytest.mark.parametrize("fmt", ["mxfp4", "bytes"])
@pytest.mark.parametrize("tiles", [GLUON, GLUON_BK64], ids=["bk128", "bk64"])
@pytest.mark.parametrize("T", [1, 2, 4])
def test_decode_path_gluon(monkeypatch, fmt, tiles, T):
    """The decode path in "gluon" mode, bf16: within 2e-2 of the float32 reference and within 2e-3 of the
    "dot_scaled" mode (both multiply bf16 operands exactly; only the summation order differs); D = I = 320
    masks K tails and GEMM 2's second split. The Gluon kernels ran (a spy), which needs the scale range."""
    check_against_twins(monkeypatch, dec_mod, fmt, T, "uniform",
                        lambda *case: moe_experts_decode_triton(*case, ALPHA, tiles=tiles),
                        lambda *case: moe_experts_decode_triton(*case, ALPHA, tiles=DecodeTiles(
                            32, 128, 2, 1, 32, 128, 2, 2, 1, "dot_scaled")))


@pytest.mark.gpu
@pytest.mark.skipif(INTERPRET, reason="inline PTX: a GPU only")
def test_falls_back_without_a_known_scale_range(monkeypatch):
    """Weights whose scale range is unknown, or outside SCALE_MIN .. SCALE_MAX, take the Triton kernels."""
    monkeypatch.setattr(dec_mod, "_experts_gluon", lambda *a, **k: pytest.fail("the Gluon kernels ran"))
    dev = torch.device("cuda")
    gen = torch.Generator().manual_seed(0)
    E, A, D, I = 8, 4, 128, 128
    w1, w2 = to_bf16(make_weight("mxfp4", E, 2 * I, D, gen)), to_bf16(make_weight("mxfp4", E, D, I, gen))
    x = torch.randn(1, D, generator=gen).to(dev, torch.bfloat16)
    ids, weights = torch.arange(A, device=dev)[None], torch.full((1, A), 0.25, device=dev)
    ref = moe_experts_ref(x, weights, ids, w1, w2, 7.0, ALPHA)
    for a, b in ((w1, w2), (w1.with_scale_range(), replace(w2, scale_range=(60, 127)))):
        out = moe_experts_decode_triton(x, weights, ids, a, b, 7.0, ALPHA, tiles=GLUON)
        assert rel_l2(out, ref) < 2e-2


GROUPED = MoeTritonConfig(GemmTiles(8, 32, 128, 2, 3), GemmTiles(8, 32, 128, 2, 3), "gluon")
GROUPED_WIDE = MoeTritonConfig(GemmTiles(8, 64, 64, 2, 2), GemmTiles(8, 64, 128, 4, 3), "gluon")
GROUPED_16 = MoeTritonConfig(GemmTiles(16, 32, 128, 2, 2), GemmTiles(16, 64, 64, 4, 4),
                             "gluon")  # two token tiles a block; GEMM 2's weights 4 steps ahead
GROUPED_16_HALF = MoeTritonConfig(replace(GROUPED_16.gemm1, half_tail=True),
                                  replace(GROUPED_16.gemm2, half_tail=True), "gluon")  # tails of <= 8 rows


@pytest.mark.gpu
@pytest.mark.skipif(INTERPRET, reason="inline PTX: a GPU only")
@pytest.mark.parametrize("fmt", ["mxfp4", "bytes"])
@pytest.mark.parametrize("cfg", [GROUPED, GROUPED_WIDE, GROUPED_16, GROUPED_16_HALF],
                         ids=["default", "wide", "bm16", "bm16half"])
@pytest.mark.parametrize("T,kind", [(3, "uniform"), (16, "uniform"), (16, "ragged"), (9, "one"), (21, "one")])
def test_grouped_path_gluon(monkeypatch, fmt, cfg, T, kind):
    """The grouped path in "gluon" mode (blocks of 8 sorted rows), bf16: within 2e-2 of the float32
    reference and 2e-3 of the Triton kernels. "ragged" leaves experts empty and gives one most tokens, "one"
    sends 9 or 21 tokens to the same 4 experts (blocks of 8: two or three a expert, the last partial; of 16:
    one or two); D = I = 320 masks the K tails. The Gluon kernels ran (a spy)."""
    check_against_twins(monkeypatch, moe_mod, fmt, T, kind,
                        lambda *case: moe_mod.moe_experts_triton(*case, ALPHA, config=cfg),
                        lambda *case: moe_mod.moe_experts_triton(*case, ALPHA, config=moe_config.triton_config(
                            T * 4, 16, torch.device("cuda"))))


@pytest.mark.gpu
@pytest.mark.skipif(INTERPRET, reason="inline PTX: a GPU only")
@pytest.mark.parametrize("T,kind", [(16, "uniform"), (40, "uniform"), (9, "one"), (21, "one")])
def test_grouped_half_tail_same_bits(T, kind):
    """Blocks of 16 whose last block of <= 8 rows runs one token tile (GemmTiles.half_tail) give the same bits
    as two tiles: a tile's mma see the same operands in the same order either way. T = 16 and 40 over 16
    experts leave tails of both kinds, "one" 9 rows (one full-width block) and 21 (16 + a half tail of 5)."""
    x, weights, ids, w1, w2, limit = bf16_case("mxfp4", kind, T, E=16, A=4, D=320, I=320, seed=T)
    half = moe_mod.moe_experts_triton(x, weights, ids, w1, w2, limit, ALPHA, config=GROUPED_16_HALF)
    full = moe_mod.moe_experts_triton(x, weights, ids, w1, w2, limit, ALPHA, config=GROUPED_16)
    assert torch.equal(half, full)


@pytest.mark.gpu
@pytest.mark.skipif(INTERPRET, reason="inline PTX: a GPU only")
@pytest.mark.parametrize("T", [1, 2, 16])
def test_deferred_sum_gluon(monkeypatch, T):
    """defer_sum on the Gluon paths (decode at 1-2 tokens, grouped at 16), bf16: the RowSum's rows, summed by the
    combine, are the bits the path returns without it; its n rows a token are A (grouped) or A x S (decode)."""
    module, run = ((dec_mod, lambda *c, **k: moe_experts_decode_triton(*c, ALPHA, tiles=GLUON, **k)) if T <= 2
                   else (moe_mod, lambda *c, **k: moe_mod.moe_experts_triton(*c, ALPHA, config=GROUPED_16, **k)))
    calls = []
    real = module._experts_gluon
    monkeypatch.setattr(module, "_experts_gluon", lambda *a, **k: calls.append(1) or real(*a, **k))
    case = bf16_case("mxfp4", "uniform", T, E=16, A=4, D=320, I=320, seed=T)
    out, rows = run(*case), run(*case, defer_sum=True)
    assert calls == [1, 1], "the Gluon kernels did not run"
    n = 4 * dec_mod._gemm2_split(320, GLUON)[0] if T <= 2 else 4
    assert isinstance(rows, RowSum) and rows.n == n and rows.dtype == out.dtype
    assert torch.equal(moe_mod.combine(rows.rows, torch.empty_like(out), rows.n, False), out)


def test_grouped_half_tail_needs_blocks_of_16():
    """The Gluon kernels' half block is one 8-row token tile: half_tail on blocks of 8 is refused."""
    with pytest.raises(AssertionError, match="needs blocks of 16"):
        moe_mod._gluon_half_tail(replace(GROUPED.gemm1, half_tail=True))


def test_default_config_picks_gluon_for_few_rows():
    cuda = torch.device("cuda")
    assert moe_config.default_config(4 * 32, 32, cuda).gemm1.block_m == 8  # 4 rows an expert: one mma tile
    assert moe_config.default_config(4 * 64, 32, cuda).gemm1.block_m == 16  # 8: two tiles share each decode
    assert moe_config.default_config(4 * 128, 32, cuda).mxfp4_decode == "gluon"  # 16 rows
    assert moe_config.default_config(4 * 256, 32, cuda).mxfp4_decode != "gluon"  # 32
    assert moe_config.default_config(4, 32, torch.device("cpu")).mxfp4_decode == "arith"
