"""RMSNorm, the reference: computed in float32, cast back to the input dtype (GPT_OSS_SPEC section 2)."""

from __future__ import annotations

import torch

from ..types import RowSum


def rms_norm_ref(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    # x [T, D], weight [D] -> [T, D] in x.dtype
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return (weight.float() * h).to(x.dtype)


def add_rms_norm_ref(x: torch.Tensor | RowSum, residual: torch.Tensor | None, weight: torch.Tensor,
                     eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The residual stream's step: r = x + residual (in x.dtype, rounded as the reference's `h = h + f(h)`;
    r = x when residual is None, at the first layer) -> (rms_norm(r), r), both [T, D] in x.dtype. x may be a
    RowSum (an MoE output left unsummed), which is summed first (`RowSum.total`)."""
    x = x.total() if isinstance(x, RowSum) else x
    r = x if residual is None else x + residual
    return rms_norm_ref(r, weight, eps), r
