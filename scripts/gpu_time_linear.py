"""Skinny linear: Triton kernel vs F.linear (cuBLAS) at gpt-oss decode shapes, bf16, CUDA graphs, L2 flushed.
Run: PYTHONPATH=. python scripts/gpu_time_linear.py"""

import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, "scripts")
from gpu_bench_moe import time_graph_flushed  # noqa: E402

from oss_engine.kernels.triton.linear import linear_triton  # noqa: E402

for name, N, K in (("qkv", 5120, 2880), ("o_proj", 2880, 4096), ("router", 32, 2880)):
    w = (torch.randn(N, K, device="cuda") * K ** -0.5).to(torch.bfloat16)
    b = torch.randn(N, device="cuda").to(torch.bfloat16)
    for M in (1, 8, 16):
        x = torch.randn(M, K, device="cuda").to(torch.bfloat16)
        err = ((linear_triton(x, w, b).float() - F.linear(x, w, b).float()).norm() / F.linear(x, w, b).float().norm()).item()
        t_tri = time_graph_flushed(lambda: linear_triton(x, w, b))
        t_cub = time_graph_flushed(lambda: F.linear(x, w, b))
        mb = N * K * 2 / 1e6
        print(f"{name:<7} M={M:<3} triton {t_tri:6.1f} us ({mb / t_tri:5.0f} GB/s)  cublas {t_cub:6.1f} us  err {err:.1e}",
              flush=True)
