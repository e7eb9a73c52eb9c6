"""Plain layers: RMSNorm, biased linear, embedding, unembedding. Parameters are created empty (on the
target device and dtype) and filled by the weight loader; nothing here initialises values."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..kernels import Ops


def _param(*shape: int, dtype: torch.dtype) -> nn.Parameter:
    return nn.Parameter(torch.empty(*shape, dtype=dtype), requires_grad=False)


class RMSNorm(nn.Module):
    """Norm of the residual stream: called with the block output x and the running residual, it adds them
    (fused, where the op table can) and returns (norm(x + residual), x + residual); residual None at the first
    layer."""

    def __init__(self, dim: int, eps: float, ops: Ops):
        super().__init__()
        self.weight = _param(dim, dtype=torch.float32)  # kept in float32, as the reference does
        self.eps, self.ops = eps, ops

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        # x, residual [T, D] -> (normed [T, D], new residual [T, D])
        return self.ops.add_rms_norm(x, residual, self.weight, self.eps)


class Linear(nn.Module):
    """y = x W^T + b with W [out, in]."""

    def __init__(self, in_features: int, out_features: int, bias: bool, dtype: torch.dtype):
        super().__init__()
        self.weight = _param(out_features, in_features, dtype=dtype)
        self.bias = _param(out_features, dtype=dtype) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight, self.bias)


class Embedding(nn.Module):
    def __init__(self, vocab: int, dim: int, dtype: torch.dtype):
        super().__init__()
        self.weight = _param(vocab, dim, dtype=dtype)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.weight)
