"""A real `oss-engine serve` process on 127.0.0.1 for the server tests (the tiny model, float32 CPU)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from oss_engine.tiny import make_tiny_checkpoint

API_KEY = "test-key"


@dataclass
class ServerProc:
    proc: subprocess.Popen
    base: str  # http://127.0.0.1:PORT
    model: str
    log_path: str

    def url(self, path: str) -> str:
        return self.base + path

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {API_KEY}"}

    def metrics(self) -> dict[str, float]:
        """GET /metrics as {sample name (+ its labels as JSON): value}."""
        text = httpx.get(self.url("/metrics"), headers=self.headers()).text
        out = {}
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                key = s.name + ("" if not s.labels else json.dumps(s.labels, sort_keys=True))
                out[key] = s.value
        return out

    def log(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def stop(self, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn_server(model_dir, tmp_path, *extra: str, name: str = "tiny",
                 launcher: tuple[str, ...] = (sys.executable, "-m")) -> ServerProc:
    """`oss-engine serve` on a free port, started as `launcher + ["oss_engine", "serve", ...]` (not waited for)."""
    port = free_port()
    log_path = str(tmp_path / f"server-{port}.log")
    cmd = [*launcher, "oss_engine", "serve", "--model", str(model_dir), "--port", str(port),
           "--api-key", API_KEY, "--served-model-name", name, "--dtype", "float32", "--device", "cpu", *extra]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ))
    return ServerProc(proc, f"http://127.0.0.1:{port}", name, log_path)


def start_server(model_dir, tmp_path, *extra: str, name: str = "tiny",
                 launcher: tuple[str, ...] = (sys.executable, "-m")) -> ServerProc:
    """`spawn_server`, returned once /health answers 200."""
    server = spawn_server(model_dir, tmp_path, *extra, name=name, launcher=launcher)
    proc = server.proc
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{server.log()}")
        try:
            if httpx.get(server.url("/health"), timeout=2).status_code == 200:
                return server
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"server did not become healthy:\n{server.log()}")


@pytest.fixture(scope="session")
def server_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("server-tiny")
    make_tiny_checkpoint(path, fmt="mxfp4", seed=0, num_layers=2)
    return path


@pytest.fixture(scope="module")
def server(server_model, tmp_path_factory):
    s = start_server(server_model, tmp_path_factory.mktemp("srv"), "--max-model-len", "1024",
                     "--max-num-seqs", "32", "--max-queued-requests", "256")
    yield s
    assert s.stop() == 0, s.log()
