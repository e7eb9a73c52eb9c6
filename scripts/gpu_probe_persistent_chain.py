"""GPU machine: what would a persistent decode kernel buy at batch 1? A chain of one-row linears at the real
shapes, run as separate kernels (the engine's `gemv_triton`, PDL, one CUDA graph) and as ONE persistent Triton
kernel whose programs stream each linear's rows and meet at a grid-wide barrier between linears.

The workload: 24 "layers" of two linears each, gpt-oss-20b's qkv (x [2880] -> [5120]) then its o_proj (the
first 4096 of those -> [2880], the next layer's x): 48 dependent weight streams, 1.27 GB of bf16 weights (far
more than L2), so each replay streams from HBM. The persistent kernel can load a program's first weight tiles
of the next linear BEFORE the barrier (weights never depend on the data), which separate kernels can do only
through PDL's pre-wait loads. Its programs must all be resident at once: launched cooperatively
(`launch_cooperative_grid`, which refuses a grid that does not fit instead of hanging).

Cases, median us of a graph replay (L2 left as it is: the 1.27 GB stream evicts it anyway):
  chain          48 gemv_triton launches (default tiles, PDL on)
  barriers       the persistent kernel with no rows to stream: 48 grid barriers alone
  persistent     G programs (SMs x per_sm), BN rows a block, BK columns a step, `ahead` tiles before the barrier
The floor is the bytes over the copy bandwidth measured in the same call. Each persistent case's output is
checked against the chain's (the same products; float32 sums in another order).

Run: PYTHONPATH=.:scripts python scripts/gpu_probe_persistent_chain.py
Measured on an H100 (docs/performance.md, "Seventeenth session"): floor 433.7 us (copy 2,938 GB/s); the chain
488.1 (89% of the floor, 10.17 us a linear against 9.03); a grid barrier alone 1.14 / 1.45 / 2.02 us with 1 / 2
/ 4 programs an SM; the persistent kernel 581-695 us (62-75%), loads ahead of the barrier no help (592.4 -> 612.0
at 2 an SM). Grids of 4 programs an SM at BN 8 (and 2 at 8 warps) did not fit a cooperative launch.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from oss_engine.bench.hardware import copy_bandwidth, median_seconds
from oss_engine.kernels.triton.gemv import gemv_triton

LAYERS, D, QKV, O_IN = 24, 2880, 5120, 4096


@triton.jit
def _grid_barrier(cnt_ptr, target):
    """Every program of the grid has arrived here `target` / G times: thread 0 releases its program's writes
    (after a CTA barrier, so all of its warps' stores are in), then spins until the count reaches target."""
    tl.debug_barrier()
    tl.atomic_add(cnt_ptr, 1, sem="release", scope="gpu")
    seen = tl.atomic_add(cnt_ptr, 0, sem="acquire", scope="gpu")
    while seen < target:
        seen = tl.atomic_add(cnt_ptr, 0, sem="acquire", scope="gpu")
    tl.debug_barrier()


@triton.jit
def _w_tile(w_ptr, rows, k0, K: tl.constexpr, BK: tl.constexpr):
    k = k0 + tl.arange(0, BK)
    return tl.load(w_ptr + rows[:, None] * K + k[None, :], mask=(k < K)[None, :], other=0.0)  # [BN, BK]


@triton.jit
def _linear(w_ptr, x_ptr, y_ptr, pid, G, pre0, pre1, N: tl.constexpr, K: tl.constexpr, BN: tl.constexpr,
            BK: tl.constexpr, AHEAD: tl.constexpr):
    """y[n] = sum_k W[n, k] x[k] for this program's row blocks pid, pid + G, ...; the first block's first AHEAD
    steps arrive preloaded (pre0, pre1). x is read past L1 (.cg): other programs wrote it."""
    for b in range(pid, N // BN, G):
        rows = b * BN + tl.arange(0, BN)
        acc = tl.zeros((BN, BK), dtype=tl.float32)
        for s in tl.static_range(0, triton.cdiv(K, BK)):
            if AHEAD > s:
                if b == pid:
                    w = pre0 if s == 0 else pre1
                else:
                    w = _w_tile(w_ptr, rows, s * BK, K, BK)
            else:
                w = _w_tile(w_ptr, rows, s * BK, K, BK)
            k = s * BK + tl.arange(0, BK)
            x = tl.load(x_ptr + k, mask=k < K, other=0.0, cache_modifier=".cg").to(tl.float32)
            acc += w.to(tl.float32) * x[None, :]
        tl.store(y_ptr + rows, tl.sum(acc, axis=1).to(y_ptr.dtype.element_ty))


@triton.jit
def _first_tiles(w_ptr, pid, N: tl.constexpr, K: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                 AHEAD: tl.constexpr):
    """The first AHEAD steps of this program's first row block (clamped into range: a program with no block
    loads a valid one it never uses)."""
    rows = (pid % (N // BN)) * BN + tl.arange(0, BN)
    pre0 = _w_tile(w_ptr, rows, 0, K, BK)
    pre1 = _w_tile(w_ptr, rows, BK, K, BK) if AHEAD >= 2 else pre0
    return pre0, pre1


@triton.jit
def _persistent_chain_kernel(wa_ptr, wb_ptr, x_ptr, ya_ptr, cnt_ptr, LAYERS: tl.constexpr, D: tl.constexpr,
                             QKV: tl.constexpr, O_IN: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                             AHEAD: tl.constexpr, WORK: tl.constexpr):
    """LAYERS x (ya = Wa[l] x; x = Wb[l] ya[:O_IN]) with a grid barrier before each linear but the first.
    Wa [LAYERS, QKV, D], Wb [LAYERS, D, O_IN] bf16; x [D], ya [QKV]; cnt one int32, zero at launch."""
    pid = tl.program_id(0)
    G = tl.num_programs(0)
    for layer in range(LAYERS):
        wa = wa_ptr + layer * QKV * D
        wb = wb_ptr + layer * D * O_IN
        if WORK:
            pa0, pa1 = _first_tiles(wa, pid, QKV, D, BN, BK, AHEAD)
        if layer > 0:  # the previous layer's second linear wrote x
            _grid_barrier(cnt_ptr, G * (2 * layer))
        if WORK:
            _linear(wa, x_ptr, ya_ptr, pid, G, pa0, pa1, QKV, D, BN, BK, AHEAD)
            pb0, pb1 = _first_tiles(wb, pid, D, O_IN, BN, BK, AHEAD)
        _grid_barrier(cnt_ptr, G * (2 * layer + 1))
        if WORK:
            _linear(wb, ya_ptr, x_ptr, pid, G, pb0, pb1, D, O_IN, BN, BK, AHEAD)


def persistent_chain(wa: torch.Tensor, wb: torch.Tensor, x: torch.Tensor, ya: torch.Tensor, cnt: torch.Tensor,
                     programs: int, bn: int, bk: int, ahead: int, work: bool = True, num_warps: int = 4,
                     coop: bool = True) -> None:
    """x [D] in place: LAYERS layers of the chain (cnt zeroed here, inside the graph)."""
    cnt.zero_()
    _persistent_chain_kernel[(programs,)](wa, wb, x, ya, cnt, LAYERS=wa.shape[0], D=D, QKV=QKV, O_IN=O_IN, BN=bn,
                                          BK=bk, AHEAD=ahead, WORK=work, num_warps=num_warps, num_stages=1,
                                          launch_cooperative_grid=coop)


def chain(wa: torch.Tensor, wb: torch.Tensor, x: torch.Tensor) -> None:
    """The same layers as separate gemv_triton launches; x [D] in place."""
    h = x.view(1, D)
    for layer in range(wa.shape[0]):
        ya = gemv_triton(h, wa[layer], None)  # [1, QKV]
        h = gemv_triton(ya[:, :O_IN], wb[layer], None)  # [1, D]
    x.copy_(h.view(D))


def replay_us(fn, reps: int = 20) -> float:
    fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return 1e6 * median_seconds(graph.replay, torch.device("cuda"), reps)


def main() -> None:
    dev = torch.device("cuda")
    props = torch.cuda.get_device_properties(dev)
    sms = props.multi_processor_count
    torch.manual_seed(0)
    wa = (torch.randn(LAYERS, QKV, D, device=dev) * D ** -0.5).to(torch.bfloat16)
    wb = (torch.randn(LAYERS, D, O_IN, device=dev) * O_IN ** -0.5).to(torch.bfloat16)
    x0 = torch.randn(D, device=dev).to(torch.bfloat16)
    nbytes = (wa.numel() + wb.numel()) * 2
    bw = copy_bandwidth(dev)
    floor = 1e6 * nbytes / bw
    print(f"{props.name}, {sms} SMs: {nbytes / 1e9:.3f} GB of weights, copy {bw / 1e9:,.0f} GB/s, "
          f"floor {floor:,.1f} us ({floor / (2 * LAYERS):.2f} a linear)", flush=True)

    x = x0.clone()
    t = replay_us(lambda: (x.copy_(x0), chain(wa, wb, x)))
    ref = x.float().clone()
    print(f"chain (gemv_triton, PDL)         {t:9,.1f} us  {floor / t:5.1%} of the floor  "
          f"{t / (2 * LAYERS):6.2f} a linear", flush=True)

    ya = torch.empty(QKV, dtype=torch.bfloat16, device=dev)
    cnt = torch.zeros(1, dtype=torch.int32, device=dev)
    coop = True
    try:
        replay_us(lambda: persistent_chain(wa, wb, x, ya, cnt, sms, 8, 512, 0, work=False), reps=2)
    except Exception as exc:  # graph capture of a cooperative launch refused: plain launches of grids that fit
        print(f"cooperative launch in a graph failed ({type(exc).__name__}: {str(exc)[:100]}); plain launches")
        coop = False
    for per_sm in (1, 2, 4):
        t = replay_us(lambda: persistent_chain(wa, wb, x, ya, cnt, sms * per_sm, 8, 512, 0, work=False, coop=coop))
        print(f"barriers only, {per_sm} a SM           {t:9,.1f} us  {t / (2 * LAYERS - 1):6.2f} a barrier", flush=True)
    for per_sm, bn, bk, ahead, warps in ((1, 8, 512, 0, 4), (2, 8, 512, 0, 4), (4, 8, 512, 0, 4),
                                         (4, 8, 512, 1, 4), (4, 8, 512, 2, 4), (2, 8, 512, 2, 4),
                                         (2, 16, 512, 2, 8), (4, 4, 512, 2, 4), (4, 8, 256, 2, 4)):
        name = f"persistent {per_sm}/SM BN {bn} BK {bk} ahead {ahead} w{warps}"
        try:
            t = replay_us(lambda: (x.copy_(x0), persistent_chain(wa, wb, x, ya, cnt, sms * per_sm, bn, bk, ahead,
                                                                 num_warps=warps, coop=coop)))
        except Exception as exc:  # a grid that cannot be co-resident is refused by the cooperative launch
            print(f"{name:34s} failed: {type(exc).__name__}: {str(exc)[:120]}", flush=True)
            continue
        err = ((x.float() - ref).norm() / ref.norm()).item()
        print(f"{name:34s} {t:9,.1f} us  {floor / t:5.1%} of the floor  {t / (2 * LAYERS):6.2f} a linear  "
              f"rel err vs chain {err:.1e}", flush=True)


if __name__ == "__main__":
    main()
