"""Residual add + RMSNorm in Triton: the twin of `kernels/ref/norm.py` `add_rms_norm_ref` (same contract, read
its docstring).

Legend: T tokens (rows), D hidden size, BLOCK_D = D rounded up to a power of two (the pad columns are masked).

Design. One program per row: it loads x[t] and residual[t] ([BLOCK_D] each, in one pass: D = 2880 for gpt-oss
is 4096 padded lanes), forms r = x + residual, writes r, then normed = (w * (r * rsqrt(mean(r^2) + eps))).
Everything is sized from shapes, so a launch is CUDA-graph capturable (no host sync, no data-dependent
allocation).

Numerics, as the reference:
- r is rounded to x.dtype BEFORE the norm: the add is done in float32 and cast (round to nearest even on the
  GPU), which is exactly what torch's bf16 add does, so new_residual is bit-identical to the reference's.
- The norm is in float32 on r as rounded; only the reduction order differs from torch's (float32: rel error
  ~1e-7; bf16: at most an ulp of the output where the float32 value sits near a rounding boundary).

Contract choices (the same as the reference; nothing is written in place):
- inputs are never modified; normed and new_residual are fresh tensors [T, D] in x.dtype, contiguous;
- residual None (the first layer): new_residual IS x (the same tensor object, not a copy), and the kernel
  writes only normed.
- x may be a RowSum (kernels/types.py: the MoE's slot rows, left unsummed): the program sums its token's n
  rows in order in float32 and rounds them to the output dtype, exactly as moe.py's `combine` does, then goes
  on as above (with residual None the sum is written as new_residual). So combine + this kernel and this
  kernel on the RowSum give the same bits, with one launch and one round trip of the [T, D] sum fewer.
x, residual and weight may have any strides (a stride of 1 is specialised by Triton at no cost).

PDL (`launch.py`): only the norm weight (fixed during a forward pass) is loaded before `gdc_wait()`; x and
residual (the previous kernels' outputs) and every write come after it.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..types import RowSum
from . import launch


def _empty(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype, device=device)  # tests poison it with NaN


@triton.jit
def _add_rms_norm_kernel(x_ptr, res_ptr, w_ptr, out_ptr, r_out_ptr, s_xt, s_xd, s_rt, s_rd, s_wd, s_ot, s_nt,
                         D, eps, SUM_ROWS: tl.constexpr, HAS_RESIDUAL: tl.constexpr, BLOCK_D: tl.constexpr,
                         PDL: tl.constexpr):
    # one program per row t: x[t] (SUM_ROWS 0) or the sum of x's rows t n .. t n + n - 1 (a RowSum, n = SUM_ROWS),
    # residual[t] [D] -> out[t] = norm(r), r_out[t] = r (out, r_out contiguous)
    t = tl.program_id(0).to(tl.int64)
    d = tl.arange(0, BLOCK_D)
    ok = d < D
    w = tl.load(w_ptr + d * s_wd, mask=ok, other=0.0)  # a weight: read before the wait
    launch.wait_for_inputs(PDL)
    if SUM_ROWS == 0:
        x = tl.load(x_ptr + t * s_xt + d * s_xd, mask=ok, other=0.0)
    else:  # a RowSum: its rows summed in order in float32, rounded to the output dtype (moe.py's combine)
        acc = tl.zeros([BLOCK_D], dtype=tl.float32)
        for j in tl.static_range(SUM_ROWS):
            acc += tl.load(x_ptr + (t * SUM_ROWS + j) * s_xt + d * s_xd, mask=ok, other=0.0).to(tl.float32)
        x = acc.to(out_ptr.dtype.element_ty)
    if HAS_RESIDUAL:
        res = tl.load(res_ptr + t * s_rt + d * s_rd, mask=ok, other=0.0)
        r = (x.to(tl.float32) + res.to(tl.float32)).to(x.dtype)  # rounded to x.dtype first, as torch's add
        tl.store(r_out_ptr + t * s_nt + d, r, mask=ok)
    else:
        r = x
        if SUM_ROWS > 0:  # the sum exists only here: it is the new residual
            tl.store(r_out_ptr + t * s_nt + d, r, mask=ok)
    h = r.to(tl.float32)  # pad lanes are 0 and add nothing to the sum
    inv = tl.rsqrt(tl.sum(h * h, axis=0) / D + eps)
    tl.store(out_ptr + t * s_ot + d, (w.to(tl.float32) * (h * inv)).to(out_ptr.dtype.element_ty), mask=ok)


def add_rms_norm_triton(x: torch.Tensor | RowSum, residual: torch.Tensor | None, weight: torch.Tensor,
                        eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    # x [T, D] or a RowSum of [T, D], residual [T, D], weight [D] -> (normed [T, D], new_residual [T, D]) in x's
    # dtype; see the module docstring
    rows, n = (x.rows, x.n) if isinstance(x, RowSum) else (x, 0)  # n: SUM_ROWS
    T, D = x.shape
    out = _empty((T, D), x.dtype, rows.device)
    r_out = x if residual is None and n == 0 else _empty((T, D), x.dtype, rows.device)
    if T == 0:
        return out, r_out
    block = triton.next_power_of_2(D)
    res = rows if residual is None else residual  # unread when HAS_RESIDUAL is False
    pdl = launch.use_pdl(rows.device)
    _add_rms_norm_kernel[(T,)](rows, res, weight, out, r_out, *rows.stride(), *res.stride(), weight.stride(0),
                               out.stride(0), r_out.stride(0), D, eps, SUM_ROWS=n, HAS_RESIDUAL=residual is not None,
                               BLOCK_D=block, PDL=pdl, num_warps=min(max(block // 512, 1), 8), launch_pdl=pdl)
    return out, r_out
