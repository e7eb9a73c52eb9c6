"""CUDA graphs for decode steps: one graph per batch-size bucket, replayed with padding.

Legend: B sequences in the step (one new token each), P the bucket (padded batch), W block-table width
(max_model_len / S blocks), V vocabulary, S block size.

A decode step (every sequence computes exactly one token and needs its logits) of B <= the largest bucket
runs as the graph of the smallest bucket P >= B. The graph reads static input buffers and writes static
logits [P, V]; a step copies its inputs into the buffers' first rows (one host-to-device copy of one flat
int64 staging array, then device-side copies into the buffers), replays, and returns the first B logits
rows: a view that stays valid until the next step.

Padding rows (B..P-1) are sequences of one token at position 0 whose block table points at the runner's pad
block (one block past the KV manager's pool, never handed out): they write their K/V there and read only it.
The query_start_loc of a decode step is always 0..P (one token each), so it is static.

Block tables: row b holds the step's blocks in its first columns; columns past a sequence's last block keep
stale ids from earlier steps, which is safe because attention never reads past seq_len. The width W fixed at
capture is what `paged_attention_triton` sizes its key splits for.
"""

from __future__ import annotations

import logging
from array import array
from dataclasses import dataclass

import torch

from ..model.forward_batch import AttentionMetadata, ForwardBatch

log = logging.getLogger(__name__)


def bucket_sizes(max_num_seqs: int, largest: int = 512) -> list[int]:
    """1, 2, 4, 8, 16, then steps of 16 up to max_num_seqs (capped at `largest`); vLLM's ladder, coarser."""
    top = min(max_num_seqs, largest)
    sizes = [s for s in (1, 2, 4, 8) if s < top] + list(range(16, top, 16)) + [top]
    return sorted(set(sizes))


@dataclass(frozen=True)
class DecodeRow:
    """What a decode step needs of one sequence."""

    token: int
    position: int
    block_tables: dict[str, list[int]]  # per cache group
    src: int = -1  # >= 0: the token is prev_tokens[src] on the device (async scheduling), `token` unused


class DecodeGraphs:
    def __init__(self, model, kv_caches, groups: list[str], pad_block: dict[str, int], block_size: int,
                 max_blocks: int, max_num_seqs: int, device: torch.device):
        self.model, self.kv_caches, self.groups, self.device = model, kv_caches, groups, device
        self.pad_block, self.S, self.W = pad_block, block_size, max_blocks
        self.sizes = bucket_sizes(max_num_seqs)
        P = self.sizes[-1]
        i32 = dict(dtype=torch.int32, device=device)
        self.input_ids = torch.zeros(P, dtype=torch.int64, device=device)
        self.positions = torch.zeros(P, dtype=torch.int64, device=device)
        self.qsl = torch.arange(P + 1, **i32)  # static: one token per sequence
        self.seq_lens = {g: torch.ones(P, **i32) for g in groups}
        self.slots = {g: torch.full((P,), pad_block[g] * block_size, dtype=torch.int64, device=device)
                      for g in groups}
        self.tables = {g: torch.full((P, max_blocks), pad_block[g], **i32) for g in groups}
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.logits: dict[int, torch.Tensor] = {}

    @property
    def max_batch(self) -> int:
        return self.sizes[-1]

    def _batch(self, P: int) -> ForwardBatch:
        attention = {g: AttentionMetadata(self.qsl[:P + 1], self.seq_lens[g][:P], self.tables[g][:P],
                                          self.slots[g][:P], max_query_len=1) for g in self.groups}
        return ForwardBatch(self.input_ids[:P], self.positions[:P], attention, torch.arange(P, device=self.device))

    def _forward(self, P: int) -> torch.Tensor:
        batch = self._batch(P)
        return self.model.compute_logits(self.model.final_hidden(self.model(batch, self.kv_caches)))  # [P, V]

    @torch.inference_mode()
    def capture(self) -> None:
        """Warm up (compiles the kernels) and capture every bucket, largest first, in one memory pool."""
        pool = None
        free_before = torch.cuda.mem_get_info(self.device)[0]
        for P in reversed(self.sizes):
            self._forward(P)  # eager warm-up on pad rows
            torch.cuda.synchronize(self.device)
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g, pool=pool):
                self.logits[P] = self._forward(P)
            pool = g.pool()
            self.graphs[P] = g
        torch.cuda.synchronize(self.device)
        used = free_before - torch.cuda.mem_get_info(self.device)[0]
        log.info("captured %d decode CUDA graphs (batch %s), %.0f MiB", len(self.sizes),
                 ",".join(map(str, self.sizes)), used / 2**20)

    def bucket(self, batch: int) -> int:
        return next(P for P in self.sizes if P >= batch)

    def run(self, rows: list[DecodeRow], prev_tokens: torch.Tensor | None = None) -> torch.Tensor:
        """Replay the bucket graph for these rows -> logits [B, V] float32 (valid until the next run).
        Rows with src >= 0 take their token from prev_tokens[src] (a device tensor)."""
        B = len(rows)
        P = self.bucket(B)
        host, layout = self._stage(rows, P)
        # one host-to-device copy, from pinned memory so that it never waits for the GPU (async scheduling
        # launches this step while the previous one still runs)
        staged = torch.frombuffer(host, dtype=torch.int64)
        if self.device.type == "cuda":
            staged = staged.pin_memory()
        staged = staged.to(self.device, non_blocking=True)
        self.input_ids[:P].copy_(staged[0:P])
        if any(r.src >= 0 for r in rows):
            at = layout[-1][0] + 2 * P + P * layout[-1][1]  # the src segment follows the last group
            src = staged[at:at + P]
            self.input_ids[:P].copy_(torch.where(src >= 0, prev_tokens[src.clamp(min=0)], self.input_ids[:P]))
        self.positions[:P].copy_(staged[P:2 * P])
        for g, (at, width) in zip(self.groups, layout):
            self.seq_lens[g][:P].copy_(staged[at:at + P])  # int64 -> int32 on the device
            self.slots[g][:P].copy_(staged[at + P:at + 2 * P])
            self.tables[g][:P, :width].copy_(staged[at + 2 * P:at + 2 * P + P * width].view(P, width))
        self.graphs[P].replay()
        return self.logits[P][:B]

    def _stage(self, rows: list[DecodeRow], P: int) -> tuple[array, list[tuple[int, int]]]:
        """The step's inputs as one flat int64 array: ids [P], positions [P], then per group seq_lens [P],
        slots [P], block table [P, width], then src [P] (-1: the token is in ids); and per group (offset,
        width). Rows B..P-1 are padding."""
        S, pad = self.S, P - len(rows)
        buf = array("q", [r.token for r in rows])
        buf.extend([0] * pad)
        buf.extend([r.position for r in rows])
        buf.extend([0] * pad)
        layout = []
        for g in self.groups:
            pb = self.pad_block[g]
            tables = [r.block_tables[g] for r in rows]
            width = max(map(len, tables))
            layout.append((len(buf), width))
            buf.extend([r.position + 1 for r in rows])
            buf.extend([1] * pad)
            buf.extend([t[r.position // S] * S + r.position % S for t, r in zip(tables, rows)])
            buf.extend([pb * S] * pad)
            for t in tables:
                buf.extend(t)
                buf.extend([pb] * (width - len(t)))
            buf.extend([pb] * (width * pad))
        buf.extend([r.src for r in rows])
        buf.extend([-1] * pad)
        return buf, layout
