"""GPU machine (sm_90): moe.py's GEMM 1 on wgmma (`moe_gluon_wgmma.py`, the "wgmma" mode) against the Triton
`dot_scaled` GEMM 1 (`triton_config`), and what `default_config` picks, at prefill sizes (gpt-oss-20b shapes,
uniform routing, experts only, CUDA graph replay with L2 flushed: gpu_bench_moe's timer), each point checked
against the reference first. Two rounds, us, and the experts' TFLOP/s; "ERR" marks a point off the reference.

Run: PYTHONPATH=.:scripts python scripts/gpu_bench_moe_wgmma.py [--tokens 256,512,1024,2048,8192,16384]
"""

from __future__ import annotations

import argparse
import functools

import torch

from gpu_bench_moe import ALPHA, A, D, E, EXPERT_FLOPS, I, LIMIT, batch, mxfp4_weight, timed_cells
from oss_engine.kernels.ref.moe import moe_experts_ref
from oss_engine.kernels.triton.moe import (WGMMA_GEMM1, MoeTritonConfig, default_config, moe_experts_triton,
                                           triton_config)


def variants(T: int) -> dict[str, MoeTritonConfig]:
    cuda = torch.device("cuda")
    base = triton_config(T * A, E, cuda)
    return {"default": default_config(T * A, E, cuda), "dot_scaled": base,
            "wgmma": MoeTritonConfig(WGMMA_GEMM1, base.gemm2, "wgmma")}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--tokens", default="256,512,1024,2048,8192,16384")
    args = p.parse_args()
    gen = torch.Generator().manual_seed(0)
    w1, w2 = mxfp4_weight(2 * I, D, gen), mxfp4_weight(D, I, gen)
    print(torch.cuda.get_device_name(), flush=True)
    cases = {int(T): batch(int(T), gen) for T in args.tokens.split(",")}
    wants = {T: moe_experts_ref(x, w, ids, w1, w2, LIMIT, ALPHA).float() for T, (x, w, ids) in cases.items()}
    for rnd in range(2):
        for T, (x, weights, ids) in cases.items():
            points = {name: functools.partial(moe_experts_triton, x, weights, ids, w1, w2, LIMIT, ALPHA, config=cfg)
                      for name, cfg in variants(T).items()}
            tflops = T * A * EXPERT_FLOPS / 1e6
            cells = timed_cells(points, wants[T], reps=10, show=lambda us: f"{us:.1f} ({tflops / us:.0f} TF/s)")
            print(f"r{rnd} T={T}: " + " | ".join(cells), flush=True)


if __name__ == "__main__":
    main()
