"""Helpers shared by the Triton kernel tests (imported as `triton_cases`: pytest puts this directory on
sys.path). conftest.py has already set TRITON_INTERPRET when CUDA is absent, so INTERPRET reads its final value.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
DEV = "cpu" if INTERPRET else "cuda"  # the interpreter takes CPU tensors; compiled kernels CUDA ones
ROOT = Path(__file__).resolve().parents[2]  # the repository root


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b||, in float64."""
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def run_compile_check(script: str) -> None:
    """Runs a test file's compile-for-Hopper `script` in a fresh interpreter with TRITON_INTERPRET removed
    (it is fixed when a kernel is defined, so the compile cannot run in this process) and the repository on
    PYTHONPATH; asserts that it exits 0 and prints "ok" last."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    r = subprocess.run([sys.executable, "-c", script], env=env, cwd=ROOT, capture_output=True, check=False,
                       text=True, timeout=300)
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-4000:]
