"""RMSNorm, the reference: computed in float32, cast back to the input dtype (GPT_OSS_SPEC section 2)."""

import torch


def rms_norm_ref(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    # x [T, D], weight [D] -> [T, D] in x.dtype
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return (weight.float() * h).to(x.dtype)
