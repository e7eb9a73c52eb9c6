"""A worker rank (1 .. N-1): `python -m oss_engine.parallel.worker RANK CONFIG_JSON`.

Joins the world, builds and loads its shard of the model, reports what it loaded, receives the KV block
counts, then loops: receive a step plan from rank 0, run its stage of its replica, send the logits to rank 0
when it holds them; a shutdown message ends the loop. It exits when its parent does (a watcher thread), and
any exception ends the process with a non-zero status, which rank 0's watchdog reports. `run` (load, then
the step loop) is shared with the ranks that torchrun starts (torchrun.py).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from dataclasses import replace

import torch

from ..config import EngineConfig
from ..engine.runner import ModelRunner
from ..model.build import DTYPES, build_model
from .launch import config_from_json
from .stage import run_stage
from .state import ParallelState, rank_device
from .step_io import receive_plan
from .session import exchange_load_reports, receive_block_counts, send_logits


def _exit_with_parent(poll_s: float = 0.5) -> None:
    parent = os.getppid()
    while True:
        time.sleep(poll_s)
        if os.getppid() != parent:
            os._exit(3)


def serve(rank: int, spec: str) -> None:
    """A subprocess rank of the "mp" executor: the config from the command line, the world at its TCP store."""
    cfg = config_from_json(spec)
    device = rank_device(cfg.device, rank)
    cfg = replace(cfg, device=device)
    if device == "cpu":  # the ranks share the host's cores
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // cfg.parallel.world_size))
    run(cfg, ParallelState.initialize(cfg.parallel, rank, device))


def run(cfg: EngineConfig, ps: ParallelState) -> None:
    """Load this rank's shard, then run steps until the shutdown message; leaves the world on every exit.
    `cfg.device` is this rank's device; `ps` its place in a world whose groups are built."""
    try:
        model = build_model(cfg, shard=ps.shard(cfg.model), comms=ps.comms(), progress=False)
        exchange_load_reports(ps, model.load_report)
        runner = ModelRunner(cfg, model, receive_block_counts(ps, sorted(set(cfg.model.layer_types))),
                             capture_graphs=False)  # steps run eagerly across ranks
        par, dtype = cfg.parallel, DTYPES[cfg.dtype]
        with torch.inference_mode():
            while (plan := receive_plan(ps.control, par.data_parallel_size, par.pipeline_parallel_size,
                                        runner.groups, ps.device)) is not None:
                logits = run_stage(model, runner.kv_caches, ps, plan[ps.dp_rank], dtype)
                if logits is not None:
                    send_logits(logits)
    finally:
        ps.destroy()


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format=f"%(levelname)s rank {argv[0]} %(name)s: %(message)s",
                        stream=sys.stderr)
    threading.Thread(target=_exit_with_parent, daemon=True).start()
    serve(int(argv[0]), argv[1])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
