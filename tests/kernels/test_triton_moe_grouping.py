"""moe_grouping.py's `group_by_expert` against its reference, a stable torch.sort + searchsorted, on every path.

Without a GPU the kernels run in Triton's interpreter. Buffers the module allocates start as -1 (`poisoned`),
so a sorted row or bound never written fails the comparison.
Legend: T tokens, A experts per token, E experts.
"""

import pytest
import torch

pytest.importorskip("triton")

from oss_engine.kernels.triton import moe_grouping as grouping
from oss_engine.kernels.triton.moe_grouping import group_by_expert
from test_triton_moe import make_ids
from triton_cases import DEV


@pytest.fixture
def poisoned(monkeypatch):
    """Every buffer the module allocates (integer: order, bounds, counts) starts as -1."""
    monkeypatch.setattr(grouping, "_empty", lambda shape, dtype, device: torch.full(shape, -1, dtype=dtype,
                                                                                     device=device))


def test_worked_example(poisoned):
    """The module docstring's example: ids [2, 0, 2, 3, 0] over 4 experts (expert 1 empty)."""
    order, bounds = group_by_expert(torch.tensor([[2], [0], [2], [3], [0]], device=DEV), 4)
    assert order.tolist() == [1, 4, 0, 2, 3] and bounds.tolist() == [0, 2, 2, 4, 5]
    assert order.dtype == torch.int64 and bounds.dtype == torch.int32


GROUP_PATHS = {"small": (256, 0, 0), "chunked": (0, 1 << 30, 0), "parallel": (0, 0, 1 << 30),
               "torch": (0, 0, 0)}  # (_SMALL_GROUP, _CHUNKED_GROUP, _PARALLEL_READS)


@pytest.mark.parametrize("path", list(GROUP_PATHS))
@pytest.mark.parametrize("T,A,E", [(1, 4, 32), (17, 4, 8), (64, 4, 32), (65, 4, 32), (16, 4, 128), (300, 1, 4),
                                   (100, 4, 128), (600, 4, 32), (1100, 4, 128)])
def test_group_by_expert(poisoned, monkeypatch, path, T, A, E):
    """Each grouping path (one Triton program for small P, the chunked one, the two-launch parallel one,
    torch.sort), forced whatever the size, equals a stable sort: one-chunk and multi-chunk cases, ragged last
    chunks, empty experts; at 4,400 pairs over 128 experts the parallel path's 35 chunks take two blocks of
    counts."""
    monkeypatch.setattr(grouping, "_SMALL_GROUP", GROUP_PATHS[path][0])
    monkeypatch.setattr(grouping, "_CHUNKED_GROUP", GROUP_PATHS[path][1])
    monkeypatch.setattr(grouping, "_PARALLEL_READS", GROUP_PATHS[path][2])
    if grouping.group_path(T * A, E) != path:  # only "small" can be refused: its [P, E] tile must fit
        pytest.skip("past the one-program kernel's registers")
    gen = torch.Generator().manual_seed(T)
    ids = make_ids("ragged", T, E, A, gen).to(DEV)
    order, bounds = group_by_expert(ids, E)
    sorted_ids, expected = torch.sort(ids.reshape(-1), stable=True)
    assert torch.equal(order, expected)
    experts = torch.arange(E + 1, device=DEV)
    assert torch.equal(bounds, torch.searchsorted(sorted_ids, experts, out_int32=True))


def test_group_paths_by_size():
    """Which path group_by_expert takes at the sizes the thresholds were measured for (docs/performance.md):
    the one-program kernel at decode sizes, the chunked one up to 1024 pairs, the two-launch one above while
    its count reads stay small (gpt-oss-20b's 16,384-token step: 65,536 pairs of 32 experts; 120b's 128 experts
    up to 16,384 pairs), torch.sort beyond."""
    assert grouping.group_path(32, 32) == "small" and grouping.group_path(256, 32) == "small"
    assert grouping.group_path(257, 32) == "chunked" and grouping.group_path(256, 128) == "chunked"
    assert grouping.group_path(1024, 128) == "chunked" and grouping.group_path(1025, 32) == "parallel"
    assert grouping.group_path(65536, 32) == "parallel" and grouping.group_path(65537, 32) == "torch"
    assert grouping.group_path(16384, 128) == "parallel" and grouping.group_path(16385, 128) == "torch"
