"""The tiled byte layout of MXFP4 expert weights (weights/tiles.py): its formula, the re-lay and its inverse,
the reference decode of tiled weights, and the model re-laying its experts after loading for the Triton table."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from oss_engine.kernels import get_ops
from oss_engine.kernels.types import ExpertWeight
from oss_engine.model.moe import MXFP4Experts
from oss_engine.weights.tiles import can_tile, tile_in_place, tile_rows, tiled_offsets, untile_rows


@pytest.mark.parametrize("E,out,groups", [(2, 16, 2), (3, 32, 3), (1, 48, 90), (2, 16, 1)])
def test_each_byte_lands_where_the_formula_says(E, out, groups):
    """Row r's byte c of a standard weight is byte tiled_offsets(r, c) of the tiled one (rows of 32, 48 and 1,440
    bytes: whole chunks, a 16-byte last chunk, and gpt-oss's rows), and untile_rows undoes tile_rows."""
    gen = torch.Generator().manual_seed(out)
    blocks = torch.randint(0, 256, (E, out, groups, 16), generator=gen, dtype=torch.uint8)
    t = tile_rows(blocks)
    assert t.shape == blocks.shape and t.dtype == torch.uint8
    rb = 16 * groups
    off = tiled_offsets(torch.arange(out)[:, None], torch.arange(rb)[None, :], rb)  # [out, RB]
    assert sorted(off.reshape(-1).tolist()) == list(range(out * rb))  # a permutation of each expert's bytes
    assert torch.equal(t.reshape(E, -1)[:, off.reshape(-1)].reshape(blocks.shape), blocks)
    assert torch.equal(untile_rows(t), blocks)
    in_place = blocks.clone()
    tile_in_place(in_place)
    assert torch.equal(in_place, t)


def test_worked_example():
    """Rows of 48 bytes (a 32-byte chunk and a 16-byte one): byte 40 of row 3 lies in chunk 1, after chunk 0 of
    all 16 rows (512 bytes) and 3 rows of 16 bytes: 512 + 48 + 8 = 568. Row 19 is row 3 of the second block
    (16 * 48 bytes on)."""
    assert tiled_offsets(torch.tensor(3), torch.tensor(40), 48).item() == 568
    assert tiled_offsets(torch.tensor(19), torch.tensor(5), 48).item() == 16 * 48 + 3 * 32 + 5


def test_only_whole_16_row_blocks():
    assert can_tile(torch.zeros(4, 32, 2, 16, dtype=torch.uint8))
    assert not can_tile(torch.zeros(4, 24, 2, 16, dtype=torch.uint8))
    with pytest.raises(AssertionError, match="16-row blocks"):
        tile_rows(torch.zeros(4, 24, 2, 16, dtype=torch.uint8))


def test_reference_decodes_tiled_weights():
    """ExpertWeight.expert and .standard read a tiled weight as the standard one."""
    gen = torch.Generator().manual_seed(0)
    blocks = torch.randint(0, 256, (2, 32, 3, 16), generator=gen, dtype=torch.uint8)
    scales = torch.randint(120, 131, (2, 32, 3), generator=gen, dtype=torch.uint8)
    w = ExpertWeight(torch.zeros(2, 32), blocks=blocks, scales=scales)
    t = ExpertWeight(torch.zeros(2, 32), blocks=tile_rows(blocks), scales=scales, tiled=True)
    for e in range(2):
        assert torch.equal(t.expert(e, torch.float32), w.expert(e, torch.float32))
    assert torch.equal(t.standard().blocks, blocks) and not t.standard().tiled
    assert w.standard() is w


@pytest.mark.parametrize("tiles", [False, True])
def test_experts_tile_after_loading_where_the_table_asks(tiles):
    """After the loader's hook the experts of a table with Ops.tiled_experts hold tiled blocks (and say so);
    others keep the standard ones. Both decode to the same weights."""
    gen = torch.Generator().manual_seed(1)
    ops = dataclasses.replace(get_ops("ref"), tiled_experts=tiles)
    m = MXFP4Experts(4, 64, 32, torch.float32, ops, limit=7.0, alpha=1.702)
    with torch.no_grad():
        for name in ("w1_blocks", "w2_blocks"):
            getattr(m, name).copy_(torch.randint(0, 256, getattr(m, name).shape, generator=gen, dtype=torch.uint8))
        for name in ("w1_scales", "w2_scales"):
            getattr(m, name).copy_(torch.randint(120, 131, getattr(m, name).shape, generator=gen, dtype=torch.uint8))
    before = [w.blocks.clone() for w in m.weights()]
    m.after_load()
    w1, w2 = m.weights()
    assert w1.tiled == w2.tiled == tiles and w1.scale_range is not None
    for w, b in zip((w1, w2), before):
        assert torch.equal(w.standard().blocks, b)
        assert torch.equal(w.blocks, tile_rows(b) if tiles else b)
