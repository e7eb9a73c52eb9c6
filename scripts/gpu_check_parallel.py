"""GPU machine (one GPU): the multi-process path at world size 1 (NCCL, a process group of one) gives the plain
path's greedy tokens. Run `python scripts/gpu_check_parallel.py`; prints both token lists per dtype and PASS or
FAIL (exit status 0 or 1). `--device cpu` runs the same check with gloo (CI runs it so).

The forced path ("mp" at world size 1) builds every group as a real group of one, so each collective of a step
(plan broadcast, vocab-parallel embedding all-reduce and logits gather, attention and MoE all-reduces) goes
through the backend. Imports only the engine, model and parallel modules (the GPU image has no fastapi,
pydantic, uvicorn or openai-harmony).
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile

import torch
import torch.distributed as dist

from oss_engine import LLM, SamplingParams
from oss_engine.tiny import make_tiny_checkpoint

PROMPTS = [[1, 2, 3, 4, 5], list(range(100, 140)), [7] * 19]


def greedy_tokens(model_dir: str, device: str, dtype: str, backend: str) -> tuple[list[list[int]], str]:
    """-> (tokens per prompt, what ran: "uni" or "<torch.distributed backend> x <world size>")."""
    params = SamplingParams(max_tokens=24, temperature=0, ignore_eos=True)
    with LLM(model_dir, device=device, dtype=dtype, skip_tokenizer_init=True, progress=False, num_kv_blocks=256,
             max_model_len=512, enforce_eager=True, distributed_executor_backend=backend) as llm:
        ran = f"{dist.get_backend()} x {dist.get_world_size()}" if llm.executor is not None else "uni"
        outs = llm.generate(prompt_token_ids=PROMPTS, sampling_params=params)
    return [o.outputs[0].token_ids for o in outs], ran


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", help="cuda (NCCL) or cpu (gloo)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    dtypes = ["float32", "bfloat16"] if args.device.startswith("cuda") else ["float32"]
    ok = True
    with tempfile.TemporaryDirectory() as d:
        make_tiny_checkpoint(d, num_layers=3, vocab_size=4096, write_tokenizer=False, seed=3)
        for dtype in dtypes:
            plain, _ = greedy_tokens(d, args.device, dtype, "uni")
            forced, ran = greedy_tokens(d, args.device, dtype, "mp")
            same = plain == forced
            ok &= same and ran != "uni"
            print(f"{args.device} {dtype} plain:  {plain}", flush=True)
            print(f"{args.device} {dtype} forced ({ran}): {forced}", flush=True)
            print(f"{args.device} {dtype}: {'PASS' if same else 'FAIL'}", flush=True)
            if args.device.startswith("cuda"):
                torch.cuda.empty_cache()
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
