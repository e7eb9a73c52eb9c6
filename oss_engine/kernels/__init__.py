"""The op table: every compute-heavy step the model takes, chosen once by name ("ref" now; "triton" later).

The model calls only these; the reference table runs the whole model and is what faster tables are tested
against.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Ops:
    name: str
    add_rms_norm: Callable  # (x [T, D], residual [T, D] | None, w [D], eps) -> (normed, x + residual)
    # (q [T, H, hd], k [T, K, hd], v, cos [T, hd/2], sin, k_cache [N, S, K, hd], v_cache, slot_mapping [T])
    #   -> rotated q [T, H, hd]; the rotated k and v are written to the caches
    rope_store_kv: Callable
    attention: Callable  # (q [T, H, hd], k_cache, v_cache, sinks [H], meta, positions [T], window, scale)
    route: Callable  # (router_logits [T, E], k) -> (weights [T, A], ids [T, A])
    moe_experts: Callable  # (x [T, D], weights [T, A], ids [T, A], w1, w2, limit, alpha) -> [T, D]


def get_ops(name: str) -> Ops:
    if name == "ref":
        from .ref.attention import paged_attention_ref
        from .ref.moe import moe_experts_ref, route_ref
        from .ref.norm import add_rms_norm_ref
        from .ref.rope import rope_store_kv_ref

        return Ops("ref", add_rms_norm_ref, rope_store_kv_ref, paged_attention_ref, route_ref, moe_experts_ref)
    raise ValueError(f"unknown kernel table {name!r} (available: 'ref')")
