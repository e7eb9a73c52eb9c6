"""The one-row Triton linear (`gemv.py`) against its reference twin `linear_ref`, and the op table's
`linear_triton` dispatch. Without a GPU the kernel runs in Triton's interpreter (float32); on a CUDA machine
the same cases run compiled, plus bf16 at the gpt-oss shapes."""

import pytest
import torch

pytest.importorskip("triton")

from oss_engine.kernels.ref.linear import linear_ref
from oss_engine.kernels.triton import gemv as gemv_mod
from oss_engine.kernels.triton.gemv import GemvTiles, gemv_triton, linear_triton
from triton_cases import DEV, INTERPRET, rel_l2

SMALL = GemvTiles(8, 64, 4, 1)  # several row blocks and K steps at these sizes
AHEAD = {"pipeliner": SMALL, "depth2": GemvTiles(8, 64, 4, 1, 2), "depth3": GemvTiles(4, 64, 4, 1, 3),
         "pre64": GemvTiles(8, 32, 4, 2, pre_k=64), "pre128": GemvTiles(4, 64, 4, 1, pre_k=128)}


@pytest.mark.parametrize("N,K", [(40, 96), (5, 1000), (33, 64), (1, 32)])
@pytest.mark.parametrize("with_bias", [True, False])
@pytest.mark.parametrize("tiles", list(AHEAD.values()), ids=list(AHEAD))
def test_matches_reference(N, K, with_bias, tiles):
    """Row blocks and K steps with tails (N, K not multiples of 8 / 64), with and without bias; loads run by
    Triton's pipeliner or 2-3 steps ahead in registers (rounds that run past K: K = 32, 64, 96), or the first
    64 / 128 columns as one tile before the wait (masked past K; 128 covers K = 32, 64 and 96 with no step
    after it)."""
    x, w = torch.randn(1, K, device=DEV), torch.randn(N, K, device=DEV)
    b = torch.randn(N, device=DEV) if with_bias else None
    got = gemv_triton(x, w, b, tiles)
    want = linear_ref(x, w, b)
    assert got.shape == want.shape and got.dtype == want.dtype
    # against float64: a float32 sum of K products in any order is within K * 2**-24 of sum |products|
    # (a relative error alone fails where the terms cancel: one output row, N = 1, needs no luck)
    exact = linear_ref(x.double(), w.double(), None if b is None else b.double())
    scale = x.double().abs() @ w.double().abs().T + (0 if b is None else b.double().abs())
    assert ((got.double() - exact).abs() <= (K + 1) * 2.0**-24 * scale).all()


def test_default_tiles_few_rows():
    """Router-sized layers (N < 1024) take one row a program, o_proj-like ones (K >= 4096) two; the default
    tiles still match the reference (N = 32, the 20b router's rows, and K = 4100, tails past the 512-wide
    step)."""
    assert gemv_mod.default_tiles(32, 2880).block_n == 1 and gemv_mod.default_tiles(5120, 2880).block_n == 8
    assert gemv_mod.default_tiles(2880, 4096) == GemvTiles(2, 512, 4, 3)  # o_proj's long rows
    assert gemv_mod.default_tiles(201088, 2880).depth == 3  # the lm_head: loads 3 steps ahead
    x, w, b = torch.randn(1, 600, device=DEV), torch.randn(32, 600, device=DEV), torch.randn(32, device=DEV)
    assert rel_l2(gemv_triton(x, w, b), linear_ref(x, w, b)) < 1e-6
    x, w = torch.randn(1, 4100, device=DEV), torch.randn(1030, 4100, device=DEV)
    assert rel_l2(gemv_triton(x, w, None), linear_ref(x, w, None)) < 1e-6


def test_strided_input():
    """x a column slice of a wider row (stride 2), W a row slice of a larger matrix: strides are honoured."""
    xw, ww = torch.randn(1, 128, device=DEV), torch.randn(50, 64, device=DEV)
    x, w = xw[:, ::2], ww[10:40]
    assert rel_l2(gemv_triton(x, w, None, SMALL), linear_ref(x, w, None)) < 1e-6


def test_rejects_several_rows():
    with pytest.raises(ValueError, match="one row"):
        gemv_triton(torch.randn(2, 8, device=DEV), torch.randn(4, 8, device=DEV), None)


def test_linear_dispatch(monkeypatch):
    """Only a one-row bf16 / fp16 CUDA input takes the GEMV; float32 or several rows go to torch."""
    calls = []
    monkeypatch.setattr(gemv_mod, "gemv_triton", lambda *a, **k: calls.append(a[0].shape) or linear_ref(*a))
    w = torch.randn(16, 32, device=DEV)
    linear_triton(torch.randn(1, 32, device=DEV), w, None)  # float32: torch
    linear_triton(torch.randn(3, 32, device=DEV), w, None)
    assert calls == []
    if torch.cuda.is_available():
        linear_triton(torch.randn(1, 32, device="cuda", dtype=torch.bfloat16), w.bfloat16().cuda(), None)
        assert calls == [(1, 32)]


@pytest.mark.gpu
@pytest.mark.skipif(INTERPRET, reason="bf16 at real sizes: compiled kernels only")
@pytest.mark.parametrize("N,K", [(5120, 2880), (2880, 4096), (32, 2880), (4099, 300)])
def test_gpu_bf16(N, K):
    """bf16 at gpt-oss's qkv / o_proj / router shapes with the default tiles, against float32 math: one bf16
    rounding of the output apart."""
    x = torch.randn(1, K, device="cuda", dtype=torch.bfloat16)
    w = torch.randn(N, K, device="cuda", dtype=torch.bfloat16) * K**-0.5
    b = torch.randn(N, device="cuda", dtype=torch.bfloat16)
    got = gemv_triton(x, w, b)
    want = linear_ref(x.float(), w.float(), b.float())
    assert got.dtype == torch.bfloat16 and rel_l2(got, want) < 8e-3
