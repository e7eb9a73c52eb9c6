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
    rms_norm: Callable  # (x [T, D], w [D], eps) -> [T, D]
    add_rms_norm: Callable  # (x [T, D], residual [T, D] | None, w [D], eps) -> (normed, x + residual)
    apply_rope: Callable  # (x [T, N, hd], cos [T, hd/2], sin [T, hd/2]) -> [T, N, hd]
    store_kv: Callable  # (k [T, K, hd], v, k_cache [N, S, K, hd], v_cache, slot_mapping [T]) -> None
    attention: Callable  # (q [T, H, hd], k_cache, v_cache, sinks [H], meta, positions [T], window, scale)
    route: Callable  # (router_logits [T, E], k) -> (weights [T, A], ids [T, A])
    moe_experts: Callable  # (x [T, D], weights [T, A], ids [T, A], w1, w2, limit, alpha) -> [T, D]


def get_ops(name: str) -> Ops:
    if name == "ref":
        from .ref.attention import paged_attention_ref, store_kv_ref
        from .ref.moe import moe_experts_ref, route_ref
        from .ref.norm import add_rms_norm_ref, rms_norm_ref
        from .ref.rope import apply_rope_ref

        return Ops("ref", rms_norm_ref, add_rms_norm_ref, apply_rope_ref, store_kv_ref, paged_attention_ref, route_ref,
                   moe_experts_ref)
    raise ValueError(f"unknown kernel table {name!r} (available: 'ref')")
