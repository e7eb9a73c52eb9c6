"""GPU machine: where a decode step's time goes. Builds the engine on a preset with random weights (as
`oss-engine bench` does), brings B requests to context ~1024, then
  1. times `steps` engine steps (tok/s, as the bench's decode figure), and
  2. (--host) cProfiles 20 more steps: the host's Python work and where it waits for the GPU,
  3. profiles `prof_steps` more with torch.profiler (CUPTI: the kernels of the replayed CUDA graph) and prints
     per kernel name: launches per step, mean us, us per step; then the sum of kernel time per step against
     the step's wall time (the difference is launch gaps, host work and idle GPU).
With --ab-pdl the whole run is repeated with programmatic dependent launch forced off (patching
`oss_engine.kernels.triton.launch.use_pdl`), for an A/B in one session: PDL is baked into the captured graphs,
so each variant builds its own engine.

Run: PYTHONPATH=. python scripts/gpu_profile_decode.py --preset gpt-oss-20b --batch-sizes 1,64 [--ab-pdl]
"""

from __future__ import annotations

import argparse
import collections
import random
import tempfile
import time

import torch

from oss_engine.bench.engine_bench import _prompts, _submit
from oss_engine.llm import LLM
from oss_engine.presets import write_preset_config


def build(preset: str, max_batch: int, context: int, util: float) -> LLM:
    tmp = tempfile.mkdtemp()
    return LLM(str(write_preset_config(tmp, preset)), device="cuda", dtype="bfloat16", skip_tokenizer_init=True,
               progress=False, load_format="dummy", seed=0, max_model_len=context + 512, max_num_seqs=max_batch,
               enable_prefix_caching=False, gpu_memory_utilization=util)


def short(name: str) -> str:
    return name if len(name) <= 60 else name[:57] + "..."


def kernel_rows(prof, steps: int) -> list[tuple[float, float, float, str]]:
    """The profiled CUDA kernels by name, most time first: (us a step, launches a step, us each, name)."""
    agg: dict[str, list[float]] = collections.defaultdict(list)
    for ev in prof.events():
        if ev.device_type == torch.autograd.DeviceType.CUDA and ev.device_time > 0:
            agg[ev.name].append(ev.device_time)  # us
    return sorted(((sum(v) / steps, len(v) / steps, sum(v) / len(v), k) for k, v in agg.items()), reverse=True)


def host_profile(run, top: int, sort: str = "tottime") -> None:
    """cProfile of `run()` and the GPU work it queued: the host's share (Python work, launches, the wait for
    the GPU), the `top` entries by `sort`."""
    import cProfile
    import pstats

    pr = cProfile.Profile()
    pr.enable()
    run()
    torch.cuda.synchronize()
    pr.disable()
    pstats.Stats(pr).sort_stats(sort).print_stats(top)


def profile_batch(llm: LLM, batch: int, context: int, steps: int, prof_steps: int, top: int,
                  host: bool = False) -> float:
    engine = llm.engine
    rng = random.Random(batch)
    rids = _submit(engine, _prompts(batch, context, llm.config.model.vocab_size, rng), steps + prof_steps + 20)
    have = set()
    while len(have) < batch:
        for out in engine.step():
            have.add(out.request_id)
    for _ in range(8):
        engine.step()
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        engine.step()
    torch.cuda.synchronize()
    step_ms = 1e3 * (time.perf_counter() - t0) / steps
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(prof_steps):
            engine.step()
        torch.cuda.synchronize()
    if host:
        host_profile(lambda: [engine.step() for _ in range(20)], 16)
    for rid in rids:
        engine.abort(rid)
    rows = kernel_rows(prof, prof_steps)
    total = sum(r[0] for r in rows)
    print(f"\nbatch {batch}: {step_ms:.3f} ms a step ({batch / step_ms * 1e3:,.0f} tok/s); kernels {total / 1e3:.3f} ms "
          f"a step in {sum(r[1] for r in rows):.0f} launches -> gaps/host {step_ms - total / 1e3:.3f} ms")
    print(f"{'us/step':>9} {'n/step':>7} {'us each':>8}  kernel")
    for us, n, each, name in rows[:top]:
        print(f"{us:9.1f} {n:7.1f} {each:8.2f}  {short(name)}")
    return step_ms


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="gpt-oss-20b")
    ap.add_argument("--batch-sizes", default="1,64")
    ap.add_argument("--context", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=64)
    ap.add_argument("--prof-steps", type=int, default=5)
    ap.add_argument("--top", type=int, default=22)
    ap.add_argument("--util", type=float, default=0.5)
    ap.add_argument("--ab-pdl", action="store_true")
    ap.add_argument("--host", action="store_true", help="also cProfile 20 steps a batch (host side)")
    args = ap.parse_args()
    batches = [int(b) for b in args.batch_sizes.split(",")]
    print(f"{torch.cuda.get_device_name()}  torch {torch.__version__}  {args.preset}")
    variants = [("default", None)]
    if args.ab_pdl:
        variants.append(("pdl off", False))
    summary = []
    for label, force in variants:
        from oss_engine.kernels.triton import launch

        original = launch.use_pdl
        if force is not None:
            launch.use_pdl = lambda device: force
        try:
            print(f"\n=== {label} (use_pdl on cuda: {launch.use_pdl(torch.device('cuda'))}) ===")
            llm = build(args.preset, max(batches), args.context, args.util)
            try:
                for b in batches:
                    summary.append((label, b, profile_batch(llm, b, args.context, args.steps, args.prof_steps,
                                                            args.top, args.host)))
            finally:
                llm.close()
                del llm
                torch.cuda.empty_cache()
        finally:
            launch.use_pdl = original
    print("\nsummary")
    for label, b, ms in summary:
        print(f"  {label:8} batch {b:4}: {ms:.3f} ms a step, {b / ms * 1e3:,.0f} tok/s")


if __name__ == "__main__":
    main()
