"""Mixture-of-experts block: router, top-k routing, clamped-SwiGLU experts.

Legend: T tokens, D hidden, I intermediate (per expert), E experts, A experts per token.
The expert storage is a component chosen at construction: MXFP4 (packed, 4.25 bits a weight, dequantized
per use) or dense (bf16 checkpoints). Both are output-major, [E, out, in]; the math does not branch on it.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import MXFP4_BLOCK, ModelConfig
from ..kernels import Ops
from ..kernels.types import ExpertWeight
from .layers import Linear


def _buffer(*shape: int, dtype: torch.dtype) -> nn.Parameter:
    return nn.Parameter(torch.empty(*shape, dtype=dtype), requires_grad=False)


class MXFP4Experts(nn.Module):
    def __init__(self, E: int, D: int, I: int, dtype: torch.dtype):
        super().__init__()
        self.w1_blocks = _buffer(E, 2 * I, D // MXFP4_BLOCK, MXFP4_BLOCK // 2, dtype=torch.uint8)
        self.w1_scales = _buffer(E, 2 * I, D // MXFP4_BLOCK, dtype=torch.uint8)
        self.w1_bias = _buffer(E, 2 * I, dtype=dtype)
        self.w2_blocks = _buffer(E, D, I // MXFP4_BLOCK, MXFP4_BLOCK // 2, dtype=torch.uint8)
        self.w2_scales = _buffer(E, D, I // MXFP4_BLOCK, dtype=torch.uint8)
        self.w2_bias = _buffer(E, D, dtype=dtype)

    def weights(self) -> tuple[ExpertWeight, ExpertWeight]:
        return (ExpertWeight(self.w1_bias, blocks=self.w1_blocks, scales=self.w1_scales),
                ExpertWeight(self.w2_bias, blocks=self.w2_blocks, scales=self.w2_scales))


class DenseExperts(nn.Module):
    def __init__(self, E: int, D: int, I: int, dtype: torch.dtype):
        super().__init__()
        self.w1 = _buffer(E, 2 * I, D, dtype=dtype)  # rows interleaved: even gate, odd up
        self.w1_bias = _buffer(E, 2 * I, dtype=dtype)
        self.w2 = _buffer(E, D, I, dtype=dtype)
        self.w2_bias = _buffer(E, D, dtype=dtype)

    def weights(self) -> tuple[ExpertWeight, ExpertWeight]:
        return ExpertWeight(self.w1_bias, dense=self.w1), ExpertWeight(self.w2_bias, dense=self.w2)


class MoE(nn.Module):
    def __init__(self, cfg: ModelConfig, dtype: torch.dtype, ops: Ops):
        super().__init__()
        E, D, I = cfg.num_local_experts, cfg.hidden_size, cfg.intermediate_size
        self.top_k, self.limit, self.alpha = cfg.num_experts_per_tok, cfg.swiglu_limit, cfg.swiglu_alpha
        self.router = Linear(D, E, bias=True, dtype=dtype)
        experts_cls = MXFP4Experts if cfg.weight_format == "mxfp4" else DenseExperts
        self.experts = experts_cls(E, D, I, dtype)
        self.ops = ops

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        # h [T, D] -> [T, D]
        weights, ids = self.ops.route(self.router(h), self.top_k)  # [T, A] each
        w1, w2 = self.experts.weights()
        return self.ops.moe_experts(h, weights, ids, w1, w2, self.limit, self.alpha)
