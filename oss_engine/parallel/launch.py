"""Worker launch on one host: rank 0 (this process) starts ranks 1 .. N-1 as subprocesses
(`python -m oss_engine.parallel.worker`), all rendezvous over a free localhost port.

The engine config travels as JSON on the command line (set-up, not step data). A watchdog thread polls the
workers: the first one that exits unexpectedly is recorded (`failure`), the others are terminated so that
rank 0's pending collective fails at once instead of waiting for its timeout, and the `on_failure`
callbacks run (the server uses one to shut down). Workers watch their parent the same way (worker.py).
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import threading
from dataclasses import asdict, replace
from typing import Callable

from ..config import CacheConfig, EngineConfig, ModelConfig, ParallelConfig, SchedulerConfig

log = logging.getLogger(__name__)


class WorkerFailed(RuntimeError):
    """A worker process died; every later step refuses to run."""


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def config_to_json(cfg: EngineConfig) -> str:
    return json.dumps({"model_dir": cfg.model_dir, "device": cfg.device, "dtype": cfg.dtype, "kernels": cfg.kernels,
                       "seed": cfg.seed, "enforce_eager": cfg.enforce_eager, "load_format": cfg.load_format,
                       "cache": asdict(cfg.cache), "scheduler": asdict(cfg.scheduler),
                       "parallel": asdict(cfg.parallel)})


def config_from_json(text: str) -> EngineConfig:
    raw = json.loads(text)
    return EngineConfig(model_dir=raw["model_dir"], model=ModelConfig.from_dir(raw["model_dir"]),
                        device=raw["device"], dtype=raw["dtype"], cache=CacheConfig(**raw["cache"]),
                        scheduler=SchedulerConfig(**raw["scheduler"]), kernels=raw["kernels"],
                        enforce_eager=raw["enforce_eager"], load_format=raw["load_format"],
                        skip_tokenizer_init=True, seed=raw["seed"], parallel=ParallelConfig(**raw["parallel"]))


def with_rendezvous(cfg: EngineConfig) -> EngineConfig:
    """The port resolved (0 -> a free one) before any process needs it."""
    par = cfg.parallel
    if par.master_port:
        return cfg
    return replace(cfg, parallel=replace(par, master_port=free_port(par.master_addr)))


class WorkerGroup:
    """Ranks 1 .. N-1 as subprocesses of this one, watched."""

    def __init__(self, cfg: EngineConfig, poll_s: float = 0.1):
        spec = config_to_json(cfg)
        env = dict(os.environ)
        self.procs = {r: subprocess.Popen([sys.executable, "-m", "oss_engine.parallel.worker", str(r), spec], env=env)
                      for r in range(1, cfg.parallel.world_size)}
        self.failure: str | None = None
        self.on_failure: list[Callable[[str], None]] = []
        self._closing = threading.Event()
        self._poll_s = poll_s
        self._thread = threading.Thread(target=self._watch, name="oss-engine-watchdog", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._closing.wait(self._poll_s):
            for rank, p in self.procs.items():
                code = p.poll()
                if code is not None and not self._closing.is_set():
                    self._fail(f"worker rank {rank} (pid {p.pid}) exited with code {code}"
                               + (f" (signal {-code})" if code < 0 else ""))
                    return

    def _fail(self, message: str) -> None:
        self.failure = message
        log.error("%s; stopping the other workers", message)
        self.terminate()
        for callback in self.on_failure:
            try:
                callback(message)
            except Exception:
                log.exception("on_failure callback failed")

    def check(self) -> None:
        if self.failure is not None:
            raise WorkerFailed(f"a parallel worker died: {self.failure}")

    def terminate(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.terminate()

    @property
    def closing(self) -> bool:
        return self._closing.is_set()

    def expect_exit(self) -> None:
        """Called before the shutdown message: workers exiting from now on are not failures."""
        self._closing.set()

    def close(self, timeout: float = 30.0) -> None:
        """After the shutdown message: wait for the workers to exit, then make sure they have."""
        self._closing.set()
        for p in self.procs.values():
            try:
                p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
