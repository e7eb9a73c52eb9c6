"""Mixture-of-experts block: router, top-k routing, clamped-SwiGLU experts.

Legend: T tokens, Ta tokens of every data-parallel replica, D hidden, I intermediate (per expert), E experts,
A experts per token; El and Ir are this rank's experts and intermediate columns.
The expert storage is a component chosen at construction: MXFP4 (packed, 4.25 bits a weight, dequantized
per use), dense (bf16 checkpoints), or none (a tensor-parallel rank whose intermediate slice is empty).
All are output-major, [E, out, in]; the math does not branch on it.

Parallel (RankShard, MoEComm): the MoE of a pipeline stage spans tp x dp ranks. Without expert parallel
each holds every expert's intermediate columns [i0, i1) (w1 rows [2 i0, 2 i1), gate/up interleaved; w2
columns [i0, i1)) and only one adds the down bias; with expert parallel each holds whole experts
[e0, e1) and tokens routed elsewhere weigh zero here. Each rank computes its partial sum for every replica's
tokens and the MoE comm adds the partial sums up.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import MXFP4_BLOCK, ModelConfig
from ..kernels import Ops
from ..kernels.types import ExpertWeight, RowSum
from ..parallel.comm import MoEComm
from ..parallel.shard import RankShard
from ..weights.tiles import can_tile, tile_in_place
from .layers import Linear


def _buffer(*shape: int, dtype: torch.dtype) -> nn.Parameter:
    return nn.Parameter(torch.empty(*shape, dtype=dtype), requires_grad=False)


class _Experts(nn.Module):
    def __init__(self, ops: Ops, limit: float, alpha: float):
        super().__init__()
        self.ops, self.limit, self.alpha = ops, limit, alpha

    def forward(self, h: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor,
                defer_sum: bool = False) -> torch.Tensor | RowSum:
        # h [Ta, D], weights / ids [Ta, A] (ids local to this rank's experts) -> [Ta, D] (or a RowSum: defer_sum)
        w1, w2 = self.weights()
        return self.ops.moe_experts(h, weights, ids, w1, w2, self.limit, self.alpha, defer_sum=defer_sum)


class MXFP4Experts(_Experts):
    def __init__(self, E: int, D: int, I: int, dtype: torch.dtype, ops: Ops, limit: float, alpha: float):
        super().__init__(ops, limit, alpha)
        self.w1_blocks = _buffer(E, 2 * I, D // MXFP4_BLOCK, MXFP4_BLOCK // 2, dtype=torch.uint8)
        self.w1_scales = _buffer(E, 2 * I, D // MXFP4_BLOCK, dtype=torch.uint8)
        self.w1_bias = _buffer(E, 2 * I, dtype=dtype)
        self.w2_blocks = _buffer(E, D, I // MXFP4_BLOCK, MXFP4_BLOCK // 2, dtype=torch.uint8)
        self.w2_scales = _buffer(E, D, I // MXFP4_BLOCK, dtype=torch.uint8)
        self.w2_bias = _buffer(E, D, dtype=dtype)
        self.scale_ranges: tuple[tuple[int, int], tuple[int, int]] | None = None  # set by after_load
        self.tiled = False  # blocks in weights/tiles.py's layout (set by after_load)

    def after_load(self) -> None:
        """Called by the loader once the weights are in (every byte of the blocks freshly written, in the
        standard layout): note each projection's scale-byte range (see ExpertWeight.scale_range) and, where
        the op table reads them faster so (Ops.tiled_experts), re-lay the blocks tiled (weights/tiles.py)."""
        self.tiled = False
        w1, w2 = self.weights()
        self.scale_ranges = (w1.with_scale_range().scale_range, w2.with_scale_range().scale_range)
        if self.ops.tiled_experts and can_tile(self.w1_blocks) and can_tile(self.w2_blocks):
            with torch.no_grad():
                tile_in_place(self.w1_blocks)
                tile_in_place(self.w2_blocks)
            self.tiled = True

    def weights(self) -> tuple[ExpertWeight, ExpertWeight]:
        r1, r2 = self.scale_ranges or (None, None)
        return (ExpertWeight(self.w1_bias, blocks=self.w1_blocks, scales=self.w1_scales, scale_range=r1,
                             tiled=self.tiled),
                ExpertWeight(self.w2_bias, blocks=self.w2_blocks, scales=self.w2_scales, scale_range=r2,
                             tiled=self.tiled))


class DenseExperts(_Experts):
    def __init__(self, E: int, D: int, I: int, dtype: torch.dtype, ops: Ops, limit: float, alpha: float):
        super().__init__(ops, limit, alpha)
        self.w1 = _buffer(E, 2 * I, D, dtype=dtype)  # rows interleaved: even gate, odd up
        self.w1_bias = _buffer(E, 2 * I, dtype=dtype)
        self.w2 = _buffer(E, D, I, dtype=dtype)
        self.w2_bias = _buffer(E, D, dtype=dtype)

    def weights(self) -> tuple[ExpertWeight, ExpertWeight]:
        return ExpertWeight(self.w1_bias, dense=self.w1), ExpertWeight(self.w2_bias, dense=self.w2)


class NoExperts(nn.Module):
    """A tensor-parallel rank whose intermediate slice is empty (e.g. I = 96 over 4 ranks: 32, 32, 32, 0)
    contributes exactly zero; it never holds the down bias (the first MoE rank does)."""

    def forward(self, h: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor,
                defer_sum: bool = False) -> torch.Tensor:
        return torch.zeros_like(h)


class ExpertMap(nn.Module):
    """Expert parallel: global expert ids -> this rank's [e0, e1). A token's slots routed to another rank's
    expert keep their place with weight 0 and a valid local id (0), so the op table's kernels need no
    notion of missing experts; their contribution arrives through the MoE comm's sum."""

    def __init__(self, experts: tuple[int, int]):
        super().__init__()
        self.e0, self.e1 = experts

    def forward(self, weights: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # weights, ids [Ta, A] -> same shapes, ids local
        mine = (ids >= self.e0) & (ids < self.e1)
        return weights * mine, torch.where(mine, ids - self.e0, 0)


class AllExperts(nn.Module):
    def forward(self, weights: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return weights, ids


class MoE(nn.Module):
    """defer_sum (settled by the model, which knows what follows): return the experts' rows unsummed, as a
    RowSum for the next layer's norm to sum (Ops.defer_moe_sum); only where there is no communication to do."""

    def __init__(self, cfg: ModelConfig, dtype: torch.dtype, ops: Ops, shard: RankShard, comm: MoEComm,
                 defer_sum: bool = False):
        super().__init__()
        if defer_sum and not comm.local:
            raise ValueError("an MoE whose output is reduced over ranks cannot defer its sum")
        E, D, I = shard.num_experts, cfg.hidden_size, shard.intermediate_size
        self.top_k = cfg.num_experts_per_tok
        self.router = Linear(D, cfg.num_local_experts, bias=True, dtype=dtype, ops=ops)  # every rank routes over all E
        if I == 0:
            self.experts = NoExperts()
        else:
            experts_cls = MXFP4Experts if cfg.weight_format == "mxfp4" else DenseExperts
            self.experts = experts_cls(E, D, I, dtype, ops, cfg.swiglu_limit, cfg.swiglu_alpha)
        self.expert_map = AllExperts() if E == cfg.num_local_experts else ExpertMap(shard.experts)
        self.ops, self.comm, self.defer_sum = ops, comm, defer_sum

    def forward(self, h: torch.Tensor, dp_tokens: tuple[int, ...] | None = None) -> torch.Tensor | RowSum:
        # h [T, D] -> [T, D] (a RowSum of it when defer_sum); dp_tokens: T of every data-parallel replica
        # (ForwardBatch.dp_tokens)
        h_all = self.comm.gather(h, dp_tokens)  # [Ta, D]
        weights, ids = self.expert_map(*self.ops.route(self.router(h_all), self.top_k))  # [Ta, A] each
        y = self.experts(h_all, weights, ids, self.defer_sum)
        return y if self.defer_sum else self.comm.reduce(y, dp_tokens)  # [T, D]; defer_sum: comm is local
