"""Which Triton op makes the GPU engine differ from the CPU reference? Swaps one op at a time back to its
reference twin on a float32 CUDA engine and counts greedy first tokens that differ from the CPU reference
(32 random prompts of 1..200 tokens, one batched prefill, 3 greedy tokens), each with the first position that
differs. Prints first whether float32 matmuls may use tf32. Run: PYTHONPATH=. python scripts/gpu_diag_ops.py"""

import dataclasses
import os
import random
import tempfile

import torch

from oss_engine import LLM, SamplingParams
from oss_engine.kernels import get_ops
from oss_engine.tiny import make_tiny_checkpoint

print("float32 matmul precision:", torch.get_float32_matmul_precision(), "| cuBLAS tf32:",
      torch.backends.cuda.matmul.allow_tf32, "| TORCH_ALLOW_TF32_CUBLAS_OVERRIDE =",
      os.environ.get("TORCH_ALLOW_TF32_CUBLAS_OVERRIDE"), "| NVIDIA_TF32_OVERRIDE =", os.environ.get("NVIDIA_TF32_OVERRIDE"))
d = tempfile.mkdtemp()
make_tiny_checkpoint(d, fmt="mxfp4", seed=3, num_layers=3, vocab_size=4096, sliding_window=8, write_tokenizer=False)
rng = random.Random(0)
ps = [[rng.randrange(4096) for _ in range(rng.randint(1, 200))] for _ in range(32)]
G = SamplingParams(max_tokens=3, temperature=0.0, ignore_eos=True)
ref = LLM(d, device="cpu", dtype="float32", skip_tokenizer_init=True, progress=False)
want = [o.outputs[0].token_ids for o in ref.generate(prompt_token_ids=ps, sampling_params=G)]
gpu = LLM(d, device="cuda", dtype="float32", skip_tokenizer_init=True, progress=False, enforce_eager=True,
          num_kv_blocks=4000)
tri, rops = get_ops("triton"), get_ops("ref")
for swap in [None, "attention", "moe_experts", "route", "add_rms_norm", "rope_store_kv"]:
    ops = tri if swap is None else dataclasses.replace(tri, **{swap: getattr(rops, swap)})
    for m in gpu.model.modules():
        if hasattr(m, "ops"):
            m.ops = ops
    for bs in (32, 1):
        got = []
        for i in range(0, 32, bs):
            got += [o.outputs[0].token_ids for o in gpu.generate(prompt_token_ids=ps[i:i + bs], sampling_params=G)]
        bad = [(i, next(j for j, (a, b) in enumerate(zip(got[i], want[i])) if a != b))
               for i in range(32) if got[i] != want[i]]
        print(f"ref {swap or '-':<14} batch {bs:>2}: {len(bad)} differ (prompt, token) {bad[:8]}", flush=True)
