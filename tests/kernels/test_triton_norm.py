"""The Triton residual add + RMSNorm against its reference twin `add_rms_norm_ref`.

Without a GPU the kernel runs in Triton's interpreter with float32 operands (the interpreter casts float32 to
bf16 by truncation, not round-to-nearest-even, so bf16 cases are GPU-only); on a CUDA machine the same float32
cases run compiled, and the bf16 cases run too. Buffers the wrapper allocates start as NaN (`poisoned`), so a
row the kernel never writes fails the comparison.
Legend: T tokens, D hidden size.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from oss_engine.kernels.ref.norm import add_rms_norm_ref
from oss_engine.kernels.triton import norm as norm_mod
from oss_engine.kernels.triton.moe import combine
from oss_engine.kernels.triton.norm import add_rms_norm_triton
from oss_engine.kernels.types import RowSum
from triton_cases import DEV, INTERPRET, rel_l2, run_compile_check

EPS = 1e-5


@pytest.fixture(autouse=True)
def poisoned(monkeypatch):
    """Every buffer the wrapper allocates starts as NaN, so a row or column never written shows."""
    monkeypatch.setattr(norm_mod, "_empty", lambda shape, dtype, device: torch.full(shape, float("nan"),
                                                                                     dtype=dtype, device=device))


def make(T: int, D: int, with_residual: bool, dtype=torch.float32, device=DEV, row_pad: int = 0):
    """x [T, D] (a view with row stride D + row_pad when row_pad > 0), residual [T, D] or None, weight [D]."""
    x = 3 * torch.randn(T, D + row_pad)  # scaled: the norm must not just return w * x
    residual = 5 * torch.randn(T, D) if with_residual else None
    weight = 1 + 0.5 * torch.randn(D)
    cast = {"dtype": dtype, "device": device}
    # sliced on the device: a copy to CUDA of the strided view would be made contiguous
    return x.to(**cast)[:, :D], None if residual is None else residual.to(**cast), weight.to(device)


def check_fp32(x, residual, weight):
    x0, res0 = x.clone(), None if residual is None else residual.clone()
    want_n, want_r = add_rms_norm_ref(x, residual, weight, EPS)
    got_n, got_r = add_rms_norm_triton(x, residual, weight, EPS)
    assert torch.equal(x, x0) and (residual is None or torch.equal(residual, res0)), "an input was modified"
    assert got_n.shape == x.shape and got_n.dtype == x.dtype
    assert not got_n.isnan().any() and not got_r.isnan().any(), "elements left unwritten"
    if residual is None:
        assert got_r is x  # the documented contract: the first layer's residual is x itself
    else:
        assert torch.equal(got_r, want_r)  # float32 add: exact
    err = rel_l2(got_n, want_n)
    assert err < 2e-6, err
    assert (got_n - want_n).abs().max() <= 1e-5 * want_n.abs().max(), "a row is off"


@pytest.mark.parametrize("with_residual", [True, False])
@pytest.mark.parametrize("D", [16, 100, 2880])  # power of two; two non-powers (gpt-oss hidden 2880 -> 4096 lanes)
@pytest.mark.parametrize("T", [1, 7, 33])
def test_add_rms_norm(T, D, with_residual):
    check_fp32(*make(T, D, with_residual))


@pytest.mark.parametrize("with_residual", [True, False])
def test_strided_rows(with_residual):
    # x as a column slice of a wider tensor (row stride D + 24): the kernel must use the row stride
    x, residual, weight = make(9, 100, with_residual, row_pad=24)
    assert x.stride(0) == 124
    check_fp32(x, residual, weight)


def test_transposed_operands():
    # x, residual stored transposed (column stride T) and a strided weight: every stride is used
    x, residual, weight = make(9, 100, True)
    tx, tres = (torch.randn(100, 9, device=DEV).t().copy_(a) for a in (x, residual))
    tw = torch.randn(200, device=DEV)[::2].copy_(weight)
    want_n, want_r = add_rms_norm_ref(x, residual, weight, EPS)
    got_n, got_r = add_rms_norm_triton(tx, tres, tw, EPS)
    assert torch.equal(got_r, want_r) and rel_l2(got_n, want_n) < 2e-6


def test_rows_are_independent():
    # one row scaled by 1000 changes only that row's residual sum, and its normed row only through rounding
    x, residual, weight = make(5, 64, True)
    base_n, _ = add_rms_norm_triton(x, residual, weight, EPS)
    x2, res2 = x.clone(), residual.clone()
    x2[2] *= 1000
    res2[2] *= 1000
    n2, _ = add_rms_norm_triton(x2, res2, weight, EPS)
    keep = [0, 1, 3, 4]
    assert torch.equal(n2[keep], base_n[keep])
    assert torch.allclose(n2[2], base_n[2], rtol=1e-5, atol=1e-6)  # RMSNorm is scale invariant (eps aside)


def test_empty_batch():
    x, residual, weight = make(0, 32, True)
    n, r = add_rms_norm_triton(x, residual, weight, EPS)
    assert n.shape == (0, 32) and r.shape == (0, 32)


def make_row_sum(T: int, D: int, n: int, rows_dtype, dtype, device=DEV) -> RowSum:
    """An MoE's unsummed rows: n rows a token (e.g. the decode path's A slots x S splits), scaled apart so that the
    order of the sum shows in float32 rounding."""
    rows = torch.randn(T * n, D) * torch.logspace(0, 3, n).repeat(T)[:, None]
    return RowSum(rows.to(device, rows_dtype), n, dtype)


def combined_then_norm(s: RowSum, residual, weight):
    """The unfused pair the fused kernel replaces: moe.py's combine kernel, then add + RMSNorm."""
    T, D = s.shape
    summed = combine(s.rows, torch.empty(T, D, dtype=s.dtype, device=s.rows.device), s.n, False)
    return add_rms_norm_triton(summed, residual, weight, EPS)


@pytest.mark.parametrize("with_residual", [True, False])
@pytest.mark.parametrize("n", [1, 4, 8])
@pytest.mark.parametrize("T,D", [(1, 2880), (7, 100), (33, 16)])
def test_row_sum(T, D, n, with_residual):
    """x given as a RowSum: the same bits as combine + the kernel on the summed tensor, and the reference's values
    (RowSum.total, then add + norm); inputs untouched, nothing left unwritten."""
    s = make_row_sum(T, D, n, torch.float32, torch.float32)
    _, residual, weight = make(T, D, with_residual)
    rows0 = s.rows.clone()
    got_n, got_r = add_rms_norm_triton(s, residual, weight, EPS)
    assert torch.equal(s.rows, rows0), "an input was modified"
    assert got_n.shape == (T, D) and got_r.shape == (T, D) and got_r is not s.rows
    assert not got_n.isnan().any() and not got_r.isnan().any(), "elements left unwritten"
    want_n, want_r = combined_then_norm(s, residual, weight)
    assert torch.equal(got_n, want_n) and torch.equal(got_r, want_r)
    ref_n, ref_r = add_rms_norm_ref(s, residual, weight, EPS)
    assert torch.equal(got_r, ref_r)  # float32, both summed in row order: exact
    assert rel_l2(got_n, ref_n) < 2e-6


def test_row_sum_order_is_the_rows_order():
    """Row 0 + 1e8 - 1e8 cancels only in order: summed in another order the small row would be lost or kept
    differently; RowSum.total and the kernel both keep the rows' order."""
    T, D = 2, 16
    rows = torch.stack([torch.full((D,), 1.0), torch.full((D,), 1e8), torch.full((D,), -1e8)] * T)  # n = 3
    s = RowSum(rows.to(DEV), 3, torch.float32)
    assert torch.equal(s.total(), torch.zeros(T, D, device=DEV))  # (1 + 1e8) - 1e8 in float32: 0
    _, got_r = add_rms_norm_triton(s, torch.zeros(T, D, device=DEV), torch.ones(D, device=DEV), EPS)
    assert torch.equal(got_r, s.total())


def ulp_bf16(v: torch.Tensor) -> torch.Tensor:
    # spacing of bf16 numbers at |v| (8 significant bits); floor at the smallest normal's spacing
    e = torch.floor(torch.log2(v.float().abs().clamp_min(2.0**-126)))
    return torch.exp2(e - 7)


@pytest.mark.gpu
@pytest.mark.skipif(INTERPRET, reason="TRITON_INTERPRET=1 casts float32 to bf16 by truncation")
@pytest.mark.parametrize("with_residual", [True, False])
@pytest.mark.parametrize("T", [1, 7, 33, 2048])
def test_bf16_gpu(T, with_residual):
    x, residual, weight = make(T, 2880, with_residual, dtype=torch.bfloat16, device="cuda")
    want_n, want_r = add_rms_norm_ref(x, residual, weight, EPS)
    got_n, got_r = add_rms_norm_triton(x, residual, weight, EPS)
    assert got_n.dtype == torch.bfloat16 and got_r.dtype == torch.bfloat16
    assert torch.equal(got_r, want_r), "the add must round to bf16 exactly as torch's"
    assert not got_n.isnan().any()
    # the norm: within 2 bf16 ulps of the reference everywhere (float32 reduction order differs)
    assert ((got_n.float() - want_n.float()).abs() <= 2 * ulp_bf16(want_n)).all()


@pytest.mark.gpu
@pytest.mark.skipif(INTERPRET, reason="TRITON_INTERPRET=1 casts float32 to bf16 by truncation")
@pytest.mark.parametrize("rows_dtype,n", [(torch.float32, 8), (torch.bfloat16, 4)])  # decode path; grouped paths
@pytest.mark.parametrize("T", [1, 8, 64])
def test_row_sum_bf16_gpu(T, rows_dtype, n):
    """In a bf16 model: the fused sum + add + norm gives combine + add_rms_norm's bits exactly."""
    s = make_row_sum(T, 2880, n, rows_dtype, torch.bfloat16, device="cuda")
    _, residual, weight = make(T, 2880, True, dtype=torch.bfloat16, device="cuda")
    got_n, got_r = add_rms_norm_triton(s, residual, weight, EPS)
    want_n, want_r = combined_then_norm(s, residual, weight)
    assert got_n.dtype == got_r.dtype == torch.bfloat16
    assert torch.equal(got_n, want_n) and torch.equal(got_r, want_r)


@pytest.mark.gpu
@pytest.mark.skipif(INTERPRET, reason="needs CUDA graphs")
def test_cuda_graph_capture_gpu():
    x, residual, weight = make(64, 2880, True, dtype=torch.bfloat16, device="cuda")
    add_rms_norm_triton(x, residual, weight, EPS)  # compile outside the capture
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        n, r = add_rms_norm_triton(x, residual, weight, EPS)
    x.copy_(torch.randn_like(x))  # new inputs in the same buffers: the replay must see them
    g.replay()
    want_n, want_r = add_rms_norm_ref(x, residual, weight, EPS)
    assert torch.equal(r, want_r) and ((n.float() - want_n.float()).abs() <= 2 * ulp_bf16(want_n)).all()


# Compiles the kernel for sm_90 (PTX and cubin through the bundled ptxas; nothing launched) in bf16, specialised
# as a real launch would be. In a subprocess: TRITON_INTERPRET is fixed when the kernel is defined.
_COMPILE_FOR_HOPPER = r"""
from oss_engine.kernels.triton import norm as N

ptrs = dict(x_ptr="*bf16", res_ptr="*bf16", w_ptr="*fp32", out_ptr="*bf16", r_out_ptr="*bf16")
for has_res in (True, False):
    for n, x in ((0, "*bf16"), (8, "*fp32"), (4, "*bf16")):  # a tensor; RowSums of the decode and grouped paths
        compile_sm90(N._add_rms_norm_kernel, dict(SUM_ROWS=n, HAS_RESIDUAL=has_res, BLOCK_D=4096, PDL=True),
                     dict(ptrs, x_ptr=x), floats=("eps",))
print("ok")
"""


@pytest.mark.skipif(not INTERPRET, reason="on a GPU the tests above run the compiled kernel")
def test_compiles_for_hopper():
    run_compile_check(_COMPILE_FOR_HOPPER)
