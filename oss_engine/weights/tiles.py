"""The tiled byte layout of MXFP4 expert weights that the GPU MoE kernels read fastest.

Standard layout (mxfp4.py): blocks uint8 [..., out, G, 16], each row's RB = 16 G bytes contiguous, rows one
after another. Tiled: the same shape, dtype and bytes, re-laid inside each block of TILE_ROWS = 16 rows (so a
block occupies the same RB * 16 bytes either way, and slicing whole experts or whole 16-row blocks stays
valid): the block's bytes are cut into column chunks of TILE_BYTES = 32 (64 values, two scale groups), the
last chunk narrower when RB is not a multiple of 32; the block stores chunk 0 of its 16 rows (in row order),
then chunk 1 of its 16 rows, and so on. Byte c of row r lies at

    (r // 16) * 16 RB  +  (c // 32) * 16 * 32  +  (r % 16) * w  +  c % 32,   w = min(32, RB - (c // 32) * 32)

from the weight's (expert's) base. Scales keep the standard layout.

Why: the decode and grouped GEMMs stream a few weight rows at a time in narrow column steps. Row-major, a
warp's load instruction then touches 8 rows x 64 bytes, 1,440 bytes apart; tiled, the 16 rows' bytes of a
step lie within 512 contiguous bytes and a warp's successive steps follow each other. On an H100 (20b, random
weights), a timing-only copy of the Gluon kernels that read their words at the addresses of a like layout
(64-byte chunks, a block's even rows before its odd ones; the bytes themselves not permuted) made decode 506
-> 514-515 tok/s at batch 1, 1,637 -> 1,710 at batch 8 and 8,414 -> 9,052-9,067 at batch 64
(docs/performance.md, "Twentieth session"). This layout (32-byte chunks, rows in order, so that every kernel
reads it simply), first run on an H100 in the twenty-first session: the same bits as standard on every MoE path,
decode 511 -> 521 tok/s at batch 1, 1,655 -> 1,739 at 8 and 8,453 -> 8,848 at 64, but 2k prefill 77,314 ->
67,622 (the grouped_mm dequantization then read the tiled bytes one at a time). The twenty-third session's two
rounds: 20b decode +2.3 / +5.3 / +4.7%, 120b +2.4% at batch 1 and +6.6% at 64 and 120b prefill +6.0%, but 20b
prefill still -6% (its 2-D and 3-D dequantization kernels ran at half the standard one's speed). The twenty-fourth
session, with 8502f81's 1-D dequantization: 20b prefill -2.5% (W1 686-690 us against 518-562; a scale-byte load for
every byte in its machine code, which f876865 removes), the MoE layer at 2,048 tokens 1,199.8 -> 1,090.8 us. The
twenty-sixth session, with f876865: 20b 2k prefill 76.9k-77.7k against standard's 77.5k-77.6k, decode 521 / 1,742
/ 8,904-8,946 tok/s against 509-510 / 1,649 / 8,503; the Triton op table asks for it since (Ops.tiled_experts).

Every kernel that reads blocks takes this layout where ExpertWeight.tiled says so; the torch reference reads
the standard layout (`untile_rows`).
"""

from __future__ import annotations

import torch

TILE_ROWS = 16  # rows of a tile block
TILE_BYTES = 32  # bytes of a row in one chunk (64 e2m1 values)


def can_tile(blocks: torch.Tensor) -> bool:
    """Whether blocks [..., out, G, 16] can be tiled: whole 16-row blocks."""
    return blocks.dim() >= 3 and blocks.shape[-3] % TILE_ROWS == 0


def tile_rows(blocks: torch.Tensor) -> torch.Tensor:
    """Standard blocks [..., out, G, 16] -> a new tensor of the same shape in the tiled layout."""
    *lead, out, g, _ = blocks.shape
    assert out % TILE_ROWS == 0, f"tiling needs whole {TILE_ROWS}-row blocks, got {out} rows"
    rb = 16 * g
    full = rb - rb % TILE_BYTES  # bytes in whole chunks
    n = blocks.numel() // (TILE_ROWS * rb)  # B blocks of 16 rows
    rows = blocks.reshape(n, TILE_ROWS, rb)  # [B, 16, RB]
    head = rows[:, :, :full].reshape(n, TILE_ROWS, full // TILE_BYTES, TILE_BYTES).transpose(1, 2)  # [B, C, 16, 32]
    tail = rows[:, :, full:]  # [B, 16, RB - full]
    tiled = torch.cat([head.reshape(n, TILE_ROWS * full), tail.reshape(n, TILE_ROWS * (rb - full))], dim=1)
    return tiled.reshape(blocks.shape)


def untile_rows(blocks: torch.Tensor) -> torch.Tensor:
    """Tiled blocks [..., out, G, 16] -> a new tensor of the same shape in the standard layout."""
    *lead, out, g, _ = blocks.shape
    assert out % TILE_ROWS == 0, f"tiled blocks come in whole {TILE_ROWS}-row blocks, got {out} rows"
    rb = 16 * g
    full = rb - rb % TILE_BYTES
    n = blocks.numel() // (TILE_ROWS * rb)  # B blocks of 16 rows
    flat = blocks.reshape(n, TILE_ROWS * rb)  # [B, 16 RB]
    head = flat[:, :TILE_ROWS * full].reshape(n, full // TILE_BYTES, TILE_ROWS, TILE_BYTES).transpose(1, 2)
    tail = flat[:, TILE_ROWS * full:].reshape(n, TILE_ROWS, rb - full)
    rows = torch.cat([head.reshape(n, TILE_ROWS, full), tail], dim=2)  # [B, 16, RB]
    return rows.reshape(blocks.shape)


def tile_in_place(blocks: torch.Tensor) -> None:
    """Re-lay standard blocks [E, out, G, 16] tiled, one expert at a time (a temporary of one expert's bytes,
    not of the whole tensor: 120b's projections are ~1 GB each)."""
    for e in range(blocks.shape[0]):
        blocks[e].copy_(tile_rows(blocks[e]))


def tiled_offsets(rows: torch.Tensor, byte: torch.Tensor, row_bytes: int) -> torch.Tensor:
    """The layout's formula (module docstring) for broadcastable int64 rows and byte columns: where byte c of
    row r lies from the weight's base (test_tiles.py checks `tile_rows` against it; the kernels write the same
    arithmetic in their own dialects)."""
    chunk = byte // TILE_BYTES
    width = torch.clamp(row_bytes - chunk * TILE_BYTES, max=TILE_BYTES)
    block = (rows // TILE_ROWS) * (TILE_ROWS * row_bytes)
    return block + chunk * (TILE_ROWS * TILE_BYTES) + (rows % TILE_ROWS) * width + byte % TILE_BYTES
