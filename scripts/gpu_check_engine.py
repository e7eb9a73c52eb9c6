"""GPU machine: the engine on CUDA: the profiling pass sizes the KV cache from gpu_memory_utilization, then a
mixed batch with chunked prefill, prefix hits and preemption matches the float32 CPU reference tokens
(bf16 may differ at near-ties; counted, not asserted)."""

import logging
import random
import tempfile

import torch

from oss_engine import LLM, SamplingParams
from oss_engine.tiny import make_tiny_checkpoint

logging.basicConfig(level=logging.INFO, format="%(message)s")
with tempfile.TemporaryDirectory() as d:
    make_tiny_checkpoint(d, num_layers=3, vocab_size=4096, write_tokenizer=False, seed=3)
    rng = random.Random(0)
    prompts = [[rng.randrange(4096) for _ in range(rng.randint(5, 300))] for _ in range(24)]
    params = SamplingParams(max_tokens=32, temperature=0, ignore_eos=True)
    ref = LLM(d, device="cpu", dtype="float32", skip_tokenizer_init=True, progress=False)
    want = [o.outputs[0].token_ids for o in ref.generate(prompt_token_ids=prompts, sampling_params=params)]
    for dtype in ("float32", "bfloat16"):
        gpu = LLM(d, device="cuda", dtype=dtype, skip_tokenizer_init=True, progress=False,
                  max_num_batched_tokens=512, gpu_memory_utilization=0.5)
        got = [o.outputs[0].token_ids for o in gpu.generate(prompt_token_ids=prompts, sampling_params=params)]
        same = sum(a == b for a, b in zip(got, want))
        print(f"cuda {dtype}: default-budget pool {gpu.engine.kv.num_blocks('full_attention')} blocks; "
              f"{same}/24 sequences identical to the fp32 CPU reference", flush=True)
        small = LLM(d, device="cuda", dtype=dtype, skip_tokenizer_init=True, progress=False, num_kv_blocks=40,
                    max_num_batched_tokens=64)
        got2 = [o.outputs[0].token_ids for o in small.generate(prompt_token_ids=prompts, sampling_params=params)]
        st = small.engine.stats()
        print(f"cuda {dtype}: tiny pool, {st.num_preemptions_total} preemptions, chunk 64: "
              f"{sum(a == b for a, b in zip(got2, got))}/24 identical to the big-pool CUDA run; "
              f"blocks used after: {st.kv_blocks_used}", flush=True)
        del gpu, small
        torch.cuda.empty_cache()
