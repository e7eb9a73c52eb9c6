"""The Triton MoE experts against their reference twin `moe_experts_ref`.

Without a GPU the kernels run in Triton's interpreter with float32 operands (a bf16 tl.dot is garbage there);
on a CUDA machine the same float32 cases run compiled, and a bf16 variant runs too. Buffers the kernels
allocate start as NaN (`poisoned`), so anything never written fails the comparison.
Legend: T tokens, D hidden, I intermediate, E experts, A experts per token.
"""

from dataclasses import replace

import pytest
import torch

pytest.importorskip("triton")

from oss_engine.kernels.ref.moe import moe_experts_ref
from oss_engine.kernels.triton import moe as moe_mod
from oss_engine.kernels.triton import moe_config
from oss_engine.kernels.triton.moe import moe_experts_triton
from oss_engine.kernels.triton.moe_config import GemmTiles, MoeTritonConfig
from oss_engine.kernels.triton.moe_grouping import group_by_expert
from oss_engine.kernels.types import ExpertWeight, RowSum
from oss_engine.weights.mxfp4 import quantize_mxfp4
from triton_cases import DEV, INTERPRET, rel_l2, tiled

ALPHA = 1.702
SMALL = MoeTritonConfig(GemmTiles(16, 32, 32), GemmTiles(16, 32, 32))  # many blocks, N tiles and K steps
FP32 = MoeTritonConfig(GemmTiles(16, 64, 64), GemmTiles(16, 64, 64))  # float32 tiles that fit registers on a GPU


@pytest.fixture
def poisoned(monkeypatch):
    """Every buffer the module allocates starts as NaN (integer ones as -1), so what is never written shows."""
    def nan_empty(shape, dtype, device):
        return torch.full(shape, float("nan") if dtype.is_floating_point else -1, dtype=dtype, device=device)
    monkeypatch.setattr(moe_mod, "_empty", nan_empty)


def make_ids(kind: str, T: int, E: int, A: int, gen: torch.Generator) -> torch.Tensor:
    """[T, A] distinct experts per token. "uniform": random; "ragged": skewed, experts >= A/2 + 2 unused
    when E allows; "one": every token picks the same A experts (one expert takes every token when A = 1)."""
    if kind == "one":
        return torch.arange(E - A, E).repeat(T, 1)  # [T, A]
    prefs = torch.rand(T, E, generator=gen)  # [T, E]
    if kind == "ragged":
        used = max(A + 1, E // 2) if A < E else E
        prefs[:, used:] = -1.0  # never chosen
        prefs[:, 0] += 0.5  # expert 0 takes most tokens
    return prefs.topk(A, dim=-1).indices


def make_weight(fmt: str, E: int, out: int, inp: int, gen: torch.Generator) -> ExpertWeight:
    """float32 [E, out, inp] experts on DEV: "dense", "mxfp4" (quantized), "tiled" (quantized, the blocks in
    weights/tiles.py's layout), or "bytes" (random MXFP4 bytes)."""
    if fmt == "tiled":
        return tiled(make_weight("mxfp4", E, out, inp, gen))
    bias = torch.randn(E, out, generator=gen).to(DEV)
    if fmt == "dense":
        return ExpertWeight(bias, dense=(torch.randn(E, out, inp, generator=gen) * inp**-0.5).to(DEV))
    if fmt == "mxfp4":
        q = quantize_mxfp4(torch.randn(E, out, inp, generator=gen) * inp**-0.5)
        return ExpertWeight(bias, blocks=q.blocks.to(DEV), scales=q.scales.to(DEV))
    # "bytes": every e2m1 code (and -0) with scales 2**-7 .. 2**3
    blocks = torch.randint(0, 256, (E, out, inp // 32, 16), generator=gen, dtype=torch.uint8)
    scales = torch.randint(120, 131, (E, out, inp // 32), generator=gen, dtype=torch.uint8)
    return ExpertWeight(bias, blocks=blocks.to(DEV), scales=scales.to(DEV))


def run_case(fmt, E, A, D, I, T, kind, limit=0.6, config=None, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(T, D, generator=gen).to(DEV)  # [T, D]
    ids = make_ids(kind, T, E, A, gen).to(DEV)  # [T, A]
    weights = torch.softmax(torch.randn(T, A, generator=gen), dim=-1).to(DEV)  # [T, A]
    w1, w2 = make_weight(fmt, E, 2 * I, D, gen), make_weight(fmt, E, D, I, gen)
    if fmt == "bytes":
        limit = 20.0
    out = moe_experts_triton(x, weights, ids, w1, w2, limit, ALPHA, config=config or FP32,
                             compute_dtype=torch.float32)
    ref = moe_experts_ref(x, weights, ids, w1, w2, limit, ALPHA)
    assert out.shape == ref.shape and out.dtype == ref.dtype
    assert torch.isfinite(out).all()
    err = rel_l2(out, ref)
    assert err < 1e-5, f"rel L2 {err:.2e}"
    return x, ids, w1, limit


# (E, A, D, I, T, routing): the sizes of the issue, ragged loads with empty experts, one expert with all
# tokens, every expert used by every token (A = E)
CASES = [
    (4, 1, 32, 32, 1, "uniform"),
    (4, 2, 64, 32, 3, "uniform"),
    (8, 4, 32, 64, 17, "ragged"),
    (8, 2, 64, 64, 64, "ragged"),
    (4, 4, 64, 64, 17, "uniform"),
    (8, 1, 64, 32, 64, "one"),
    (8, 2, 32, 64, 3, "one"),
    (8, 4, 64, 64, 64, "uniform"),
]


@pytest.mark.parametrize("fmt", ["mxfp4", "dense", "tiled"])
@pytest.mark.parametrize("E,A,D,I,T,kind", CASES)
def test_matches_reference(poisoned, fmt, E, A, D, I, T, kind):
    run_case(fmt, E, A, D, I, T, kind)


@pytest.mark.parametrize("fmt", ["mxfp4", "dense"])
@pytest.mark.parametrize("E,A,D,I,T,kind", [(8, 2, 64, 64, 17, "ragged"), (4, 4, 64, 32, 3, "uniform")])
def test_small_tiles(poisoned, fmt, E, A, D, I, T, kind):
    """Blocks of 16 rows, 16 activations / 32 outputs per program, 32-wide K steps: several of each."""
    run_case(fmt, E, A, D, I, T, kind, config=SMALL)


@pytest.mark.parametrize("group_m", [1, 3, 4])
@pytest.mark.parametrize("E,A,D,I,T,kind", [(8, 2, 64, 64, 17, "ragged"), (4, 4, 96, 96, 9, "uniform"),
                                             (1, 1, 96, 64, 70, "one")])
def test_grouped_tile_order(poisoned, group_m, E, A, D, I, T, kind):
    """The 1-D grid in groups of row blocks (GemmTiles.group_m): every (row block, column tile) runs (a missed
    one leaves poisoned rows), including in a last group shorter than the others that holds a real block, not
    only the grid's spare ones (one expert: 5 real row blocks of 6, groups of 4), and a partial column tile
    (GEMM 2's 96 outputs in tiles of 64)."""
    t = GemmTiles(16, 64, 32, group_m=group_m)
    run_case("mxfp4", E, A, D, I, T, kind, config=MoeTritonConfig(t, t))


@pytest.mark.parametrize("fmt", ["mxfp4", "dense", "tiled"])
def test_ragged_tails(poisoned, fmt):
    """D = I = 96 with 64-wide K steps and 128-row W1 tiles: partial K steps and partial N tiles (tiled: a
    48-byte row is one whole 32-byte chunk and a 16-byte one)."""
    t = GemmTiles(16, 128, 64)
    run_case(fmt, 4, 2, 96, 96, 5, "uniform", config=MoeTritonConfig(t, t))


@pytest.mark.parametrize("fmt", ["mxfp4", "dense"])
def test_half_tail_blocks(poisoned, fmt):
    """GemmTiles.half_tail: an expert's last block of <= 16 of 32 rows runs at 16 rows. Counts [40, 50, 16, 0]
    give half blocks of 8 rows after a full one (expert 0) and of 16 rows alone (expert 2), a full-width tail
    of 18 rows (expert 1) and an empty expert; the result matches the reference and the full-width run: the
    same bits compiled; under the interpreter within 1e-7 (its tl.dot is numpy's float32 matmul, whose
    summation order can depend on the block's rows: on a 2-core CPU without AVX-512 they differed by an ulp)."""
    gen = torch.Generator().manual_seed(3)
    ids = torch.tensor([0] * 40 + [1] * 50 + [2] * 16)[torch.randperm(106, generator=gen)][:, None].to(DEV)
    x = torch.randn(106, 64, generator=gen).to(DEV)
    weights = torch.ones(106, 1, device=DEV)
    w1, w2 = make_weight(fmt, 4, 2 * 64, 64, gen), make_weight(fmt, 4, 64, 64, gen)
    outs = {}
    for half in (True, False):
        t = GemmTiles(32, 32, 32, half_tail=half)
        outs[half] = moe_experts_triton(x, weights, ids, w1, w2, 0.6, ALPHA, config=MoeTritonConfig(t, t),
                                        compute_dtype=torch.float32)
    assert rel_l2(outs[True], moe_experts_ref(x, weights, ids, w1, w2, 0.6, ALPHA)) < 1e-5
    if INTERPRET:
        assert rel_l2(outs[True], outs[False]) < 1e-7
    else:
        assert torch.equal(outs[True], outs[False])


def test_half_tail_needs_32_rows():
    """Half of a 16-row block would be no tensor-core tile: refused."""
    t = GemmTiles(16, 32, 32, half_tail=True)
    x = torch.randn(4, 32, device=DEV)
    w = make_weight("dense", 2, 64, 32, torch.Generator().manual_seed(0))
    w2 = make_weight("dense", 2, 32, 32, torch.Generator().manual_seed(1))
    with pytest.raises(AssertionError, match="half_tail needs block_m >= 32"):
        moe_experts_triton(x, torch.ones(4, 1, device=DEV), torch.zeros(4, 1, dtype=torch.long, device=DEV), w, w2,
                           0.6, ALPHA, config=MoeTritonConfig(t, t), compute_dtype=torch.float32)


@pytest.mark.filterwarnings("ignore:overflow encountered in exp")  # sigmoid of a large negative gate
def test_every_code_and_scale(poisoned):
    """Random bytes: all 256 byte values (every e2m1 code, -0 included) under scales 120..130."""
    run_case("bytes", 8, 2, 64, 64, 17, "uniform")


def test_clamps_bite(poisoned):
    """limit 0.6 really clamps in these cases: some gates exceed it, some ups leave [-limit, limit]."""
    x, ids, w1, limit = run_case("mxfp4", 4, 2, 64, 32, 3, "uniform")
    u = x @ w1.expert(int(ids[0, 0]), torch.float32).T + w1.bias[int(ids[0, 0])]  # [T, 2I]
    assert (u[:, 0::2] > limit).any() and (u[:, 1::2] < -limit).any() and (u[:, 1::2] > limit).any()


def test_worked_example_blocks(poisoned):
    """The module docstring's example: counts [20, 0, 3, 1] with BM = 16 (an empty expert, a padded block)."""
    ids = torch.tensor([0] * 20 + [2] * 3 + [3])[torch.randperm(24, generator=torch.Generator().manual_seed(1))]
    ids = ids.to(DEV)
    order, bounds = group_by_expert(ids[:, None], 4)
    assert bounds.tolist() == [0, 20, 20, 23, 24]
    assert sorted(order.tolist()) == list(range(24)) and (ids[order].diff() >= 0).all()
    gen = torch.Generator().manual_seed(2)
    x, weights = torch.randn(24, 32, generator=gen).to(DEV), torch.ones(24, 1, device=DEV)
    for fmt in ("mxfp4", "dense"):
        w1, w2 = make_weight(fmt, 4, 64, 32, gen), make_weight(fmt, 4, 32, 32, gen)
        out = moe_experts_triton(x, weights, ids[:, None], w1, w2, 0.6, ALPHA, config=SMALL,
                                 compute_dtype=torch.float32)
        assert rel_l2(out, moe_experts_ref(x, weights, ids[:, None], w1, w2, 0.6, ALPHA)) < 1e-5


def test_bf16_input(poisoned):
    """bf16 x and biases in, bf16 out (float32 compute): the pair rows and the output rounded to bf16, apart
    from the float32 reference."""
    gen = torch.Generator().manual_seed(3)
    w1, w2 = make_weight("mxfp4", 8, 128, 64, gen), make_weight("mxfp4", 8, 64, 64, gen)
    w1 = ExpertWeight(w1.bias.to(torch.bfloat16), blocks=w1.blocks, scales=w1.scales)
    x = torch.randn(5, 64, generator=gen).to(DEV, torch.bfloat16)
    ids = make_ids("uniform", 5, 8, 2, gen).to(DEV)
    weights = torch.softmax(torch.randn(5, 2, generator=gen), dim=-1).to(DEV)
    out = moe_experts_triton(x, weights, ids, w1, w2, 0.6, ALPHA, compute_dtype=torch.float32)
    ref = moe_experts_ref(x, weights, ids, w1, w2, 0.6, ALPHA)
    assert out.dtype == torch.bfloat16 and rel_l2(out, ref) < 1e-2


@pytest.mark.parametrize("y_dtype,out_dtype", [(torch.float32, torch.float32), (torch.float32, torch.bfloat16),
                                               (torch.bfloat16, torch.bfloat16)])
def test_combine_sums_each_tokens_rows_in_order(y_dtype, out_dtype):
    """The combine: out[t] = the float32 sum, in order, of y's rows t * A .. t * A + A - 1, cast once to out's
    dtype; bf16 rows (the grouped paths' pair rows in a bf16 model) are summed in float32 too."""
    def cast(v):  # float32 -> out_dtype as the kernel casts: the interpreter (Triton 3.6) truncates to bf16
        if out_dtype == torch.bfloat16 and INTERPRET:
            return (v.view(torch.int32) & -65536).view(torch.float32).to(out_dtype)
        return v.to(out_dtype)

    gen = torch.Generator().manual_seed(0)
    T, A, D = 19, 8, 200
    y = (torch.randn(T * A, D, generator=gen) * 100).to(DEV, y_dtype)  # [T * A, D]
    out = moe_mod.combine(y, torch.empty(T, D, dtype=out_dtype, device=DEV), A, False)
    want = torch.zeros(T, D, device=DEV)
    for a in range(A):
        want += y[a::A].float()
    assert out.dtype == out_dtype and torch.equal(out, cast(want))


@pytest.mark.parametrize("config", [SMALL, FP32], ids=["small", "fp32"])
@pytest.mark.parametrize("fmt", ["mxfp4", "dense"])
def test_deferred_sum_is_the_combines_input(poisoned, fmt, config):
    """defer_sum: the grouped path returns its pair rows as a RowSum of A rows a token, which the combine turns
    into the very tensor the path returns without it."""
    E, A, D, I, T = 8, 4, 32, 64, 17
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(T, D, generator=gen).to(DEV)
    ids = make_ids("ragged", T, E, A, gen).to(DEV)
    weights = torch.softmax(torch.randn(T, A, generator=gen), dim=-1).to(DEV)
    w1, w2 = make_weight(fmt, E, 2 * I, D, gen), make_weight(fmt, E, D, I, gen)
    args = (x, weights, ids, w1, w2, 0.6, ALPHA)
    out = moe_experts_triton(*args, config=config, compute_dtype=torch.float32)
    rows = moe_experts_triton(*args, config=config, compute_dtype=torch.float32, defer_sum=True)
    assert isinstance(rows, RowSum) and rows.n == A and rows.shape == (T, D) and rows.dtype == x.dtype
    assert torch.equal(moe_mod.combine(rows.rows, torch.empty_like(out), A, False), out)


def test_dot_scaled_falls_back_off_bf16(poisoned):
    """A dot_scaled config with float32 compute (tl.dot_scaled is bf16-only) runs the arith decode."""
    t = GemmTiles(16, 64, 64)
    run_case("mxfp4", 4, 2, 64, 32, 3, "uniform", config=MoeTritonConfig(t, t, "dot_scaled_swap"))


@pytest.mark.parametrize("T", [1, 8, 64, 128, 256, 2048, 8192])
def test_default_config_shapes(T):
    """The Triton kernels' CUDA defaults respect their constraints (dot dims >= 16, K steps of whole scale
    groups); default_config hands few rows an expert to moe_gluon.py (test_gluon_moe.py)."""
    cfg = moe_config.triton_config(4 * T, 32, torch.device("cuda"))
    assert cfg.mxfp4_decode in ("arith", "dot_scaled", "dot_scaled_swap")
    for t in (cfg.gemm1, cfg.gemm2):
        assert t.block_m >= 16 and t.block_k % 64 == 0 and t.block_n >= 16
        assert all(v & (v - 1) == 0 for v in (t.block_m, t.block_n, t.block_k, t.num_warps))
        assert not t.half_tail or t.block_m >= 32  # a half block is still a tensor-core tile
    assert cfg.gemm1.block_n >= 32  # GEMM 1 splits its tile into gate and up halves of >= 16


def test_empty_batch():
    gen = torch.Generator().manual_seed(0)
    w1, w2 = make_weight("mxfp4", 4, 64, 32, gen), make_weight("mxfp4", 4, 32, 32, gen)
    out = moe_experts_triton(torch.randn(0, 32, device=DEV), torch.ones(0, 2, device=DEV),
                             torch.zeros(0, 2, dtype=torch.long, device=DEV), w1, w2, 0.6, ALPHA)
    assert out.shape == (0, 32)


def to_bf16(w: ExpertWeight) -> ExpertWeight:
    """bf16 bias and dense weight; MXFP4 blocks, scales and layout as they are."""
    def cast(t):
        return None if t is None else t.to(torch.bfloat16)
    return replace(w, bias=cast(w.bias), dense=cast(w.dense))


def bf16_case(fmt: str, kind: str, T: int, E: int, A: int, D: int, I: int, seed: int) -> tuple:
    """A bf16 case on DEV for the GPU kernels' twin tests: (x [T, D], weights [T, A], ids [T, A], w1, w2, limit),
    w1 [E, 2I, D] and w2 [E, D, I] by `make_weight` (bf16 bias, scale ranges measured as the loader does),
    limit 20 for random bytes, else 7."""
    gen = torch.Generator().manual_seed(seed)
    w1, w2 = (to_bf16(make_weight(fmt, E, out, inp, gen)).with_scale_range() for out, inp in ((2 * I, D), (D, I)))
    x = torch.randn(T, D, generator=gen).to(DEV, torch.bfloat16)
    ids = make_ids(kind, T, E, A, gen).to(DEV)
    weights = torch.softmax(torch.randn(T, A, generator=gen), dim=-1).to(DEV)
    return x, weights, ids, w1, w2, 20.0 if fmt == "bytes" else 7.0


@pytest.mark.gpu
@pytest.mark.skipif(INTERPRET, reason="TRITON_INTERPRET=1: a bf16 tl.dot is wrong in the interpreter")
@pytest.mark.parametrize("mode", ["default", "arith", "dot_scaled", "dot_scaled_swap", "dense"])
@pytest.mark.parametrize("T", [1, 7, 24, 64, 300, 1100])
def test_gpu_bf16(mode, T):
    """bf16 on CUDA (bf16 operands, float32 accumulation) against the float32 reference, with each regime's
    default tiles (T = 1100: 550 rows an expert, GEMM 1's 256-row blocks). D = I = 320 is no multiple of the K
    steps, so the tails are masked."""
    dev = torch.device("cuda")
    gen = torch.Generator().manual_seed(T)
    E, A, D, I = 8, 4, 320, 320
    fmt = "dense" if mode == "dense" else "mxfp4"
    w1, w2 = to_bf16(make_weight(fmt, E, 2 * I, D, gen)), to_bf16(make_weight(fmt, E, D, I, gen))
    x = torch.randn(T, D, generator=gen).to(dev, torch.bfloat16)
    ids = make_ids("ragged", T, E, A, gen).to(dev)
    weights = torch.softmax(torch.randn(T, A, generator=gen), dim=-1).to(dev)
    config = None
    if mode not in ("default", "dense"):
        base = moe_config.triton_config(T * A, E, dev)
        config = MoeTritonConfig(base.gemm1, base.gemm2, mode)
    out = moe_experts_triton(x, weights, ids, w1, w2, 7.0, ALPHA, config=config)
    ref = moe_experts_ref(x, weights, ids, w1, w2, 7.0, ALPHA)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    assert rel_l2(out, ref) < 2e-2


@pytest.mark.gpu
@pytest.mark.skipif(INTERPRET, reason="TRITON_INTERPRET=1: a bf16 tl.dot is wrong in the interpreter")
@pytest.mark.parametrize("T,mode", [(1, None), (24, None), (64, None), (300, None), (2100, None), (64, "arith"),
                                    (64, "dot_scaled"), (64, "dot_scaled_swap"), (300, "dot_scaled")])
@pytest.mark.parametrize("fmt,D,I", [("mxfp4", 320, 320), ("bytes", 2880, 2880)])
def test_gpu_tiled_same_bits(T, mode, fmt, D, I):
    """The same weights tiled (weights/tiles.py) give the same bits as standard on every path the default
    configuration takes on an H100 (8 experts, A = 4: 2, 12, 32, 150 and 1,050 rows an expert: the Gluon
    blocks of 8 and 16, the dot_scaled kernels, GEMM 1 on wgmma, torch._grouped_mm after the dequantization)
    and in each explicit mode; the standard run is within 2e-2 of the float32 reference. At gpt-oss's 2,880 the
    weights are random bytes (quantizing 8 experts of that size on the CPU would take minutes)."""
    x, weights, ids, w1, w2, limit = bf16_case(fmt, "ragged", T, 8, 4, D, I, seed=T + D)
    config = None
    if mode is not None:
        base = moe_config.triton_config(T * 4, 8, x.device)
        config = MoeTritonConfig(base.gemm1, base.gemm2, mode)
    want = moe_experts_triton(x, weights, ids, w1, w2, limit, ALPHA, config=config)
    got = moe_experts_triton(x, weights, ids, tiled(w1), tiled(w2), limit, ALPHA, config=config)
    assert torch.equal(got, want)
    assert rel_l2(want, moe_experts_ref(x, weights, ids, w1, w2, limit, ALPHA)) < 2e-2


def test_layouts_must_match():
    gen = torch.Generator().manual_seed(0)
    w1, w2 = make_weight("mxfp4", 4, 64, 32, gen), make_weight("tiled", 4, 32, 32, gen)
    with pytest.raises(ValueError, match="share their byte layout"):
        moe_experts_triton(torch.randn(1, 32, device=DEV), torch.ones(1, 2, device=DEV),
                           torch.zeros(1, 2, dtype=torch.long, device=DEV), w1, w2, 0.6, ALPHA)
