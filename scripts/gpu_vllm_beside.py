"""GPU machine: vLLM beside ours on the same random-weight shapes (vLLM itself is carried, never committed: see
../shared/PERFORMANCE.md, "Running vLLM beside ours"; the device has no internet).

Method (PERFORMANCE.md's): `LLM(model=DIR, skip_tokenizer_init=True, load_format="dummy")` on a config-only
folder (`oss_engine.presets.write_preset_config`); decode rate = B * 256 / (t(321 new tokens) - t(65)) after a
1k prompt, median of 3, fresh random prompts each run (the first pass of each shape compiles and is not
timed); prefill = 8 prompts of 2k, one new token, median of 3; TTFT = one 2k prompt, one new token, median of 5
(the `generate` call's wall time).

REROUTE=1: vLLM's dummy loader draws every float parameter from U(-1e-3, 1e-3) with one fixed seed, so all
layers' routers are the same and their bias outweighs the token's state: every token picks the same 4 experts,
and a batch reads a batch-1 step's expert bytes (measured on an H100: 64 random tokens' embeddings pick 4
distinct experts at layer 0). REROUTE gives each layer's router N(0, 1) weights and a zero bias before timing
(64 tokens then pick all 32). The integer MXFP4 tensors stay as the loader leaves them (uninitialised), so later
layers' states are not those of real weights either: only figures whose bytes do not depend on the routing
(batch 1) compare exactly. Results: docs/performance.md.

Run: PYTHONPATH=/path/to/carried/vllm python3 scripts/gpu_vllm_beside.py CONFIG_DIR 1,8,64
"""

from __future__ import annotations

import os
import statistics
import sys
import time

os.environ.setdefault("VLLM_USE_FLASHINFER_SAMPLER", "0")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["VLLM_ALLOW_INSECURE_SERIALIZATION"] = "1"  # LLM.apply_model sends `reroute` to the engine process

import torch  # noqa: E402
from vllm import LLM, SamplingParams  # noqa: E402
from vllm.inputs import TokensPrompt  # noqa: E402


def reroute(model: torch.nn.Module) -> tuple[int, int]:
    """Every layer's router: N(0, 1) weights drawn per layer, zero bias. Returns the distinct top-4 experts of
    64 random tokens' embeddings at layer 0, before and after."""
    emb = model.model.embedding.weight
    x = emb[torch.randint(0, 200000, (64,), device=emb.device)]
    r0 = model.model.layers[0].mlp.router
    before = torch.topk(x @ r0.weight.t() + r0.bias, 4).indices.unique().numel()
    gen = torch.Generator(device=emb.device).manual_seed(1)
    for layer in model.model.layers:
        r = layer.mlp.router
        r.weight.copy_(torch.randn(r.weight.shape, generator=gen, device=r.weight.device).to(r.weight.dtype))
        r.bias.zero_()
    after = torch.topk(x @ r0.weight.t() + r0.bias, 4).indices.unique().numel()
    return before, after


def main() -> None:
    model_dir, batches = sys.argv[1], [int(b) for b in sys.argv[2].split(",")]
    llm = LLM(model=model_dir, skip_tokenizer_init=True, load_format="dummy", max_model_len=4096,
              gpu_memory_utilization=float(os.environ.get("UTIL", "0.85")))
    if os.environ.get("REROUTE"):
        print("vllm reroute: distinct experts of 64 tokens at layer 0 (before, after):",
              llm.apply_model(torch.no_grad()(reroute)), flush=True)
    gen = torch.Generator().manual_seed(0)

    def run(n: int, length: int, new: int) -> float:
        ps = [TokensPrompt(prompt_token_ids=torch.randint(0, 200000, (length,), generator=gen).tolist())
              for _ in range(n)]
        sp = SamplingParams(max_tokens=new, ignore_eos=True, detokenize=False, temperature=0.0)
        torch.cuda.synchronize()
        t = time.perf_counter()
        out = llm.generate(ps, sp, use_tqdm=False)
        torch.cuda.synchronize()
        assert all(len(o.outputs[0].token_ids) == new for o in out)
        return time.perf_counter() - t

    for b in batches:
        run(b, 1024, 65)  # the first pass of each shape compiles
        run(b, 1024, 321)
        t65 = statistics.median(run(b, 1024, 65) for _ in range(3))
        t321 = statistics.median(run(b, 1024, 321) for _ in range(3))
        print(f"vllm decode batch {b}, ctx 1024: {b * 256 / (t321 - t65):,.0f} tok/s "
              f"(t65 {t65:.3f} s, t321 {t321:.3f} s)", flush=True)
    run(8, 2048, 1)
    tp = statistics.median(run(8, 2048, 1) for _ in range(3))
    print(f"vllm prefill 8 x 2048: {8 * 2048 / tp:,.0f} tok/s ({tp * 1e3:.1f} ms)", flush=True)
    run(1, 2048, 1)
    tt = statistics.median(run(1, 2048, 1) for _ in range(5))
    print(f"vllm ttft 2048 (generate call, max_tokens 1): {tt * 1e3:.1f} ms", flush=True)


if __name__ == "__main__":
    main()
