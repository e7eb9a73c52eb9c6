"""Layers: RMSNorm, biased linear, embedding, and their tensor-parallel forms (row-parallel linear,
vocab-parallel embedding and lm_head). Parameters are created empty (on the target device and dtype) and
filled by the weight loader, which also slices them (weights/shards.py); nothing here initialises values.
A parallel layer owns its shard layout and its collective; with a group of one it is the plain layer.

Legend: T tokens, D hidden, V vocab, Vr this rank's vocab rows [v0, v1), R logits rows."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from ..kernels import Ops
from ..parallel.comm import GroupComm
from ..parallel.shard import even_split


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
    """y = x W^T + b with W [out, in], through the op table's `linear` (the Triton table streams one-row inputs
    through its own GEMV)."""

    def __init__(self, in_features: int, out_features: int, bias: bool, dtype: torch.dtype, ops: Ops):
        super().__init__()
        self.weight = _param(out_features, in_features, dtype=dtype)
        self.bias = _param(out_features, dtype=dtype) if bias else None
        self.ops = ops

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ops.linear(x, self.weight, self.bias)


class Embedding(nn.Module):
    def __init__(self, vocab: int, dim: int, dtype: torch.dtype):
        super().__init__()
        self.weight = _param(vocab, dim, dtype=dtype)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.weight)


class RowParallelLinear(Linear):
    """y = sum over tp ranks of x_r W_r^T, plus b once: each rank holds the input columns of its heads (W_r
    [out, in/tp]); the bias is the checkpoint's on tp rank 0 and zero on the others (the loader's
    `row_bias` rule), so the all-reduce adds it exactly once."""

    def __init__(self, in_features: int, out_features: int, bias: bool, dtype: torch.dtype, comm: GroupComm,
                 ops: Ops):
        super().__init__(in_features, out_features, bias, dtype, ops)
        self.comm = comm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x [T, in/tp] -> [T, out], summed over the group
        return self.comm.all_reduce(self.ops.linear(x, self.weight, self.bias))


class VocabParallelEmbedding(nn.Module):
    """Rows [v0, v1) of the embedding on each tp rank: ids outside the range look up zeros, then the
    all-reduce fills every row from the one rank that holds it (adding exact zeros)."""

    def __init__(self, vocab_range: tuple[int, int], dim: int, dtype: torch.dtype, comm: GroupComm):
        super().__init__()
        self.v0, self.v1 = vocab_range
        self.weight = _param(self.v1 - self.v0, dim, dtype=dtype)  # [Vr, D]
        self.comm = comm

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        # ids [T] -> [T, D]
        mine = (ids >= self.v0) & (ids < self.v1)
        local = torch.where(mine, ids - self.v0, 0)
        return self.comm.all_reduce(F.embedding(local, self.weight) * mine[:, None].to(self.weight.dtype))


class ParallelLMHead(nn.Module):
    """Rows [v0, v1) of the unembedding on each tp rank; the logits are gathered on tp rank 0 (the others
    get None: only one rank samples)."""

    def __init__(self, vocab_range: tuple[int, int], vocab: int, dim: int, dtype: torch.dtype, comm: GroupComm,
                 ops: Ops):
        super().__init__()
        self.weight = _param(vocab_range[1] - vocab_range[0], dim, dtype=dtype)  # [Vr, D]
        self.comm, self.ops = comm, ops
        self.widths = tuple(b - a for a, b in (even_split(vocab, comm.size, r) for r in range(comm.size)))

    def forward(self, h: torch.Tensor) -> torch.Tensor | None:
        # h [R, D] -> logits [R, V] on tp rank 0, None elsewhere
        return self.comm.gather_columns_to_first(self.ops.linear(h, self.weight, None), self.widths)
