"""The per-pair decode MoE path (`moe_decode.py`) against its reference twin `moe_experts_ref`, and the op
table's choice between it and the grouped path.

Without a GPU the kernels run in Triton's interpreter with float32 operands; on a CUDA machine the float32
cases run compiled and a bf16 variant runs too. Buffers the kernels allocate start as NaN (`poisoned`), so
anything never written fails the comparison. Legend as in test_triton_moe.py.
"""

import dataclasses

import pytest
import torch

pytest.importorskip("triton")

from oss_engine.kernels import get_ops
from oss_engine.kernels.ref.moe import moe_experts_ref
from oss_engine.kernels.triton import moe_decode as dec_mod
from oss_engine.kernels.triton.moe_decode import (
    GLUON_TILES,
    DecodeTiles,
    default_decode_tiles,
    moe_experts_decode_triton,
    triton_decode_tiles,
    use_decode_path,
)
from oss_engine.kernels.triton.moe import combine
from oss_engine.kernels.types import RowSum
from test_triton_moe import ALPHA, bf16_case, make_ids, make_weight, to_bf16
from triton_cases import DEV, INTERPRET, rel_l2, tiled

# several N tiles, K steps and GEMM 2 splits at these sizes; float32 tiles that fit registers on a GPU
SMALL = DecodeTiles(32, 32, 4, 1, 32, 32, 3, 4, 1, "arith")
WIDE = DecodeTiles(64, 64, 4, 1, 64, 64, 2, 4, 1, "arith")


@pytest.fixture
def poisoned(monkeypatch):
    def nan_empty(shape, dtype, device):
        return torch.full(shape, float("nan") if dtype.is_floating_point else -1, dtype=dtype, device=device)
    monkeypatch.setattr(dec_mod, "_empty", nan_empty)


def run_case(fmt, E, A, D, I, T, kind, tiles, limit=0.6, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(T, D, generator=gen).to(DEV)
    ids = make_ids(kind, T, E, A, gen).to(DEV)
    weights = torch.softmax(torch.randn(T, A, generator=gen), dim=-1).to(DEV)
    w1, w2 = make_weight(fmt, E, 2 * I, D, gen), make_weight(fmt, E, D, I, gen)
    if fmt == "bytes":
        limit = 20.0
    out = moe_experts_decode_triton(x, weights, ids, w1, w2, limit, ALPHA, tiles=tiles, compute_dtype=torch.float32)
    ref = moe_experts_ref(x, weights, ids, w1, w2, limit, ALPHA)
    assert out.shape == ref.shape and out.dtype == ref.dtype and torch.isfinite(out).all()
    err = rel_l2(out, ref)
    assert err < 1e-5, f"rel L2 {err:.2e}"


# (E, A, D, I, T, routing): one token, tokens sharing experts ("one"), I = 160 whose GEMM 2 splits are uneven,
# D = 96 with partial N tiles
CASES = [
    (8, 4, 64, 96, 1, "uniform"),
    (8, 2, 96, 160, 3, "uniform"),
    (4, 4, 64, 64, 2, "one"),
    (32, 4, 96, 64, 4, "ragged"),
]


@pytest.mark.filterwarnings("ignore:overflow encountered in exp")  # sigmoid of a large negative gate
@pytest.mark.parametrize("fmt", ["mxfp4", "dense", "bytes", "tiled"])
@pytest.mark.parametrize("E,A,D,I,T,kind", CASES)
@pytest.mark.parametrize("tiles", [SMALL, WIDE], ids=["small", "wide"])
def test_matches_reference(poisoned, fmt, E, A, D, I, T, kind, tiles):
    run_case(fmt, E, A, D, I, T, kind, tiles)


def test_split_count():
    """GEMM 2's reduction is cut into whole K steps, none empty: I = 160 with 32-wide steps and a split of 3
    gives 64 + 64 + 32 (the y buffer has P * 3 rows), a split of 8 at most 5 steps."""
    seen = {}

    def spy_empty(shape, dtype, device):
        seen.setdefault("shapes", []).append(shape)
        return torch.zeros(shape, dtype=dtype, device=device)

    gen = torch.Generator().manual_seed(0)
    w1, w2 = make_weight("mxfp4", 4, 320, 64, gen), make_weight("mxfp4", 4, 64, 160, gen)
    x, ids, weights = torch.randn(1, 64).to(DEV), torch.tensor([[0, 2]]).to(DEV), torch.ones(1, 2).to(DEV)
    for split, rows in ((3, 2 * 3), (8, 2 * 5)):
        seen.clear()
        tiles = DecodeTiles(32, 32, 4, 1, 32, 32, split, 4, 1, "arith")
        orig = dec_mod._empty
        dec_mod._empty = spy_empty
        try:
            moe_experts_decode_triton(x, weights, ids, w1, w2, 0.6, ALPHA, tiles=tiles, compute_dtype=torch.float32)
        finally:
            dec_mod._empty = orig
        assert (rows, 64) in seen["shapes"]


def test_use_decode_path():
    assert use_decode_path(4, 32) and use_decode_path(8, 32) and use_decode_path(8, 128)
    assert not use_decode_path(16, 32)  # batch 4 at top-4: the grouped Gluon kernels are faster there
    assert not use_decode_path(8, 4)  # more pairs than experts: experts repeat


def test_op_table_takes_both_paths(poisoned, monkeypatch):
    """The triton op table sends a decode batch down this path and a larger one down the grouped path; both
    equal the reference (within float32 rounding in the interpreter; compiled on CUDA both multiply in bf16)."""
    calls = []
    real_dec = dec_mod.moe_experts_decode_triton
    monkeypatch.setattr(dec_mod, "moe_experts_decode_triton",
                        lambda *a, **k: calls.append("decode") or real_dec(*a, **k))
    ops = get_ops("triton")
    gen = torch.Generator().manual_seed(4)
    E, A, D, I = 32, 4, 64, 64
    w1, w2 = make_weight("mxfp4", E, 2 * I, D, gen), make_weight("mxfp4", E, D, I, gen)
    for T, expect in ((1, ["decode"]), (9, [])):
        calls.clear()
        x = torch.randn(T, D, generator=gen).to(DEV)
        ids = make_ids("uniform", T, E, A, gen).to(DEV)
        weights = torch.softmax(torch.randn(T, A, generator=gen), dim=-1).to(DEV)
        out = ops.moe_experts(x, weights, ids, w1, w2, 0.6, ALPHA)
        assert calls == expect
        assert rel_l2(out, moe_experts_ref(x, weights, ids, w1, w2, 0.6, ALPHA)) < (1e-5 if INTERPRET else 2e-2)


@pytest.mark.parametrize("tiles", [SMALL, WIDE], ids=["small", "wide"])
def test_deferred_sum_is_the_combines_input(poisoned, tiles):
    """defer_sum: the path returns its float32 rows (A slots x S splits a token) as a RowSum, which moe.py's
    combine turns into the very tensor the path returns without it."""
    E, A, D, I, T = 8, 2, 96, 160, 3
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(T, D, generator=gen).to(DEV)
    ids = make_ids("uniform", T, E, A, gen).to(DEV)
    weights = torch.softmax(torch.randn(T, A, generator=gen), dim=-1).to(DEV)
    w1, w2 = make_weight("mxfp4", E, 2 * I, D, gen), make_weight("mxfp4", E, D, I, gen)
    args = (x, weights, ids, w1, w2, 0.6, ALPHA)
    out = moe_experts_decode_triton(*args, tiles=tiles, compute_dtype=torch.float32)
    rows = moe_experts_decode_triton(*args, tiles=tiles, compute_dtype=torch.float32, defer_sum=True)
    S = dec_mod._gemm2_split(I, tiles)[0]
    assert isinstance(rows, RowSum) and rows.n == A * S and rows.shape == (T, D) and rows.dtype == x.dtype
    assert torch.equal(combine(rows.rows, torch.empty_like(out), rows.n, False), out)
    assert torch.equal(rows.total(), out)


def test_op_table_defers_on_both_paths(poisoned):
    """Ops.moe_experts passes defer_sum down the decode and the grouped path alike."""
    ops = get_ops("triton")
    gen = torch.Generator().manual_seed(6)
    E, A, D, I = 32, 4, 64, 64
    w1, w2 = make_weight("mxfp4", E, 2 * I, D, gen), make_weight("mxfp4", E, D, I, gen)
    for T in (1, 9):  # the decode path; the grouped path
        x = torch.randn(T, D, generator=gen).to(DEV)
        ids = make_ids("uniform", T, E, A, gen).to(DEV)
        weights = torch.softmax(torch.randn(T, A, generator=gen), dim=-1).to(DEV)
        out = ops.moe_experts(x, weights, ids, w1, w2, 0.6, ALPHA)
        rows = ops.moe_experts(x, weights, ids, w1, w2, 0.6, ALPHA, defer_sum=True)
        assert isinstance(rows, RowSum) and torch.equal(rows.total(), out), T


def test_empty_batch():
    gen = torch.Generator().manual_seed(0)
    w1, w2 = make_weight("mxfp4", 4, 64, 32, gen), make_weight("mxfp4", 4, 32, 32, gen)
    out = moe_experts_decode_triton(torch.randn(0, 32, device=DEV), torch.ones(0, 2, device=DEV),
                                    torch.zeros(0, 2, dtype=torch.long, device=DEV), w1, w2, 0.6, ALPHA)
    assert out.shape == (0, 32)


def test_default_tiles_shapes():
    """The CUDA defaults respect the kernels' constraints (dot dims >= 16, K steps of whole scale groups)."""
    t = default_decode_tiles(torch.device("cuda"))
    assert t.block_n1 >= 32 and t.block_n2 >= 16 and t.block_k1 % 64 == 0 and t.block_k2 % 64 == 0
    assert t.split2 >= 1 and t.mxfp4_decode in ("arith", "dot_scaled", "gluon")


@pytest.mark.gpu
@pytest.mark.skipif(INTERPRET, reason="TRITON_INTERPRET=1: a bf16 tl.dot is wrong in the interpreter")
@pytest.mark.parametrize("fmt", ["mxfp4", "dense"])
@pytest.mark.parametrize("T", [1, 2, 4])
def test_gpu_bf16(fmt, T):
    """bf16 on CUDA with the default tiles against the float32 reference; D = I = 320 masks the K tails."""
    dev = torch.device("cuda")
    gen = torch.Generator().manual_seed(T)
    E, A, D, I = 16, 4, 320, 320
    w1, w2 = to_bf16(make_weight(fmt, E, 2 * I, D, gen)), to_bf16(make_weight(fmt, E, D, I, gen))
    x = torch.randn(T, D, generator=gen).to(dev, torch.bfloat16)
    ids = make_ids("uniform", T, E, A, gen).to(dev)
    weights = torch.softmax(torch.randn(T, A, generator=gen), dim=-1).to(dev)
    out = moe_experts_decode_triton(x, weights, ids, w1, w2, 7.0, ALPHA)
    ref = moe_experts_ref(x, weights, ids, w1, w2, 7.0, ALPHA)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    assert rel_l2(out, ref) < 2e-2


@pytest.mark.gpu
@pytest.mark.skipif(INTERPRET, reason="TRITON_INTERPRET=1: a bf16 tl.dot is wrong in the interpreter")
@pytest.mark.parametrize("T", [1, 2, 4])
@pytest.mark.parametrize("decode", ["gluon", "dot_scaled", "arith"])
@pytest.mark.parametrize("fmt,D,I", [("mxfp4", 320, 320), ("bytes", 2880, 2880)])
def test_gpu_tiled_same_bits(T, decode, fmt, D, I):
    """The same weights tiled (weights/tiles.py) give the same bits as standard on the decode path: the Gluon
    pair GEMMs (the default on CUDA) and the Triton kernels' modes."""
    x, weights, ids, w1, w2, limit = bf16_case(fmt, "uniform", T, 32, 4, D, I, seed=T + D)
    tiles = GLUON_TILES if decode == "gluon" else dataclasses.replace(triton_decode_tiles(), mxfp4_decode=decode)
    want = moe_experts_decode_triton(x, weights, ids, w1, w2, limit, ALPHA, tiles=tiles)
    got = moe_experts_decode_triton(x, weights, ids, tiled(w1), tiled(w2), limit, ALPHA, tiles=tiles)
    assert torch.equal(got, want)
    assert rel_l2(want, moe_experts_ref(x, weights, ids, w1, w2, limit, ALPHA)) < 2e-2
