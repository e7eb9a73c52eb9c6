"""YaRN rotary embedding tables (GPT_OSS_SPEC section 3); the only YaRN in the package.

Deviation noted: like Hugging Face transformers and vLLM, the correction range is clamped to
[0, head_dim - 1] (the spec's formulas leave it unclamped; for gpt-oss's own settings, low = 8.09 and
high = 17.40, the clamp changes nothing). Frequencies are computed in float32 as transformers does so that
the reference agrees with it to float32 rounding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..config import ModelConfig


@dataclass(frozen=True)
class YarnParams:
    inv_freq: torch.Tensor  # [hd/2] float32
    concentration: float  # multiplies cos and sin: 0.1 * ln(factor) + 1
    low: float
    high: float


def yarn_params(cfg: ModelConfig) -> YarnParams:
    d, base, rs = cfg.head_dim, cfg.rope_theta, cfg.rope_scaling

    def correction_dim(num_rotations: float) -> float:
        return (d * math.log(rs.original_max_position_embeddings / (num_rotations * 2 * math.pi))) / (2 * math.log(base))

    low, high = correction_dim(rs.beta_fast), correction_dim(rs.beta_slow)
    if rs.truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0.0), min(high, d - 1.0)
    if low == high:
        high += 0.001  # avoid a zero-width ramp
    freq = base ** (torch.arange(0, d, 2, dtype=torch.float32) / d)  # [hd/2]
    ramp = ((torch.arange(d // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)  # 0: keep, 1: interpolate
    inv_freq = (1.0 / freq) * (1 - ramp) + (1.0 / (rs.factor * freq)) * ramp
    concentration = 0.1 * math.log(rs.factor) + 1.0 if rs.factor > 1 else 1.0
    return YarnParams(inv_freq, concentration, low, high)


class RotaryTable(torch.nn.Module):
    """cos/sin for any positions, with the concentration folded in: cos(p * inv_freq) * concentration."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        p = yarn_params(cfg)
        self.concentration = p.concentration
        self.register_buffer("inv_freq", p.inv_freq, persistent=False)

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # positions [T] -> cos, sin [T, hd/2] float32
        freqs = positions.float()[:, None] * self.inv_freq[None, :]
        return freqs.cos() * self.concentration, freqs.sin() * self.concentration
