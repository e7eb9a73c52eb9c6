"""linear_triton (the skinny decode kernel) against linear_ref: rows 1..16 (the kernel) and 17 (torch), N and K
not multiples of the tiles, bias on/off, strided x; float32 under the interpreter, bf16 on the GPU."""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest

pytest.importorskip("triton")

from oss_engine.kernels.ref.linear import linear_ref
from oss_engine.kernels.triton.linear import linear_triton

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
DEV = "cpu" if INTERPRET else "cuda"


def rel(a, b):
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


@pytest.mark.parametrize("M", [1, 3, 16, 17])
@pytest.mark.parametrize("N, K", [(40, 96), (33, 130)])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_float32(M, N, K, bias):
    g = torch.Generator().manual_seed(M * 1000 + N + K)
    x = torch.randn(M, 2 * K, generator=g)[:, ::2].to(DEV)  # strided rows and columns
    w = torch.randn(N, K, generator=g).to(DEV)
    b = torch.randn(N, generator=g).to(DEV) if bias else None
    got, want = linear_triton(x, w, b), linear_ref(x, w, b)
    assert got.shape == (M, N) and got.dtype == x.dtype
    assert rel(got, want) < 1e-5


@pytest.mark.gpu
@pytest.mark.parametrize("M", [1, 8, 16])
@pytest.mark.parametrize("N, K", [(5120, 2880), (2880, 4096), (32, 2880)])
def test_linear_bf16_gpu(M, N, K):
    g = torch.Generator().manual_seed(M + N)
    x = torch.randn(M, K, generator=g).to(torch.bfloat16).cuda()
    w = (torch.randn(N, K, generator=g) * K ** -0.5).to(torch.bfloat16).cuda()
    b = torch.randn(N, generator=g).to(torch.bfloat16).cuda()
    got = linear_triton(x, w, b)
    want = linear_ref(x.float(), w.float(), b.float())
    assert rel(got.float(), want) < 1e-2
    # batch invariant: a row's result does not depend on the other rows
    assert torch.equal(linear_triton(x[:1], w, b), got[:1])
