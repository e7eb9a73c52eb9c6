"""The shard step: a rule name (from the name table) -> the region of a checkpoint tensor one rank reads.

Regions are in our layout's dims (after the format's convert; formats.stored_dim maps them back to the
file's). Legend: H q-heads, K kv-heads, hd head_dim, V vocab, E experts, I intermediate, D hidden. Worked
example, tp 2 on a model with H 4, K 2, hd 32, I 96 (3 blocks of 32): rank 1 reads q_proj rows [64, 128),
k_proj and v_proj rows [32, 64), o_proj columns [64, 128), sinks [2, 4); gate_up rows [128, 192) of every
expert (its intermediate columns [64, 96), gate and up interleaved, so twice the range) and down_proj
columns [64, 96) (MXFP4: block columns [2, 3)); and zeros for o_proj's and down_proj's biases, which rank 0
adds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..config import MXFP4_BLOCK, ModelConfig
from ..parallel.shard import RankShard


@dataclass(frozen=True)
class Region:
    """dims[d] = (start, stop, full): read [start, stop) of dim d, whose whole size must be `full`; dims
    not named are read whole. `zero`: this rank's copy is zeros (the tensor is added on another rank)."""

    dims: dict[int, tuple[int, int, int]]
    zero: bool = False


def _replicated(cfg: ModelConfig, s: RankShard, part: str | None) -> Region:
    return Region({})


def _heads(cfg: ModelConfig, s: RankShard, part: str | None) -> Region:
    hd = cfg.head_dim
    (h0, h1), full = (s.heads, cfg.num_attention_heads) if part == "q" else (s.kv_heads, cfg.num_key_value_heads)
    return Region({0: (h0 * hd, h1 * hd, full * hd)})


def _head_columns(cfg: ModelConfig, s: RankShard, part: str | None) -> Region:
    hd = cfg.head_dim
    return Region({1: (s.heads[0] * hd, s.heads[1] * hd, cfg.num_attention_heads * hd)})


def _sinks(cfg: ModelConfig, s: RankShard, part: str | None) -> Region:
    return Region({0: (*s.heads, cfg.num_attention_heads)})


def _row_bias(cfg: ModelConfig, s: RankShard, part: str | None) -> Region:
    return Region({}, zero=not s.owns_row_bias)


def _vocab(cfg: ModelConfig, s: RankShard, part: str | None) -> Region:
    return Region({0: (*s.vocab, cfg.vocab_size)})


def _experts(cfg: ModelConfig, s: RankShard) -> dict[int, tuple[int, int, int]]:
    return {0: (*s.experts, cfg.num_local_experts)}


def _expert_rows(cfg: ModelConfig, s: RankShard, part: str | None) -> Region:
    """w1 [E, 2I, ...]: rows [2 i0, 2 i1) hold intermediate columns [i0, i1) (gate even, up odd)."""
    i0, i1 = s.intermediate
    return Region({**_experts(cfg, s), 1: (2 * i0, 2 * i1, 2 * cfg.intermediate_size)})


def _expert_columns(cfg: ModelConfig, s: RankShard, part: str | None) -> Region:
    """dense w2 [E, D, I]: columns [i0, i1)."""
    return Region({**_experts(cfg, s), 2: (*s.intermediate, cfg.intermediate_size)})


def _expert_block_columns(cfg: ModelConfig, s: RankShard, part: str | None) -> Region:
    """MXFP4 w2 blocks [E, D, I/32, 16] and scales [E, D, I/32]: block columns [i0/32, i1/32)."""
    i0, i1 = s.intermediate
    return Region({**_experts(cfg, s), 2: (i0 // MXFP4_BLOCK, i1 // MXFP4_BLOCK, cfg.intermediate_size // MXFP4_BLOCK)})


def _expert_bias(cfg: ModelConfig, s: RankShard, part: str | None) -> Region:
    return Region(_experts(cfg, s), zero=not s.owns_expert_bias)


SHARDS: dict[str, Callable[[ModelConfig, RankShard, str | None], Region]] = {
    "replicated": _replicated,
    "heads": _heads,
    "head_columns": _head_columns,
    "sinks": _sinks,
    "row_bias": _row_bias,
    "vocab": _vocab,
    "expert_rows": _expert_rows,
    "expert_columns": _expert_columns,
    "expert_block_columns": _expert_block_columns,
    "expert_bias": _expert_bias,
}
