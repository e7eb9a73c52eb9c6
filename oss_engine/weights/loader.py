"""The loading pipeline: read -> rename -> convert -> copy, one tensor at a time.

Everything that can be checked without reading tensor data is checked first (headers, the full set of
names, every shape and dtype), so a bad checkpoint is refused before any parameter is touched; a failure
while reading discards the model. Tensors are streamed: one is held in host memory at a time and copied
into parameters that were allocated once on the target device, so device memory peaks at the model's size.
"""

from __future__ import annotations

from pathlib import Path

import torch
from tqdm import tqdm

from .checkpoint import Checkpoint, CheckpointError
from .formats import CONVERTS, stored_shape
from .names import Placement, expected_tensors

_FLOAT_DTYPES = (torch.bfloat16, torch.float16, torch.float32)


def load_weights(model: torch.nn.Module, model_dir: str | Path, cfg, *, progress: bool = True) -> None:
    """Fill every parameter of `model` from the checkpoint in `model_dir` (or raise CheckpointError)."""
    params = dict(model.named_parameters())
    with Checkpoint.open(model_dir) as ckpt:
        plan = _plan(ckpt, expected_tensors(cfg), params, model_dir)
        for name, place in tqdm(plan, desc="Loading weights", unit="tensor", disable=not progress):
            try:
                t = CONVERTS[place.convert](ckpt.read(name))
            except CheckpointError:
                raise
            except Exception as e:  # a read that fails past the header checks (I/O error, bad data)
                raise CheckpointError(f"{ckpt.meta(name).file}: tensor {name!r} could not be read ({e})") from e
            dst = params[place.param]
            if place.rows is not None:
                dst = dst[place.rows[0]:place.rows[1]]
            with torch.no_grad():
                dst.copy_(t)


def _plan(ckpt: Checkpoint, expected: dict[str, Placement], params: dict[str, torch.nn.Parameter],
          model_dir: str | Path) -> list[tuple[str, Placement]]:
    """Check names, shapes, dtypes and coverage against the model; return (tensor, placement) in file order."""
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
    for name, place in expected.items():
        meta, param = ckpt.meta(name), params[place.param]
        want = list(param.shape)
        if place.rows is not None:
            want[0] = place.rows[1] - place.rows[0]
        want_stored = stored_shape(place.convert, tuple(want))
        if tuple(meta.shape) != want_stored:
            raise CheckpointError(f"{meta.file}: tensor {name!r} has shape {tuple(meta.shape)}, "
                                  f"expected {want_stored}")
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
    return sorted(expected.items(), key=lambda kv: (str(ckpt.meta(kv[0]).file), kv[0]))
