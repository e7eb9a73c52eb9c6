"""Rotary embedding, the reference: NeoX style (the two halves of each head rotate together)."""

import torch


def apply_rope_ref(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    # x [T, N, D] (N heads), cos/sin [T, D/2] float32 (concentration already folded in) -> [T, N, D] in x.dtype
    x1, x2 = x.float().chunk(2, dim=-1)  # [T, N, D/2] each
    c, s = cos[:, None, :], sin[:, None, :]  # [T, 1, D/2]
    return torch.cat((x1 * c - x2 * s, x2 * c + x1 * s), dim=-1).to(x.dtype)
