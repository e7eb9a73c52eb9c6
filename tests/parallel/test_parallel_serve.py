"""`oss-engine serve --tensor-parallel-size 2` as a real process: a chat completion comes back through the
OpenAI client; SIGTERM exits 0 and leaves no worker process; a worker killed while a request streams brings
the server down with a non-zero status and a log line naming the rank, within a bounded wait (never a hang);
under torchrun the same server runs with no spawned worker, and a killed rank ends the job.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

import openai
import pytest

from tests.server.conftest import API_KEY, ServerProc, start_server

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="finds the workers through /proc")


def children(parent: int, marker: bytes) -> list[int]:
    """The live children of `parent` whose command line holds `marker`, or, for b"RANK=N", whose environment
    has that variable (from /proc: ppid, cmdline, environ)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read().rsplit(")", 1)[1].split()  # after "(comm)": state, ppid, ...
            env = marker.startswith(b"RANK=")
            with open(f"/proc/{entry}/{'environ' if env else 'cmdline'}", "rb") as f:
                fields = f.read().split(b"\0")
        except OSError:  # gone meanwhile
            continue
        hit = marker in fields if env else any(marker in x for x in fields)  # (LOCAL_RANK=0 is no RANK=0)
        if int(stat[1]) == parent and stat[0] != "Z" and hit:
            found.append(int(entry))
    return found


def worker_pids(parent: int) -> list[int]:
    return children(parent, b"oss_engine.parallel.worker")


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def start_tp2(model_dir, tmp_path) -> ServerProc:
    return start_server(model_dir, tmp_path, "--tensor-parallel-size", "2", "--max-model-len", "512",
                        "--num-kv-blocks", "128", "--shutdown-timeout", "10")


def client_for(s: ServerProc) -> openai.OpenAI:
    return openai.OpenAI(base_url=s.url("/v1"), api_key=API_KEY, max_retries=0, timeout=60)


def test_serve_tp2_answers_then_sigterm_exits_0_without_workers(tiny_with_tokenizer, tmp_path):
    s = start_tp2(tiny_with_tokenizer, tmp_path)
    try:
        workers = worker_pids(s.proc.pid)
        assert len(workers) == 1, s.log()  # rank 1
        r = client_for(s).chat.completions.create(model=s.model, messages=[{"role": "user", "content": "Hello"}],
                                                  max_tokens=12, temperature=0, reasoning_effort="low")
        msg = r.choices[0].message
        assert r.usage.completion_tokens > 0
        assert (msg.content or "") + (getattr(msg, "reasoning_content", None) or ""), r  # the answer has text
        assert s.stop(timeout=60) == 0, s.log()
    finally:
        if s.proc.poll() is None:
            s.proc.kill()
    assert not any(alive(p) for p in workers), s.log()
    assert "rank 1 loaded" in s.log()


def drain(chunks) -> None:
    try:
        for _ in chunks:
            pass
    except (openai.APIError, OSError):  # an error event or a dropped connection: ended either way
        pass


def test_worker_killed_while_serving_stops_the_server_nonzero(tiny_with_tokenizer, tmp_path):
    s = start_tp2(tiny_with_tokenizer, tmp_path)
    try:
        [victim] = worker_pids(s.proc.pid)
        stream = client_for(s).completions.create(model=s.model, prompt="tell me a story", max_tokens=400,
                                                  temperature=0, stream=True, extra_body={"ignore_eos": True})
        chunks = iter(stream)
        next(chunks)  # the request is running
        os.kill(victim, signal.SIGKILL)
        drained = threading.Thread(target=drain, args=(chunks,), daemon=True)  # the stream must end
        drained.start()
        try:
            code = s.proc.wait(timeout=30)  # the distributed timeout is 300 s: 30 s means no hang
        except subprocess.TimeoutExpired:
            pytest.fail(f"the server did not exit within 30 s of the worker's death:\n{s.log()}")
        drained.join(timeout=10)
        assert not drained.is_alive(), "the client's stream did not end"
    finally:
        if s.proc.poll() is None:
            s.proc.kill()
    log = s.log()
    assert code != 0, log
    assert f"worker rank 1 (pid {victim}) exited with code -9" in log, log
    assert "shutting the server down" in log, log


def test_torchrun_serve_rank_killed_stops_the_job(tiny_with_tokenizer, tmp_path):
    """Under torchrun (external_launcher) rank 0 serves; when rank 1 dies, torchrun's agent stops rank 0 and
    exits non-zero naming the rank (there is no watchdog of ours here: the agent is the one)."""
    torchrun = (sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m")
    s = start_server(tiny_with_tokenizer, tmp_path, "--tensor-parallel-size", "2", "--max-model-len", "512",
                     "--num-kv-blocks", "128", launcher=torchrun)
    ranks = children(s.proc.pid, b"RANK=0") + children(s.proc.pid, b"RANK=1")
    try:
        rank0, rank1 = ranks
        assert not worker_pids(rank0)  # nobody was spawned: torchrun started both ranks
        r = client_for(s).completions.create(model=s.model, prompt="Hello", max_tokens=4, temperature=0)
        assert r.usage.completion_tokens == 4
        os.kill(rank1, signal.SIGKILL)
        try:
            code = s.proc.wait(timeout=45)
        except subprocess.TimeoutExpired:
            pytest.fail(f"torchrun did not exit within 45 s of rank 1's death:\n{s.log()}")
        left = [pid for pid in ranks if alive(pid)]
    finally:
        if s.proc.poll() is None:
            s.proc.kill()
        for pid in ranks:  # after a failure: a killed agent leaves its ranks behind
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
    assert code != 0 and not left, s.log()
    assert "rank      : 1 (local_rank: 1)" in s.log() and "Signal 9 (SIGKILL)" in s.log(), s.log()
