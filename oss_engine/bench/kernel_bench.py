"""One MoE layer and one attention layer of the loaded model, timed alone at 1, 8, 64, 256 and 2048 tokens.

Each is the model's own module (MoE: router, routing, both expert GEMMs with the fused SwiGLU, combine;
attention: qkv projection, RoPE + KV store, paged attention of a full-attention layer, o projection), captured
in a CUDA graph and replayed with the L2 cache flushed before each replay (the 24-36 layers of a decode step
never share weights in L2), median of `reps`. Up to 256 tokens are decode rows (that many sequences of one
new token at context 1024); 2048 is one prefill sequence. Floors: bytes read / copy bandwidth, and for the
prefill rows FLOPs / matmul rate.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import LAYER_FULL
from ..model.forward_batch import AttentionMetadata, ForwardBatch
from .hardware import median_seconds
from .roofline import attention_weight_bytes, expert_weight_bytes, experts_touched, kv_bytes_per_token_layer

TOKENS = (1, 8, 64, 256, 2048)
PREFILL_AT = 2048
CONTEXT = 1024


@dataclass(frozen=True)
class KernelTime:
    layer: str  # "moe" or "attention"
    tokens: int
    us: float
    floor_us: float  # max(bytes / bandwidth, FLOPs / matmul rate)


def graph_us(fn, device: torch.device, reps: int = 20) -> float:
    """Median microseconds of a CUDA-graph replay of fn, L2 flushed before each (on the CPU: of fn itself,
    for tests)."""
    if device.type != "cuda":
        return 1e6 * median_seconds(fn, device, reps)
    fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    flush = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
    return 1e6 * median_seconds(graph.replay, device, reps, before=flush.zero_)


def _attention_batch(runner, T: int, layer_type: str) -> ForwardBatch:
    """T decode sequences at CONTEXT (or one prefill of T tokens), blocks taken round-robin from the pool."""
    S, dev = runner.block_size, runner.device
    pool = runner.pad_block[layer_type]  # blocks in the pool
    if T == PREFILL_AT:
        seqs, lens, new = 1, [T], T
    else:
        seqs, lens, new = T, [CONTEXT] * T, 1
    width = -(-max(lens) // S)
    tables = torch.arange(seqs * width, device=dev, dtype=torch.int32).remainder(pool).view(seqs, width)
    pos = torch.cat([torch.arange(n - new, n, device=dev) for n in lens])  # [T]
    rows = tables.repeat_interleave(new, 0).gather(1, (pos // S).view(-1, 1)).view(-1)
    meta = AttentionMetadata(torch.arange(0, T + 1, new, device=dev, dtype=torch.int32),
                             torch.tensor(lens, device=dev, dtype=torch.int32), tables,
                             rows.long() * S + pos % S, max_query_len=new)
    ids = torch.randint(0, runner.cfg.model.vocab_size, (T,), device=dev)
    return ForwardBatch(ids, pos, {g: meta for g in runner.groups}, torch.arange(T, device=dev))


def layer_times(llm, bandwidth: float, matmul: float, tokens=TOKENS) -> list[KernelTime]:
    runner, model, m = llm.engine.runner, llm.model, llm.config.model
    li = m.layer_types.index(LAYER_FULL) if LAYER_FULL in m.layer_types else 0
    layer, kv = model.layers[li], runner.kv_caches[li]
    moe = model.layers[m.num_hidden_layers - 1].mlp  # the last layer's MoE sums its rows itself (never defer_sum)
    D = m.hidden_size
    out = []
    with torch.inference_mode():
        for T in tokens:
            h = torch.randn(T, D, device=runner.device).to(model.embed.weight.dtype)  # never time on zeros
            moe_bytes = experts_touched(m, T) * expert_weight_bytes(m)
            moe_flops = 2 * T * m.num_experts_per_tok * 3 * D * m.intermediate_size
            us = graph_us(lambda: moe(h), runner.device)
            out.append(KernelTime("moe", T, us, 1e6 * max(moe_bytes / bandwidth, moe_flops / matmul)))
            batch = _attention_batch(runner, T, m.layer_types[li])
            rope = model.rotary(batch.positions)
            ctx = sum(int(n) for n in batch.attention[m.layer_types[li]].seq_lens.tolist())
            attn_bytes = attention_weight_bytes(m) + ctx * kv_bytes_per_token_layer(m)
            H, hd = m.num_attention_heads, m.head_dim
            pairs = T * (T + 1) / 2 if T == PREFILL_AT else T * CONTEXT
            attn_flops = 2 * T * (D * (H + 2 * m.num_key_value_heads) * hd + H * hd * D) + 4 * H * hd * pairs
            us = graph_us(lambda: layer.attn(h, batch, rope, kv), runner.device)
            out.append(KernelTime("attention", T, us, 1e6 * max(attn_bytes / bandwidth, attn_flops / matmul)))
    return out
