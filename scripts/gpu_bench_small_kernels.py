"""GPU machine: the three small per-layer kernels, Triton against their torch references, in bf16 at gpt-oss shapes.

  add_rms_norm   T = 1, 64, 2048; D = 2880                      (x + residual -> normed, new residual)
  rope_store_kv  T = 1, 64, 2048; H = 64, K = 8, D = 64, S = 16 (q, k, v views of one fused qkv; bf16 caches)
  route          T = 1, 64, 2048; E = 32, 128; A = 4            (bf16 logits)

Each case is first checked against the reference (asserted, bf16 tolerances), then timed: 20 calls captured in
one CUDA graph, the graph replayed 10 times between CUDA events; us = event time / 200 (what a decode step
replaying its graph pays per call, launch included). Columns: ref us / triton us, speedup, MB = bytes that
must move per call (inputs read once, outputs written once), GB/s and the fraction of the copy bandwidth (a
1 GiB device-to-device copy, read + write) from the Triton time. At T = 1 every case is a single small launch:
the graph floor line (one 1-element copy) is the latency to compare with, not the bandwidth.

Run: PYTHONPATH=. python scripts/gpu_bench_small_kernels.py   (without CUDA it prints the cases and exits)
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Callable

import torch

T_LIST = (1, 64, 2048)
HIDDEN = 2880
H, K, HD, S = 64, 8, 64, 16
A = 4
EPS = 1e-5
CALLS, REPLAYS = 20, 10


@dataclass
class Case:
    name: str
    nbytes: int  # bytes that must move per call
    ref: Callable[[], object]
    triton: Callable[[], object]
    check: Callable[[], float]  # asserts, returns a relative error to print


def norm_bytes(T: int, D: int = HIDDEN) -> int:
    return 4 * T * D * 2 + D * 4  # read x, residual; write normed, residual (bf16); weight float32


def rope_bytes(T: int) -> int:
    qkv = T * (H + 2 * K) * HD * 2  # read q, k, v (bf16)
    cos_sin = 2 * T * (HD // 2) * 4  # float32
    out = T * H * HD * 2 + 2 * T * K * HD * 2  # q_rot, k and v cache rows
    return qkv + cos_sin + T * 8 + out


def route_bytes(T: int, E: int) -> int:
    return T * E * 2 + T * A * (4 + 8)  # bf16 logits in; float32 weights, int64 ids out


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


def norm_case(T: int, dev: torch.device) -> Case:
    from oss_engine.kernels.ref.norm import add_rms_norm_ref
    from oss_engine.kernels.triton.norm import add_rms_norm_triton

    x, res = (torch.randn(2, T, HIDDEN, device=dev) * 3).to(torch.bfloat16).unbind(0)
    w = 1 + 0.1 * torch.randn(HIDDEN, device=dev)

    def check() -> float:
        want_n, want_r = add_rms_norm_ref(x, res, w, EPS)
        got_n, got_r = add_rms_norm_triton(x, res, w, EPS)
        assert torch.equal(got_r, want_r), "residual differs"
        err = rel_l2(got_n.float(), want_n.float())
        assert err < 1e-2, err
        return err

    return Case(f"add_rms_norm T{T} D{HIDDEN}", norm_bytes(T), lambda: add_rms_norm_ref(x, res, w, EPS),
                lambda: add_rms_norm_triton(x, res, w, EPS), check)


def rope_case(T: int, dev: torch.device) -> Case:
    from oss_engine.kernels.ref.rope import rope_store_kv_ref
    from oss_engine.kernels.triton.rope import rope_store_kv_triton

    qkv = torch.randn(T, (H + 2 * K) * HD, device=dev).to(torch.bfloat16)
    q, k, v = qkv.split([H * HD, K * HD, K * HD], dim=-1)
    q, k, v = q.view(T, H, HD), k.view(T, K, HD), v.view(T, K, HD)  # strided views, as in the model
    angle = torch.randint(0, 8192, (T, 1), device=dev).float() * 1e4 ** (-torch.arange(HD // 2, device=dev) / 32)
    cos, sin = angle.cos(), angle.sin()  # [T, HD/2] float32
    N = T // S + 8
    k_cache, v_cache = torch.zeros(2, N, S, K, HD, device=dev, dtype=torch.bfloat16).unbind(0)
    slots = torch.randperm(N * S, device=dev)[:T]

    def check() -> float:
        kc, vc = k_cache.clone(), v_cache.clone()
        want_q = rope_store_kv_ref(q, k, v, cos, sin, kc, vc, slots)
        kc2, vc2 = k_cache.clone(), v_cache.clone()
        got_q = rope_store_kv_triton(q, k, v, cos, sin, kc2, vc2, slots)
        assert torch.equal(vc2, vc), "v cache differs"
        err = max(rel_l2(got_q.float(), want_q.float()), rel_l2(kc2.float(), kc.float()))
        assert err < 1e-2, err
        return err

    return Case(f"rope_store_kv T{T} H{H} K{K} D{HD}", rope_bytes(T),
                lambda: rope_store_kv_ref(q, k, v, cos, sin, k_cache, v_cache, slots),
                lambda: rope_store_kv_triton(q, k, v, cos, sin, k_cache, v_cache, slots), check)


def route_case(T: int, E: int, dev: torch.device) -> Case:
    from oss_engine.kernels.ref.moe import route_ref
    from oss_engine.kernels.triton.route import route_triton

    logits = (2 * torch.randn(T, E, device=dev)).to(torch.bfloat16)

    def check() -> float:
        want_w, want_ids = route_ref(logits, A)
        got_w, got_ids = route_triton(logits, A)
        # bf16 logits tie often: the selected values must agree exactly, the ids only up to tie order
        assert torch.equal(logits.gather(1, got_ids), logits.gather(1, want_ids)), "top-k values differ"
        err = rel_l2(got_w, want_w)
        assert err < 1e-5, err
        return err

    return Case(f"route T{T} E{E} A{A}", route_bytes(T, E), lambda: route_ref(logits, A),
                lambda: route_triton(logits, A), check)


def graph_us(fn: Callable[[], object]) -> float:
    """Per-call time of fn replayed from a CUDA graph of CALLS calls; NaN (reported) if capture fails."""
    try:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):  # warm up (compile, allocator) off the capture stream, as torch advises
            for _ in range(3):
                fn()
        torch.cuda.current_stream().wait_stream(side)
        g = torch.cuda.CUDAGraph()
        with torch.cuda.graph(g):
            for _ in range(CALLS):
                fn()
        g.replay()
        torch.cuda.synchronize()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(REPLAYS):
            g.replay()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end) * 1e3 / (REPLAYS * CALLS)
    except Exception as e:  # noqa: BLE001 (report, keep the table)
        print(f"  (cuda graph timing failed: {type(e).__name__}: {e})")
        return float("nan")


def copy_bandwidth(dev: torch.device) -> float:
    """GB/s of a 1 GiB device-to-device copy (read + write counted), median of 10 event-timed copies."""
    x = torch.empty(1 << 29, dtype=torch.int16, device=dev)
    y = torch.empty_like(x)
    y.copy_(x)
    times = []
    for _ in range(10):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        y.copy_(x)
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    ms = sorted(times)[len(times) // 2]
    return 2 * x.numel() * 2 / ms / 1e6


def cases(dev: torch.device) -> list[Case]:
    out = [norm_case(T, dev) for T in T_LIST] + [rope_case(T, dev) for T in T_LIST]
    return out + [route_case(T, E, dev) for E in (32, 128) for T in T_LIST]


def dry_run() -> None:
    print("no CUDA device: the cases and their bytes per call (nothing timed)")
    for T in T_LIST:
        print(f"  add_rms_norm T{T} D{HIDDEN}: {norm_bytes(T) / 1e6:.3f} MB")
    for T in T_LIST:
        print(f"  rope_store_kv T{T} H{H} K{K} D{HD}: {rope_bytes(T) / 1e6:.3f} MB")
    for E in (32, 128):
        for T in T_LIST:
            print(f"  route T{T} E{E} A{A}: {route_bytes(T, E) / 1e6:.4f} MB")


def main() -> None:
    if not torch.cuda.is_available():
        dry_run()
        return
    import triton

    t0 = time.time()
    torch.manual_seed(0)
    dev = torch.device("cuda")
    print(f"{torch.cuda.get_device_name(dev)}, triton {triton.__version__}, torch {torch.__version__}")
    bw = copy_bandwidth(dev)
    print(f"copy bandwidth: {bw:.0f} GB/s (1 GiB d2d, read + write)")
    one = torch.zeros(1, device=dev)
    print(f"graph floor: {graph_us(lambda: one.add_(1)):.2f} us per 1-element kernel")
    print(f"{'case':<34} {'ref us':>9} {'triton us':>10} {'x':>6} {'MB':>9} {'GB/s':>7} {'of copy':>8} "
          f"{'rel err':>9}")
    for c in cases(dev):
        err = c.check()
        ref_us, tri_us = graph_us(c.ref), graph_us(c.triton)
        gbs = c.nbytes / tri_us / 1e3
        print(f"{c.name:<34} {ref_us:>9.2f} {tri_us:>10.2f} {ref_us / tri_us:>6.1f} {c.nbytes / 1e6:>9.3f} "
              f"{gbs:>7.0f} {gbs / bw:>8.1%} {err:>9.2e}", flush=True)
    print(f"total {time.time() - t0:.0f} s")


if __name__ == "__main__":
    main()
