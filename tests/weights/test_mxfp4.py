"""MXFP4 reference: bit-exact decoding against transformers, encoding rules, round trips."""

from __future__ import annotations

import pytest
import torch

from oss_engine.weights.mxfp4 import (
    FP4_VALUES,
    Mxfp4Tensor,
    dequantize_mxfp4,
    quantize_mxfp4,
    scale_factors,
)

_BITS = {torch.float32: torch.int32, torch.bfloat16: torch.int16, torch.float16: torch.int16}


def _bits(t: torch.Tensor) -> torch.Tensor:
    """Bit pattern view, so that -0 != +0 and NaN == NaN in comparisons."""
    return t.contiguous().view(_BITS[t.dtype])


def _random_packed(shape: tuple[int, ...], lo: int, hi: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """shape = [..., G] -> (blocks uint8 [..., G, 16] uniform, scales uint8 [..., G] in [lo, hi])."""
    gen = torch.Generator().manual_seed(seed)
    blocks = torch.randint(0, 256, (*shape, 16), dtype=torch.uint8, generator=gen)
    scales = torch.randint(lo, hi + 1, shape, dtype=torch.uint8, generator=gen)
    return blocks, scales


def test_fp4_values_are_the_e2m1_table():
    assert FP4_VALUES == (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0)
    signs = torch.signbit(torch.tensor(FP4_VALUES))
    assert signs.tolist() == [False] * 8 + [True] * 8  # code 8 is -0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("shape", [(2, 8, 3), (4, 64, 2), (1, 5, 1), (3, 16, 4)])  # [E, out, G]
def test_dequantize_matches_transformers_bit_exactly(shape, dtype):
    hf_mxfp4 = pytest.importorskip("transformers.integrations.mxfp4")
    blocks, scales = _random_packed(shape, 110, 135, seed=sum(shape))
    ours = dequantize_mxfp4(blocks, scales, dtype)  # [E, out, in]
    theirs = hf_mxfp4.convert_moe_packed_tensors(blocks, scales, dtype=dtype)  # [E, in, out]
    assert ours.shape == (shape[0], shape[1], shape[2] * 32)
    assert ours.dtype == dtype
    assert torch.equal(_bits(ours), _bits(theirs.transpose(1, 2)))


def test_dequantize_matches_transformers_over_the_whole_finite_scale_range():
    hf_mxfp4 = pytest.importorskip("transformers.integrations.mxfp4")
    blocks, scales = _random_packed((2, 32, 4), 0, 254, seed=7)
    ours = dequantize_mxfp4(blocks, scales)
    theirs = hf_mxfp4.convert_moe_packed_tensors(blocks, scales, dtype=torch.float32)
    assert torch.equal(_bits(ours), _bits(theirs.transpose(1, 2)))


def test_nibble_order_low_first():
    blocks = torch.zeros(1, 16, dtype=torch.uint8)
    blocks[0, 0] = 0x21  # low nibble code 1 (+0.5), high nibble code 2 (+1.0)
    blocks[0, 1] = 0xF8  # low nibble code 8 (-0), high nibble code 15 (-6)
    out = dequantize_mxfp4(blocks, torch.tensor([127], dtype=torch.uint8))  # scale 2**0
    assert out.shape == (32,)
    assert out[:4].tolist() == [0.5, 1.0, -0.0, -6.0]
    assert torch.signbit(out[2])
    assert not out[4:].any()


def test_scale_bytes_are_exact_powers_of_two():
    s = torch.tensor([0, 1, 100, 126, 127, 128, 254, 255], dtype=torch.uint8)
    f = scale_factors(s)
    expected = [2.0**-127, 2.0**-126, 2.0**-27, 0.5, 1.0, 2.0, 2.0**127]
    assert f[:-1].tolist() == expected
    assert torch.isnan(f[-1])  # 0xFF is NaN in the OCP MX spec


def test_dequantize_keeps_leading_dims_and_orientation():
    blocks, scales = _random_packed((3, 2), 120, 130, seed=1)  # [out=3, G=2]
    out = dequantize_mxfp4(blocks, scales)
    assert out.shape == (3, 64)
    for row in range(3):
        one = dequantize_mxfp4(blocks[row], scales[row])  # [G, 16] -> [64]
        assert torch.equal(out[row], one)
    b5, s5 = _random_packed((2, 1, 3, 1), 120, 130, seed=2)
    assert dequantize_mxfp4(b5, s5).shape == (2, 1, 3, 32)


def test_dequantize_rejects_bad_inputs():
    blocks, scales = _random_packed((2, 2), 120, 130, seed=3)
    with pytest.raises(ValueError, match="uint8"):
        dequantize_mxfp4(blocks.to(torch.int16), scales)
    with pytest.raises(ValueError, match="does not match"):
        dequantize_mxfp4(blocks, scales[:, :1])
    with pytest.raises(ValueError, match=r"\[\.\.\., G, 16\]"):
        dequantize_mxfp4(blocks[..., :8], scales)


def test_quantize_round_trips_representable_values():
    blocks, scales = _random_packed((4, 6, 3), 115, 135, seed=4)
    w = dequantize_mxfp4(blocks, scales)  # [4, 6, 96], MXFP4-representable by construction
    q = quantize_mxfp4(w)
    assert isinstance(q, Mxfp4Tensor)
    assert q.blocks.shape == (4, 6, 3, 16) and q.blocks.dtype == torch.uint8
    assert q.scales.shape == (4, 6, 3) and q.scales.dtype == torch.uint8
    assert torch.equal(q.dequantize(), w)
    assert torch.equal(quantize_mxfp4(w.to(torch.bfloat16)).dequantize(), w)


def test_quantize_rounds_to_the_nearest_grid_point_of_the_smallest_fitting_scale():
    gen = torch.Generator().manual_seed(5)
    w = torch.randn(8, 128, generator=gen) * torch.logspace(-3, 2, 8).unsqueeze(-1)  # varied magnitudes
    q = quantize_mxfp4(w)
    dq = q.dequantize()  # [8, 128]
    step = scale_factors(q.scales).unsqueeze(-1)  # [8, 4, 1]
    groups = w.view(8, 4, 32)
    amax = groups.abs().amax(-1, keepdim=True)  # [8, 4, 1]
    assert bool(((amax / step > 3) & (amax / step <= 6)).all())  # smallest scale holding the max
    grid = torch.tensor(FP4_VALUES).view(1, 1, 1, 16) * step.unsqueeze(-1)  # [8, 4, 1, 16]
    best = (groups.unsqueeze(-1) - grid).abs().amin(-1)  # [8, 4, 32]
    assert torch.equal((groups - dq.view(8, 4, 32)).abs(), best)


def test_quantize_ties_go_to_even_codes():
    mags = [0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 6.0]  # midpoints, then 6 to pin the scale at 2**0
    expected = [0.0, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0, 6.0]
    w = torch.tensor(mags * 2 + [-m for m in mags] * 2)  # [32]
    dq = quantize_mxfp4(w).dequantize()
    assert dq.tolist() == expected * 2 + [-e for e in expected] * 2
    assert quantize_mxfp4(w).scales.tolist() == [127]


def test_quantize_zero_and_tiny_groups():
    w = torch.zeros(2, 32)
    w[1, 0] = -1e-3
    w[1, 1] = 1e-3
    w[1, 2] = -1e-9  # rounds to -0
    dq = quantize_mxfp4(w).dequantize()
    assert not dq[0].any()
    assert dq[1, 0].item() < 0 and dq[1, 1].item() > 0
    assert dq[1, 2].item() == 0.0 and torch.signbit(dq[1, 2])


def test_quantize_rejects_bad_inputs():
    with pytest.raises(ValueError, match="multiple of 32"):
        quantize_mxfp4(torch.zeros(4, 48))
    with pytest.raises(ValueError, match="floating-point"):
        quantize_mxfp4(torch.zeros(4, 32, dtype=torch.int32))
    with pytest.raises(ValueError, match="non-finite"):
        quantize_mxfp4(torch.tensor([float("inf")] + [0.0] * 31))


def test_dequantize_in_chunks_equals_one_pass(monkeypatch):
    import oss_engine.weights.mxfp4 as mxfp4

    blocks, scales = _random_packed((3, 7, 2), 110, 135, seed=9)  # 21 rows of 64 values
    whole = dequantize_mxfp4(blocks, scales)
    monkeypatch.setattr(mxfp4, "_CHUNK_VALUES", 150)  # 2 rows per chunk, the last chunk partial
    assert torch.equal(dequantize_mxfp4(blocks, scales), whole)
