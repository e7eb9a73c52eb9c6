"""Programmatic dependent launch (PDL): whether this package's Triton kernels launch with it.

Why: a batch-1 decode step runs ~10 small kernels per layer back to back, and the gap between two of them
(launch latency, the tail of one before the next starts) is a large share of the step on sm_90. With PDL a
kernel may start while the previous one is still running: it can prefetch weights, then `gdc_wait()` blocks
until the previous grid has completed and its writes are visible. Each kernel here takes `PDL: tl.constexpr`
and calls `wait_for_inputs(PDL)` (below) before its first read of produced data and its first write; its
wrapper passes `PDL=pdl, launch_pdl=pdl` with `pdl = launch.use_pdl(device)`, looked up through the module
at call time so a script can monkeypatch `launch.use_pdl` to compare both.

The next kernel is let go only after this one's wait, so at most one kernel runs ahead of the last one still
working; the decode GEMM 2 relies on that when it reads its routing ids before its wait. Letting it go first
instead (kernels chaining ahead) crashed with every kernel doing so, and lost ~3% at batch 1 on an H200 with
only the norm, RoPE, attention, its merge and the MoE combine doing so (docs/performance.md, "Thirteenth
session").

Off for CPU tensors, GPUs before sm_90 (no griddepcontrol) and the Triton interpreter (TRITON_INTERPRET=1,
Triton's own variable: gdc_wait is inline PTX the interpreter cannot run). The interpreter ignores the
`launch_pdl` keyword, so passing False is harmless there.
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait


def use_pdl(device: torch.device) -> bool:
    """True when kernels on `device` should launch with PDL: CUDA, capability >= 9.0, no interpreter."""
    if device.type != "cuda" or os.environ.get("TRITON_INTERPRET") == "1":
        return False
    return capability(device)[0] >= 9


def is_sm90(device: torch.device) -> bool:
    """Whether `device` is a CUDA sm_90 (Hopper) GPU, the target of the wgmma kernels; False without CUDA."""
    return device.type == "cuda" and torch.cuda.is_available() and capability(device) == (9, 0)


def capability(device: torch.device) -> tuple[int, int]:
    """The compute capability of CUDA `device` (the current device when it has no index), looked up once."""
    return _capability(device.index if device.index is not None else torch.cuda.current_device())


@functools.lru_cache(maxsize=None)
def _capability(index: int) -> tuple[int, int]:
    return torch.cuda.get_device_capability(index)


@triton.jit
def wait_for_inputs(PDL: tl.constexpr):
    """In a kernel launched with PDL: block until the previous grid has completed and its writes are
    visible (call it before reading anything produced on the GPU and before any write), then let the next
    kernel start launching. A no-op when PDL is off."""
    if PDL:
        gdc_wait()
        gdc_launch_dependents()
