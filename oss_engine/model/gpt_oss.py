"""The gpt-oss transformer (GPT_OSS_SPEC section 2). Reads top to bottom: no format, parallel or kernel
branches; those are settled at construction (the op table, the expert storage).

Legend: T tokens in the step, D hidden, V vocab, R rows that need logits.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import ModelConfig
from ..kernels import Ops
from .attention import Attention
from .forward_batch import ForwardBatch
from .layers import Embedding, Linear, RMSNorm
from .moe import MoE
from .rope import RotaryTable

KVCaches = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: (k_cache, v_cache), each [N, S, K, hd]


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int, dtype: torch.dtype, ops: Ops):
        super().__init__()
        self.input_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, ops)
        self.attn = Attention(cfg, layer, dtype, ops)
        self.post_attn_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, ops)
        self.mlp = MoE(cfg, dtype, ops)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None, batch: ForwardBatch,
                rope: tuple[torch.Tensor, torch.Tensor], kv_cache: tuple[torch.Tensor, torch.Tensor]
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """The reference's h = h + attn(norm(h)); h = h + mlp(norm(h)), with each add deferred into the next
        norm: in (x, residual), out (mlp output, residual), where the layer's h is their sum."""
        h, residual = self.input_norm(x, residual)
        h, residual = self.post_attn_norm(self.attn(h, batch, rope, kv_cache), residual)
        return self.mlp(h), residual


class GptOssModel(nn.Module):
    def __init__(self, cfg: ModelConfig, dtype: torch.dtype, ops: Ops):
        super().__init__()
        self.cfg = cfg
        self.embed = Embedding(cfg.vocab_size, cfg.hidden_size, dtype)
        self.layers = nn.ModuleList(DecoderLayer(cfg, i, dtype, ops) for i in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, ops)
        self.lm_head = Linear(cfg.hidden_size, cfg.vocab_size, bias=False, dtype=dtype)  # untied
        self.rotary = RotaryTable(cfg)

    def forward(self, batch: ForwardBatch, kv_caches: KVCaches) -> torch.Tensor:
        """The step's final hidden states (after the last norm), [T, D]."""
        x, residual = self.embed(batch.input_ids), None  # [T, D]
        rope = self.rotary(batch.positions)  # cos, sin [T, hd/2]
        for layer, kv in zip(self.layers, kv_caches):
            x, residual = layer(x, residual, batch, rope, kv)
        return self.norm(x, residual)[0]

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        # hidden [R, D] -> logits [R, V] float32
        return self.lm_head(hidden).float()
