"""MXFP4 reference: decode and encode the OCP microscaling FP4 format used by gpt-oss experts.

Layout (GPT_OSS_SPEC.md section 4), for a weight W[..., K] (K = the reduction / input dim):
  blocks uint8 [..., G, 16]   G = K / 32 groups, 16 bytes = 32 e2m1 codes, two per byte
  scales uint8 [..., G]       one e8m0 exponent byte per group: factor 2**(s - 127)
  W[..., 32*g + 2*j]     = FP4_VALUES[blocks[..., g, j] & 0xF] * 2**(scales[..., g] - 127)
  W[..., 32*g + 2*j + 1] = FP4_VALUES[blocks[..., g, j] >> 4]  * 2**(scales[..., g] - 127)
Worked example: byte 0x21 -> low nibble 1 (+0.5) is element 2j, high nibble 2 (+1.0) is element 2j+1.

This is the executable spec, written for clarity, not speed: decoding goes through float32 (in
chunks), encoding through float64 (meant for test-sized tensors).
Orientation is never changed here: [E, out, in] blocks decode to an [E, out, in] weight.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# The 16 e2m1 values indexed by their 4-bit code: bit 3 = sign, bits 2..1 = exponent, bit 0 = mantissa.
FP4_VALUES: tuple[float, ...] = (
    +0.0, +0.5, +1.0, +1.5, +2.0, +3.0, +4.0, +6.0,
    -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0,
)  # fmt: skip

GROUP_SIZE = 32  # values sharing one scale byte
SCALE_BIAS = 127  # e8m0 bias: scale byte s means 2**(s - 127)
_E2M1_MAX = 6.0
_CHUNK_VALUES = 1 << 24  # decoded values per chunk in dequantize_mxfp4 (~200 MB of temporaries)
# Midpoints between consecutive e2m1 magnitudes (codes 0..7), used for round-to-nearest.
_E2M1_MIDPOINTS = (0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0)


@dataclass(frozen=True)
class Mxfp4Tensor:
    """An MXFP4-encoded weight [..., K]: blocks uint8 [..., K/32, 16], scales uint8 [..., K/32]."""

    blocks: torch.Tensor
    scales: torch.Tensor

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return dequantize_mxfp4(self.blocks, self.scales, dtype)


def _check_packed(blocks: torch.Tensor, scales: torch.Tensor) -> None:
    if blocks.dtype != torch.uint8 or scales.dtype != torch.uint8:
        raise ValueError(f"MXFP4 blocks and scales must be uint8, got {blocks.dtype} and {scales.dtype}")
    if blocks.dim() < 2 or blocks.shape[-1] != GROUP_SIZE // 2:
        raise ValueError(f"MXFP4 blocks must have shape [..., G, 16], got {tuple(blocks.shape)}")
    if tuple(blocks.shape[:-1]) != tuple(scales.shape):
        raise ValueError(
            f"MXFP4 scales shape {tuple(scales.shape)} does not match blocks shape {tuple(blocks.shape)} "
            "(expected blocks.shape[:-1])"
        )


def scale_factors(scales: torch.Tensor) -> torch.Tensor:
    """uint8 e8m0 bytes [...] -> float32 exact powers of two 2**(s - 127) [...].

    Built from the float32 bit pattern so no pow() rounding is involved: byte s in 1..254 is the
    float32 with exponent field s and zero mantissa; s = 0 is 2**-127 (a float32 subnormal);
    s = 255 is NaN (the OCP MX spec reserves it).
    """
    s = scales.to(torch.int32)  # [...]
    normal = (s << 23).view(torch.float32)  # [...] exponent field = s, mantissa 0
    factors = torch.where(s == 0, torch.full_like(normal, 2.0**-127), normal)
    return torch.where(s == 255, torch.full_like(normal, float("nan")), factors)


def unpack_codes(blocks: torch.Tensor) -> torch.Tensor:
    """uint8 [..., G, 16] -> uint8 codes [..., G*32], low nibble first."""
    lo = blocks & 0x0F  # [..., G, 16] elements 2j
    hi = blocks >> 4  # [..., G, 16] elements 2j+1
    codes = torch.stack((lo, hi), dim=-1)  # [..., G, 16, 2]
    return codes.reshape(*blocks.shape[:-2], blocks.shape[-2] * GROUP_SIZE)  # [..., G*32]


def dequantize_mxfp4(
    blocks: torch.Tensor, scales: torch.Tensor, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """blocks uint8 [..., G, 16], scales uint8 [..., G] -> dtype [..., G*32].

    Bit-exact: lut value * 2**(s-127) is exact in float32 for every s in 0..254 (at most 2 significant
    bits, float32 subnormals reach 2**-149; only 6 * 2**127 overflows to inf), and the one cast to
    `dtype` is then the only rounding (none for bf16/float32 at realistic scales).
    Rows are decoded in chunks so temporaries stay small next to the output (real expert weights are GBs).
    """
    _check_packed(blocks, scales)
    *lead, g, _ = blocks.shape
    rows = blocks.reshape(-1, g, GROUP_SIZE // 2)  # [R, G, 16]
    row_scales = scales.reshape(-1, g)  # [R, G]
    lut = torch.tensor(FP4_VALUES, dtype=torch.float32, device=blocks.device)  # [16]
    out = torch.empty(rows.shape[0], g * GROUP_SIZE, dtype=dtype, device=blocks.device)  # [R, G*32]
    step = max(1, _CHUNK_VALUES // max(1, g * GROUP_SIZE))  # rows per chunk
    for r0 in range(0, rows.shape[0], step):
        values = lut[unpack_codes(rows[r0 : r0 + step]).long()]  # [r, G*32] float32
        groups = values.view(-1, g, GROUP_SIZE)  # [r, G, 32]
        groups.mul_(scale_factors(row_scales[r0 : r0 + step]).unsqueeze(-1))  # * [r, G, 1]
        out[r0 : r0 + step] = values  # the one cast to dtype
    return out.view(*lead, g * GROUP_SIZE)


def _group_exponents(amax: torch.Tensor) -> torch.Tensor:
    """float64 group maxima [...] -> int64 e: the smallest e with amax <= 6 * 2**e (0 where amax == 0).

    Smallest e gives the finest grid that still holds the group's largest value without clipping
    (so each group's max lands in (3, 6] after scaling). Worked example: amax = 7 -> 7/6 = 1.17 ->
    e = 1 (7/2 = 3.5 <= 6); amax = 6 -> e = 0; amax = 0.75 -> e = -3 (0.75*8 = 6).
    """
    _, ex = torch.frexp(amax / _E2M1_MAX)  # amax/6 = m * 2**ex, m in [0.5, 1)
    e = ex.long()  # amax/6 <= 2**ex
    e = torch.where(amax <= _E2M1_MAX * torch.exp2((e - 1).double()), e - 1, e)  # exact powers of two
    return torch.where(amax > 0, e, torch.zeros_like(e))


def _round_to_e2m1(mag: torch.Tensor) -> torch.Tensor:
    """float64 magnitudes in [0, 6] (already scaled) -> int64 codes 0..7, round to nearest, ties to even.

    Ties go to the even code, i.e. the value with mantissa bit 0 (IEEE round-half-even):
    0.25 -> 0, 0.75 -> 1.0, 1.25 -> 1.0, 1.75 -> 2.0, 2.5 -> 2.0, 3.5 -> 4.0, 5.0 -> 4.0.
    """
    mids = torch.tensor(_E2M1_MIDPOINTS, dtype=mag.dtype, device=mag.device)  # [7]
    code = torch.bucketize(mag, mids, right=False)  # mids[code-1] < mag <= mids[code]: ties round down
    at_tie = (code < len(_E2M1_MIDPOINTS)) & (mag == mids[code.clamp(max=len(_E2M1_MIDPOINTS) - 1)])
    return torch.where(at_tie & (code % 2 == 1), code + 1, code)


def quantize_mxfp4(w: torch.Tensor) -> Mxfp4Tensor:
    """float [..., K] -> Mxfp4Tensor(blocks uint8 [..., K/32, 16], scales uint8 [..., K/32]).

    Per group of 32: scale = the smallest power of two 2**e with max|w| <= 6 * 2**e (clamped to the
    e8m0 range 2**-127 .. 2**127), then each w / 2**e rounds to the nearest e2m1 value, ties to even,
    saturating at +-6. Negative values that round to zero keep their sign (code 8, -0).
    Round trip: dequantize(quantize(w)) == w whenever w is MXFP4-representable.
    """
    if not w.is_floating_point():
        raise ValueError(f"quantize_mxfp4 needs a floating-point tensor, got {w.dtype}")
    if w.dim() < 1 or w.shape[-1] % GROUP_SIZE != 0:
        raise ValueError(
            f"quantize_mxfp4: the last dim must be a multiple of {GROUP_SIZE}, got shape {tuple(w.shape)}"
        )
    if not bool(torch.isfinite(w).all()):
        raise ValueError("quantize_mxfp4: the tensor has non-finite values")
    prefix, k = tuple(w.shape[:-1]), w.shape[-1]
    x = w.detach().to(torch.float64).reshape(*prefix, k // GROUP_SIZE, GROUP_SIZE)  # [..., G, 32]

    e = _group_exponents(x.abs().amax(dim=-1))  # [..., G]
    e = e.clamp(-SCALE_BIAS, SCALE_BIAS)  # scale bytes 0..254
    scaled = x * torch.exp2((-e).double()).unsqueeze(-1)  # [..., G, 32], exact in float64
    mag_code = _round_to_e2m1(scaled.abs().clamp(max=_E2M1_MAX))  # [..., G, 32] in 0..7
    codes = mag_code | (torch.signbit(scaled).long() << 3)  # [..., G, 32] in 0..15

    pairs = codes.view(*prefix, k // GROUP_SIZE, GROUP_SIZE // 2, 2)  # [..., G, 16, 2]
    blocks = (pairs[..., 0] | (pairs[..., 1] << 4)).to(torch.uint8)  # low nibble = element 2j
    scales = (e + SCALE_BIAS).to(torch.uint8)  # [..., G]
    return Mxfp4Tensor(blocks=blocks.contiguous(), scales=scales.contiguous())
