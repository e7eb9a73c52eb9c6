"""GPU machine: write a random gpt-oss-20b-shaped MXFP4 checkpoint, load it in bf16 on CUDA, and report the
peak device memory against the checkpoint's size (the foundation issue asks for at most ~1.2x), then
generate a few greedy tokens at the real shapes through the reference kernels."""

import sys
import tempfile
import time
from pathlib import Path

import torch

from oss_engine import LLM, SamplingParams
from oss_engine.presets import write_random_checkpoint

preset = sys.argv[1] if len(sys.argv) > 1 else "gpt-oss-20b"
with tempfile.TemporaryDirectory(dir="/tmp") as d:
    t0 = time.time()
    write_random_checkpoint(d, preset)
    size = sum(f.stat().st_size for f in Path(d).glob("*.safetensors"))
    print(f"{preset}: wrote {size / 1e9:.2f} GB in {time.time() - t0:.0f} s", flush=True)
    torch.cuda.reset_peak_memory_stats()
    t0 = time.time()
    llm = LLM(d, dtype="bfloat16", device="cuda", skip_tokenizer_init=True, num_kv_blocks=256, progress=False)
    torch.cuda.synchronize()
    peak, alloc = torch.cuda.max_memory_allocated(), torch.cuda.memory_allocated()
    print(f"load {time.time() - t0:.1f} s; device memory: peak {peak / 1e9:.2f} GB, resident {alloc / 1e9:.2f} GB "
          f"(incl. {256 * 16 * 24 * 2 * 8 * 64 * 2 / 1e9:.2f} GB KV); peak / checkpoint = {peak / size:.3f}", flush=True)
    t0 = time.time()
    out = llm.generate(prompt_token_ids=[list(range(1000, 1100))],
                       sampling_params=SamplingParams(max_tokens=8, temperature=0, ignore_eos=True))[0]
    torch.cuda.synchronize()
    print(f"greedy 8 tokens after a 100-token prompt (reference kernels): {out.outputs[0].token_ids} "
          f"in {time.time() - t0:.2f} s", flush=True)
