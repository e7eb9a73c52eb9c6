"""One-row linear layer on CUDA cores in Triton (batch-1 decode): the twin of `kernels/ref/linear.py`
`linear_ref` (y = x W^T + b) for x with one row.

Legend: N output features (rows of W), K input features, BN rows per program, BK columns per step.

Why: at batch 1 a linear layer is a pure weight stream (gpt-oss's qkv is 29.5 MB, o_proj 23.6 MB). cuBLAS
reached 50% / 37% of an H200's copy bandwidth on these, and a tensor-core Triton kernel with the row padded to
16 was slower still (its weight tiles pass through shared memory for the dot). Here a program owns BN rows of
W, multiplies its [BN, BK] tiles by the row in float32 FMAs into a [BN, BK] accumulator (no cross-thread
reduction inside the loop), and reduces once at the end; bias added in the epilogue. Products of bf16 values
are exact in float32 and the sum is float32 in a fixed order: deterministic, as exact as cuBLAS or more.

PDL (`launch.py`): the first [BN, BK] weight tile is loaded before `gdc_wait()`, so the weight stream starts
while the previous kernel finishes (weights never change during a forward pass); x and y only after it.
The tile option `pre_k` loads columns [0, pre_k) as one [BN, pre_k] tile before the wait instead (held in
registers: 8 rows x 2048 columns take 147 registers a thread at 4 warps, sm_90), so that a larger share of
the stream could run beside a latency-bound kernel before it; it is not a default: with qkv, o_proj and the
routers on it, a 20b batch-1 step was 3% slower on an H200 (docs/performance.md, "Thirteenth session").
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from . import launch


@dataclass(frozen=True)
class GemvTiles:
    block_n: int = 8
    block_k: int = 512
    num_warps: int = 4
    num_stages: int = 2  # Triton's pipeliner (depth 0)
    depth: int = 0  # 2 or 3: the weight loads run that many steps ahead in registers instead (num_stages 1)
    pre_k: int = 0  # > 0 (a power of two <= K): columns [0, pre_k) load as one tile before the wait (depth 0)


def default_tiles(N: int, K: int) -> GemvTiles:
    """Tiles by shape, from one H200 sweep (scripts/gpu_bench_gemv.py, read-only flush):
    - few rows (the routers: 32 or 128) take one row a program, so that 32-128 programs share the read
      instead of 4-16: the 20b router 7.8 -> 5.0 us, the 120b one 8.0 -> 5.2;
    - long rows (o_proj: K = 4096) take 2 rows a program and 3 stages: 11.7 -> 10.6 us (the same tile made
      qkv, K = 2880, slower: 13.5 vs 12.1);
    - the lm_head (N >= 65536) takes 4 rows, its loads 3 steps ahead in registers: 272 -> 260 us (4.46 TB/s
      of reads; the register lead was no faster on qkv and o_proj, whose ~12 us are mostly launch and tail);
    - the rest (qkv) keep 8 rows, the best or within 2% of it."""
    if N < 1024:
        return GemvTiles(block_n=1)
    if N >= 65536:
        return GemvTiles(block_n=4, block_k=512, num_warps=4, num_stages=1, depth=3)
    if K >= 4096:
        return GemvTiles(block_n=2, num_stages=3)
    return GemvTiles()


@triton.jit
def _w_tile(w_ptr, n, nmask, k0, K: tl.constexpr, s_wn, s_wk, BLOCK_K: tl.constexpr):
    k = k0 + tl.arange(0, BLOCK_K)  # [BK]
    return tl.load(w_ptr + n[:, None].to(tl.int64) * s_wn + k[None, :] * s_wk,
                   mask=nmask[:, None] & (k < K)[None, :], other=0.0)  # [BN, BK]


@triton.jit
def _x_tile(x_ptr, k0, K: tl.constexpr, s_xk, BLOCK_K: tl.constexpr):
    k = k0 + tl.arange(0, BLOCK_K)  # [BK]
    return tl.load(x_ptr + k * s_xk, mask=k < K, other=0.0).to(tl.float32)


@triton.jit
def _gemv_kernel(x_ptr, w_ptr, b_ptr, y_ptr, N, s_xk, s_wn, s_wk, s_yn, K: tl.constexpr, HAS_BIAS: tl.constexpr,
                 BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, DEPTH: tl.constexpr, PRE_K: tl.constexpr,
                 PDL: tl.constexpr):
    n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)  # [BN]
    nmask = n < N
    if PRE_K > 0:  # columns [0, PRE_K) in one tile before the wait, the rest BK at a time after it
        wp = _w_tile(w_ptr, n, nmask, 0, K, s_wn, s_wk, PRE_K)  # [BN, PRE_K]
        launch.wait_for_inputs(PDL)  # x is the previous kernel's output
        yp = tl.sum(wp.to(tl.float32) * _x_tile(x_ptr, 0, K, s_xk, PRE_K)[None, :], axis=1)  # [BN]
        acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
        for k0 in range(PRE_K, K, BLOCK_K):
            w = _w_tile(w_ptr, n, nmask, k0, K, s_wn, s_wk, BLOCK_K)
            acc += w.to(tl.float32) * _x_tile(x_ptr, k0, K, s_xk, BLOCK_K)[None, :]
        y = yp + tl.sum(acc, axis=1)
    else:
        y = _gemv_streamed(x_ptr, w_ptr, n, nmask, s_xk, s_wn, s_wk, K, BLOCK_N, BLOCK_K, DEPTH, PDL)
    if HAS_BIAS:
        y += tl.load(b_ptr + n, mask=nmask, other=0.0).to(tl.float32)
    tl.store(y_ptr + n * s_yn, y.to(y_ptr.dtype.element_ty), mask=nmask)


@triton.jit
def _gemv_streamed(x_ptr, w_ptr, n, nmask, s_xk, s_wn, s_wk, K: tl.constexpr, BLOCK_N: tl.constexpr,
                   BLOCK_K: tl.constexpr, DEPTH: tl.constexpr, PDL: tl.constexpr):
    """The row sums [BN] with one BK step (DEPTH 0) or DEPTH steps of weights loaded before the wait."""
    w = _w_tile(w_ptr, n, nmask, 0, K, s_wn, s_wk, BLOCK_K)  # step 0's weights: before the wait (see above)
    if DEPTH == 0:
        launch.wait_for_inputs(PDL)  # x is the previous kernel's output
        acc = w.to(tl.float32) * _x_tile(x_ptr, 0, K, s_xk, BLOCK_K)[None, :]  # [BN, BK]
        for k0 in range(BLOCK_K, K, BLOCK_K):
            w = _w_tile(w_ptr, n, nmask, k0, K, s_wn, s_wk, BLOCK_K)
            acc += w.to(tl.float32) * _x_tile(x_ptr, k0, K, s_xk, BLOCK_K)[None, :]
    else:  # registers DEPTH steps ahead, unrolled by DEPTH (each buffer refilled in place); masked past K
        w1 = _w_tile(w_ptr, n, nmask, BLOCK_K, K, s_wn, s_wk, BLOCK_K)
        if DEPTH == 3:
            w2 = _w_tile(w_ptr, n, nmask, 2 * BLOCK_K, K, s_wn, s_wk, BLOCK_K)
        launch.wait_for_inputs(PDL)
        acc = tl.zeros((BLOCK_N, BLOCK_K), dtype=tl.float32)
        for k0 in range(0, K, DEPTH * BLOCK_K):
            n0 = _w_tile(w_ptr, n, nmask, k0 + DEPTH * BLOCK_K, K, s_wn, s_wk, BLOCK_K)
            acc += w.to(tl.float32) * _x_tile(x_ptr, k0, K, s_xk, BLOCK_K)[None, :]
            n1 = _w_tile(w_ptr, n, nmask, k0 + (DEPTH + 1) * BLOCK_K, K, s_wn, s_wk, BLOCK_K)
            acc += w1.to(tl.float32) * _x_tile(x_ptr, k0 + BLOCK_K, K, s_xk, BLOCK_K)[None, :]
            if DEPTH == 3:
                n2 = _w_tile(w_ptr, n, nmask, k0 + 5 * BLOCK_K, K, s_wn, s_wk, BLOCK_K)
                acc += w2.to(tl.float32) * _x_tile(x_ptr, k0 + 2 * BLOCK_K, K, s_xk, BLOCK_K)[None, :]
                w2 = n2
            w = n0
            w1 = n1
    return tl.sum(acc, axis=1)  # [BN]


def gemv_triton(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                tiles: GemvTiles | None = None) -> torch.Tensor:
    """x [1, K], weight [N, K], bias [N] or None -> [1, N] in x.dtype."""
    M, K = x.shape
    if M != 1:
        raise ValueError(f"gemv_triton takes one row, got {M}")
    N = weight.shape[0]
    t = tiles or default_tiles(N, K)
    y = torch.empty((1, N), dtype=x.dtype, device=x.device)
    pdl = launch.use_pdl(x.device)
    _gemv_kernel[(triton.cdiv(N, t.block_n),)](
        x, weight, bias if bias is not None else weight, y, N, x.stride(1), weight.stride(0), weight.stride(1),
        y.stride(1), K=K, HAS_BIAS=bias is not None, BLOCK_N=t.block_n, BLOCK_K=t.block_k, DEPTH=t.depth,
        PRE_K=t.pre_k, PDL=pdl,
        num_warps=t.num_warps, num_stages=1 if t.depth else t.num_stages, launch_pdl=pdl)
    return y


def linear_triton(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """The Triton op table's linear: one bf16 / fp16 row on CUDA through `gemv_triton`, anything else through
    torch (cuBLAS), where a real GEMM or the float32 path wants it. x [M, K] -> [M, N]."""
    if x.shape[0] == 1 and x.is_cuda and x.dtype in (torch.bfloat16, torch.float16) and x.dtype == weight.dtype:
        return gemv_triton(x, weight, bias)
    return torch.nn.functional.linear(x, weight, bias)
