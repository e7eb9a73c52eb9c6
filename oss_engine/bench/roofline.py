"""The byte and FLOP floors the benchmark reports against (PERFORMANCE.md's arithmetic, from a ModelConfig).

A decode step of B sequences at context C reads every weight it uses once: attention (bf16), the distinct
experts its B x A routing choices touch (uniform routing: E * (1 - (1 - A/E)^B) per layer), the lm_head (bf16),
B embedding rows, and the KV of every sequence (2 x K x hd x 2 bytes per token per layer; full layers read C
tokens, sliding layers min(C, window)). Worked example, gpt-oss-20b, B = 1, C = 1024: attention 24 x 53.1 MB,
experts 24 x 4 x 13.2 MB, lm_head 1.16 GB, KV 24 KiB x (12 x 1024 + 12 x 128) = 28 MB: 3.74 GB a token.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import LAYER_SLIDING, ModelConfig

BF16 = 2
MXFP4_BYTES_PER_WEIGHT = 4.25 / 8  # 4-bit values plus one 8-bit scale per 32


@dataclass(frozen=True)
class StepBytes:
    attention: float
    experts: float
    other: float  # lm_head, embedding rows, norms, routers
    kv: float

    @property
    def total(self) -> float:
        return self.attention + self.experts + self.other + self.kv


def attention_weight_bytes(m: ModelConfig) -> float:
    """One layer's q/k/v/o weights and biases and sinks, bf16."""
    H, K, hd, D = m.num_attention_heads, m.num_key_value_heads, m.head_dim, m.hidden_size
    qkv = D * (H + 2 * K) * hd + (H + 2 * K) * hd
    o = H * hd * D + D
    return (qkv + o + H) * BF16


def expert_weight_bytes(m: ModelConfig) -> float:
    """One expert's gate_up and down weights (MXFP4 or bf16 by the checkpoint) and biases."""
    D, I = m.hidden_size, m.intermediate_size
    per_weight = MXFP4_BYTES_PER_WEIGHT if m.weight_format == "mxfp4" else BF16
    return 3 * D * I * per_weight + (2 * I + D) * BF16


def experts_touched(m: ModelConfig, tokens: int) -> float:
    """Expected distinct experts per layer for `tokens` tokens routed uniformly, top-A of E."""
    E, A = m.num_local_experts, m.num_experts_per_tok
    return E * (1 - (1 - A / E) ** tokens)


def kv_bytes_per_token_layer(m: ModelConfig) -> float:
    return 2 * m.num_key_value_heads * m.head_dim * BF16


def decode_step_bytes(m: ModelConfig, batch: int, context: int) -> StepBytes:
    L, D, E, V = m.num_hidden_layers, m.hidden_size, m.num_local_experts, m.vocab_size
    sliding = sum(1 for t in m.layer_types if t == LAYER_SLIDING)
    kv_tokens = (L - sliding) * context + sliding * min(context, m.sliding_window or context)
    other = V * D * BF16 + batch * D * BF16 + L * (2 * D * 4 + (D * E + E) * BF16) + D * 4
    return StepBytes(attention=L * attention_weight_bytes(m),
                     experts=L * experts_touched(m, batch) * expert_weight_bytes(m),
                     other=other, kv=batch * kv_tokens * kv_bytes_per_token_layer(m))


def decode_limit_tok_s(m: ModelConfig, batch: int, context: int, bandwidth: float) -> float:
    """Tokens a second if a step took exactly its bytes / bandwidth (bytes a second)."""
    return batch * bandwidth / decode_step_bytes(m, batch, context).total


def prefill_flops_per_token(m: ModelConfig, prompt_len: int) -> float:
    """2 x active parameters (matmuls) plus attention scores and values: 4 x H x hd x visible keys, averaged
    over a causal prompt (full layers see (n + 1) / 2 keys on average, sliding layers at most the window).
    The lm_head runs for the last token of a prompt only, so it is left out."""
    H, K, hd, D, I = m.num_attention_heads, m.num_key_value_heads, m.head_dim, m.hidden_size, m.intermediate_size
    L, A, E = m.num_hidden_layers, m.num_experts_per_tok, m.num_local_experts
    per_layer = D * (H + 2 * K) * hd + H * hd * D + D * E + A * 3 * D * I
    sliding = sum(1 for t in m.layer_types if t == LAYER_SLIDING)
    avg_full = (prompt_len + 1) / 2
    avg_sliding = min(avg_full, m.sliding_window or avg_full)
    attn = 4 * H * hd * ((L - sliding) * avg_full + sliding * avg_sliding)
    return 2 * L * per_layer + attn
