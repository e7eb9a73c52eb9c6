"""GPU machine: moe_grouping.py's grouping by expert (`group_by_expert`) on each of its paths, forced whatever the size:
the chunked one-program kernel, the two-launch parallel kernels and torch.sort + searchsorted. Each point is
checked against a stable torch.sort first, then timed as 20 calls captured in one CUDA graph (PDL as the
engine runs it), the graph replayed 10 times (`gpu_bench_small_kernels.graph_us`); us a call. Routing ids
uniform over E experts, A = 4.

Run: PYTHONPATH=.:scripts python scripts/gpu_bench_grouping.py [--pairs 1024,2048,8192,32768,65536]
     [--experts 32,128]
"""

from __future__ import annotations

import argparse

import torch

import oss_engine.kernels.triton.moe_grouping as moe_mod
from gpu_bench_small_kernels import graph_us  # 20 calls in one CUDA graph, replayed 10 times

PATHS = {"chunked": (0, 1 << 30, 0), "parallel": (0, 0, 1 << 30), "torch": (0, 0, 0)}  # forced thresholds


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--pairs", default="1024,2048,8192,32768,65536")
    p.add_argument("--experts", default="32,128")
    args = p.parse_args()
    print(torch.cuda.get_device_name(), flush=True)
    gen = torch.Generator(device="cuda").manual_seed(0)
    for E in map(int, args.experts.split(",")):
        for P in map(int, args.pairs.split(",")):
            ids = torch.randint(0, E, (P // 4, 4), device="cuda", generator=gen, dtype=torch.int32)
            sorted_ids, want = torch.sort(ids.reshape(-1), stable=True)
            bounds_want = torch.searchsorted(sorted_ids, torch.arange(E + 1, device="cuda"), out_int32=True)
            cells = []
            for name, (small, chunked, parallel) in PATHS.items():
                moe_mod._SMALL_GROUP, moe_mod._CHUNKED_GROUP, moe_mod._PARALLEL_READS = small, chunked, parallel
                order, bounds = moe_mod.group_by_expert(ids, E)
                ok = torch.equal(order, want) and torch.equal(bounds, bounds_want)
                us = graph_us(lambda: moe_mod.group_by_expert(ids, E))
                cells.append(f"{name} {us:7.1f}" + ("" if ok else " ERR"))
            print(f"E={E:<4} pairs={P:<6} " + " | ".join(cells), flush=True)


if __name__ == "__main__":
    main()
