"""Does a one-row linear's weight stream hide behind a latency-bound kernel before it? In one CUDA graph, a
"spin" kernel (a few programs that only wait out a set time, as attention or a norm at batch 1 leave HBM
idle) runs before `gemv_triton` at the qkv and o_proj shapes, both launched with PDL: the linear launches
while the spin runs and loads what its tiles load before its wait (`gemv.py`: the first step, or the first
PRE_K columns). Graph replays after a read-only L2 flush, median us; "alone" is each kernel by itself.

Ideal for a tile set that loads a share s of the weights before its wait: spin + (1 - s) x the linear's
time, once the spin outlasts the prefetch.

Run: PYTHONPATH=.:scripts python scripts/gpu_probe_gemv_overlap.py
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from oss_engine.kernels.triton import launch
from oss_engine.kernels.triton.gemv import GemvTiles, gemv_triton
from gpu_probe_flush import graph_us, read_fn

SHAPES = {"qkv": (5120, 2880), "o_proj": (2880, 4096)}
# the first two are main's defaults for qkv and o_proj (gemv.default_tiles), each timed at both shapes
TILES = {"stream 8 rows": GemvTiles(8, 512, 4, 2), "stream 2 rows, 3 st": GemvTiles(2, 512, 4, 3),
         "pre 1024, 8 rows": GemvTiles(8, 512, 4, 2, pre_k=1024),
         "pre 2048, 8 rows": GemvTiles(8, 512, 4, 2, pre_k=2048),
         "pre 1024, 4 rows": GemvTiles(4, 512, 4, 2, pre_k=1024),
         "pre 2048, 4 rows": GemvTiles(4, 512, 4, 2, pre_k=2048)}
SPINS_US = (3, 6, 10)


@triton.jit
def _now():
    """The GPU's global timer, ns."""
    return tl.inline_asm_elementwise("mov.u64 $0, %globaltimer;", "=l", [], dtype=tl.int64, is_pure=False, pack=1)


@triton.jit
def _spin_kernel(out_ptr, ns, PDL: tl.constexpr):
    launch.wait_for_inputs(PDL)
    t0 = _now()
    t = t0
    while t - t0 < ns:
        t = _now()
    tl.store(out_ptr + tl.program_id(0), t - t0)


def main() -> None:
    dev = torch.device("cuda")
    flush = read_fn(torch.empty(256 << 20, dtype=torch.uint8, device=dev), 256 << 10)
    out = torch.empty(8, dtype=torch.int64, device=dev)
    pdl = launch.use_pdl(dev)
    print(torch.cuda.get_device_name(), "PDL", pdl)

    def spin(us):
        return lambda: _spin_kernel[(8,)](out, int(us * 1000), PDL=pdl, num_warps=1, launch_pdl=pdl)

    print("spin alone, us: " + ", ".join(f"{s}: {graph_us(spin(s), flush):.1f}" for s in SPINS_US))
    print(f"{'shape, tiles':32s} {'alone':>7s} " + " ".join(f"{f'spin {s}':>8s}" for s in SPINS_US))
    for name, (N, K) in SHAPES.items():
        w = torch.randn(N, K, device=dev, dtype=torch.bfloat16) * K**-0.5
        b = torch.randn(N, device=dev, dtype=torch.bfloat16)
        x = torch.randn(1, K, device=dev, dtype=torch.bfloat16)
        want = torch.nn.functional.linear(x.float(), w.float(), b.float())
        for label, t in TILES.items():
            got = gemv_triton(x, w, b, t).float()
            assert (got - want).abs().max().item() < 5e-2, (name, label)
            row = [graph_us(lambda: gemv_triton(x, w, b, t), flush)]
            for s in SPINS_US:
                sp = spin(s)
                row.append(graph_us(lambda: (sp(), gemv_triton(x, w, b, t)), flush))
            print(f"{f'{name}, {label}':32s} " + " ".join(f"{v:>7.1f} " for v in row))


if __name__ == "__main__":
    main()
