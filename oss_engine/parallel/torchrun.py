"""Launch by torchrun (`distributed_executor_backend="external_launcher"`): torchrun starts every rank, on one
host or several, and the ranks meet at its rendezvous (init_method env://) instead of rank 0 spawning them.

    torchrun --nnodes 2 --nproc-per-node 4 --rdzv-backend c10d --rdzv-endpoint HOST:29500 \
        -m oss_engine serve --model DIR -tp 4 -pp 2

Every rank runs the same command line. Rank 0 runs the command (scheduler, sampler, server) through
`ParallelExecutor`, which calls `join_as_rank_0`; ranks > 0 never run the command: the CLI sends them to
`run_worker`, the worker loop of worker.py. Rank 0 broadcasts the engine config as JSON before the groups are
built, so the workers need only the device and the collective backend (`--device` and `--distributed-backend`
must resolve alike on every host).

A rank that dies is torchrun's to handle: its agent stops every rank of the job (there is no watchdog of
child processes here; `TorchrunWorkers` stands in for launch.WorkerGroup).
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Callable

from ..config import ConfigError, EngineConfig, LaunchEnv, ParallelConfig
from .launch import config_from_json, config_to_json
from .session import broadcast_text
from .state import ParallelState, join_world, rank_device
from .worker import run

log = logging.getLogger(__name__)


class TorchrunWorkers:
    """Rank 0's view of workers it did not start: nothing to watch, wait for or stop (torchrun's agent does)."""

    failure: str | None = None

    def __init__(self):
        self.on_failure: list[Callable[[str], None]] = []
        self.closing = False

    def check(self) -> None:
        pass

    def terminate(self) -> None:
        pass

    def expect_exit(self) -> None:
        self.closing = True

    def close(self) -> None:
        self.closing = True


def join_as_rank_0(cfg: EngineConfig) -> ParallelState:
    """Rank 0: join torchrun's world, send the config to the workers, build the groups."""
    par = cfg.parallel
    join_world(par.backend, par.init_method, 0, par.world_size, par.timeout_s, cfg.device)
    broadcast_text(config_to_json(cfg), cfg.device)
    return ParallelState.build(par, 0, cfg.device)


def run_worker(env: LaunchEnv, device: str, backend: str) -> int:
    """A rank > 0 started by torchrun: join, receive the config, load this rank's shard and run steps until
    rank 0 sends the shutdown message. `device` is the resolved --device ("cpu" or "cuda"), `backend` the
    resolved --distributed-backend. Until the config arrives the default group has the default timeout (the
    CLI does not change it)."""
    if env.rank == 0:
        raise ConfigError("rank 0 runs the command itself, not the worker loop")
    dev = rank_device(device, env.local_rank)
    join_world(backend, "env://", env.rank, env.world_size, ParallelConfig.timeout_s, dev)
    cfg = config_from_json(broadcast_text(None, dev))
    if cfg.parallel.backend != backend or cfg.parallel.world_size != env.world_size:
        raise ConfigError(f"rank {env.rank}: rank 0 runs {cfg.parallel.backend} over {cfg.parallel.world_size} "
                          f"ranks, this rank {backend} over {env.world_size}")
    cfg = replace(cfg, device=dev)  # (CPU threads: torchrun sets OMP_NUM_THREADS=1 for several ranks a host)
    log.info("rank %d of %d (local rank %d) joined at %s:%d", env.rank, env.world_size, env.local_rank,
             env.master_addr, env.master_port)
    run(cfg, ParallelState.build(cfg.parallel, env.rank, dev))
    return 0
