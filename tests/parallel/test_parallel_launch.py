"""Worker lifecycle: a worker killed in the middle of generation makes rank 0 raise a clear error within
seconds (never a hang), every later call refuses, and no process is left behind; the CLI runs with
--tensor-parallel-size 2 and prints what one process prints."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from oss_engine import LLM, SamplingParams
from oss_engine.parallel.launch import WorkerFailed
from oss_engine.tiny import make_tiny_checkpoint


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_killed_worker_fails_rank_0_fast_and_leaves_no_process(tmp_path):
    make_tiny_checkpoint(tmp_path, fmt="mxfp4", num_layers=2, num_key_value_heads=2, vocab_size=512,
                         write_tokenizer=False)
    llm = LLM(str(tmp_path), device="cpu", skip_tokenizer_init=True, progress=False, num_kv_blocks=256,
              max_model_len=2048, tensor_parallel_size=2, pipeline_parallel_size=2, distributed_timeout_s=120)
    pids = [p.pid for p in llm.executor.workers.procs.values()]
    assert len(pids) == 3 and all(_alive(p) for p in pids)
    victim = pids[1]  # rank 2: the second stage's tp rank 0
    threading.Timer(1.5, os.kill, (victim, signal.SIGKILL)).start()
    long = SamplingParams(max_tokens=1500, temperature=0.0, ignore_eos=True)
    start = time.monotonic()
    with pytest.raises(WorkerFailed, match=rf"worker rank 2 \(pid {victim}\) exited with code -9"):
        llm.generate(prompt_token_ids=[[1, 2, 3]] * 4, sampling_params=long)
    assert time.monotonic() - start < 1.5 + 10  # the kill came at 1.5 s; the timeout is 120 s
    with pytest.raises(WorkerFailed, match="worker rank 2"):
        llm.generate(prompt_token_ids=[[1, 2]], sampling_params=SamplingParams(max_tokens=2))
    llm.close()
    assert not any(_alive(p) for p in pids)


def test_cli_generate_with_tensor_parallel(tiny_with_tokenizer):
    def generate(*extra: str) -> tuple[str, str]:
        r = subprocess.run([sys.executable, "-m", "oss_engine", "generate", "--model", str(tiny_with_tokenizer),
                            "--device", "cpu", "--max-tokens", "6", "--temperature", "0", *extra, "Hello"],
                           capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        return r.stdout, r.stderr

    one, _ = generate()
    assert one.strip()
    two, log = generate("--tensor-parallel-size", "2")
    assert "rank 1 loaded" in log  # two ranks did run
    assert two == one
