"""weights/tiles.py's layout as one Triton device function, for the Triton kernels that read tiled MXFP4 blocks
by rows: moe.py's `_mma_step` (the grouped and decode paths' dot_scaled and arith modes). moe_grouped_mm.py's
dequantization reads whole 16-row blocks in their stored order instead. The Gluon kernels write the same
arithmetic in their own dialect (moe_gluon.py `_load_w`, moe_gluon_wgmma.py `_load_words`)."""

import triton
import triton.language as tl


@triton.jit
def tiled_offsets(rows, byte, row_bytes):
    """Where byte `byte` of rows `rows` (broadcast; rows counted from the weight's first, whose 16-row blocks are
    its own) lies in tiled blocks: 16-row blocks of 32-byte chunks, a row's last chunk narrower when its
    row_bytes are not a multiple of 32 (weights/tiles.py `tiled_offsets`, the twin the tests hold it to)."""
    chunk = byte // 32
    width = tl.minimum(row_bytes - chunk * 32, 32)
    return (rows // 16) * (16 * row_bytes) + chunk * 512 + (rows % 16) * width + byte % 32
