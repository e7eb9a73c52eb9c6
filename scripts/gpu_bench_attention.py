"""GPU machine: paged_attention_triton in bf16 at gpt-oss shapes (H 64, K 8, D 64, block 16) against the
float32 reference (rel L2 < 1e-2, asserted), then timed: decode batch 1 / 8 / 64 at context 1024 and 8192 and
a 2048-token prefill of one sequence, each with full attention and a 128-token sliding window.

Columns: P = key splits chosen (1: single pass; > 1: split-KV + merge), us = triton.testing.do_bench median
(includes the Python launch), graph us = the same replayed from a CUDA graph (what the engine's decode pays),
MB = bytes that must move (each visible key's K and V read once, q read, out written), GB/s and TFLOP/s from
the graph time (FLOPs = 4 * H * D * visible (query, key) pairs). The copy line is the bandwidth ceiling
(a 1 GiB device-to-device copy, read + write). `--sweep` also tries other tile shapes on three cases.

Run: PYTHONPATH=. python scripts/gpu_bench_attention.py [--sweep]
"""

from __future__ import annotations

import functools
import math
import sys
import time

import torch
import triton
import triton.testing

from oss_engine.kernels.ref.attention import paged_attention_ref
from oss_engine.kernels.triton.attention import AttentionConfig, paged_attention_triton, pick_config
from oss_engine.model.forward_batch import AttentionMetadata

H, K, D, S = 64, 8, 64, 16
SCALE = D ** -0.5
dev = torch.device("cuda")


def make(seqs: list[tuple[int, int]], window: int | None):
    """seqs: (num_computed, num_new). Shuffled physical blocks; sliding layers get placeholder block 0."""
    need = [-(-(nc + nn) // S) for nc, nn in seqs]
    N = 1 + sum(need)
    perm = (torch.randperm(N - 1) + 1).tolist()
    tables, pos, qsl, lens = [], [], [0], []
    for (nc, nn), nb in zip(seqs, need):
        table = [perm.pop() for _ in range(nb)]
        if window is not None:
            first = max(0, nc - window + 1) // S
            table[:first] = [0] * first
        tables.append(table)
        pos += range(nc, nc + nn)
        qsl.append(qsl[-1] + nn)
        lens.append(nc + nn)
    width = max(len(t) for t in tables)
    tables = [t + [0] * (width - len(t)) for t in tables]
    T = qsl[-1]
    bf = {"dtype": torch.bfloat16, "device": dev}
    k_cache, v_cache = torch.randn(N, S, K, D, **bf), torch.randn(N, S, K, D, **bf)
    q = torch.randn(T, H, D, **bf)
    sinks = torch.randn(H, device=dev)
    i32 = {"dtype": torch.int32, "device": dev}
    meta = AttentionMetadata(torch.tensor(qsl, **i32), torch.tensor(lens, **i32), torch.tensor(tables, **i32),
                             torch.zeros(T, dtype=torch.int64, device=dev))
    return q, k_cache, v_cache, sinks, meta, torch.tensor(pos, dtype=torch.int64, device=dev)


def visible_pairs(seqs, window) -> tuple[int, int]:
    """(distinct keys read, (query, key) pairs) for the byte and FLOP counts."""
    keys = pairs = 0
    for nc, nn in seqs:
        lo = 0 if window is None else max(0, nc - window + 1)
        keys += nc + nn - lo
        pairs += sum(i + 1 - (0 if window is None else max(0, i - window + 1)) for i in range(nc, nc + nn))
    return keys, pairs


def graph_us(fn) -> float:
    try:
        return triton.testing.do_bench_cudagraph(fn, rep=50, return_mode="median") * 1e3
    except Exception as e:  # noqa: BLE001 (report, keep the table)
        print(f"  (cuda graph timing failed: {type(e).__name__}: {e})")
        return float("nan")


def run_case(name, seqs, window, config: AttentionConfig | None = None, check=True) -> float:
    q, k_cache, v_cache, sinks, meta, positions = make(seqs, window)
    T, B = q.shape[0], len(seqs)
    cfg = config or pick_config(T, B, K, H // K, meta.block_tables.shape[1] * S, window, None,
                                torch.cuda.get_device_properties(dev).multi_processor_count, True)

    def fn():
        return paged_attention_triton(q, k_cache, v_cache, sinks, meta, positions, window, SCALE, config=cfg)

    err = float("nan")
    if check:
        want = paged_attention_ref(q.float(), k_cache, v_cache, sinks, meta, positions, window, SCALE)
        got = fn().float()
        err = ((got - want).norm() / want.norm()).item()
        assert err < 1e-2 and not got.isnan().any(), (name, err)
        del want, got
    us = triton.testing.do_bench(fn, warmup=10, rep=50, return_mode="median") * 1e3
    gus = graph_us(fn)
    keys, pairs = visible_pairs(seqs, window)
    nbytes = keys * K * D * 2 * 2 + 2 * T * H * D * 2
    flops = 4 * H * D * pairs
    t = us if math.isnan(gus) else gus
    cfg_s = f"m{cfg.block_m} n{cfg.block_n} w{cfg.num_warps} s{cfg.num_stages}"
    print(f"{name:<28} {cfg.num_splits:>3} {cfg_s:<18} {us:>9.1f} {gus:>9.1f} {nbytes / 1e6:>9.2f} "
          f"{nbytes / t / 1e3:>8.0f} {flops / t / 1e6:>8.1f} {err:>9.2e}", flush=True)
    return t


def copy_ceiling() -> None:
    x = torch.empty(1 << 29, dtype=torch.int16, device=dev)
    y = torch.empty_like(x)
    ms = triton.testing.do_bench(lambda: y.copy_(x), return_mode="median")
    print(f"copy ceiling: 1 GiB d2d copy {ms * 1e3:.0f} us = {2 * x.numel() * 2 / ms / 1e6:.0f} GB/s (read+write)")


def sdpa_yardstick() -> None:
    # contiguous, no sink, no paging: torch's flash attention on the same prefill shape, for scale
    q = torch.randn(1, H, 2048, D, dtype=torch.bfloat16, device=dev)
    k, v = torch.randn(2, 1, K, 2048, D, dtype=torch.bfloat16, device=dev).unbind(0)

    def f():
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)

    try:
        us = graph_us(f)
        print(f"yardstick: torch SDPA causal prefill 2048 (contiguous, no sink): {us:.1f} us graph, "
              f"{4 * H * D * 2048 * 2049 / 2 / us / 1e6:.1f} TFLOP/s")
    except Exception as e:  # noqa: BLE001
        print(f"yardstick: torch SDPA failed: {type(e).__name__}: {e}")


def sweep() -> None:
    print("\nsweep (graph us, no check): best tile shape per case")
    cases = [("decode B1 ctx8192", [(8191, 1)], (16, 32)), ("decode B64 ctx1024", [(1023, 1)] * 64, (1,)),
             ("prefill 2048", [(0, 2048)], (1,))]
    for name, seqs, split_opts in cases:
        q, kc, vc, sk, meta, pos = make(seqs, None)
        decode = seqs[0][1] == 1
        shapes = ([(16, bn, nw, ns) for bn in (32, 64, 128) for nw in (2, 4) for ns in (2, 3, 4)] if decode else
                  [(bm, bn, nw, ns) for bm in (64, 128) for bn in (32, 64, 128) for nw in (4, 8) for ns in (2, 3)])
        results = []
        for bm, bn, nw, ns in shapes:
            for splits in split_opts:
                cfg = AttentionConfig(bm, bn, splits, nw, ns)
                t = graph_us(functools.partial(paged_attention_triton, q, kc, vc, sk, meta, pos, None, SCALE,
                                               config=cfg))  # NaN when it fails (e.g. out of shared memory)
                if not math.isnan(t):
                    results.append((t, cfg))
        results.sort(key=lambda r: r[0])
        for t, cfg in results[:3]:
            print(f"  {name:<20} {t:8.1f} us  {cfg}")


def main() -> None:
    t0 = time.time()
    torch.manual_seed(0)
    print(f"{torch.cuda.get_device_name(dev)}, triton {triton.__version__}, torch {torch.__version__}")
    copy_ceiling()
    print(f"{'case':<28} {'P':>3} {'tiles':<18} {'us':>9} {'graph us':>9} {'MB':>9} {'GB/s':>8} "
          f"{'TFLOP/s':>8} {'rel err':>9}")
    for window in (None, 128):
        tag = "full" if window is None else f"win{window}"
        for ctx in (1024, 8192):
            for B in (1, 8, 64):
                run_case(f"decode B{B} ctx{ctx} {tag}", [(ctx - 1, 1)] * B, window)
        run_case(f"prefill 2048 {tag}", [(0, 2048)], window)
    sdpa_yardstick()
    if "--sweep" in sys.argv:
        sweep()
    print(f"total {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
