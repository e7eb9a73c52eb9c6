"""Rotary embedding, the reference: NeoX style (the two halves of each head rotate together)."""

import torch

from .attention import store_kv_ref


def apply_rope_ref(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # x [T, N, D] (N heads), cos/sin [T, D/2] float32 (concentration already folded in) -> [T, N, D] in x.dtype
    x1, x2 = x.float().chunk(2, dim=-1)  # [T, N, D/2] each
    c, s = cos[:, None, :], sin[:, None, :]  # [T, 1, D/2]
    return torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1).to(x.dtype)


def rope_store_kv_ref(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                      k_cache: torch.Tensor, v_cache: torch.Tensor, slot_mapping: torch.Tensor) -> torch.Tensor:
    """Rotate q and k, write the rotated k and v into the paged caches; return the rotated q.

    q [T, H, D], k and v [T, K, D] (strided views of the fused qkv output are fine), cos/sin [T, D/2],
    caches [N, S, K, D], slot_mapping [T] -> q rotated [T, H, D] in q.dtype."""
    store_kv_ref(apply_rope_ref(k, cos, sin), v, k_cache, v_cache, slot_mapping)
    return apply_rope_ref(q, cos, sin)
