"""One gpt-oss-20b MoE layer (experts only) on one GPU: correctness against `moe_experts_ref` in bf16, then
timings against the triton_kernels anchors of docs PERFORMANCE.md (120 / 278 / 284 / 481 / 1189 us at
T = 1 / 8 / 64 / 256 / 2048 on an H100; targets <= 40 us at T = 1 and <= 200 us at T = 64).

Run: PYTHONPATH=. python scripts/gpu_bench_moe.py [--modes default,arith,dot_scaled,dot_scaled_swap] [--sweep]

Shapes: E = 32, A = 4, D = I = 2880, MXFP4 random bytes with scales 118..122, uniform routing (top-4 of
random logits). Times: "graph" = one call captured in a CUDA graph, L2 flushed before each replay, median
(what a decode step under CUDA graphs sees: 24 layers never share weights in L2); "eager" =
triton.testing.do_bench median (launch overhead included). Bytes = touched experts x (2I*D + D*I) x 4.25/8.
"""

from __future__ import annotations

import argparse
import functools
import time

import torch
import triton
import triton.testing

from oss_engine.bench.kernel_bench import graph_us
from oss_engine.kernels.ref.moe import moe_experts_ref, route_ref
from oss_engine.kernels.triton.moe import moe_experts_triton
from oss_engine.kernels.triton.moe_config import GemmTiles, MoeTritonConfig, default_config, triton_config
from oss_engine.kernels.types import ExpertWeight

E, A, D, I = 32, 4, 2880, 2880
LIMIT, ALPHA = 7.0, 1.702
ANCHOR_US = {1: 120, 8: 278, 64: 284, 256: 481, 2048: 1189}
TARGET_US = {1: 40, 64: 200}
EXPERT_BYTES = (2 * I * D + D * I) * 4.25 / 8  # one expert, MXFP4
EXPERT_FLOPS = 2 * (2 * I * D + D * I)  # per (token, slot)


def mxfp4_weight(out: int, inp: int, gen: torch.Generator) -> ExpertWeight:
    blocks = torch.randint(0, 256, (E, out, inp // 32, 16), generator=gen, dtype=torch.uint8)
    scales = torch.randint(118, 123, (E, out, inp // 32), generator=gen, dtype=torch.uint8)
    bias = (torch.randn(E, out, generator=gen) * 0.1).to(torch.bfloat16)
    return ExpertWeight(bias.cuda(), blocks=blocks.cuda(), scales=scales.cuda()).with_scale_range()


def batch(T: int, gen: torch.Generator):
    x = torch.randn(T, D, generator=gen).to(torch.bfloat16).cuda()
    weights, ids = route_ref(torch.randn(T, E, generator=gen).cuda(), A)  # uniform routing
    return x, weights, ids


def config_for(mode: str, T: int) -> MoeTritonConfig:
    if mode == "default":
        return default_config(T * A, E, torch.device("cuda"))
    base = triton_config(T * A, E, torch.device("cuda"))  # the Triton kernels' tiles for the other modes
    return MoeTritonConfig(base.gemm1, base.gemm2, mode)


def time_graph_flushed(fn, reps: int = 30) -> float:
    """Median microseconds of one graph replay of fn, L2 flushed before each (the bench's own timer)."""
    return graph_us(fn, torch.device("cuda"), reps)


def timed_cells(points: dict, want: torch.Tensor, reps: int, show=lambda us: f"{us:.1f}") -> list[str]:
    """One cell a variant (name -> fn): `name show(us)` after checking fn() against want (rel L2 < 2e-2, else
    the error is shown too) and timing it (`time_graph_flushed`); a variant that fails to run is reported."""
    cells = []
    for name, fn in points.items():
        try:
            err = ((fn().float() - want).norm() / want.norm()).item()
            us = time_graph_flushed(fn, reps=reps)
        except Exception as exc:  # noqa: BLE001 - report, go on
            cells.append(f"{name} {type(exc).__name__}: {str(exc).splitlines()[0][:80]}")
            continue
        cells.append(f"{name} {show(us)}" + ("" if err < 2e-2 else f" ERR {err:.1e}"))
    return cells


def prefill_rounds(tokens: str, variants, sep: str = " | ", rounds: int = 2) -> None:
    """Experts only at each of tokens ("2048,8192"): every config variants(T) gives (name -> MoeTritonConfig),
    checked and timed by `timed_cells`; prints a round and size's cells joined by sep (one a line: "\n  ")."""
    gen = torch.Generator().manual_seed(0)
    w1, w2 = mxfp4_weight(2 * I, D, gen), mxfp4_weight(D, I, gen)
    print(torch.cuda.get_device_name(), flush=True)
    cases = {int(T): batch(int(T), gen) for T in tokens.split(",")}
    wants = {T: moe_experts_ref(x, w, ids, w1, w2, LIMIT, ALPHA).float() for T, (x, w, ids) in cases.items()}
    for rnd in range(rounds):
        for T, (x, weights, ids) in cases.items():
            points = {name: functools.partial(moe_experts_triton, x, weights, ids, w1, w2, LIMIT, ALPHA, config=cfg)
                      for name, cfg in variants(T).items()}
            tflops = T * A * EXPERT_FLOPS / 1e6
            cells = timed_cells(points, wants[T], reps=10, show=lambda us: f"{us:.1f} ({tflops / us:.0f} TF/s)")
            print(f"r{rnd} T={T}:" + (sep if sep.startswith("\n") else " ") + sep.join(cells), flush=True)


def ceilings() -> tuple[float, float]:
    """(device-to-device copy GB/s, bf16 matmul TFLOP/s) measured now, for the fractions below."""
    src = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    dst = torch.empty_like(src)
    ms = triton.testing.do_bench(lambda: dst.copy_(src), return_mode="median")
    gbs = 2 * src.numel() / ms / 1e6
    a = torch.randn(8192, 8192, dtype=torch.bfloat16, device="cuda")
    ms = triton.testing.do_bench(lambda: a @ a, return_mode="median")
    return gbs, 2 * 8192**3 / ms / 1e9


def check(modes, w1, w2, gen) -> list[str]:
    ok = []
    for mode in modes:
        errs = []
        try:
            for T in (1, 8, 64):
                x, weights, ids = batch(T, gen)
                out = moe_experts_triton(x, weights, ids, w1, w2, LIMIT, ALPHA, config=config_for(mode, T))
                ref = moe_experts_ref(x, weights, ids, w1, w2, LIMIT, ALPHA)
                errs.append(((out.float() - ref.float()).norm() / ref.float().norm()).item())
        except Exception as exc:  # noqa: BLE001 - a mode this Triton cannot compile: report it, go on
            print(f"check {mode:16s} FAILED to run: {type(exc).__name__}: {str(exc).splitlines()[0][:150]}")
            continue
        passed = all(e < 2e-2 for e in errs)
        print(f"check {mode:16s} rel L2 at T=1/8/64: " + " / ".join(f"{e:.2e}" for e in errs)
              + ("  PASS" if passed else "  FAIL (limit 2e-2)"))
        if passed:
            ok.append(mode)
    return ok


def bench(modes, w1, w2, gen, copy_gbs: float, mm_tflops: float) -> None:
    print(f"\n{'T':>5} {'mode':16s} {'graph us':>9} {'eager us':>9} {'anchor':>7} {'experts':>7} {'MB':>7} "
          f"{'GB/s':>7} {'%copy':>6} {'TFLOP/s':>8} {'%mm':>5}  tiles (gemm1 | gemm2)")
    for T, anchor in ANCHOR_US.items():
        x, weights, ids = batch(T, gen)
        touched = ids.unique().numel()
        mbytes = touched * EXPERT_BYTES / 1e6
        timed = set()
        for mode in modes:
            cfg = config_for(mode, T)
            if cfg in timed:  # "default" is one of the named modes at every T
                print(f"{T:>5} {mode:16s} (same kernels as above: {cfg.mxfp4_decode})")
                continue
            timed.add(cfg)
            fn = functools.partial(moe_experts_triton, x, weights, ids, w1, w2, LIMIT, ALPHA, config=cfg)
            us = time_graph_flushed(fn)
            eager = triton.testing.do_bench(fn, return_mode="median") * 1e3
            gbs = mbytes * 1e6 / us / 1e3
            tflops = T * A * EXPERT_FLOPS / us / 1e6
            tiles = " | ".join(f"{t.block_m}x{t.block_n}x{t.block_k} w{t.num_warps} s{t.num_stages}"
                               for t in (cfg.gemm1, cfg.gemm2))
            flag = "" if T not in TARGET_US else (" ok" if us <= TARGET_US[T] else f" >{TARGET_US[T]}")
            print(f"{T:>5} {mode:16s} {us:>9.1f} {eager:>9.1f} {anchor:>7} {touched:>7} {mbytes:>7.1f} "
                  f"{gbs:>7.0f} {100 * gbs / copy_gbs:>5.0f}% {tflops:>8.1f} {100 * tflops / mm_tflops:>4.0f}%  "
                  f"{cfg.mxfp4_decode} {tiles}{flag}")
    route_us = {T: triton.testing.do_bench(functools.partial(route_ref, torch.randn(T, E, device="cuda"), A),
                                           return_mode="median") * 1e3 for T in (1, 2048)}
    print(f"routing (route_ref, eager): {route_us[1]:.1f} us at T=1, {route_us[2048]:.1f} us at T=2048")


def sweep(w1, w2, gen) -> None:
    """Decode tiles at T = 1 and 64: GEMM 1's tiles with GEMM 2 at its default, then the reverse (total
    layer time each; one compile per point, a minute or two)."""
    print("\nsweep (graph us, L2 flushed; the other GEMM at its default tiles):")
    for T in (1, 64):
        x, weights, ids = batch(T, gen)
        base = config_for("default", T)
        for which in ("gemm1", "gemm2"):
            for bn in (32, 64, 128):
                for bk in (128, 256):
                    for warps, stages in ((2, 3), (2, 4), (4, 3), (4, 4)):
                        t = GemmTiles(16, bn, bk, warps, stages)
                        cfg = MoeTritonConfig(t if which == "gemm1" else base.gemm1,
                                              t if which == "gemm2" else base.gemm2, base.mxfp4_decode)
                        try:
                            us = time_graph_flushed(functools.partial(
                                moe_experts_triton, x, weights, ids, w1, w2, LIMIT, ALPHA, config=cfg), reps=10)
                        except Exception as exc:  # noqa: BLE001 - e.g. out of shared memory: report, go on
                            print(f"  T={T:>3} {which} bn={bn:>3} bk={bk} w{warps} s{stages}: {type(exc).__name__}")
                            continue
                        print(f"  T={T:>3} {which} bn={bn:>3} bk={bk} w{warps} s{stages}: {us:8.1f} us")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", default="default,arith,dot_scaled,dot_scaled_swap")
    parser.add_argument("--sweep", action="store_true", help="also sweep the decode tiles (1-2 minutes)")
    args = parser.parse_args()
    t0 = time.time()
    torch.backends.cuda.matmul.allow_tf32 = False
    print(f"{torch.cuda.get_device_name()}  torch {torch.__version__}  triton {triton.__version__}")
    gen = torch.Generator().manual_seed(0)
    w1, w2 = mxfp4_weight(2 * I, D, gen), mxfp4_weight(D, I, gen)
    copy_gbs, mm_tflops = ceilings()
    print(f"ceilings: copy {copy_gbs:.0f} GB/s, bf16 matmul {mm_tflops:.0f} TFLOP/s")
    modes = check(args.modes.split(","), w1, w2, gen)
    bench(modes, w1, w2, gen, copy_gbs, mm_tflops)
    if args.sweep:
        sweep(w1, w2, gen)
    print(f"\ntotal {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
