"""Linear layer, the reference: y = x W^T + b (torch; cuBLAS on the GPU)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def linear_ref(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    # x [M, K], weight [N, K], bias [N] | None -> [M, N] in x.dtype
    return F.linear(x, weight, bias)
