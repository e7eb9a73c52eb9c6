"""Rotary embedding fused with the KV-cache write, in Triton: the twin of `kernels/ref/rope.py`
`rope_store_kv_ref` (same contract, read its docstring).

Legend: T tokens, H q-heads, K kv-heads, D head_dim, D2 = D / 2 (the rotated halves), N cache blocks,
S block size; H_PAD, K_PAD, D2_PAD, D_PAD powers of two >= H, K, D2, D (pad lanes masked).

Design. One launch, one program per token t, doing the three jobs of the reference:
  q_rot[t]            = rope(q[t])        [H, D] tiles of [H_PAD, D2_PAD] per half
  k_cache[slot[t]]    = rope(k[t])        [K, D]
  v_cache[slot[t]]    = v[t]              [K, D]
NeoX rotation (the two halves of each head rotate together): with x1 = x[:D2], x2 = x[D2:],
c = cos[t], s = sin[t] (concentration already folded in), out = (x1 c - x2 s, x2 c + x1 s), in float32, cast to
x.dtype (the rotated k then to the cache dtype, as the reference's `.to(k.dtype).to(k_cache.dtype)`).
slot = block * S + row; e.g. S = 16, slot 35 -> block 2, row 3 (the caches are addressed by their strides).

Contract choices:
- q_rot is a NEW contiguous [T, H, D] tensor; q, k, v are only read (in the model they are strided views of
  the fused qkv output [T, (H + 2K) D]; every tensor may have any strides, a stride of 1 being specialised by
  Triton at no cost).
- Deviation, as `store_kv_triton`: a negative slot (a padding row of a CUDA-graph batch) writes no cache row
  (its q is still rotated); the reference would wrap around to the last slot.
No host sync and no data-dependent allocation: CUDA-graph capturable.
PDL (`launch.py`): `gdc_wait()` comes first; every input (q, k, v, cos/sin, slots) is produced on the GPU.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import launch


def _empty(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype, device=device)  # tests poison it with NaN


@triton.jit
def _rotate(x_ptr, o_ptr, s_xh, s_xd, s_oh, s_od, c, s, n_heads: tl.constexpr, D2: tl.constexpr, NH_PAD: tl.constexpr,
            D2_PAD: tl.constexpr, STAGE_DTYPE: tl.constexpr):
    # x_ptr, o_ptr at token t; heads [n_heads] x halves [D2]: o = rope(x), rounded to STAGE_DTYPE (x's dtype),
    # stored as o's dtype. c, s [D2_PAD] float32.
    h = tl.arange(0, NH_PAD)[:, None]  # [NH_PAD, 1]
    i = tl.arange(0, D2_PAD)[None, :]  # [1, D2_PAD]
    ok = (h < n_heads) & (i < D2)
    x1 = tl.load(x_ptr + h * s_xh + i * s_xd, mask=ok, other=0.0).to(tl.float32)
    x2 = tl.load(x_ptr + h * s_xh + (D2 + i) * s_xd, mask=ok, other=0.0).to(tl.float32)
    c, s = c[None, :], s[None, :]
    o1 = (x1 * c - x2 * s).to(STAGE_DTYPE).to(o_ptr.dtype.element_ty)
    o2 = (x2 * c + x1 * s).to(STAGE_DTYPE).to(o_ptr.dtype.element_ty)
    tl.store(o_ptr + h * s_oh + i * s_od, o1, mask=ok)
    tl.store(o_ptr + h * s_oh + (D2 + i) * s_od, o2, mask=ok)


@triton.jit
def _rope_store_kv_kernel(q_ptr, k_ptr, v_ptr, cos_ptr, sin_ptr, qo_ptr, kc_ptr, vc_ptr, slot_ptr,
                          s_qt, s_qh, s_qd, s_kt, s_kh, s_kd, s_vt, s_vh, s_vd, s_ct, s_cd, s_st, s_sd, s_ot, s_oh,
                          s_od, s_cn, s_cs, s_ch, s_cx, s_dn, s_ds, s_dh, s_dx,
                          H: tl.constexpr, K: tl.constexpr, D2: tl.constexpr, S: tl.constexpr,
                          H_PAD: tl.constexpr, K_PAD: tl.constexpr, D2_PAD: tl.constexpr, D_PAD: tl.constexpr,
                          PDL: tl.constexpr):
    launch.wait_for_inputs(PDL)
    t = tl.program_id(0).to(tl.int64)
    i = tl.arange(0, D2_PAD)
    c = tl.load(cos_ptr + t * s_ct + i * s_cd, mask=i < D2, other=0.0).to(tl.float32)  # [D2_PAD]
    s = tl.load(sin_ptr + t * s_st + i * s_sd, mask=i < D2, other=0.0).to(tl.float32)
    _rotate(q_ptr + t * s_qt, qo_ptr + t * s_ot, s_qh, s_qd, s_oh, s_od, c, s, H, D2, H_PAD, D2_PAD,
            q_ptr.dtype.element_ty)
    slot = tl.load(slot_ptr + t).to(tl.int64)
    if slot >= 0:
        blk = slot // S
        row = slot % S
        _rotate(k_ptr + t * s_kt, kc_ptr + blk * s_cn + row * s_cs, s_kh, s_kd, s_ch, s_cx, c, s, K, D2, K_PAD, D2_PAD,
                k_ptr.dtype.element_ty)
        h = tl.arange(0, K_PAD)[:, None]  # [K_PAD, 1]
        d = tl.arange(0, D_PAD)[None, :]  # [1, D_PAD]
        ok = (h < K) & (d < 2 * D2)
        v = tl.load(v_ptr + t * s_vt + h * s_vh + d * s_vd, mask=ok)
        tl.store(vc_ptr + blk * s_dn + row * s_ds + h * s_dh + d * s_dx, v.to(vc_ptr.dtype.element_ty), mask=ok)


def rope_store_kv_triton(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                         k_cache: torch.Tensor, v_cache: torch.Tensor, slot_mapping: torch.Tensor) -> torch.Tensor:
    # q [T, H, D], k, v [T, K, D], cos/sin [T, D/2], caches [N, S, K, D], slot_mapping [T] -> q_rot [T, H, D]
    T, H, D = q.shape
    K = k.shape[1]
    q_rot = _empty((T, H, D), q.dtype, q.device)
    if T == 0:
        return q_rot
    pdl = launch.use_pdl(q.device)
    _rope_store_kv_kernel[(T,)](
        q, k, v, cos, sin, q_rot, k_cache, v_cache, slot_mapping,
        *q.stride(), *k.stride(), *v.stride(), *cos.stride(), *sin.stride(), *q_rot.stride(), *k_cache.stride(),
        *v_cache.stride(),
        H=H, K=K, D2=D // 2, S=k_cache.shape[1], H_PAD=triton.next_power_of_2(H), K_PAD=triton.next_power_of_2(K),
        D2_PAD=triton.next_power_of_2(D // 2), D_PAD=triton.next_power_of_2(D), PDL=pdl,
        num_warps=4 if H * D >= 2048 else 1, launch_pdl=pdl)
    return q_rot
