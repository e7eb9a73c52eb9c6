"""Skinny linear layer in Triton (decode: a few rows against a large bf16 weight): the twin of
`kernels/ref/linear.py` `linear_ref` (y = x W^T + b).

Legend: M rows of x (tokens), N output features (rows of W), K input features.

Why: at decode M is 1..16 and the layer is a pure weight stream (gpt-oss-20b's qkv is 29.5 MB, o_proj 23.6 MB);
cuBLAS reached only 50% (qkv, 14.9 us) and 37% (o_proj, 16.0 us) of an H200's copy bandwidth there (measured
with scripts/gpu_tune_decode.py), so these shapes get a kernel that streams W once with many loads in flight.
Design: one program per BLOCK_N rows of W; it walks K in BLOCK_K steps, loading a [BLOCK_N, BLOCK_K] weight tile
and the [BLOCK_M, BLOCK_K] rows of x (M <= BLOCK_M = 16, padded rows masked), accumulating x W^T with tl.dot in
float32; bias added in the epilogue; one pass, no split-K, so the sum order is fixed (deterministic, and the
same for every M: batch invariant). Larger M goes to torch (cuBLAS), where it is a real GEMM.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

SKINNY_MAX_ROWS = 16


@triton.jit
def _skinny_linear_kernel(x_ptr, w_ptr, b_ptr, y_ptr, M, N, K: tl.constexpr, s_xm, s_xk, s_wn, s_wk, s_ym, s_yn,
                          HAS_BIAS: tl.constexpr, COMPUTE: tl.constexpr, PRECISION: tl.constexpr,
                          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid = tl.program_id(0)
    rn = pid * BLOCK_N + tl.arange(0, BLOCK_N)  # [BN] rows of W = output columns
    rm = tl.arange(0, BLOCK_M)  # [BM]
    nmask = rn < N
    mmask = rm < M
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):  # K constexpr: a static loop (the interpreter needs static bounds)
        rk = k0 + tl.arange(0, BLOCK_K)  # [BK]
        kmask = rk < K
        x = tl.load(x_ptr + rm[:, None] * s_xm + rk[None, :] * s_xk, mask=mmask[:, None] & kmask[None, :],
                    other=0.0).to(COMPUTE)  # [BM, BK]
        w = tl.load(w_ptr + rn[None, :] * s_wn + rk[:, None] * s_wk, mask=nmask[None, :] & kmask[:, None],
                    other=0.0).to(COMPUTE)  # [BK, BN] = W^T tile
        acc = tl.dot(x, w, acc, input_precision=PRECISION)
    if HAS_BIAS:
        acc += tl.load(b_ptr + rn, mask=nmask, other=0.0).to(tl.float32)[None, :]
    tl.store(y_ptr + rm[:, None] * s_ym + rn[None, :] * s_yn, acc.to(y_ptr.dtype.element_ty),
             mask=mmask[:, None] & nmask[None, :])


def linear_triton(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x [M, K], weight [N, K], bias [N] or None -> [M, N] in x.dtype. M <= SKINNY_MAX_ROWS runs the Triton
    kernel; larger M calls F.linear."""
    M, K = x.shape
    N = weight.shape[0]
    if M > SKINNY_MAX_ROWS or M == 0:
        return F.linear(x, weight, bias)
    y = torch.empty((M, N), dtype=x.dtype, device=x.device)
    on_gpu = x.is_cuda and x.dtype in (torch.bfloat16, torch.float16)
    compute = (tl.bfloat16 if x.dtype == torch.bfloat16 else tl.float16) if on_gpu else tl.float32
    block_n, block_k = (16, 256) if x.is_cuda else (16, 64)
    _skinny_linear_kernel[(triton.cdiv(N, block_n),)](
        x, weight, bias if bias is not None else weight, y, M, N, K, x.stride(0), x.stride(1),
        weight.stride(0), weight.stride(1), y.stride(0), y.stride(1), HAS_BIAS=bias is not None,
        COMPUTE=compute, PRECISION="tf32" if on_gpu else "ieee", BLOCK_M=16, BLOCK_N=block_n, BLOCK_K=block_k,
        num_warps=4, num_stages=4 if x.is_cuda else 1)
    return y
