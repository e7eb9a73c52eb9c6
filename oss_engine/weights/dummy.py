"""Random weights for `load_format="dummy"`: a checkpoint-shaped source whose tensors are made on the device
instead of read, fed through the normal loader (rename -> convert -> shard -> copy). Every tensor is drawn
from its own generator, seeded by (seed, checkpoint name), in full and then cut to the region a rank asks for,
so the weights are the same whatever the parallel layout (TP 8 holds exactly the slices of the TP 1 model) and
whatever the load order.

Values keep activations in a sane range and route tokens roughly uniformly (presets.write_random_checkpoint
writes these same tensors to files): linear weights N(0, 1/in), biases N(0, 0.1^2), norm weights 1 + N(0, 0.1^2),
sinks and embeddings N(0, 1), MXFP4 bytes uniform with scales 2^-9..2^-5.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import torch

from ..config import ModelConfig
from .checkpoint import TensorMeta
from .formats import stored_shape
from .names import expected_tensors

_FILE = Path("<random weights>")


def _full_shapes(cfg: ModelConfig, dtype: torch.dtype) -> dict[str, TensorMeta]:
    """Each checkpoint tensor's full stored shape and dtype, from an unsharded model built on the meta device."""
    from ..kernels import get_ops
    from ..model.gpt_oss import GptOssModel

    with torch.device("meta"):
        params = dict(GptOssModel(cfg, dtype, get_ops("ref")).named_parameters())
    out = {}
    for name, place in expected_tensors(cfg).items():
        p = params[place.param]
        shape = list(p.shape)
        if place.rows is not None:
            shape[0] = place.rows[1] - place.rows[0]
        out[name] = TensorMeta(name, _FILE, p.dtype, stored_shape(place.convert, tuple(shape)))
    return out


def _draw(meta: TensorMeta, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    name, shape = meta.name, meta.shape
    if meta.dtype == torch.uint8:
        lo, hi = (118, 123) if name.endswith("_scales") else (0, 256)
        return torch.randint(lo, hi, shape, generator=gen, device=device, dtype=torch.uint8)
    t = torch.empty(shape, dtype=meta.dtype, device=device)
    leaf = name.rsplit(".", 1)[-1]
    if "norm" in name:
        return t.normal_(0.0, 0.1, generator=gen).add_(1.0)
    if "bias" in leaf:
        return t.normal_(0.0, 0.1, generator=gen)
    if leaf == "sinks" or "embed" in name:
        return t.normal_(0.0, 1.0, generator=gen)
    fan_in = shape[1] if leaf in ("gate_up_proj", "down_proj") else shape[-1]  # bf16 experts are [E, in, out]
    return t.normal_(0.0, fan_in ** -0.5, generator=gen)


class RandomCheckpoint:
    """The loader's view of a checkpoint (names, meta, read_region), with random contents."""

    def __init__(self, cfg: ModelConfig, dtype: torch.dtype, seed: int, device: str | torch.device):
        self._meta = _full_shapes(cfg, dtype)
        self.seed, self.device = seed, torch.device(device)

    def names(self) -> list[str]:
        return list(self._meta)

    def meta(self, name: str) -> TensorMeta:
        return self._meta[name]

    def read_region(self, name: str, ranges: dict[int, tuple[int, int]]) -> torch.Tensor:
        meta = self._meta[name]
        gen = torch.Generator(device=self.device).manual_seed(self.seed * 1_000_003 + zlib.crc32(name.encode()))
        index = [slice(None)] * len(meta.shape)
        for dim, (start, stop) in ranges.items():
            index[dim] = slice(start, stop)
        return _draw(meta, gen, self.device)[tuple(index)]

    def close(self) -> None:
        pass

    def __enter__(self) -> RandomCheckpoint:
        return self

    def __exit__(self, *exc) -> None:
        pass
