"""Grouping MoE (token, slot) pairs by expert, in Triton: step 1 of moe.py's pipeline, used by every grouped
path (moe.py's Triton GEMMs, moe_gluon_grouped.py, moe_gluon_wgmma.py, moe_grouped_mm.py).

Legend: T tokens, A experts per token, E experts, E_PAD = E rounded up to a power of two, P = T * A pairs,
p = t * A + a a pair, r a sorted row (0 <= r < P).

Contract (`group_by_expert`): ids [T, A] -> order [P] int64 = stable argsort(ids.flat) (sorted row r holds pair
order[r], rows grouped by expert, one expert's rows in pair order) and bounds [E + 1] int32, bounds[e] = first
sorted row of expert e (bounds[E] = P). The same as torch.sort(stable=True) + searchsorted, which is the
reference the tests compare with. Worked example, E = 4, ids.flat = [2, 0, 2, 3, 0]: order = [1, 4, 0, 2, 3],
bounds = [0, 2, 2, 4, 5].

Paths (`group_path`); the Triton ones are stable counting sorts with grids sized from shapes (no host sync):
  "small"     one program up to 256 pairs while its [P_PAD, E_PAD] tile fits (`_group_small_kernel`: decode)
  "chunked"   one program up to 1024 pairs, one-hot [CHUNK, E_PAD] tiles (`_group_chunked_kernel`)
  "parallel"  two launches of one program a chunk: counts, then places (`_group_count_kernel`,
              `_group_place_kernel`), while the place programs' count reads stay small
  "torch"     torch.sort + searchsorted beyond that
The thresholds are H100 measurements (`group_path`'s docstring; docs/performance.md, fourth and ninth H100
sessions).

PDL (`launch.py`): every kernel here calls `gdc_wait()` first (the ids are the routing kernel's output).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import launch

_SMALL_GROUP = 256  # pairs up to which one Triton program groups them (`_group_small_kernel`)
_CHUNKED_GROUP = 1024  # pairs up to which `_group_chunked_kernel` does (docs/performance.md: where it paid)
_PARALLEL_READS = 1 << 21  # the parallel grouping's count reads (chunks^2 x E_PAD) up to which it runs, then torch


# ----------------------------------------------------------------------------------------------- device code


@triton.jit
def _group_small_kernel(ids_ptr, order_ptr, bounds_ptr, P, E: tl.constexpr, E_PAD: tl.constexpr,
                        P_PAD: tl.constexpr, CHUNK: tl.constexpr, PDL: tl.constexpr):
    """One program: a stable counting sort of P <= P_PAD expert ids (decode batches), the same (order,
    bounds) as sort + searchsorted in one launch instead of five.
    rank[p] = #{q < p : ids[q] == ids[p]}; order[bounds[ids[p]] + rank[p]] = p."""
    launch.wait_for_inputs(PDL)
    p = tl.arange(0, P_PAD)
    e_p = tl.load(ids_ptr + p, mask=p < P, other=E_PAD).to(tl.int32)  # pads match no expert
    e = tl.arange(0, E_PAD)
    counts = tl.sum((e[:, None] == e_p[None, :]).to(tl.int32), axis=1)  # [E_PAD]
    ends = tl.cumsum(counts, axis=0)  # bounds[e + 1]
    tl.store(bounds_ptr + 1 + e, ends, mask=e < E)
    tl.store(bounds_ptr + e, 0, mask=e == 0)
    first = tl.sum(tl.where(e[None, :] == e_p[:, None], (ends - counts)[None, :], 0), axis=1)  # [P_PAD]
    rank = tl.zeros((P_PAD,), dtype=tl.int32)
    for q0 in tl.static_range(0, P_PAD, CHUNK):
        q = q0 + tl.arange(0, CHUNK)
        e_q = tl.load(ids_ptr + q, mask=q < P, other=E_PAD + 1).to(tl.int32)
        rank += tl.sum(((e_q[None, :] == e_p[:, None]) & (q[None, :] < p[:, None])).to(tl.int32), axis=1)
    tl.store(order_ptr + first + rank, p.to(tl.int64), mask=p < P)


@triton.jit
def _group_chunked_kernel(ids_ptr, order_ptr, bounds_ptr, P, E: tl.constexpr, E_PAD: tl.constexpr,
                          CHUNK: tl.constexpr, ONE: tl.constexpr, PDL: tl.constexpr):
    """One program: the same stable counting sort as `_group_small_kernel`, over one-hot [CHUNK, E_PAD]
    tiles, so registers do not grow with P. A pair's sorted row is its expert's first row plus its rank among
    the expert's pairs: bounds from the counts, the rank from a cumulative sum down the one-hot tile.
    ONE (P <= CHUNK): one pass over one tile. Else two passes, CHUNK ids at a time, each loading the next
    chunk before working on this one: pass 1 counts each expert's pairs (bounds); pass 2 places chunk by
    chunk, row = next[e] + rank in the chunk, then next[e] += the chunk's count."""
    launch.wait_for_inputs(PDL)
    e = tl.arange(0, E_PAD)
    q = tl.arange(0, CHUNK)
    e_q = tl.load(ids_ptr + q, mask=q < P, other=E_PAD).to(tl.int32)  # [CHUNK]; pads match no expert
    if ONE:
        hot = (e_q[:, None] == e[None, :]).to(tl.int32)  # [CHUNK, E_PAD]
        counts = tl.sum(hot, axis=0)
        ends = tl.cumsum(counts, axis=0)  # bounds[e + 1]
        seen = tl.cumsum(hot, axis=0)  # [CHUNK, E_PAD] the expert's pairs up to this one, inclusive
        row = tl.sum(hot * ((ends - counts)[None, :] + seen - 1), axis=1)  # [CHUNK]
        tl.store(order_ptr + row, q.to(tl.int64), mask=q < P)
    else:
        counts = tl.zeros((E_PAD,), dtype=tl.int32)
        c0 = 0
        while c0 < P:  # (while loops: the CPU interpreter cannot run `range` over a runtime bound)
            n_q = tl.load(ids_ptr + CHUNK + q, mask=CHUNK + q < P, other=E_PAD).to(tl.int32)  # next chunk
            counts += tl.sum((e_q[:, None] == e[None, :]).to(tl.int32), axis=0)
            e_q, q, c0 = n_q, q + CHUNK, c0 + CHUNK
        ends = tl.cumsum(counts, axis=0)
        nxt = ends - counts  # [E_PAD] each expert's next free sorted row
        q = tl.arange(0, CHUNK)
        e_q = tl.load(ids_ptr + q, mask=q < P, other=E_PAD).to(tl.int32)
        c0 = 0
        while c0 < P:
            n_q = tl.load(ids_ptr + CHUNK + q, mask=CHUNK + q < P, other=E_PAD).to(tl.int32)
            hot = (e_q[:, None] == e[None, :]).to(tl.int32)
            seen = tl.cumsum(hot, axis=0)
            row = tl.sum(hot * (nxt[None, :] + seen - 1), axis=1)
            tl.store(order_ptr + row, q.to(tl.int64), mask=q < P)
            nxt += tl.sum(hot, axis=0)
            e_q, q, c0 = n_q, q + CHUNK, c0 + CHUNK
    tl.store(bounds_ptr + 1 + e, ends, mask=e < E)
    tl.store(bounds_ptr + e, 0, mask=e == 0)


@triton.jit
def _group_count_kernel(ids_ptr, counts_ptr, P, E_PAD: tl.constexpr, CHUNK: tl.constexpr, PDL: tl.constexpr):
    """Program c of the parallel grouping: counts[c, e] = the pairs of chunk c (pairs c CHUNK ..) routed to e."""
    launch.wait_for_inputs(PDL)
    c = tl.program_id(0)
    q = c * CHUNK + tl.arange(0, CHUNK)
    e = tl.arange(0, E_PAD)
    e_q = tl.load(ids_ptr + q, mask=q < P, other=E_PAD).to(tl.int32)  # [CHUNK]; pads match no expert
    tl.store(counts_ptr + c * E_PAD + e, tl.sum((e_q[:, None] == e[None, :]).to(tl.int32), axis=0))


@triton.jit
def _group_place_kernel(ids_ptr, counts_ptr, order_ptr, bounds_ptr, P, n_chunks, E: tl.constexpr,
                        E_PAD: tl.constexpr, CHUNK: tl.constexpr, C_BLOCK: tl.constexpr, PDL: tl.constexpr):
    """Program c of the parallel grouping places chunk c's pairs, as `_group_chunked_kernel` places a chunk:
    expert e's rows start at bounds[e] (the counts of experts < e over all chunks), chunk c's first row of e
    follows the rows of e in chunks before c, and within the chunk the pairs keep their order (a cumulative
    sum down the one-hot tile). The counts [n_chunks, E_PAD] are read C_BLOCK chunks at a time. Program 0
    writes bounds."""
    launch.wait_for_inputs(PDL)
    c = tl.program_id(0)
    e = tl.arange(0, E_PAD)
    cc = tl.arange(0, C_BLOCK)
    totals = tl.zeros((E_PAD,), dtype=tl.int32)
    before = tl.zeros((E_PAD,), dtype=tl.int32)
    c0 = 0
    while c0 < n_chunks:  # (while loops: the CPU interpreter cannot run `range` over a runtime bound)
        rows = c0 + cc
        cnt = tl.load(counts_ptr + rows[:, None] * E_PAD + e[None, :], mask=(rows < n_chunks)[:, None], other=0)
        totals += tl.sum(cnt, axis=0)
        before += tl.sum(tl.where((rows < c)[:, None], cnt, 0), axis=0)
        c0 += C_BLOCK
    ends = tl.cumsum(totals, axis=0)  # bounds[e + 1]
    first = ends - totals + before  # [E_PAD] chunk c's first row of each expert
    q = c * CHUNK + tl.arange(0, CHUNK)
    e_q = tl.load(ids_ptr + q, mask=q < P, other=E_PAD).to(tl.int32)
    hot = (e_q[:, None] == e[None, :]).to(tl.int32)  # [CHUNK, E_PAD]
    seen = tl.cumsum(hot, axis=0)  # the expert's pairs of this chunk up to this one, inclusive
    row = tl.sum(hot * (first[None, :] + seen - 1), axis=1)
    tl.store(order_ptr + row, q.to(tl.int64), mask=q < P)
    if c == 0:
        tl.store(bounds_ptr + 1 + e, ends, mask=e < E)
        tl.store(bounds_ptr + e, 0, mask=e == 0)


# ------------------------------------------------------------------------------------------------- host code


def _empty(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Every buffer this module allocates (tests replace it to poison the buffers with -1)."""
    return torch.empty(shape, dtype=dtype, device=device)


def group_path(num_pairs: int, num_experts: int) -> str:
    """Which grouping `group_by_expert` runs: "small" (`_group_small_kernel`) up to _SMALL_GROUP pairs while
    its [P_PAD, E_PAD] tile fits, "chunked" (`_group_chunked_kernel`) up to _CHUNKED_GROUP pairs, "parallel"
    (`_group_count_kernel` then `_group_place_kernel`, one program a chunk) while its place programs' reads of
    the counts (each reads all of them: chunks^2 x E_PAD) stay within _PARALLEL_READS, else "torch" (sort +
    searchsorted, 24 launches). On an H100 (scripts/gpu_bench_grouping.py, us, chunked / parallel / torch):
    32 experts, 2048 pairs 15.8 / 5.7 / 24.5, 8192 pairs 60.6 / 5.7 / 50.4, 65536 pairs (2^21 reads) 477.9 /
    11.2 / 48.0; 128 experts, 8192 pairs (2^19 reads) 229.1 / 11.8 / 51.0, 65536 pairs (2^25) 1,825.7 / 186.3 /
    48.1."""
    e_pad = triton.next_power_of_2(num_experts)
    if num_pairs <= _SMALL_GROUP and max(16, triton.next_power_of_2(num_pairs)) * e_pad <= 8192:
        return "small"
    if num_pairs <= _CHUNKED_GROUP:
        return "chunked"
    n_chunks = parallel_tiles(num_pairs, e_pad)[2]
    return "parallel" if n_chunks * n_chunks * e_pad <= _PARALLEL_READS else "torch"


def chunked_tiles(num_pairs: int, e_pad: int) -> tuple[int, int]:
    """(CHUNK, num_warps) of `_group_chunked_kernel`: 2048 one-hot elements a warp, 4 warps up to 64 experts
    and 8 above (the best of five (elements, warps) pairs from 4k to 16k and 4 to 16, measured at 32 and 128
    experts on an H100); P that fits one tile takes one tile of next_power_of_2(P) rows."""
    warps = 4 if e_pad <= 64 else 8
    chunk = max(16, 2048 * warps // e_pad)
    return (max(16, triton.next_power_of_2(num_pairs)) if num_pairs <= chunk else chunk), warps


def parallel_tiles(num_pairs: int, e_pad: int) -> tuple[int, int, int]:
    """(CHUNK, num_warps, chunks) of the "parallel" grouping: one program a chunk of the chunked kernel's full
    tile (2048 one-hot elements a warp, `chunked_tiles`)."""
    chunk, warps = chunked_tiles(1 << 30, e_pad)
    return chunk, warps, triton.cdiv(num_pairs, chunk)


def _group_parallel(flat: torch.Tensor, order: torch.Tensor, bounds: torch.Tensor, num_experts: int,
                    pdl: bool) -> None:
    """The "parallel" grouping: `_group_count_kernel` then `_group_place_kernel`, one program a chunk
    (`parallel_tiles`); counts [n_chunks, E_PAD] int32."""
    P = flat.numel()
    e_pad = triton.next_power_of_2(num_experts)
    chunk, warps, n_chunks = parallel_tiles(P, e_pad)
    counts = _empty((n_chunks, e_pad), torch.int32, flat.device)
    _group_count_kernel[(n_chunks,)](flat, counts, P, E_PAD=e_pad, CHUNK=chunk, PDL=pdl, num_warps=warps,
                                     launch_pdl=pdl)
    _group_place_kernel[(n_chunks,)](flat, counts, order, bounds, P, n_chunks, E=num_experts, E_PAD=e_pad,
                                     CHUNK=chunk, C_BLOCK=max(1, chunk // 4), PDL=pdl, num_warps=warps,
                                     launch_pdl=pdl)


def group_by_expert(ids: torch.Tensor, num_experts: int) -> tuple[torch.Tensor, torch.Tensor]:
    """ids [T, A] -> (order [P] int64: sorted row -> pair t*A + a, bounds [E + 1] int32). No host sync.

    Rows of one expert keep their pair order (a stable sort) on every path (`group_path`)."""
    flat = ids.reshape(-1)  # [P]
    P = flat.numel()
    e_pad = triton.next_power_of_2(num_experts)
    path = group_path(P, num_experts)
    if path != "torch":
        order = _empty((P,), torch.int64, ids.device)
        bounds = _empty((num_experts + 1,), torch.int32, ids.device)
        pdl = launch.use_pdl(ids.device)
        if path == "small":  # one launch
            p_pad = max(16, triton.next_power_of_2(P))
            _group_small_kernel[(1,)](flat, order, bounds, P, E=num_experts, E_PAD=e_pad, P_PAD=p_pad,
                                      CHUNK=min(p_pad, 32), PDL=pdl, num_warps=8, launch_pdl=pdl)
        elif path == "chunked":  # one launch
            chunk, warps = chunked_tiles(P, e_pad)
            _group_chunked_kernel[(1,)](flat, order, bounds, P, E=num_experts, E_PAD=e_pad, CHUNK=chunk,
                                        ONE=P <= chunk, PDL=pdl, num_warps=warps, launch_pdl=pdl)
        else:  # "parallel": two launches of one program a chunk
            _group_parallel(flat, order, bounds, num_experts, pdl)
        return order, bounds
    sorted_ids, order = torch.sort(flat, stable=True)  # [P] each
    experts = torch.arange(num_experts + 1, device=ids.device, dtype=sorted_ids.dtype)  # [E + 1]
    bounds = torch.searchsorted(sorted_ids, experts, out_int32=True)  # [E + 1] first row of each expert
    return order, bounds
