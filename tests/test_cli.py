"""The command line, run as a user would (a subprocess): --help everywhere, make-tiny, generate, chat."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


def run(*args: str, stdin: str = "", env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, **(env_extra or {}))
    return subprocess.run([sys.executable, "-m", "oss_engine", *args], input=stdin, capture_output=True,
                          text=True, timeout=300, env=env)


@pytest.mark.parametrize("cmd", [[], ["generate"], ["chat"], ["make-tiny"]])
def test_help_on_every_command(cmd):
    r = run(*cmd, "--help")
    assert r.returncode == 0 and "usage: oss-engine" in r.stdout
    if cmd:
        assert "--" in r.stdout  # lists its options


def test_make_tiny_then_generate(tmp_path):
    d = tmp_path / "tiny"
    r = run("make-tiny", str(d), "--format", "bf16", "--layers", "2", "--experts", "4")
    assert r.returncode == 0, r.stderr
    assert (d / "config.json").is_file() and (d / "tokenizer.json").is_file()
    r = run("generate", "--model", str(d), "--max-tokens", "5", "--temperature", "0", "Hello")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip()  # five random tokens of text
    again = run("generate", "--model", str(d), "--max-tokens", "5", "--temperature", "0", "Hello")
    assert again.stdout == r.stdout  # greedy is deterministic


def test_chat_reads_stdin_until_eof(tiny_with_tokenizer):
    r = run("chat", "--model", str(tiny_with_tokenizer), "--max-tokens", "8", "--reasoning-effort", "low",
            stdin="Hi there\nAnd again\n")
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("assistant>") == 2


def test_missing_model_is_a_clear_error(tmp_path):
    r = run("generate", "--model", str(tmp_path / "nope"), "hi")
    assert r.returncode == 2
    assert "no config.json" in r.stderr and "Traceback" not in r.stderr


def test_nccl_on_cpu_is_a_clear_error(tiny_with_tokenizer):
    r = run("generate", "--model", str(tiny_with_tokenizer), "--device", "cpu", "-tp", "2",
            "--distributed-backend", "nccl", "hi")
    assert r.returncode == 2
    assert "distributed_backend 'nccl' needs a CUDA device, got 'cpu'" in r.stderr and "Traceback" not in r.stderr


def test_default_model_is_announced(tmp_path):
    r = run("generate", "--max-tokens", "3", "hi", env_extra={"OSS_ENGINE_CACHE_DIR": str(tmp_path)})
    assert r.returncode == 0, r.stderr
    assert "embedded tiny random gpt-oss model" in r.stderr
