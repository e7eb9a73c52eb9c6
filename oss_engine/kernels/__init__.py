"""The op table: every compute-heavy step the model takes, chosen once by name: "ref" (torch, float32-exact,
any device) or "triton" (the GPU kernels; "auto" picks it on CUDA).

The model calls only these; the reference table runs the whole model and is what faster tables are tested
against.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Ops:
    name: str
    linear: Callable  # (x [M, K], weight [N, K], bias [N] | None) -> [M, N] in x.dtype
    # (x [T, D] or a RowSum of it, residual [T, D] | None, w [D], eps) -> (normed, x + residual)
    add_rms_norm: Callable
    # (q [T, H, hd], k [T, K, hd], v, cos [T, hd/2], sin, k_cache [N, S, K, hd], v_cache, slot_mapping [T])
    #   -> rotated q [T, H, hd]; the rotated k and v are written to the caches
    rope_store_kv: Callable
    attention: Callable  # (q [T, H, hd], k_cache, v_cache, sinks [H], meta, positions [T], window, scale)
    route: Callable  # (router_logits [T, E], k) -> (weights [T, A], ids [T, A])
    # (x [T, D], weights [T, A], ids [T, A], w1, w2, limit, alpha, defer_sum=False) -> [T, D]; with defer_sum
    # it may return a RowSum instead (types.py: the sum left to the next add_rms_norm, which takes either)
    moe_experts: Callable
    # no op syncs with the host, so a CUDA graph can hold a step (the reference MoE reads routing on the host)
    graph_safe: bool
    # moe_experts reads MXFP4 experts fastest in the tiled layout (weights/tiles.py): the model re-lays them so
    # once they are loaded (ExpertWeight.tiled says which layout a weight is in; every kernel takes both)
    tiled_experts: bool = False
    # the model asks moe_experts for its rows unsummed (defer_sum) wherever its output goes straight into the next
    # layer's add_rms_norm (no MoE communication, the next layer on the same stage): one kernel fewer a layer
    defer_moe_sum: bool = False


def resolve_kernels(name: str, device: str) -> str:
    if name == "auto":
        return "triton" if device.startswith("cuda") else "ref"
    if name not in ("ref", "triton"):
        from ..config import ConfigError

        raise ConfigError(f"kernels must be 'auto', 'ref' or 'triton', got {name!r}")
    return name


def get_ops(name: str) -> Ops:
    if name == "triton":
        from .triton.attention import paged_attention_triton
        from .triton.gemv import linear_triton
        from .triton.moe import moe_experts_triton
        from .triton.moe_decode import moe_experts_decode_triton, use_decode_path
        from .triton.norm import add_rms_norm_triton
        from .triton.rope import rope_store_kv_triton
        from .triton.route import route_triton

        def attention(q, k_cache, v_cache, sinks, meta, positions, window, scale):
            return paged_attention_triton(q, k_cache, v_cache, sinks, meta, positions, window, scale,
                                          max_query_len=meta.max_query_len)

        def moe_experts(x, weights, ids, w1, w2, limit, alpha, defer_sum=False):
            if use_decode_path(ids.numel(), w1.bias.shape[0]):  # a few tokens: per-pair streaming
                return moe_experts_decode_triton(x, weights, ids, w1, w2, limit, alpha, defer_sum=defer_sum)
            return moe_experts_triton(x, weights, ids, w1, w2, limit, alpha, defer_sum=defer_sum)

        return Ops("triton", linear_triton, add_rms_norm_triton, rope_store_kv_triton, attention, route_triton,
                   moe_experts, graph_safe=True,
                   # both on since the twenty-sixth session's H100 A/B (docs/performance.md), 20b against both off:
                   # decode 509-510 -> 526-529 tok/s at batch 1, 1,649 -> 1,748-1,752 at 8, 8,503 -> 8,941-8,950 at
                   # 64; 2k prefill 77.5k-77.6k -> 76.9k (the tiled dequantization now at the standard one's speed)
                   tiled_experts=True,
                   defer_moe_sum=True)
    if name == "ref":
        from .ref.attention import paged_attention_ref
        from .ref.linear import linear_ref
        from .ref.moe import moe_experts_ref, route_ref
        from .ref.norm import add_rms_norm_ref
        from .ref.rope import rope_store_kv_ref

        return Ops("ref", linear_ref, add_rms_norm_ref, rope_store_kv_ref, paged_attention_ref, route_ref,
                   moe_experts_ref, graph_safe=False)
    raise ValueError(f"unknown kernel table {name!r} (available: 'ref', 'triton')")
