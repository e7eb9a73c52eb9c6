"""Attention block: fused QKV with biases, YaRN RoPE, paged KV store, sink/sliding-window attention, o_proj.

Legend: T tokens, H q-heads, K kv-heads, hd head_dim, D hidden. Under tensor parallelism H and K are this
rank's heads (a contiguous run of q heads and the kv heads they use: H/tp and K/tp), qkv holds their rows and
the sinks their entries, and o_proj is row-parallel (its all-reduce sums the heads of every rank).
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import ModelConfig
from ..kernels import Ops
from .forward_batch import ForwardBatch
from ..parallel.comm import GroupComm
from ..parallel.shard import RankShard
from .layers import Linear, RowParallelLinear


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int, dtype: torch.dtype, ops: Ops, shard: RankShard,
                 tp: GroupComm):
        super().__init__()
        H, K, hd, D = shard.num_heads, shard.num_kv_heads, cfg.head_dim, cfg.hidden_size
        self.num_heads, self.num_kv_heads, self.head_dim = H, K, hd
        self.layer_type = cfg.layer_types[layer]
        self.window = cfg.window_of(layer)
        self.scale = hd ** -0.5
        self.qkv = Linear(D, (H + 2 * K) * hd, cfg.attention_bias, dtype, ops)  # rows: q heads | k heads | v heads
        self.o_proj = RowParallelLinear(H * hd, D, cfg.attention_bias, dtype, tp, ops)
        self.sinks = nn.Parameter(torch.empty(H, dtype=torch.float32), requires_grad=False)
        self.ops = ops

    def forward(self, h: torch.Tensor, batch: ForwardBatch, rope: tuple[torch.Tensor, torch.Tensor],
                kv_cache: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        # h [T, D] -> [T, D]
        T = h.shape[0]
        H, K, hd = self.num_heads, self.num_kv_heads, self.head_dim
        q, k, v = self.qkv(h).split([H * hd, K * hd, K * hd], dim=-1)  # views of [T, (H + 2K) hd]
        meta = batch.attention[self.layer_type]
        k_cache, v_cache = kv_cache
        q = self.ops.rope_store_kv(q.view(T, H, hd), k.view(T, K, hd), v.view(T, K, hd), *rope, k_cache, v_cache,
                                   meta.slot_mapping)  # [T, H, hd], k and v now in the caches
        o = self.ops.attention(q, k_cache, v_cache, self.sinks, meta, batch.positions, self.window, self.scale)
        return self.o_proj(o.reshape(T, H * hd))
