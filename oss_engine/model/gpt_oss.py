"""The gpt-oss transformer (GPT_OSS_SPEC section 2). Reads top to bottom: no format, parallel or kernel
branches; those are settled at construction (the op table, the expert storage, the parallel layers).

Legend: T tokens in the step, D hidden, V vocab, R rows that need logits.

Pipeline parallel: a model object is one stage. It holds the layers of `shard.layers` (the others are
`MissingLayer` placeholders, so parameter names keep their global layer index), the embedding on the first
stage, the final norm and lm_head on the last. `forward` maps the carry (hidden, residual) entering the
stage to the carry leaving it; the first stage's carry in is the embedding.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import ModelConfig
from ..kernels import Ops
from ..kernels.types import RowSum
from ..parallel.comm import ModelComms
from ..parallel.shard import RankShard
from .attention import Attention
from .forward_batch import ForwardBatch
from .layers import Embedding, Linear, ParallelLMHead, RMSNorm, VocabParallelEmbedding
from .moe import MoE
from .rope import RotaryTable

KVCaches = list[tuple[torch.Tensor, torch.Tensor]]  # per layer of the stage: (k_cache, v_cache), each [N, S, K, hd]
Carry = tuple[torch.Tensor, torch.Tensor | None]  # (hidden [T, D], residual [T, D] or None before layer 0)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int, dtype: torch.dtype, ops: Ops, shard: RankShard,
                 comms: ModelComms):
        super().__init__()
        self.input_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, ops)
        self.attn = Attention(cfg, layer, dtype, ops, shard, comms.tp)
        self.post_attn_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, ops)
        # the MoE's sum left to the next layer's input norm where that norm is the only reader (Ops.defer_moe_sum)
        defer = ops.defer_moe_sum and comms.moe.local and shard.holds_layer(layer + 1)
        self.mlp = MoE(cfg, dtype, ops, shard, comms.moe, defer_sum=defer)

    def forward(self, x: torch.Tensor | RowSum, residual: torch.Tensor | None, batch: ForwardBatch,
                rope: tuple[torch.Tensor, torch.Tensor], kv_cache: tuple[torch.Tensor, torch.Tensor]
                ) -> tuple[torch.Tensor | RowSum, torch.Tensor]:
        """The reference's h = h + attn(norm(h)); h = h + mlp(norm(h)), with each add deferred into the next
        norm: in (x, residual), out (mlp output, residual), where the layer's h is their sum. The mlp output
        is a RowSum (its rows, unsummed) where the next layer of this stage sums it in its norm (`mlp.defer_sum`);
        the stage's last layer returns a tensor."""
        h, residual = self.input_norm(x, residual)
        h, residual = self.post_attn_norm(self.attn(h, batch, rope, kv_cache), residual)
        return self.mlp(h, batch.dp_tokens), residual


class MissingLayer(nn.Module):
    """A layer held by another pipeline stage (no parameters)."""


def _embedding(cfg: ModelConfig, dtype: torch.dtype, shard: RankShard, comms: ModelComms) -> nn.Module:
    if comms.tp.size == 1 and not comms.tp.active:  # one rank, no group (a real group of one: the parallel one)
        return Embedding(cfg.vocab_size, cfg.hidden_size, dtype)
    return VocabParallelEmbedding(shard.vocab, cfg.hidden_size, dtype, comms.tp)


def _lm_head(cfg: ModelConfig, dtype: torch.dtype, ops: Ops, shard: RankShard, comms: ModelComms) -> nn.Module:
    if comms.tp.size == 1 and not comms.tp.active:  # one rank, no group (a real group of one: the parallel one)
        return Linear(cfg.hidden_size, cfg.vocab_size, bias=False, dtype=dtype, ops=ops)  # untied
    return ParallelLMHead(shard.vocab, cfg.vocab_size, cfg.hidden_size, dtype, comms.tp, ops)


class GptOssModel(nn.Module):
    def __init__(self, cfg: ModelConfig, dtype: torch.dtype, ops: Ops, shard: RankShard | None = None,
                 comms: ModelComms | None = None):
        super().__init__()
        shard, comms = shard or RankShard.full(cfg), comms or ModelComms()
        self.cfg, self.shard, self.ops = cfg, shard, ops
        self.embed = _embedding(cfg, dtype, shard, comms) if shard.first_stage else None
        self.layers = nn.ModuleList(DecoderLayer(cfg, i, dtype, ops, shard, comms) if shard.holds_layer(i)
                                    else MissingLayer() for i in range(cfg.num_hidden_layers))
        if shard.last_stage:
            self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, ops)
            self.lm_head = _lm_head(cfg, dtype, ops, shard, comms)
        self.rotary = RotaryTable(cfg)

    def forward(self, batch: ForwardBatch, kv_caches: KVCaches, carry: Carry | None = None) -> Carry:
        """The stage's layers: carry in (None on the first stage: the embedding) -> carry out."""
        x, residual = (self.embed(batch.input_ids), None) if carry is None else carry  # [T, D]
        rope = self.rotary(batch.positions)  # cos, sin [T, hd/2]
        for i, kv in zip(range(*self.shard.layers), kv_caches):  # x between layers: a tensor or a RowSum
            x, residual = self.layers[i](x, residual, batch, rope, kv)
        return x, residual

    def final_hidden(self, carry: Carry) -> torch.Tensor:
        """The last stage's carry -> the final hidden states [T, D] (after the last norm)."""
        return self.norm(*carry)[0]

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor | None:
        # hidden [R, D] -> logits [R, V] float32 (None on tp ranks other than 0, which do not sample)
        logits = self.lm_head(hidden)
        return None if logits is None else logits.float()
