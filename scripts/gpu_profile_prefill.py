"""GPU machine: where a prefill step's time goes. Builds the engine on a preset with random weights (as
`oss-engine bench` does), then runs steps that each prefill N prompts of L tokens (N x L <= the step's token
budget: 16,384 on an H100 or H200): times `steps` of them (tok/s), then profiles one more with torch.profiler
and prints per kernel name: launches, mean us, us in the step, with PDL forced off so that the kernel times
add up (with PDL a kernel's time includes its wait on the one before). With --gaps (PDL on, as the bench runs)
it prints instead where the GPU idles in a step (`idle_gaps`) and a cProfile of the host's work in one.

Run: PYTHONPATH=.:scripts python scripts/gpu_profile_prefill.py --preset gpt-oss-20b [--prompts 8 --len 2048]
     [--gaps]
"""

from __future__ import annotations

import argparse
import collections
import random
import time

import torch

from gpu_profile_decode import build, host_profile, kernel_rows, short
from oss_engine.bench.engine_bench import _drain, _prompts, _submit
from oss_engine.kernels.triton import launch


def idle_gaps(one_step, top: int) -> None:
    """Profiles one step (host and GPU) and prints where the GPU sits idle: before its first kernel, between
    kernels (the longest gaps, with the kernels around them and the host ops running then), after its last."""
    acts = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=acts) as prof:
        t0 = time.perf_counter()
        one_step()
        torch.cuda.synchronize()
        wall_us = 1e6 * (time.perf_counter() - t0)
    events = prof.events()
    gpu = sorted((e.time_range.start, e.time_range.end, e.name) for e in events
                 if e.device_type == torch.autograd.DeviceType.CUDA and e.device_time > 0)
    cpu = sorted((e.time_range.start, e.time_range.end, e.name) for e in events
                 if e.device_type == torch.autograd.DeviceType.CPU)
    start = min(c[0] for c in cpu)
    end = max(max(c[1] for c in cpu), gpu[-1][1])
    busy, gaps, reach = 0.0, [], gpu[0][0]
    for a, b, name in gpu:
        if a > reach:
            gaps.append((a - reach, reach, name))
        busy += max(0.0, b - max(a, reach))
        reach = max(reach, b)
    print(f"step: {wall_us / 1e3:.2f} ms wall, profiled span {(end - start) / 1e3:.2f} ms, "
          f"GPU busy {busy / 1e3:.2f} ms; idle before the first kernel {(gpu[0][0] - start) / 1e3:.2f} ms, "
          f"after the last {(end - reach) / 1e3:.2f} ms, "
          f"between kernels {sum(g[0] for g in gaps) / 1e3:.2f} ms in {len(gaps)} gaps")
    print(f"{'gap us':>9} {'at ms':>8}  next kernel | host ops running then")
    for gap, at, name in sorted(gaps, reverse=True)[:top]:
        host = [c[2] for c in cpu if c[0] <= at <= c[1]][-3:]
        print(f"{gap:9.1f} {(at - start) / 1e3:8.2f}  {short(name)} | {' > '.join(host)}")
    first = [c for c in cpu if c[0] < gpu[0][0]]
    names = collections.Counter(c[2] for c in first)
    print("host ops before the first kernel (most frequent):", names.most_common(12))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="gpt-oss-20b")
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--len", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--util", type=float, default=0.5)
    ap.add_argument("--gaps", action="store_true", help="PDL on; where the GPU idles in a step instead")
    args = ap.parse_args()
    if not args.gaps:
        launch.use_pdl = lambda device: False  # before anything is compiled or launched
    llm = build(args.preset, args.prompts, args.len, args.util)
    engine, rng, vocab = llm.engine, random.Random(0), llm.config.model.vocab_size

    def one_step() -> None:  # one step prefills the N prompts; their single output token ends them
        _submit(engine, _prompts(args.prompts, args.len, vocab, rng), 1)
        _drain(engine)

    one_step()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(args.steps):
        one_step()
    torch.cuda.synchronize()
    ms = 1e3 * (time.perf_counter() - t0) / args.steps
    tokens = args.prompts * args.len
    if args.gaps:
        idle_gaps(one_step, args.top)
        host_profile(one_step, args.top, "cumulative")
        llm.close()
        return
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        one_step()
        torch.cuda.synchronize()
    rows = kernel_rows(prof, 1)
    total = sum(r[0] for r in rows)
    print(f"{args.preset}, {args.prompts} x {args.len} tokens a step (PDL off): {ms:.2f} ms a step "
          f"({tokens / ms * 1e3:,.0f} tok/s); kernels {total / 1e3:.2f} ms in {sum(r[1] for r in rows):.0f} launches")
    print(f"{'us/step':>9} {'n':>5} {'us each':>9}  kernel")
    for us, n, each, name in rows[:args.top]:
        print(f"{us:9.1f} {n:5.0f} {each:9.2f}  {short(name)}")
    llm.close()


if __name__ == "__main__":
    main()
