"""MoE routing in Triton: the twin of `kernels/ref/moe.py` `route_ref` (same contract, read its docstring):
top-k of the raw router logits, then a float32 softmax over the k selected logits only.

Legend: T tokens, E experts, A experts per token (the k of top-k), E_PAD / A_PAD powers of two >= E / A,
BT tokens per program.

Design. A program owns BT consecutive tokens: it loads their logits as a [BT, E_PAD] tile (pad columns are
never available; pad rows are computed and not stored) and selects A times, for each token at once:
  m   = max of the still available logits             [BT]
  sel = the LOWEST available expert index whose logit == m
  mark sel unavailable; slot j of the output gets (m, sel).
So the ids come out as torch.topk returns them (by value, descending) and are deterministic: among equal
logits the lower expert index comes first (torch.topk leaves the order of ties unspecified; on inputs without
ties the two agree exactly). Then weights = softmax(selected values) in float32, max-subtracted.

Numerics. The logits are compared after an exact upcast to float32 (bf16 -> float32 is exact), so the top-k
sees the values exactly as given; the softmax is float32 as the reference's `top_vals.float()`. Logits of -inf
are selectable (after every finite one); NaN logits give unspecified ids (torch.topk ranks NaN highest).
Worked example, E = 4, A = 2, logits [1.0, 3.0, 3.0, -2.0]: pass 1 m = 3.0, candidates {1, 2}, sel = 1;
pass 2 m = 3.0, sel = 2; ids [1, 2], weights softmax([3, 3]) = [0.5, 0.5].
Grid cdiv(T, BT) from shapes only: no host sync, CUDA-graph capturable.
PDL (`launch.py`): `gdc_wait()` comes first; the logits are the previous kernel's output.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import launch


def _empty(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype, device=device)  # tests poison it with NaN / -1


@triton.jit
def _route_kernel(logits_ptr, w_ptr, ids_ptr, T, s_lt, s_le, s_wt, s_wa, s_it, s_ia,
                  E: tl.constexpr, A: tl.constexpr, E_PAD: tl.constexpr, A_PAD: tl.constexpr,
                  BLOCK_T: tl.constexpr, PDL: tl.constexpr):
    launch.wait_for_inputs(PDL)
    t = tl.program_id(0).to(tl.int64) * BLOCK_T + tl.arange(0, BLOCK_T)  # [BT] token rows
    t_ok = t < T
    e = tl.arange(0, E_PAD)[None, :]  # [1, E_PAD]
    # [BT, E_PAD]; pad rows read 0 (their softmax then makes no inf - inf), pad columns are never available
    x = tl.load(logits_ptr + t[:, None] * s_lt + e * s_le, mask=t_ok[:, None] & (e < E), other=0.0).to(tl.float32)
    avail = (e < E) & (t[:, None] >= 0)  # [BT, E_PAD]: real experts not yet selected
    a = tl.arange(0, A_PAD)[None, :]  # [1, A_PAD]
    top_v = tl.full([BLOCK_T, A_PAD], float("-inf"), tl.float32)
    top_i = tl.zeros([BLOCK_T, A_PAD], tl.int32)
    for j in tl.static_range(A):
        m = tl.max(tl.where(avail, x, float("-inf")), axis=1)  # [BT]
        hit = avail & (x == m[:, None])
        sel = tl.min(tl.where(hit, e, E_PAD), axis=1)  # [BT] lowest index among the maxima
        avail = avail & (e != sel[:, None])
        top_v = tl.where(a == j, m[:, None], top_v)
        top_i = tl.where(a == j, sel[:, None], top_i)
    a_ok = a < A
    p = tl.where(a_ok, tl.exp(top_v - tl.max(top_v, axis=1)[:, None]), 0.0)  # pad slots hold -inf: max unaffected
    w = p / tl.sum(p, axis=1)[:, None]
    out_ok = t_ok[:, None] & a_ok
    tl.store(w_ptr + t[:, None] * s_wt + a * s_wa, w, mask=out_ok)
    tl.store(ids_ptr + t[:, None] * s_it + a * s_ia, top_i.to(tl.int64), mask=out_ok)


def route_triton(router_logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    # router_logits [T, E] (any float dtype, any strides) -> (weights [T, A] float32, ids [T, A] int64)
    T, E = router_logits.shape
    weights = _empty((T, k), torch.float32, router_logits.device)
    ids = _empty((T, k), torch.int64, router_logits.device)
    if T == 0:
        return weights, ids
    e_pad = triton.next_power_of_2(E)
    block_t = min(triton.next_power_of_2(T), max(1, 2048 // e_pad))  # tiles of about 2048 logits
    pdl = launch.use_pdl(router_logits.device)
    _route_kernel[(triton.cdiv(T, block_t),)](
        router_logits, weights, ids, T, *router_logits.stride(), *weights.stride(), *ids.stride(),
        E=E, A=k, E_PAD=e_pad, A_PAD=triton.next_power_of_2(k), BLOCK_T=block_t, PDL=pdl,
        num_warps=4 if block_t * e_pad >= 1024 else 1, launch_pdl=pdl)
    return weights, ids
