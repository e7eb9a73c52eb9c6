"""A convert function per stored layout: checkpoint tensor -> our parameter's layout. Only this step differs
between checkpoint formats; the name table says which convert each tensor takes."""

from __future__ import annotations

from typing import Callable

import torch


def copy(t: torch.Tensor) -> torch.Tensor:
    return t


def experts_input_major(t: torch.Tensor) -> torch.Tensor:
    """bf16 experts are stored input-major ([E, in, out], y = x @ W); ours are output-major [E, out, in]."""
    return t.transpose(1, 2)


CONVERTS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "copy": copy,
    "experts_input_major": experts_input_major,
}


def stored_shape(convert: str, param_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape the checkpoint must hold so that `convert` yields `param_shape`."""
    if convert == "experts_input_major":
        E, out, inp = param_shape
        return (E, inp, out)
    return param_shape


def stored_dim(convert: str, dim: int) -> int:
    """Our layout's dim `dim` -> the checkpoint's (the shard step slices in our dims, reads in the file's)."""
    if convert == "experts_input_major" and dim in (1, 2):
        return 3 - dim
    return dim
