"""GPU machine (sm_90): moe.py's GEMM 1 on wgmma (`moe_gluon_wgmma.py`, the "wgmma" mode) against the Triton
`dot_scaled` GEMM 1 (`triton_config`), and what `default_config` picks, at prefill sizes (gpt-oss-20b shapes,
uniform routing, experts only, CUDA graph replay with L2 flushed: gpu_bench_moe's timer), each point checked
against the reference first. Two rounds, us, and the experts' TFLOP/s; "ERR" marks a point off the reference.

Run: PYTHONPATH=.:scripts python scripts/gpu_bench_moe_wgmma.py [--tokens 256,512,1024,2048,8192,16384]
"""

from __future__ import annotations

import argparse

import torch

from gpu_bench_moe import A, E, prefill_rounds
from oss_engine.kernels.triton.moe_config import WGMMA_GEMM1, MoeTritonConfig, default_config, triton_config


def variants(T: int) -> dict[str, MoeTritonConfig]:
    cuda = torch.device("cuda")
    base = triton_config(T * A, E, cuda)
    return {"default": default_config(T * A, E, cuda), "dot_scaled": base,
            "wgmma": MoeTritonConfig(WGMMA_GEMM1, base.gemm2, "wgmma")}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--tokens", default="256,512,1024,2048,8192,16384")
    prefill_rounds(p.parse_args().tokens, variants)


if __name__ == "__main__":
    main()
