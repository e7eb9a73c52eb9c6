"""The loading pipeline: read -> rename -> convert -> shard -> copy, one tensor at a time.

Everything that can be checked without reading tensor data is checked first (headers, the full set of
names, every shape and dtype), so a bad checkpoint is refused before any parameter is touched; a failure
while reading discards the model. Tensors are streamed: one is held in host memory at a time and copied
into parameters that were allocated once on the target device, so device memory peaks at the model's size.

Sharding (the name table's shard rules, weights/shards.py): a rank reads only the region of each tensor it
holds (safetensors slices: only those bytes leave the file), skips tensors of other pipeline stages, and
zero-fills a bias that another rank adds. The shard step is planned with the rename, so it is the same for
every checkpoint format; only the convert differs.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from ..parallel.shard import RankShard
from .checkpoint import Checkpoint, CheckpointError
from .formats import CONVERTS, stored_dim, stored_shape
from .names import Placement, expected_tensors

_FLOAT_DTYPES = (torch.bfloat16, torch.float16, torch.float32)


@dataclass(frozen=True)
class LoadReport:
    """What one rank loaded: bytes read from the checkpoint files (its slices, in the stored dtype) and
    bytes of the parameters it holds (in the compute dtype; MXFP4 stays packed)."""

    bytes_read: int
    param_bytes: int
    tensors_read: int


def load_weights(model: torch.nn.Module, model_dir: str | Path, cfg, *, shard: RankShard | None = None,
                 progress: bool = True, source=None) -> LoadReport:
    """Fill every parameter of `model` (the rank of `shard`: the whole model by default) from the checkpoint
    in `model_dir` (or from `source`, an object with Checkpoint's names / meta / read_region, e.g. the random
    weights of weights/dummy.py), or raise CheckpointError."""
    params = dict(model.named_parameters())
    bytes_read = tensors_read = 0
    with source or Checkpoint.open(model_dir) as ckpt:
        plan = _plan(ckpt, expected_tensors(cfg, shard), params, model_dir)
        for name, place in tqdm(plan, desc="Loading weights", unit="tensor", disable=not progress):
            dst = params[place.param]
            if place.rows is not None:
                dst = dst[place.rows[0]:place.rows[1]]
            if place.region.zero:
                with torch.no_grad():
                    dst.zero_()
                continue
            ranges = {stored_dim(place.convert, d): (a, b) for d, (a, b, _) in place.region.dims.items()}
            try:
                t = CONVERTS[place.convert](ckpt.read_region(name, ranges))
            except CheckpointError:
                raise
            except Exception as e:  # a read that fails past the header checks (I/O error, bad data)
                raise CheckpointError(f"{ckpt.meta(name).file}: tensor {name!r} could not be read ({e})") from e
            bytes_read += t.numel() * t.element_size()
            tensors_read += 1
            with torch.no_grad():
                dst.copy_(t)
    for module in model.modules():  # facts about the loaded weights that modules keep (e.g. MXFP4 scale ranges)
        hook = getattr(module, "after_load", None)
        if hook is not None:
            hook()
    param_bytes = sum(p.numel() * p.element_size() for p in params.values())
    return LoadReport(bytes_read, param_bytes, tensors_read)


def _plan(ckpt: Checkpoint, expected: dict[str, Placement], params: dict[str, torch.nn.Parameter],
          model_dir: str | Path) -> list[tuple[str, Placement]]:
    """Check names, shapes, dtypes and coverage against the model; return (tensor, placement) in file order
    for the tensors this rank holds."""
    present = set(ckpt.names())
    missing = sorted(set(expected) - present)
    if missing:
        raise CheckpointError(f"{model_dir}: checkpoint is missing tensor {missing[0]!r}"
                              + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    unexpected = sorted(present - set(expected))
    if unexpected:
        name = unexpected[0]
        raise CheckpointError(f"{ckpt.meta(name).file}: unexpected tensor {name!r} (not part of a gpt-oss model "
                              f"with this config.json)" + (f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else ""))
    covered: dict[str, int] = {}
    held = {name: place for name, place in expected.items() if place.region is not None}
    for name, place in held.items():
        meta, param = ckpt.meta(name), params[place.param]
        want = list(param.shape)
        if place.rows is not None:
            want[0] = place.rows[1] - place.rows[0]
        want_stored = stored_shape(place.convert, tuple(want))
        full = list(want_stored)  # the whole tensor, of which this rank reads a region
        for d, (start, stop, size) in place.region.dims.items():
            assert stop - start == want_stored[stored_dim(place.convert, d)], (name, place)  # shard vs model
            full[stored_dim(place.convert, d)] = size
        if tuple(meta.shape) != tuple(full):
            raise CheckpointError(f"{meta.file}: tensor {name!r} has shape {tuple(meta.shape)}, "
                                  f"expected {tuple(full)}")
        if param.dtype == torch.uint8 and meta.dtype != torch.uint8:
            raise CheckpointError(f"{meta.file}: tensor {name!r} has dtype {meta.dtype}, expected torch.uint8")
        if param.dtype != torch.uint8 and meta.dtype not in _FLOAT_DTYPES:
            raise CheckpointError(f"{meta.file}: tensor {name!r} has dtype {meta.dtype}, expected a float dtype "
                                  f"(bfloat16, float16 or float32)")
        covered[place.param] = covered.get(place.param, 0) + (want[0] if place.rows is not None else param.shape[0])
    for pname, param in params.items():  # each parameter's rows filled exactly once
        if covered.get(pname, 0) != param.shape[0]:
            raise CheckpointError(f"{model_dir}: parameter {pname!r} is not exactly covered by the checkpoint "
                                  f"({covered.get(pname, 0)} of {param.shape[0]} rows)")
    return sorted(held.items(), key=lambda kv: (str(ckpt.meta(kv[0]).file), kv[0]))
