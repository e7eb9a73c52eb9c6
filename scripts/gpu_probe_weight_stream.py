"""GPU machine: how fast can the decode path's GEMM 1 weight bytes be streamed with that GEMM's grid (4 experts x 180
programs of 32 rows, 1,440 bytes a row: 35.2 MB a launch)? Read-only Triton kernels that xor the bytes, so that
nothing but the reads costs:
  rows  each program reads its 32 rows STEP bytes of each row at a time (the GEMM's order: 64 bytes a row a step)
  flat  each program reads the same 46,080 bytes as one contiguous run (what a tile-major re-layout would give)
8 launches a CUDA graph over 8 expert sets (280 MB, more than L2), per launch us; the floor is 35.2 MB over the
copy rate (~11.8 us on an H100). With the GEMM's own time (17.8 us on an H100, 16.0 with only its weight loads:
docs/performance.md, "Nineteenth session") it says how much of the gap is the access order and how much the
GEMM's own latency chain. Prepared in the nineteenth session and checked in the CPU interpreter (the xor of
each program's bytes); not yet run on a GPU.

Run: PYTHONPATH=.:scripts python scripts/gpu_probe_weight_stream.py
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from gpu_probe_moe_decode_limits import LAUNCHES, per_launch_us

E, N, KB = 32, 5760, 1440  # experts, rows, bytes a row (gate_up of 20b)


@triton.jit
def _program(ids_ptr, N: tl.constexpr, BN: tl.constexpr):
    """Both orders' grid, the GEMM's: (program, its expert, its first row)."""
    p = tl.program_id(0)
    return p, tl.load(ids_ptr + p // (N // BN)).to(tl.int64), (p % (N // BN)) * BN


@triton.jit
def _rows(w_ptr, ids_ptr, out_ptr, N: tl.constexpr, WORDS: tl.constexpr, STEP: tl.constexpr,
          BN: tl.constexpr):
    p, e, n0 = _program(ids_ptr, N, BN)
    r = tl.arange(0, BN)[:, None]
    c = tl.arange(0, STEP // 4)[None, :]
    base = w_ptr + e * (N * WORDS) + (n0 + r) * WORDS  # int32 units
    acc = tl.zeros([BN, STEP // 4], tl.int32)
    for k in tl.range(0, WORDS, STEP // 4, num_stages=3):
        acc ^= tl.load(base + k + c, mask=k + c < WORDS, other=0)
    tl.store(out_ptr + p, tl.reduce(tl.reshape(acc, [BN * STEP // 4]), 0, _xor))


@triton.jit
def _xor(a, b):
    return a ^ b


@triton.jit
def _flat(w_ptr, ids_ptr, out_ptr, N: tl.constexpr, WORDS: tl.constexpr, STEP: tl.constexpr,
          BN: tl.constexpr):
    p, e, n0 = _program(ids_ptr, N, BN)
    c = tl.arange(0, BN * STEP // 4)
    base = w_ptr + e * (N * WORDS) + n0 * WORDS
    acc = tl.zeros([BN * STEP // 4], tl.int32)
    for k in tl.range(0, BN * WORDS, BN * STEP // 4, num_stages=3):
        acc ^= tl.load(base + k + c, mask=k + c < BN * WORDS, other=0)
    tl.store(out_ptr + p, tl.reduce(acc, 0, _xor))


def main():
    w = torch.randint(-2**31, 2**31 - 1, (E, N, KB // 4), dtype=torch.int32, device="cuda")
    sets = [torch.arange(4 * i, 4 * i + 4, device="cuda", dtype=torch.int32) for i in range(LAUNCHES)]
    out = torch.empty(4 * N // 16, dtype=torch.int32, device="cuda")
    print(torch.cuda.get_device_name(), "35.2 MB a launch; floor at 2.98 TB/s: 11.8 us", flush=True)
    for rnd in range(2):
        cells = []
        for name, k in (("rows", _rows), ("flat", _flat)):
            for step, bn, nw in ((64, 32, 2), (256, 32, 2), (256, 32, 4), (256, 16, 2), (512, 32, 4)):
                us = per_launch_us(lambda: [k[(4 * N // bn,)](w, ids, out, N=N, WORDS=KB // 4, STEP=step, BN=bn,
                                                              num_warps=nw) for ids in sets], 30)
                cells.append(f"{name} step {step} bn {bn} w {nw}: {us:5.1f}")
        print(f"round {rnd}: " + " | ".join(cells), flush=True)


if __name__ == "__main__":
    main()
