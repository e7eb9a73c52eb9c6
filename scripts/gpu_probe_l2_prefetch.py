"""GPU machine: could a side branch of the decode graph stream o_proj's weights into L2 while the latency-bound
kernels before it run (RoPE + KV store, attention, its merge: ~11 us at batch 1 on an H100 with HBM mostly idle),
so that o_proj then reads L2 instead of HBM? The thirteenth session bounded it: o_proj with its weights free
(from L1 / L2) took a 20b batch-1 step from 517 to 548 tok/s.

Cases, each one CUDA graph replayed with L2 flushed before it, median us:
  gemv            o_proj alone (gemv_triton, [2880, 4096] bf16, 23.6 MB), L2 cold
  warm gemv       the prefetch kernel, then o_proj (serial: o_proj from L2 as far as it stays there)
  prefetch        the prefetch kernel alone (one cp.async.bulk.prefetch.L2 per thread, CHUNK bytes each)
  spin -> gemv    a one-program kernel that spins SPIN_US (attention's stand-in), then o_proj
  spin || pf      the same with the prefetch on a side stream forked before the spin, joined after o_proj
The gain is (spin -> gemv) - (spin || pf); o_proj's own share is what the step would save a layer.

Run: PYTHONPATH=.:scripts python scripts/gpu_probe_l2_prefetch.py
Measured on an H100 (docs/performance.md, "Seventeenth session"; a replay carries ~7 us of its own): o_proj alone
15.8 us; the prefetch then o_proj, serially, 17.8-44.3; behind a 6 / 11 / 16 us spin 23.2 / 28.2 / 33.1, with the
prefetch (16 KB a thread) on the side stream 19.7 / 22.7 / 27.5 (3.5-5.5 saved), with 64 KB a thread 37.9 (worse).
In the model (branch `wip/l2-prefetch-oproj`) 20b batch 1 went 513 / 514 -> 517 / 517 tok/s only.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from oss_engine.bench.kernel_bench import graph_us
from oss_engine.kernels.triton.gemv import gemv_triton

D, O_IN = 2880, 4096


@triton.jit
def _prefetch_kernel(base, nbytes, CHUNK: tl.constexpr, THREADS: tl.constexpr):
    """Each thread asks L2 for CHUNK bytes (16-byte aligned) of [base, base + nbytes)."""
    off = (tl.program_id(0) * THREADS + tl.arange(0, THREADS)).to(tl.int64) * CHUNK
    size = tl.minimum(nbytes - off, CHUNK).to(tl.int32)
    tl.inline_asm_elementwise(
        "{ .reg .pred p; setp.gt.s32 p, $2, 0; @p cp.async.bulk.prefetch.L2.global [$1], $2; mov.u32 $0, 0; }",
        "=r,l,r", [base + off, size], dtype=tl.int32, is_pure=False, pack=1)


def prefetch_l2(t: torch.Tensor, chunk: int = 16384, threads: int = 128) -> None:
    nbytes = t.numel() * t.element_size()
    grid = triton.cdiv(nbytes, chunk * threads)
    _prefetch_kernel[(grid,)](t.data_ptr(), nbytes, CHUNK=chunk, THREADS=threads, num_warps=threads // 32)


@triton.jit
def _spin_kernel(out_ptr, ns):
    t0 = tl.extra.cuda.globaltimer()
    t = t0
    while t - t0 < ns:
        t = tl.extra.cuda.globaltimer()
    tl.store(out_ptr, (t - t0).to(tl.int32))


def main() -> None:
    dev = torch.device("cuda")
    torch.manual_seed(0)
    w = (torch.randn(D, O_IN, device=dev) * O_IN ** -0.5).to(torch.bfloat16)
    x = torch.randn(1, O_IN, device=dev).to(torch.bfloat16)
    spun = torch.zeros(1, dtype=torch.int32, device=dev)
    side = torch.cuda.Stream()
    ref = gemv_triton(x, w, None)

    def replay_us(fn) -> float:
        return graph_us(fn, dev, reps=30)

    print(f"{torch.cuda.get_device_name()}: o_proj {w.numel() * 2 / 1e6:.1f} MB, us (graph replays, L2 flushed)")
    for chunk in (4096, 16384, 65536):
        t_pf = replay_us(lambda: prefetch_l2(w, chunk))
        t_warm = replay_us(lambda: (prefetch_l2(w, chunk), gemv_triton(x, w, None)))
        print(f"chunk {chunk:6d}: prefetch {t_pf:6.1f}, prefetch then gemv {t_warm:6.1f}", flush=True)
    t_gemv = replay_us(lambda: gemv_triton(x, w, None))
    print(f"gemv alone {t_gemv:6.1f}", flush=True)
    for spin_us in (6, 11, 16):
        ns = spin_us * 1000

        def serial():
            _spin_kernel[(1,)](spun, ns)
            return gemv_triton(x, w, None)

        def branched(chunk):
            main_stream = torch.cuda.current_stream()
            side.wait_stream(main_stream)
            with torch.cuda.stream(side):
                prefetch_l2(w, chunk)
            _spin_kernel[(1,)](spun, ns)
            y = gemv_triton(x, w, None)
            main_stream.wait_stream(side)
            return y

        t_serial = replay_us(serial)
        row = f"spin {spin_us:2d} us: spin -> gemv {t_serial:6.1f}"
        for chunk in (16384, 65536):
            t_br = replay_us(lambda: branched(chunk))
            err = (branched(chunk).float() - ref.float()).abs().max().item()
            row += f"; spin || prefetch {chunk}: {t_br:6.1f} (saves {t_serial - t_br:5.1f}, max err {err:.0e})"
        print(row, flush=True)


if __name__ == "__main__":
    main()
