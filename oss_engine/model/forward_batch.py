"""The per-step batch description, passed explicitly to the model (no global forward context).

Legend: T tokens in the step (all sequences' new tokens, concatenated), B sequences, R rows needing logits.
Worked example: two sequences, one prefilling 3 tokens at positions 0..2 and one decoding its 6th token:
input_ids = [a0, a1, a2, b5], positions = [0, 1, 2, 5], query_start_loc = [0, 3, 4], seq_lens = [3, 6].
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class AttentionMetadata:
    """One KV-cache group's view of the step (full-attention and sliding layers may page differently)."""

    query_start_loc: torch.Tensor  # [B + 1] int32: sequence b's new tokens are rows [qsl[b], qsl[b+1])
    seq_lens: torch.Tensor  # [B] int32: keys in context after this step (already computed + new)
    block_tables: torch.Tensor  # [B, max_blocks] int32: key j of sequence b lives in block [b, j // S]
    slot_mapping: torch.Tensor  # [T] int64: cache slot (block * S + row) for each new token's K/V
    max_query_len: int | None = None  # most new tokens of any sequence, known on the host (steers tiles only)


@dataclass(frozen=True)
class ForwardBatch:
    input_ids: torch.Tensor  # [T] int64
    positions: torch.Tensor  # [T] int64, absolute position of each token in its sequence
    attention: dict[str, AttentionMetadata]  # by layer type ("full_attention", "sliding_attention")
    logits_indices: torch.Tensor  # [R] int64: rows of the hidden states that need logits
    # Data parallel: T of every replica's batch in this lock-step (this one's included), which the MoE's
    # token gather needs; None on a single replica.
    dp_tokens: tuple[int, ...] | None = None

    @property
    def num_tokens(self) -> int:
        return self.input_ids.shape[0]
