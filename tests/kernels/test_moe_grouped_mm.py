"""moe_grouped_mm.py (bf16 copies of the experts made per call, torch._grouped_mm) against its twins: each
kernel against torch (`ExpertWeight.expert`, `swiglu_ref`, indexing), the whole path against `moe_experts_ref`.

Without a GPU the kernels run in Triton's interpreter and `torch._grouped_mm` on the CPU; on an sm_90 GPU the
same cases run compiled with the CUTLASS grouped GEMM, plus the gpt-oss-20b shapes (GPU-marked).
Legend: T tokens, D hidden, I intermediate, E experts, A experts per token, P = T * A.
"""

import pytest
import torch

pytest.importorskip("triton")

from oss_engine.kernels.ref.moe import moe_experts_ref, swiglu_ref
from oss_engine.kernels.triton import moe as moe_mod
from oss_engine.kernels.triton import moe_config
from oss_engine.kernels.triton import moe_grouped_mm as gmm
from oss_engine.kernels.triton.moe import moe_experts_triton
from oss_engine.kernels.triton.moe_config import GemmTiles, MoeTritonConfig
from oss_engine.kernels.types import ExpertWeight
from test_triton_moe import make_ids, make_weight
from triton_cases import DEV, INTERPRET, rel_l2, run_compile_check, tiled

ALPHA = 1.702
GROUPED = MoeTritonConfig(GemmTiles(), GemmTiles(), "grouped_mm")

pytestmark = pytest.mark.skipif(not hasattr(torch, "_grouped_mm"), reason="this torch has no _grouped_mm")


def bf16_weight(w: ExpertWeight) -> ExpertWeight:
    """w with its dense weights in bf16 (the grouped path reads bf16 checkpoints as they are)."""
    return ExpertWeight(w.bias, dense=w.dense.to(torch.bfloat16)) if not w.is_mxfp4 else w


@pytest.mark.parametrize("fmt", ["mxfp4", "bytes"])
@pytest.mark.parametrize("E,out,inp", [(2, 8, 32), (3, 5, 96), (1, 64, 64)])
def test_dequantize_is_exact(fmt, E, out, inp):
    """Every expert's bf16 weights equal the reference decode bit for bit ("bytes": every e2m1 code, -0 too)."""
    w = make_weight(fmt, E, out, inp, torch.Generator().manual_seed(E * out))
    d = gmm.dequantize(w)
    assert d.shape == (E, out, inp) and d.dtype == torch.bfloat16
    for e in range(E):
        want = w.expert(e, torch.bfloat16)
        assert torch.equal(d[e].view(torch.int16), want.view(torch.int16)), f"expert {e}"


@pytest.mark.parametrize("E,out,inp", [(2, 16, 32), (3, 32, 96), (1, 48, 128)])
def test_dequantize_reads_tiled_blocks(E, out, inp):
    """Blocks in weights/tiles.py's layout (whole 32-byte chunks, and a 16-byte last one at 96 values a row)
    dequantize to the same bits as the standard blocks."""
    w = make_weight("bytes", E, out, inp, torch.Generator().manual_seed(out + inp))
    want, got = gmm.dequantize(w), gmm.dequantize(tiled(w))
    assert torch.equal(got.view(torch.int16), want.view(torch.int16))


# The tiled dequantization must compile to the standard one's memory operations (16-byte vector loads) and layout
# conversions. A flat index whose row came from b // row_bytes read its bytes one at a time: with it an H100 prefill
# of 2k prompts (8,192 tokens a step: this path) fell from 77,314 to 67,622 tok/s with the experts tiled
# (docs/performance.md, twenty-first session). 2-D and 3-D forms with vector loads converted layouts through shared
# memory 8-11 times against the standard kernel's once, and took twice its time (twenty-third session).
# 8502f81's 1-D form issued a scale-byte load for each byte (32 a thread, its scale index computed from the byte's
# position) where the standard kernel's compiled code loads 2, and ran W1 in 686-690 us against 538-541
# (twenty-fourth session). So the check is on the machine code's loads and stores (cuobjdump -sass), not the PTX's.
_DEQUANT_LOADS = r"""
import re
from collections import Counter
from oss_engine.kernels.triton import moe_grouped_mm as G

skip_without_sm90()

ptrs = dict(blocks_ptr="*u8", scales_ptr="*u8", table_ptr="*i32", out_ptr="*i32")
std = compile_sm90(G._dequant_kernel, dict(BLOCK=G._DEQUANT_BLOCK), ptrs, divisible=(*ptrs, "n_bytes"))
til = compile_sm90(G._dequant_tiled_kernel, dict(BLOCK=G._DEQUANT_BLOCK), ptrs, divisible=(*ptrs, "row_bytes"))
ops = [Counter(re.findall(r"(?:LDG|STG)[.\w]*", cuobjdump(k, "-sass"))) for k in (std, til)]
layouts = [k.asm["ttgir"].count("ttg.convert_layout") for k in (std, til)]
assert ops[0]["LDG.E.128"] >= 2 and ops[0]["LDG.E.U8"] == 2 and ops[0] == ops[1] and layouts[0] == layouts[1], \
    (ops, layouts)
print("ok")
"""


@pytest.mark.skipif(not INTERPRET, reason="on a GPU the kernels run compiled; this checks the CPU-built PTX")
def test_tiled_dequantization_loads_vectors():
    run_compile_check(_DEQUANT_LOADS)


def test_dequantize_scale_extremes():
    """Every code at every scale byte 0..254 equals the reference decode bit for bit: bf16 subnormals (bytes
    0..8, rounded to nearest even below 2**-133), inf above bf16's range (bytes 253, 254); byte 255 is NaN."""
    codes = torch.arange(256, dtype=torch.uint8).view(16, 16)  # every byte: every pair of codes
    blocks = codes.repeat(256, 1, 1).view(1, 256, 16, 16)  # [1, 256 rows, 16 groups, 16]: row s has scale s
    scales = torch.arange(256, dtype=torch.uint8).view(1, 256, 1).expand(1, 256, 16)
    w = ExpertWeight(torch.zeros(1, 256), blocks=blocks.to(DEV), scales=scales.to(DEV))
    got, want = gmm.dequantize(w)[0], w.expert(0, torch.bfloat16)
    assert torch.equal(got[:255].view(torch.int16), want[:255].view(torch.int16))
    assert torch.isnan(got[255]).all() and torch.isnan(want[255]).all()


def test_dense_bf16_weights_are_read_in_place():
    w = ExpertWeight(torch.zeros(2, 4), dense=torch.randn(2, 4, 8).to(torch.bfloat16))
    assert gmm.dequantize(w) is w.dense


@pytest.mark.parametrize("T,A,D", [(5, 2, 48), (17, 4, 1040), (1, 1, 8)])
def test_gather_rows(T, A, D):
    x = torch.randn(T, D).to(torch.bfloat16).to(DEV)
    order = torch.randperm(T * A).to(DEV)
    assert torch.equal(gmm.gather_rows(x, order, A), x[order // A])
    wide = torch.randn(T, 2 * D).to(torch.bfloat16).to(DEV)[:, ::2]  # columns at stride 2
    assert torch.equal(gmm.gather_rows(wide, order, A), wide[order // A])


@pytest.mark.parametrize("P,I,E", [(7, 16, 3), (9, 520, 2)])
def test_swiglu_rows(P, I, E):
    """bias of the row's expert, clamped SwiGLU in float32, rounded once to bf16: within one bf16 ulp of the
    float32 reference's rounding (Triton's interpreter truncates to bf16 where the GPU rounds to nearest)."""
    gen = torch.Generator().manual_seed(P)
    u = (torch.randn(P, 2 * I, generator=gen) * 4).to(torch.bfloat16).to(DEV)  # beyond the clamp too
    ids = torch.randint(0, E, (P,), generator=gen).to(DEV)
    order = torch.randperm(P, generator=gen).to(DEV)
    b1 = torch.randn(E, 2 * I, generator=gen).to(torch.bfloat16).to(DEV)
    got = gmm.swiglu_rows(u, order, ids.view(P, 1), b1, 7.0, ALPHA)
    want = swiglu_ref(u.float() + b1[ids[order]].float(), 7.0, ALPHA).to(torch.bfloat16)
    assert got.dtype == torch.bfloat16 and got.shape == (P, I)
    torch.testing.assert_close(got.float(), want.float(), rtol=1e-2, atol=1e-2)
    assert rel_l2(got, want) < 8e-3


@pytest.mark.parametrize("T,A,D,E", [(6, 2, 48, 3), (3, 4, 300, 8)])
def test_combine_sorted(T, A, D, E):
    """out[t] = the in-order float32 sum of bf16(weight * (y[row of pair] + b2[expert])): within two bf16 ulps
    (the interpreter truncates each cast to bf16; a wrong row, bias or weight is off by far more)."""
    gen = torch.Generator().manual_seed(T)
    P = T * A
    y = torch.randn(P, D, generator=gen).to(torch.bfloat16).to(DEV)
    ids = torch.randint(0, E, (T, A), generator=gen).to(DEV)
    weights = torch.rand(T, A, generator=gen).to(DEV)
    b2 = torch.randn(E, D, generator=gen).to(torch.bfloat16).to(DEV)
    order = torch.randperm(P, generator=gen).to(DEV)
    inv = torch.empty_like(order)
    inv[order] = torch.arange(P, device=order.device)
    terms = (weights.reshape(-1, 1) * (y[inv].float() + b2[ids.reshape(-1)].float())).to(torch.bfloat16)
    want = terms.float().view(T, A, D).sum(1).to(torch.bfloat16)
    got = gmm.combine_sorted(y, order, ids, weights, b2, torch.empty(T, D, dtype=torch.bfloat16, device=DEV))
    torch.testing.assert_close(got.float(), want.float(), rtol=2e-2, atol=2e-2)
    assert rel_l2(got, want) < 8e-3


# (E, A, D, I, T, routing): ragged loads with empty experts, one expert taking every token, uniform
CASES = [
    (4, 2, 64, 32, 9, "uniform"),
    (8, 4, 32, 64, 17, "ragged"),
    (8, 2, 64, 64, 40, "ragged"),
    (8, 1, 64, 32, 20, "one"),
    (4, 4, 96, 160, 5, "uniform"),
]


@pytest.mark.parametrize("fmt", ["mxfp4", "bytes", "dense"])
@pytest.mark.parametrize("E,A,D,I,T,kind", CASES)
def test_matches_reference(fmt, E, A, D, I, T, kind):
    """The whole path through moe_experts_triton's "grouped_mm" mode, bf16, against the float32 reference."""
    gen = torch.Generator().manual_seed(T * E)
    x = torch.randn(T, D, generator=gen).to(torch.bfloat16).to(DEV)
    ids = make_ids(kind, T, E, A, gen).to(DEV)
    weights = torch.softmax(torch.randn(T, A, generator=gen), dim=-1).to(DEV)
    w1, w2 = (bf16_weight(make_weight(fmt, E, o, i, gen)) for o, i in ((2 * I, D), (D, I)))
    limit = 20.0 if fmt == "bytes" else 0.6
    assert gmm.takes(x, w1, w2, torch.bfloat16)
    out = moe_experts_triton(x, weights, ids, w1, w2, limit, ALPHA, config=GROUPED, compute_dtype=torch.bfloat16)
    ref = moe_experts_ref(x, weights, ids, w1, w2, limit, ALPHA)
    assert out.shape == ref.shape and out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    assert rel_l2(out, ref) < 2e-2


def test_falls_back_where_it_does_not_take_the_call():
    """float32 activations (the CPU tests' compute dtype): not taken; the mode falls back to the Triton
    kernels, which match the reference to float32 precision."""
    gen = torch.Generator().manual_seed(5)
    E, A, D, I, T = 4, 2, 64, 32, 6
    x = torch.randn(T, D, generator=gen).to(DEV)
    ids = make_ids("uniform", T, E, A, gen).to(DEV)
    weights = torch.softmax(torch.randn(T, A, generator=gen), dim=-1).to(DEV)
    w1, w2 = make_weight("mxfp4", E, 2 * I, D, gen), make_weight("mxfp4", E, D, I, gen)
    assert not gmm.takes(x, w1, w2, torch.float32)
    out = moe_experts_triton(x, weights, ids, w1, w2, 0.6, ALPHA, config=GROUPED, compute_dtype=torch.float32)
    assert rel_l2(out, moe_experts_ref(x, weights, ids, w1, w2, 0.6, ALPHA)) < 1e-5


def test_takes_only_aligned_bf16_calls():
    gen = torch.Generator().manual_seed(0)
    x = torch.zeros(2, 64, dtype=torch.bfloat16)
    w1, w2 = make_weight("mxfp4", 2, 64, 64, gen), make_weight("mxfp4", 2, 64, 32, gen)
    assert gmm.takes(x, w1, w2, torch.bfloat16)
    assert not gmm.takes(x.float(), w1, w2, torch.bfloat16)
    dense32 = make_weight("dense", 2, 64, 64, gen)  # float32 dense weights: would need a copy a call
    assert not gmm.takes(x, dense32, w2, torch.bfloat16)
    odd = make_weight("mxfp4", 2, 36, 64, gen)  # 2I = 36: act rows of 36 bytes, not a multiple of 16
    assert not gmm.takes(x, odd, w2, torch.bfloat16)


def test_default_config_takes_grouped_mm_from_1024_rows_on_sm90(monkeypatch):
    """sm_90 with torch._grouped_mm: "grouped_mm" from GROUPED_MM_MIN_ROWS rows an expert (512 for bf16 weights),
    "wgmma" below; elsewhere never."""
    if moe_mod.moe_gluon_wgmma is None:
        pytest.skip("no Gluon in this Triton")
    cuda = torch.device("cuda")
    monkeypatch.setattr(moe_mod.launch, "is_sm90", lambda device: True)
    monkeypatch.setattr(gmm.launch, "is_sm90", lambda device: True)
    assert moe_config.default_config(4 * 8192, 32, cuda).mxfp4_decode == "grouped_mm"  # 1024 rows an expert
    assert moe_config.default_config(4 * 8184, 32, cuda).mxfp4_decode == "wgmma"  # 1023
    assert moe_config.default_config(4 * 8192, 32, cuda).gemm1 == moe_config.WGMMA_GEMM1  # its fallback's tiles
    assert moe_config.default_config(4 * 8192, 32, torch.device("cpu")).mxfp4_decode == "arith"
    assert moe_config.default_config(4 * 4096, 32, cuda, dense=True).mxfp4_decode == "grouped_mm"  # 512 rows, bf16
    assert moe_config.default_config(4 * 4088, 32, cuda, dense=True).mxfp4_decode == "wgmma"  # 511
    assert moe_config.default_config(4 * 4096, 32, cuda).mxfp4_decode == "wgmma"  # 512 rows, MXFP4
    monkeypatch.setattr(moe_mod.launch, "is_sm90", lambda device: False)
    monkeypatch.setattr(gmm.launch, "is_sm90", lambda device: False)
    assert moe_config.default_config(4 * 8192, 32, cuda).mxfp4_decode == "dot_scaled"


@pytest.mark.gpu
@pytest.mark.skipif(DEV != "cuda", reason="needs a GPU")
@pytest.mark.parametrize("T,kind", [(2048, "uniform"), (4096, "ragged")])
def test_gpt_oss_20b_shapes(T, kind):
    """gpt-oss-20b's experts (E 32, A 4, D = I = 2880), MXFP4 random bytes at realistic scales: the grouped path
    against the reference, and against the default config's kernels at these sizes (below 1024 rows an expert)."""
    gen = torch.Generator().manual_seed(T)
    E, A, D, I = 32, 4, 2880, 2880

    def weight(out, inp):
        blocks = torch.randint(0, 256, (E, out, inp // 32, 16), generator=gen, dtype=torch.uint8)
        scales = torch.randint(118, 123, (E, out, inp // 32), generator=gen, dtype=torch.uint8)
        return ExpertWeight((torch.randn(E, out, generator=gen) * 0.1).to(torch.bfloat16).cuda(),
                            blocks=blocks.cuda(), scales=scales.cuda()).with_scale_range()

    w1, w2 = weight(2 * I, D), weight(D, I)
    x = torch.randn(T, D, generator=gen).to(torch.bfloat16).cuda()
    ids = make_ids(kind, T, E, A, gen).cuda()
    weights = torch.softmax(torch.randn(T, A, generator=gen), dim=-1).cuda()
    ref = moe_experts_ref(x, weights, ids, w1, w2, 7.0, ALPHA)
    got = moe_experts_triton(x, weights, ids, w1, w2, 7.0, ALPHA, config=GROUPED)
    assert rel_l2(got, ref) < 2e-2
    other = moe_experts_triton(x, weights, ids, w1, w2, 7.0, ALPHA)  # below 1024 rows: the wgmma path
    assert rel_l2(got, other) < 2e-2
