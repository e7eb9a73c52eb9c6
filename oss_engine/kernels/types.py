"""Tensor bundles that the op table's kernels take or return (shared by the reference and the fast versions)."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from ..weights.mxfp4 import dequantize_mxfp4
from ..weights.tiles import untile_rows


@dataclass(frozen=True)
class ExpertWeight:
    """One projection of all E experts, output-major [E, out, in]: dense, or MXFP4-packed (4.25 bits/weight).

    Exactly one of `dense` or (`blocks`, `scales`) is set; `bias` is [E, out] in either case.
    """

    bias: torch.Tensor  # [E, out]
    dense: torch.Tensor | None = None  # [E, out, in]
    blocks: torch.Tensor | None = None  # uint8 [E, out, in/32, 16], two e2m1 codes a byte, low nibble first
    scales: torch.Tensor | None = None  # uint8 [E, out, in/32], e8m0
    # MXFP4: (min, max) of the scale bytes when known (measured once, at load time: reading it costs a host
    # sync); kernels whose decode holds only for some scales (moe_gluon.py) run only when it is known
    scale_range: tuple[int, int] | None = None
    # MXFP4: blocks in the tiled layout of weights/tiles.py (the GPU kernels' fastest read; every kernel that
    # reads blocks takes it) instead of the standard one
    tiled: bool = False

    @property
    def is_mxfp4(self) -> bool:
        return self.blocks is not None

    def with_scale_range(self) -> "ExpertWeight":
        """This weight with `scale_range` measured (a host sync; for loaders and tests)."""
        if self.scales is None:
            return self
        return replace(self, scale_range=(int(self.scales.min()), int(self.scales.max())))

    def expert(self, e: int, dtype: torch.dtype) -> torch.Tensor:
        """Expert e's weight [out, in] in `dtype`, dequantized on the fly for MXFP4 (never kept)."""
        if self.blocks is not None:
            blocks = untile_rows(self.blocks[e]) if self.tiled else self.blocks[e]
            return dequantize_mxfp4(blocks, self.scales[e], dtype=dtype)
        return self.dense[e].to(dtype)

    def standard(self) -> "ExpertWeight":
        """This weight with its blocks in the standard layout (a copy where tiled; for readers outside the
        kernels, e.g. transformers' comparison)."""
        return replace(self, blocks=untile_rows(self.blocks), tiled=False) if self.tiled else self


@dataclass(frozen=True)
class RowSum:
    """A [T, D] result left as its unsummed rows: row t is the float32 sum, in order, of rows[t n .. t n + n),
    rounded to `dtype`. The MoE returns its slot rows so when the model asks (Ops.defer_moe_sum), and the next
    `add_rms_norm` sums them in its own pass, one kernel boundary fewer a layer (moe.py's `combine` is that sum
    as a kernel of its own)."""

    rows: torch.Tensor  # [T * n, D], any float dtype, unit column stride
    n: int  # rows a token
    dtype: torch.dtype  # of the sum

    @property
    def shape(self) -> tuple[int, int]:
        return self.rows.shape[0] // self.n, self.rows.shape[1]

    def total(self) -> torch.Tensor:
        """The sum as a tensor [T, D] in `dtype`, added in float32 row by row (the fused kernels' order)."""
        parts = self.rows.unflatten(0, self.shape[:1] + (self.n,))  # [T, n, D]
        acc = parts[:, 0].float()
        for j in range(1, self.n):
            acc = acc + parts[:, j].float()
        return acc.to(self.dtype)
