"""Half-width tail blocks (`GemmTiles.half_tail`) on and off, experts only, at the default tiles of each size
(gpt-oss-20b shapes, uniform routing): first whether both give the same bits, then `gpu_bench_moe.py`'s
checked, L2-flushed graph timings of: off, on (both GEMMs), on for GEMM 1 only, on for GEMM 2 only.

Run on the GPU machine: PYTHONPATH=.:scripts python scripts/gpu_bench_moe_tails.py [--tokens 512,2048,16384]
[--rounds 2]
"""

from __future__ import annotations

import argparse
from dataclasses import replace

import torch

from gpu_bench_moe import A, ALPHA, D, E, I, LIMIT, batch, mxfp4_weight, prefill_rounds
from oss_engine.kernels.triton.moe import moe_experts_triton
from oss_engine.kernels.triton.moe_config import MoeTritonConfig, default_config


def with_tails(cfg: MoeTritonConfig, gemm1: bool, gemm2: bool) -> MoeTritonConfig:
    return MoeTritonConfig(replace(cfg.gemm1, half_tail=gemm1), replace(cfg.gemm2, half_tail=gemm2),
                           cfg.mxfp4_decode)


def variants(T: int) -> dict[str, MoeTritonConfig]:
    base = default_config(T * A, E, torch.device("cuda"))
    return {"off": with_tails(base, False, False), "on": with_tails(base, True, True),
            "gemm1": with_tails(base, True, False), "gemm2": with_tails(base, False, True)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", default="512,1024,2048,8192,16384")
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    gen = torch.Generator().manual_seed(1)
    w1, w2 = mxfp4_weight(2 * I, D, gen), mxfp4_weight(D, I, gen)
    for T in (int(t) for t in args.tokens.split(",")):
        x, weights, ids = batch(T, gen)
        counts = torch.bincount(ids.flatten(), minlength=E)
        cfg = variants(T)
        on, off = (moe_experts_triton(x, weights, ids, w1, w2, LIMIT, ALPHA, config=cfg[k]) for k in ("on", "off"))
        print(f"T={T}: rows an expert {counts.min()}-{counts.max()}, same bits on and off: {torch.equal(on, off)}",
              flush=True)
    prefill_rounds(args.tokens, variants, rounds=args.rounds)


if __name__ == "__main__":
    main()
