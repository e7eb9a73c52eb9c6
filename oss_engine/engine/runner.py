"""ModelRunner: owns the model and its KV cache; turns a list of scheduled sequences into one flat varlen
ForwardBatch, runs it, and returns the logits of the rows that need them.

Legend: T tokens in the step, B sequences, N blocks, S block size, K kv-heads, hd head_dim.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..config import EngineConfig
from ..model.build import DTYPES
from ..model.forward_batch import AttentionMetadata, ForwardBatch
from ..model.gpt_oss import GptOssModel


@dataclass(frozen=True)
class ScheduledSeq:
    """One sequence's share of a step: tokens [num_computed, num_computed + num_new) of `token_ids`."""

    token_ids: list[int]
    num_computed: int
    num_new: int
    block_table: list[int]
    all_logits: bool = False  # logits for every new row (prompt logprobs), not just the last


@dataclass(frozen=True)
class StepLogits:
    logits: torch.Tensor  # [R, V] float32
    rows: list[tuple[int, int]]  # per sequence, its logits rows [start, stop) (empty when none needed)


class ModelRunner:
    def __init__(self, cfg: EngineConfig, model: GptOssModel, num_blocks: int, block_size: int):
        self.cfg, self.model = cfg, model
        self.device = torch.device(cfg.device)
        self.block_size = block_size
        m = cfg.model
        shape = (num_blocks, block_size, m.num_key_value_heads, m.head_dim)  # [N, S, K, hd]
        dtype = DTYPES[cfg.dtype]
        self.kv_caches = [(torch.zeros(shape, dtype=dtype, device=self.device),
                           torch.zeros(shape, dtype=dtype, device=self.device)) for _ in range(m.num_hidden_layers)]

    @torch.inference_mode()
    def execute(self, seqs: list[ScheduledSeq]) -> StepLogits:
        batch, rows = self._prepare(seqs)
        hidden = self.model(batch, self.kv_caches)  # [T, D]
        return StepLogits(self.model.compute_logits(hidden[batch.logits_indices]), rows)

    def _prepare(self, seqs: list[ScheduledSeq]) -> tuple[ForwardBatch, list[tuple[int, int]]]:
        S = self.block_size
        ids, pos, slots, qsl, lens, logit_idx, rows = [], [], [], [0], [], [], []
        for s in seqs:
            start, stop = s.num_computed, s.num_computed + s.num_new
            ids += s.token_ids[start:stop]
            pos += range(start, stop)
            slots += [s.block_table[p // S] * S + p % S for p in range(start, stop)]  # e.g. S=16, p=35 -> block 2, row 3
            qsl.append(qsl[-1] + s.num_new)
            lens.append(stop)
            first = len(logit_idx)
            if s.all_logits:
                logit_idx += range(qsl[-2], qsl[-1])
            elif stop == len(s.token_ids):  # caught up: the last row predicts the next token
                logit_idx.append(qsl[-1] - 1)
            rows.append((first, len(logit_idx)))
        width = max(len(s.block_table) for s in seqs)
        tables = [s.block_table + [0] * (width - len(s.block_table)) for s in seqs]
        dev = self.device
        meta = AttentionMetadata(
            query_start_loc=torch.tensor(qsl, dtype=torch.int32, device=dev),
            seq_lens=torch.tensor(lens, dtype=torch.int32, device=dev),
            block_tables=torch.tensor(tables, dtype=torch.int32, device=dev),
            slot_mapping=torch.tensor(slots, dtype=torch.int64, device=dev),
        )
        batch = ForwardBatch(
            input_ids=torch.tensor(ids, dtype=torch.int64, device=dev),
            positions=torch.tensor(pos, dtype=torch.int64, device=dev),
            attention={"full_attention": meta, "sliding_attention": meta},  # one block table for both groups
            logits_indices=torch.tensor(logit_idx, dtype=torch.int64, device=dev),
        )
        return batch, rows
