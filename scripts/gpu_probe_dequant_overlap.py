"""GPU machine: would the grouped_mm MoE path's dequantization (moe_grouped_mm.py: ~0.73 ms a gpt-oss-20b layer
at 16,384 tokens on an H100, bandwidth-bound) hide behind the same layer's prefill attention (compute-bound)
if it ran on a side stream? The question to answer before threading a prefetch through the decoder layer.

Cases, each captured in one CUDA graph and replayed with L2 flushed (the bench's timer), median us:
  attention    paged_attention_triton on 8 prompts of 2,048 new tokens (gpt-oss shapes: H 64, K 8, D 64,
               blocks of 16), full attention, then a 128-token sliding window
  dequant      moe_grouped_mm.dequantize of 20b's W1 and W2 (32 experts, MXFP4 random bytes)
  serial       attention, then the dequantization, one stream
  overlapped   the dequantization on a side stream forked before attention and joined after it
The gain an overlap can give is serial - max(attention, dequant); the line prints what it got of it.

Run: PYTHONPATH=.:scripts python scripts/gpu_probe_dequant_overlap.py
Measured on an H100 (docs/performance.md, "Seventeenth session"): full attention 943.8, dequantization 699.2,
serial 1,633.5, overlapped 1,601.6 (5% of what an overlap could give); window 128: 271.6, 701.1, 965.4, 957.6 (3%).
Likely (not checked) because attention's programs fill the GPU, so the side kernel waits for its tail. Not built.
"""

from __future__ import annotations

import torch

from gpu_bench_attention import SCALE, make
from gpu_bench_moe import D, I, mxfp4_weight
from oss_engine.bench.kernel_bench import graph_us
from oss_engine.kernels.triton import moe_grouped_mm as gmm
from oss_engine.kernels.triton.attention import paged_attention_triton

CUDA = torch.device("cuda")


def main() -> None:
    gen = torch.Generator().manual_seed(0)
    w1, w2 = mxfp4_weight(2 * I, D, gen), mxfp4_weight(D, I, gen)
    side = torch.cuda.Stream()
    print(f"{torch.cuda.get_device_name()}: us, graph replays, L2 flushed", flush=True)
    for window in (None, 128):
        q, k_cache, v_cache, sinks, meta, positions = make([(0, 2048)] * 8, window)

        def attention():
            return paged_attention_triton(q, k_cache, v_cache, sinks, meta, positions, window, SCALE)

        def dequant():
            return gmm.dequantize(w1), gmm.dequantize(w2)

        def serial():
            return attention(), dequant()

        def overlapped():
            main = torch.cuda.current_stream()
            side.wait_stream(main)
            with torch.cuda.stream(side):
                copies = dequant()
            out = attention()
            main.wait_stream(side)
            return out, copies

        t = {name: graph_us(fn, CUDA, reps=10) for name, fn in
             (("attention", attention), ("dequant", dequant), ("serial", serial), ("overlapped", overlapped))}
        floor = max(t["attention"], t["dequant"])
        gain = t["serial"] - floor
        got = (t["serial"] - t["overlapped"]) / gain if gain > 0 else float("nan")
        print(f"window {window}: " + ", ".join(f"{k} {v:,.1f}" for k, v in t.items())
              + f"; overlap got {got:.0%} of the {gain:,.1f} us it could", flush=True)


if __name__ == "__main__":
    main()
