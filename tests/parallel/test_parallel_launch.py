"""Worker lifecycle: a worker killed in the middle of generation makes rank 0 raise a clear error within
seconds (never a hang), every later call refuses, and no process is left behind; the CLI runs with
--tensor-parallel-size 2, started by itself or by torchrun, and prints what one process prints; the forced
multi-process path at world size 1 (a gloo group of one) gives the plain path's tokens."""

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


def cli_generate(model_dir, *extra: str, launcher: tuple[str, ...] = (sys.executable, "-m")) -> tuple[str, str]:
    """`oss-engine generate` (greedy, 6 tokens, "Hello") -> (stdout, stderr); it must exit 0."""
    r = subprocess.run([*launcher, "oss_engine", "generate", "--model", str(model_dir), "--device", "cpu",
                        "--max-tokens", "6", "--temperature", "0", *extra, "Hello"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return r.stdout, r.stderr


@pytest.fixture(scope="module")
def one_process_text(tiny_with_tokenizer) -> str:
    text, _ = cli_generate(tiny_with_tokenizer)
    assert text.strip()
    return text


def test_cli_generate_with_tensor_parallel(tiny_with_tokenizer, one_process_text):
    two, log = cli_generate(tiny_with_tokenizer, "--tensor-parallel-size", "2")
    assert "rank 1 loaded" in log  # two ranks did run
    assert two == one_process_text


def test_torchrun_generate_with_tensor_parallel(tiny_with_tokenizer, one_process_text):
    """torchrun starts both ranks (external_launcher): rank 0 prints what one process prints, rank 1 runs the
    worker loop (and prints nothing), nobody spawns a worker subprocess."""
    torchrun = (sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m")
    two, log = cli_generate(tiny_with_tokenizer, "--tensor-parallel-size", "2", launcher=torchrun)
    assert "rank 1 of 2 (local rank 1) joined" in log and "rank 1 loaded" in log
    assert two == one_process_text


def test_forced_multiprocess_path_at_world_size_1_matches_plain(tmp_path):
    """distributed_executor_backend="mp" with tp = pp = dp = 1: a gloo process group of one in which every group
    is real (collectives run through gloo), the same greedy tokens as the plain one-process path."""
    import torch.distributed as dist

    make_tiny_checkpoint(tmp_path, fmt="mxfp4", num_layers=2, vocab_size=512, write_tokenizer=False)
    kw = dict(device="cpu", skip_tokenizer_init=True, progress=False, num_kv_blocks=64, max_model_len=256)
    params = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)
    prompts = [[1, 2, 3], list(range(40, 70))]
    plain = LLM(str(tmp_path), **kw)
    assert plain.executor is None
    want = [o.outputs[0].token_ids for o in plain.generate(prompt_token_ids=prompts, sampling_params=params)]
    with LLM(str(tmp_path), distributed_executor_backend="mp", **kw) as llm:
        ps = llm.executor.ps
        assert dist.get_world_size() == 1 and dist.get_backend() == "gloo"
        assert all(g.active for g in (ps.control, ps.tp, ps.moe, ps.dp)) and not llm.executor.workers.procs
        assert type(llm.model.embed).__name__ == "VocabParallelEmbedding"  # its all-reduce runs too
        got = [o.outputs[0].token_ids for o in llm.generate(prompt_token_ids=prompts, sampling_params=params)]
    assert not dist.is_initialized()
    assert got == want


def test_gpu_check_parallel_script_runs_on_cpu_without_server_modules():
    """scripts/gpu_check_parallel.py (the lead's one-GPU NCCL check), run with --device cpu while fastapi,
    pydantic, uvicorn and openai-harmony cannot be imported (the GPU image lacks them)."""
    blocker = ("import sys, runpy\n"
               "class Block:\n"
               "    def find_spec(self, name, path=None, target=None):\n"
               "        if name.split('.')[0] in ('fastapi', 'pydantic', 'uvicorn', 'openai_harmony'):\n"
               "            raise ImportError('blocked: ' + name)\n"
               "sys.meta_path.insert(0, Block())\n"
               "sys.argv = ['gpu_check_parallel.py', '--device', 'cpu']\n"
               "runpy.run_path('scripts/gpu_check_parallel.py', run_name='__main__')\n")
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    r = subprocess.run([sys.executable, "-c", blocker], capture_output=True, text=True, timeout=120, cwd=root)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "forced (gloo x 1)" in r.stdout and r.stdout.strip().endswith("PASS"), r.stdout
