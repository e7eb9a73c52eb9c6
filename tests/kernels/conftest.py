"""Shared setup of the Triton kernel tests in this directory.

Without CUDA, TRITON_INTERPRET=1 is set here, when pytest loads this conftest: that is before any test module
of this directory imports triton or a kernel module, and Triton reads the variable when a kernel is defined.
Every test also gets a fresh, reproducible seed of torch's global generator (`_seed`).
"""

from __future__ import annotations

import os
import zlib

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported: kernels run on the CPU


@pytest.fixture(autouse=True)
def _seed(request):
    torch.manual_seed(zlib.crc32(request.node.name.encode()))  # fresh inputs per case, reproducible
