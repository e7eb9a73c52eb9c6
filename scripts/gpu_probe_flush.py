"""Is the timing method fair to small weight streams? Times a pure read of N bytes (a Triton kernel summing
them), the decode MoE experts and the qkv linear at T = 1, each as a CUDA-graph replay after two kinds of L2
flush: writing 256 MB (what `graph_us` does: leaves the L2 full of dirty lines that our reads must evict,
write-back traffic a real decode step does not have) and reading 256 MB (leaves clean lines).

Run: PYTHONPATH=. python scripts/gpu_probe_flush.py
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from oss_engine.bench.hardware import median_seconds
from oss_engine.kernels.triton.moe import moe_experts_triton
from oss_engine.kernels.triton.moe_decode import DecodeTiles, moe_experts_decode_triton
from gpu_bench_moe import ALPHA, D, I, LIMIT, batch, mxfp4_weight


@triton.jit
def _read_kernel(src_ptr, out_ptr, n, CHUNK: tl.constexpr, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    acc = tl.zeros([BLOCK], tl.int32)
    for off in range(0, CHUNK, BLOCK):
        idx = pid.to(tl.int64) * CHUNK + off + tl.arange(0, BLOCK)
        acc += tl.load(src_ptr + idx, mask=idx < n, other=0).to(tl.int32)
    tl.store(out_ptr + pid, tl.sum(acc, axis=0))


def read_fn(buf: torch.Tensor, chunk: int):
    n = buf.numel()
    grid = triton.cdiv(n, chunk)
    out = torch.empty(grid, dtype=torch.int32, device=buf.device)
    return lambda: _read_kernel[(grid,)](buf, out, n, CHUNK=chunk, BLOCK=4096, num_warps=8)


def graph_us(fn, before, reps=30) -> float:
    fn()
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    return 1e6 * median_seconds(g.replay, torch.device("cuda"), reps, before=before)


def main() -> None:
    dev = torch.device("cuda")
    flush = torch.empty(256 << 20, dtype=torch.uint8, device=dev)
    flushes = {"write-flush": flush.zero_, "read-flush": read_fn(flush, 256 << 10), "no-flush": None}
    print(f"{torch.cuda.get_device_name()}")
    print(f"{'case':42s} " + " ".join(f"{k:>12s}" for k in flushes) + "   (us; GB/s of the bytes in brackets)")
    for mb in (8, 17.6, 35.2, 70, 1024):
        buf = torch.randint(0, 255, (int(mb * 1e6),), dtype=torch.uint8, device=dev)
        for chunk in (64 << 10, 256 << 10):
            fn = read_fn(buf, chunk)
            ts = [graph_us(fn, f) for f in flushes.values()]
            print(f"{f'read {mb} MB, {chunk >> 10} KB a program':42s} "
                  + " ".join(f"{t:>6.1f} [{mb * 1e3 / t:>4.0f}]" for t in ts))
    gen = torch.Generator().manual_seed(0)
    w1, w2 = mxfp4_weight(2 * I, D, gen), mxfp4_weight(D, I, gen)
    mb = 4 * (2 * I * D + D * I) * 4.25 / 8 / 1e6
    for T in (1, 8):
        x, weights, ids = batch(T, gen)
        mbT = ids.unique().numel() * mb / 4
        for name, fn in (("moe grouped", functools.partial(moe_experts_triton, x, weights, ids, w1, w2, LIMIT, ALPHA)),
                         ("moe decode st2", functools.partial(moe_experts_decode_triton, x, weights, ids, w1, w2,
                                                              LIMIT, ALPHA, DecodeTiles(32, 256, 2, 2, 32, 256, 2, 2, 2)))):
            ts = [graph_us(fn, f) for f in flushes.values()]
            print(f"{f'{name} T={T} ({mbT:.1f} MB)':42s} " + " ".join(f"{t:>6.1f} [{mbT * 1e3 / t:>4.0f}]" for t in ts))
    w = torch.randn(5120, 2880, device=dev, dtype=torch.bfloat16)
    b = torch.randn(5120, device=dev, dtype=torch.bfloat16)
    x = torch.randn(1, 2880, device=dev, dtype=torch.bfloat16)
    ts = [graph_us(lambda: F.linear(x, w, b), f) for f in flushes.values()]
    print(f"{'qkv linear T=1 (29.5 MB)':42s} " + " ".join(f"{t:>6.1f} [{29.5e3 / t:>4.0f}]" for t in ts))
    e = torch.cuda.CUDAGraph()
    with torch.cuda.graph(e):
        pass
    print(f"empty graph replay: {1e6 * median_seconds(e.replay, dev, 30):.1f} us")


if __name__ == "__main__":
    main()
