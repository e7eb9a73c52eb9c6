"""runner.build_forward_batch (the eager steps' ForwardBatch) against a per-token Python twin written from
ForwardBatch's contract: ids, positions, query_start_loc, seq_lens, padded block tables and slots per cache
group, logits rows, and input ids taken on the device from the previous step's samples (pending rows)."""

from __future__ import annotations

import pytest
import torch

from oss_engine.engine.runner import ScheduledSeq, build_forward_batch

GROUPS = ["full_attention", "sliding_attention"]
S = 4  # block size


def twin(seqs: list[ScheduledSeq], prev: list[int] | None) -> dict:
    """What the batch must hold, one token at a time."""
    ids, pos, qsl, lens, logits, rows = [], [], [0], [], [], []
    slots = {g: [] for g in GROUPS}
    for s in seqs:
        for p in range(s.num_computed, s.num_computed + s.num_new):
            ids.append(prev[s.pending_row] if s.pending_row >= 0 else s.token_ids[p])
            pos.append(p)
            for g in GROUPS:  # position p: block table[p // S], row p % S
                slots[g].append(s.block_tables[g][p // S] * S + p % S)
        qsl.append(qsl[-1] + s.num_new)
        lens.append(s.num_computed + s.num_new)
        first = len(logits)
        if s.all_logits:
            logits += range(qsl[-2], qsl[-1])
        elif s.pending_row >= 0 or s.num_computed + s.num_new == len(s.token_ids):
            logits.append(qsl[-1] - 1)
        rows.append((first, len(logits)))
    tables = {}
    for g in GROUPS:
        width = max((len(s.block_tables[g]) for s in seqs), default=0)
        tables[g] = [s.block_tables[g] + [0] * (width - len(s.block_tables[g])) for s in seqs]
    return dict(ids=ids, pos=pos, qsl=qsl, lens=lens, logits=logits, rows=rows, slots=slots, tables=tables)


def check(seqs: list[ScheduledSeq], prev: list[int] | None = None) -> None:
    prev_t = None if prev is None else torch.tensor(prev, dtype=torch.int64)
    batch, rows = build_forward_batch(seqs, GROUPS, S, torch.device("cpu"), prev_t)
    want = twin(seqs, prev)
    assert rows == want["rows"]
    assert batch.input_ids.tolist() == want["ids"] and batch.input_ids.dtype == torch.int64
    assert batch.positions.tolist() == want["pos"] and batch.positions.dtype == torch.int64
    assert batch.logits_indices.tolist() == want["logits"]
    for g in GROUPS:
        meta = batch.attention[g]
        assert meta.query_start_loc.tolist() == want["qsl"] and meta.query_start_loc.dtype == torch.int32
        assert meta.seq_lens.tolist() == want["lens"] and meta.seq_lens.dtype == torch.int32
        width = len(want["tables"][g][0]) if seqs else 0
        assert meta.block_tables.dtype == torch.int32 and meta.block_tables.shape == (len(seqs), width)
        assert meta.block_tables.tolist() == want["tables"][g]
        assert meta.slot_mapping.tolist() == want["slots"][g] and meta.slot_mapping.dtype == torch.int64
        assert meta.max_query_len == max((s.num_new for s in seqs), default=0)


def seq(n_tokens: int, computed: int, new: int, full: list[int], sliding: list[int], **kw) -> ScheduledSeq:
    return ScheduledSeq(list(range(1000, 1000 + n_tokens)), computed, new,
                        {"full_attention": full, "sliding_attention": sliding}, **kw)


def test_prefill_chunk_decode_and_all_logits():
    """A whole prompt (its last row predicts), a middle chunk (no logits), a decode row, prompt logprobs; the
    sliding table holds placeholder block 0 before the window, and the tables have different widths."""
    check([
        seq(7, 0, 7, [5, 9], [3, 4]),  # positions 0..6: blocks 5, 9 (full) and 3, 4 (sliding)
        seq(20, 4, 8, [1, 2, 7], [0, 6, 8]),  # a chunk: positions 4..11 of 20, no logits row
        seq(10, 9, 1, [11, 12, 13], [0, 0, 14]),  # decode of position 9
        seq(3, 0, 3, [15], [16], all_logits=True),
    ])


@pytest.mark.parametrize("pending", [[0], [1, 0]])
def test_pending_rows_take_the_previous_samples(pending):
    """Async scheduling: a row whose input id is still on the device reads prev_tokens[pending_row]."""
    seqs = [seq(5, 5, 1, [2, 3], [2, 3], pending_row=pending[0]), seq(4, 0, 4, [6], [7])]
    if len(pending) > 1:
        seqs.append(seq(9, 9, 1, [8, 10, 17], [0, 1, 18], pending_row=pending[1]))
    check(seqs, prev=[77, 88])


def test_empty_step():
    """No sequences (an idle micro-batch of a parallel step): empty tensors of the right kinds."""
    check([])
