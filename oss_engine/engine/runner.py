"""ModelRunner: owns the model and the KV cache tensors; turns a step's scheduled sequences into one flat
varlen ForwardBatch, runs it, and returns the logits of the rows that need them.

Legend: T tokens in the step, B sequences, N blocks of a cache group, S block size, K kv-heads, hd head_dim.
Each cache group ("full_attention", "sliding_attention") has its own block pool; a layer's KV tensors are
[N_group + 1, S, K, hd], indexed by the block ids of its group's block tables. The extra last block is the
pad block, never handed out by the KV manager: CUDA-graph padding rows write and read only it.

On CUDA (unless `enforce_eager`, or an op table that syncs with the host: `Ops.graph_safe`), decode steps replay
CUDA graphs (engine/cuda_graphs.py); other steps run eagerly.

Device-resident input ids (async scheduling): a sequence may be scheduled for the token the previous step
sampled before the host has read it (`ScheduledSeq.pending_row` >= 0, the token sits one past `token_ids`);
`execute` then takes that input id from `prev_tokens[pending_row]` on the device.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass

import torch

from ..config import EngineConfig
from ..model.build import DTYPES
from ..model.forward_batch import AttentionMetadata, ForwardBatch
from ..model.gpt_oss import GptOssModel
from ..parallel.shard import RankShard
from .cuda_graphs import DecodeGraphs, DecodeRow


@dataclass(frozen=True)
class ScheduledSeq:
    """One sequence's share of a step: tokens [num_computed, num_computed + num_new) of `token_ids`."""

    token_ids: list[int]
    num_computed: int
    num_new: int
    block_tables: dict[str, list[int]]  # per cache group, logical block -> physical block
    all_logits: bool = False  # logits for every new row (prompt logprobs), not just the last
    pending_row: int = -1  # >= 0: the input id at position num_computed is prev_tokens[pending_row] (device)


@dataclass(frozen=True)
class StepLogits:
    logits: torch.Tensor  # [R, V] float32
    rows: list[tuple[int, int]]  # per sequence, its logits rows [start, stop) (empty when none needed)


def kv_bytes_per_block(cfg: EngineConfig, group: str, shard: RankShard | None = None) -> int:
    """Bytes of one block of `group` on the rank of `shard` (its stage's layers, its kv heads)."""
    m, shard = cfg.model, shard or RankShard.full(cfg.model)
    layers = sum(1 for i in range(*shard.layers) if m.layer_types[i] == group)
    return 2 * layers * cfg.cache.block_size * shard.num_kv_heads * m.head_dim * DTYPES[cfg.dtype].itemsize


class ModelRunner:
    supports_device_tokens = True  # execute takes prev_tokens (async scheduling)

    def __init__(self, cfg: EngineConfig, model: GptOssModel, num_blocks: dict[str, int],
                 capture_graphs: bool = True):
        self.cfg, self.model = cfg, model
        self.device = torch.device(cfg.device)
        self.block_size = cfg.cache.block_size
        self.groups = sorted(num_blocks)
        m, dtype, shard = cfg.model, DTYPES[cfg.dtype], model.shard
        self.pad_block = {g: num_blocks[g] for g in self.groups}  # one past the pool
        self.kv_caches = []  # the layers of this pipeline stage, this rank's kv heads
        for layer_type in m.layer_types[shard.layers[0]:shard.layers[1]]:
            shape = (num_blocks[layer_type] + 1, self.block_size, shard.num_kv_heads, m.head_dim)  # [N+1, S, K, hd]
            # zeros, not empty: placeholder blocks are read (then masked) and must hold finite values
            self.kv_caches.append((torch.zeros(shape, dtype=dtype, device=self.device),
                                   torch.zeros(shape, dtype=dtype, device=self.device)))
        self.graphs: DecodeGraphs | None = None
        if self.device.type == "cuda" and not cfg.enforce_eager and capture_graphs and model.ops.graph_safe:
            max_blocks = -(-cfg.max_model_len // self.block_size)
            self.graphs = DecodeGraphs(model, self.kv_caches, self.groups, self.pad_block, self.block_size,
                                       max_blocks, cfg.scheduler.max_num_seqs, self.device)
            self.graphs.capture()

    def _graph_rows(self, seqs: list[ScheduledSeq]) -> list[DecodeRow] | None:
        """The step as decode rows when a graph can run it (one new token each, logits of that token only)."""
        if self.graphs is None or len(seqs) > self.graphs.max_batch:
            return None
        rows = []
        for s in seqs:
            last = len(s.token_ids) if s.pending_row >= 0 else len(s.token_ids) - 1  # the new token's position
            if s.num_new != 1 or s.all_logits or s.num_computed != last:
                return None
            token = 0 if s.pending_row >= 0 else s.token_ids[s.num_computed]
            rows.append(DecodeRow(token, s.num_computed, s.block_tables, s.pending_row))
        return rows

    @torch.inference_mode()
    def execute(self, seqs: list[ScheduledSeq], prev_tokens: torch.Tensor | None = None) -> StepLogits:
        """The step's logits; on the graph path a view valid until the next execute. `prev_tokens` [n] int64 on
        the device: the previous step's sampled ids, read by rows with `pending_row` >= 0."""
        rows = self._graph_rows(seqs)
        if rows is not None:
            return StepLogits(self.graphs.run(rows, prev_tokens), [(i, i + 1) for i in range(len(rows))])
        batch, rows = self.prepare(seqs, prev_tokens)
        hidden = self.model.final_hidden(self.model(batch, self.kv_caches))  # [T, D]
        return StepLogits(self.model.compute_logits(hidden[batch.logits_indices]), rows)

    def prepare(self, seqs: list[ScheduledSeq], prev_tokens: torch.Tensor | None = None
                ) -> tuple[ForwardBatch, list[tuple[int, int]]]:
        """An eager step's batch: `build_forward_batch` on this runner's cache groups and device."""
        return build_forward_batch(seqs, self.groups, self.block_size, self.device, prev_tokens)


def build_forward_batch(seqs: list[ScheduledSeq], groups: list[str], block_size: int, device: torch.device,
                        prev_tokens: torch.Tensor | None = None) -> tuple[ForwardBatch, list[tuple[int, int]]]:
    """The step's sequences -> its ForwardBatch on `device` and, per sequence, its logits rows [start, stop).

    Host side: lists extended at C speed (slices, ranges, repeats; no per-token Python loop), packed into
    one int64 array and copied to the device once, from pinned memory (`_to_device`); the slots are
    formed there. One tensor a field from a Python list cost a synchronous pageable copy each: the GPU sat
    idle for ~10 ms of a 16,384-token prefill step building them (docs/performance.md)."""
    ids, pos, owner, logit_idx, rows = [], [], [], [], []
    qsl, lens = [0], []
    dst, src = [], []  # rows of ids filled on the device from prev_tokens
    for b, s in enumerate(seqs):
        start, stop = s.num_computed, s.num_computed + s.num_new
        if s.pending_row >= 0:  # the one new token is not on the host yet
            dst.append(len(ids))
            src.append(s.pending_row)
            ids.append(0)
        else:
            ids += s.token_ids[start:stop]
        pos += range(start, stop)
        owner += [b] * s.num_new
        qsl.append(qsl[-1] + s.num_new)
        lens.append(stop)
        first = len(logit_idx)
        if s.all_logits:
            logit_idx += range(qsl[-2], qsl[-1])
        elif stop == len(s.token_ids) or s.pending_row >= 0:  # caught up: the last row predicts the next
            logit_idx.append(qsl[-1] - 1)
        rows.append((first, len(logit_idx)))
    T, B, R, n = len(ids), len(seqs), len(logit_idx), len(dst)
    # one int64 array: ids, positions, owner [T]; logits rows [R]; qsl [B + 1]; seq_lens [B]; dst, src [n];
    # then per group its block tables [B, width], each row padded with block 0
    buf = array("q", ids)
    for part in (pos, owner, logit_idx, qsl, lens, dst, src):
        buf.extend(part)
    widths = {}
    for g in groups:
        widths[g] = max((len(s.block_tables[g]) for s in seqs), default=0)  # no seqs: an empty micro-batch
        for s in seqs:
            table = s.block_tables[g]
            buf.extend(table)
            buf.extend([0] * (widths[g] - len(table)))
    staged = _to_device(buf, device)
    input_ids, positions, owner_d, logits_indices, qsl_d, lens_d, dst_d, src_d, *flat_tables = staged.split(
        [T, T, T, R, B + 1, B, n, n] + [B * widths[g] for g in groups])  # views
    if n:
        input_ids[dst_d] = prev_tokens[src_d]
    qsl_d, lens_d = qsl_d.to(torch.int32), lens_d.to(torch.int32)
    attention = {}
    max_query_len = max((s.num_new for s in seqs), default=0)
    for g, flat in zip(groups, flat_tables):
        tables = flat.view(B, widths[g])  # [B, width] int64
        # token t at position p lives in block tables[owner[t], p // S], row p % S; e.g. S = 16, p = 35 ->
        # block tables[b, 2], slot tables[b, 2] * 16 + 3
        slots = tables[owner_d, positions // block_size] * block_size + positions % block_size
        attention[g] = AttentionMetadata(query_start_loc=qsl_d, seq_lens=lens_d,
                                         block_tables=tables.to(torch.int32), slot_mapping=slots,
                                         max_query_len=max_query_len)
    return ForwardBatch(input_ids=input_ids, positions=positions, attention=attention,
                        logits_indices=logits_indices), rows


def _to_device(buf: array, device: torch.device) -> torch.Tensor:
    """An int64 host array -> a device tensor: one copy, asynchronous from pinned memory on CUDA."""
    staged = torch.frombuffer(buf, dtype=torch.int64) if len(buf) else torch.empty(0, dtype=torch.int64)
    if device.type == "cuda":
        return staged.pin_memory().to(device, non_blocking=True)
    return staged.clone()  # torch.frombuffer shares the array's memory
