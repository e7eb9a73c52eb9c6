"""GPU machine: the grouped MoE path's rows per block (BLOCK_M) at the batch sizes where experts get several
rows: T = 8 to 2048 (1 to 256 rows an expert on gpt-oss-20b). Every weight is decoded once per block of
its expert, and the e2m1 decode is what limits these GEMMs (docs/performance.md), so a block that holds all
of an expert's rows should pay. Same tiles for both GEMMs; experts only; graph replay with L2 flushed
(gpu_bench_moe's timer); each point checked against the reference first (rel L2 < 2e-2).

Run: PYTHONPATH=. python scripts/gpu_sweep_moe_rows.py
"""

from __future__ import annotations

import functools

import torch

from gpu_bench_moe import ALPHA, LIMIT, D, I, batch, mxfp4_weight, time_graph_flushed
from oss_engine.kernels.ref.moe import moe_experts_ref
from oss_engine.kernels.triton.moe import moe_experts_triton
from oss_engine.kernels.triton.moe_config import GemmTiles, MoeTritonConfig, triton_config
from oss_engine.kernels.triton.moe_decode import moe_experts_decode_triton

G = GemmTiles
SWAP = "dot_scaled_swap"
# T: tiles for both GEMMs, or (GEMM 1's, GEMM 2's[, mode]). Rounds 1-2 (T = 8-2048, an H200) chose the
# defaults; round 3 (the T = 2048 entries, an H100) kept them (docs/performance.md).
CANDIDATES = {
    8: [G(16, 64, 128, 2, 4)],
    64: [G(16, 64, 128, 2, 3), (G(16, 64, 128, 2, 3), G(16, 32, 256, 2, 3)),
         (G(16, 64, 128, 2, 4), G(16, 64, 128, 2, 3))],
    2048: [G(128, 128, 64, 4, 4), G(128, 128, 128, 4, 3), G(128, 128, 128, 8, 3), G(128, 256, 64, 8, 3),
           G(64, 128, 64, 4, 4), G(128, 64, 64, 4, 4), G(256, 128, 64, 8, 3)]
    + [(t, t, SWAP) for t in (G(128, 64, 64, 4, 3), G(64, 128, 64, 4, 3), G(128, 128, 64, 8, 3),
                              G(64, 64, 128, 4, 3), G(128, 128, 64, 4, 3))],
}
DECODE_PATH_AT = (8,)  # also time moe_decode.py's per-pair path here (the op table takes it up to 16 pairs)


def _config(t, mode: str) -> MoeTritonConfig:
    """A CANDIDATES entry -> its config (mode: the default's unless the entry names one)."""
    if not isinstance(t, tuple):
        return MoeTritonConfig(t, t, mode)
    return MoeTritonConfig(t[0], t[1], t[2] if len(t) == 3 else mode)


def main() -> None:
    gen = torch.Generator().manual_seed(0)
    w1, w2 = mxfp4_weight(2 * I, D, gen), mxfp4_weight(D, I, gen)
    print(torch.cuda.get_device_name())
    for T, tiles in CANDIDATES.items():
        x, weights, ids = batch(T, gen)
        want = moe_experts_ref(x, weights, ids, w1, w2, LIMIT, ALPHA).float()
        base = triton_config(T * 4, 32, torch.device("cuda"))
        rows = []
        points = [(label, functools.partial(moe_experts_triton, x, weights, ids, w1, w2, LIMIT, ALPHA, config=cfg))
                  for label, cfg in [("default", base)]
                  + [(str(t), _config(t, base.mxfp4_decode)) for t in tiles]]
        if T in DECODE_PATH_AT:
            points.append(("decode path", functools.partial(moe_experts_decode_triton, x, weights, ids, w1, w2,
                                                            LIMIT, ALPHA)))
        for label, fn in points:
            try:
                got = fn()
                err = ((got.float() - want).norm() / want.norm()).item()
                us = time_graph_flushed(fn, reps=15)
            except Exception as exc:  # noqa: BLE001 - e.g. out of shared memory: report, go on
                print(f"  T={T} {label}: {type(exc).__name__}: {str(exc)[:80]}")
                continue
            rows.append((us, label, err))
        print(f"T = {T} (default {base.gemm1} / {base.gemm2}):")
        for us, label, err in sorted(rows):
            print(f"  {us:8.1f} us  {label}" + ("" if err < 2e-2 else f"  ERR {err:.1e}"))


if __name__ == "__main__":
    main()
