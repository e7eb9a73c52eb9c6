"""Is the MXFP4 upcast what limits the MoE GEMMs? Times the same kernels on bf16 (dense) expert weights,
where no decode happens, against MXFP4 at the gpt-oss-20b shapes, and prints each as GB/s of the weight bytes
read (CUDA-graph replays after a read-only L2 flush, median us). If dense reaches a much higher GB/s, the
decode is the limit; if both sit near the same rate, the tile structure is.

Run: PYTHONPATH=. python scripts/gpu_probe_moe_upcast.py
"""

from __future__ import annotations

import functools

import torch

from oss_engine.kernels.triton.moe import moe_experts_triton
from oss_engine.kernels.triton.moe_decode import moe_experts_decode_triton
from oss_engine.kernels.types import ExpertWeight
from gpu_bench_moe import ALPHA, D, E, I, LIMIT, batch, mxfp4_weight
from gpu_probe_flush import graph_us, read_fn


def dense_weight(out: int, inp: int) -> ExpertWeight:
    w = (torch.randn(E, out, inp, device="cuda", dtype=torch.bfloat16) * inp**-0.5)
    return ExpertWeight((torch.randn(E, out, device="cuda") * 0.1).to(torch.bfloat16), dense=w)


def main() -> None:
    flush = read_fn(torch.empty(256 << 20, dtype=torch.uint8, device="cuda"), 256 << 10)
    gen = torch.Generator().manual_seed(0)
    weights = {"mxfp4": (mxfp4_weight(2 * I, D, gen), mxfp4_weight(D, I, gen)),
               "bf16": (dense_weight(2 * I, D), dense_weight(D, I))}
    per_expert = {"mxfp4": 3 * I * D * 4.25 / 8, "bf16": 3 * I * D * 2}
    print(torch.cuda.get_device_name())
    for T in (1, 2, 8, 64):
        x, w_, ids = batch(T, gen)
        touched = ids.unique().numel()
        for fmt, (w1, w2) in weights.items():
            for path, fn in (("decode", moe_experts_decode_triton), ("grouped", moe_experts_triton)):
                if path == "decode" and T * 4 > 16:
                    continue
                us = graph_us(functools.partial(fn, x, w_, ids, w1, w2, LIMIT, ALPHA), flush)
                gb = touched * per_expert[fmt] / 1e9
                print(f"T={T:>2} {fmt:>5} {path:>7}: {us:7.1f} us, {gb * 1e3:6.1f} MB, {gb * 1e6 / us:5.0f} GB/s",
                      flush=True)


if __name__ == "__main__":
    main()
