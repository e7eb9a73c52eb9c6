"""Helpers shared by the Triton kernel tests (imported as `triton_cases`: pytest puts this directory on
sys.path). conftest.py has already set TRITON_INTERPRET when CUDA is absent, so INTERPRET reads its final value.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from oss_engine.kernels.types import ExpertWeight
from oss_engine.weights.tiles import tile_rows

INTERPRET = os.environ.get("TRITON_INTERPRET") == "1"
DEV = "cpu" if INTERPRET else "cuda"  # the interpreter takes CPU tensors; compiled kernels CUDA ones
ROOT = Path(__file__).resolve().parents[2]  # the repository root


def tiled(w: ExpertWeight) -> ExpertWeight:
    """The MXFP4 weight w with its blocks re-laid in weights/tiles.py's layout (ExpertWeight.tiled)."""
    return replace(w, blocks=tile_rows(w.blocks), tiled=True)


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b||, in float64."""
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


_COMPILE_PRELUDE = r'''
import triton, triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

def compile_sm90(fn, consts, ptrs, floats=(), divisible=None):
    """fn compiled for sm_90 with the constexpr values `consts`, pointer types `ptrs` (name -> "*bf16", ...),
    float32 scalars `floats` (other scalars i32); the arguments in `divisible` (default: the pointers) are
    declared 16-divisible, specialised as a real launch would be. Asserts that a cubin came out."""
    sig = {n: "constexpr" if n in consts else ptrs.get(n, "fp32" if n in floats else "i32") for n in fn.arg_names}
    div_names = set(ptrs if divisible is None else divisible)
    div = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(fn.arg_names)
           if sig[n] != "constexpr" and n in div_names}
    k = triton.compile(ASTSource(fn, sig, consts, div), target=GPUTarget("cuda", 90, 32))
    assert "cubin" in k.asm, "no cubin"
    return k

def skip_without_sm90():
    """Ends the script as skipped (run_compile_check) where no sm_90 target can be built: the CUDA backend
    and its ptxas missing."""
    try:
        from triton.backends.nvidia.compiler import get_ptxas_version
        get_ptxas_version(90)
    except Exception as e:
        print(f"skip: cannot compile for sm_90 here: {e!r:.300}")
        raise SystemExit(0)

def cuobjdump(k, flag):
    """The text `cuobjdump flag` (-sass, -res-usage) prints for compiled kernel k's cubin."""
    import os, subprocess, tempfile
    nv = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "k.cubin")
        open(path, "wb").write(k.asm["cubin"])
        return subprocess.run([os.path.join(nv, "cuobjdump"), flag, path], capture_output=True, text=True).stdout
'''


def run_compile_check(script: str) -> None:
    """Runs a test file's compile-for-Hopper `script` (after a prelude that imports triton and defines
    `compile_sm90`, `skip_without_sm90` and `cuobjdump`) in a fresh interpreter with TRITON_INTERPRET removed (it
    is fixed when a kernel is defined, so the compile cannot run in this process) and the repository on
    PYTHONPATH; asserts that it exits 0 and prints "ok" last. A script that finds compiling for a GPU target
    impossible here prints "skip: why" (`skip_without_sm90`) and exits 0: the test is then skipped."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    r = subprocess.run([sys.executable, "-c", _COMPILE_PRELUDE + script], env=env, cwd=ROOT, capture_output=True, check=False,
                       text=True, timeout=300)
    if r.returncode == 0 and r.stdout.startswith("skip: "):
        pytest.skip(r.stdout.strip()[len("skip: "):])
    assert r.returncode == 0 and r.stdout.strip().endswith("ok"), r.stderr[-4000:]
