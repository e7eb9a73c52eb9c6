"""DecodeGraphs' host side on the CPU: the bucket ladder, and a step's staging into the static buffers (ids,
positions, seq_lens, slots, block tables, padding rows pointing at the pad block). The capture and replay
themselves run on the GPU (tests/engine/test_engine_gpu.py)."""

from __future__ import annotations

import torch

from oss_engine.engine.cuda_graphs import DecodeGraphs, DecodeRow, bucket_sizes

GROUPS = ["full_attention", "sliding_attention"]
PAD = {"full_attention": 50, "sliding_attention": 20}


class FakeGraph:
    def __init__(self):
        self.replays = 0

    def replay(self):
        self.replays += 1


def graphs(max_num_seqs: int) -> DecodeGraphs:
    g = DecodeGraphs(None, None, GROUPS, PAD, block_size=4, max_blocks=8, max_num_seqs=max_num_seqs,
                     device=torch.device("cpu"))
    for P in g.sizes:  # stand-ins for the captured graphs and their static logits
        g.graphs[P], g.logits[P] = FakeGraph(), torch.arange(P * 3, dtype=torch.float32).view(P, 3)
    return g


def test_bucket_ladder():
    assert bucket_sizes(1) == [1]
    assert bucket_sizes(20) == [1, 2, 4, 8, 16, 20]
    assert bucket_sizes(64) == [1, 2, 4, 8, 16, 32, 48, 64]
    assert bucket_sizes(1000)[-1] == 512


def test_staging_fills_the_bucket_and_pads():
    g = graphs(8)
    rows = [DecodeRow(11, 5, {"full_attention": [7, 3], "sliding_attention": [0, 9]}),  # position 5: block 1
            DecodeRow(12, 0, {"full_attention": [4], "sliding_attention": [6]}),
            DecodeRow(13, 9, {"full_attention": [1, 2, 8], "sliding_attention": [0, 0, 5]})]
    logits = g.run(rows)
    assert g.bucket(3) == 4 and g.graphs[4].replays == 1
    assert torch.equal(logits, g.logits[4][:3])
    assert g.input_ids[:4].tolist() == [11, 12, 13, 0] and g.positions[:4].tolist() == [5, 0, 9, 0]
    assert g.qsl[:5].tolist() == [0, 1, 2, 3, 4]
    for name, want_slots, want_table in (
            ("full_attention", [3 * 4 + 1, 4 * 4 + 0, 8 * 4 + 1, 50 * 4], [[7, 3, 50], [4, 50, 50], [1, 2, 8], [50] * 3]),
            ("sliding_attention", [9 * 4 + 1, 6 * 4 + 0, 5 * 4 + 1, 20 * 4], [[0, 9, 20], [6, 20, 20], [0, 0, 5], [20] * 3])):
        assert g.seq_lens[name][:4].tolist() == [6, 1, 10, 1]
        assert g.slots[name][:4].tolist() == want_slots
        assert g.tables[name][:4, :3].tolist() == want_table
        assert g.seq_lens[name].dtype == torch.int32 and g.tables[name].dtype == torch.int32


def test_a_smaller_step_repads_rows_a_larger_one_used():
    g = graphs(8)
    big = [DecodeRow(i, 4, {n: [i + 1, i + 2] for n in GROUPS}) for i in range(5)]
    g.run(big)  # bucket 8: rows 0..4 real
    g.run(big[:1])  # bucket 1
    g.run(big[:2])  # bucket 2: row 1 real again, nothing stale is read beyond seq_len
    assert g.seq_lens["full_attention"][:2].tolist() == [5, 5]
    g.run(big[:3])  # bucket 4: row 3 is padding again
    assert g.seq_lens["full_attention"][3].item() == 1 and g.tables["full_attention"][3, 0].item() == 50
    assert g.slots["full_attention"][3].item() == 50 * 4


def test_rows_whose_token_is_still_on_the_device():
    """Async scheduling: a row with src >= 0 takes its input id from prev_tokens[src] (the previous step's
    sampled ids, not yet read by the host); the other rows keep their staged ids, padding stays 0."""
    g = graphs(8)
    tables = {n: [1] for n in GROUPS}
    rows = [DecodeRow(7, 3, tables), DecodeRow(0, 3, tables, src=2), DecodeRow(0, 3, tables, src=0)]
    g.run(rows, prev_tokens=torch.tensor([101, 102, 103]))
    assert g.input_ids[:4].tolist() == [7, 103, 101, 0]
