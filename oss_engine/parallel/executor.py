"""ParallelExecutor: rank 0's side of a multi-process model (tp x pp x dp ranks).

Rank 0 starts the workers (or, under torchrun, finds them started: torchrun.py), joins the world, builds and
loads its own shard (the first stage of replica 0), and then runs every step for every replica: it splits
each replica's sequences into `pp` micro-batches,
broadcasts the plan (step_io.py), runs its own stage, and collects each replica's logits from that
replica's last stage (tp rank 0) -- itself when pp = 1 for replica 0.

A dead worker: the watchdog (launch.py) records it and stops the others, the collective rank 0 is in then
fails, and the step raises WorkerFailed naming the rank and its exit status. Every later step raises too.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace

import torch

from ..config import EngineConfig
from ..engine.runner import ModelRunner, ScheduledSeq, StepLogits
from ..model.build import DTYPES, build_model
from ..weights.loader import LoadReport
from .launch import WorkerFailed, WorkerGroup, with_rendezvous
from .session import exchange_load_reports, receive_logits, send_block_counts
from .stage import run_stage
from .state import ParallelState, rank_device
from .step_io import send_plan, send_shutdown, with_dp_tokens
from .torchrun import TorchrunWorkers, join_as_rank_0

log = logging.getLogger(__name__)


def split_micro_batches(seqs: list[ScheduledSeq], n: int) -> list[list[ScheduledSeq]]:
    """n contiguous runs of about equal token counts (some empty when there are fewer sequences than n).
    E.g. new tokens [5, 1, 1, 1] into 2 -> [[5], [1, 1, 1]]."""
    total = sum(s.num_new for s in seqs)
    out: list[list[ScheduledSeq]] = [[] for _ in range(n)]
    done = 0
    for s in seqs:
        k = min(n - 1, done * n // max(total, 1))  # the micro-batch where this sequence's first token falls
        out[k].append(s)
        done += s.num_new
    return out


class ParallelExecutor:
    def __init__(self, cfg: EngineConfig, *, progress: bool = True):
        external = cfg.parallel.distributed_executor_backend == "external_launcher"
        if not external:
            cfg = with_rendezvous(cfg)
        self.workers = TorchrunWorkers() if external else WorkerGroup(cfg)
        self.cfg = cfg = replace(cfg, device=rank_device(cfg.device, 0))
        self.ps: ParallelState | None = None
        self.runner: ModelRunner | None = None
        try:
            self.ps = join_as_rank_0(cfg) if external else ParallelState.initialize(cfg.parallel, 0, cfg.device)
            self.model = build_model(cfg, shard=self.ps.shard(cfg.model), comms=self.ps.comms(), progress=progress)
            self.load_reports: list[LoadReport] = exchange_load_reports(self.ps, self.model.load_report)
        except BaseException as e:
            self._fail(e)
        for rank, r in enumerate(self.load_reports):
            log.info("rank %d loaded %.2f MiB of weights (%.2f MiB read from the checkpoint, %d tensors)", rank,
                     r.param_bytes / 2**20, r.bytes_read / 2**20, r.tensors_read)
        self.device = torch.device(cfg.device)

    def start(self, num_blocks: dict[str, int]) -> None:
        """Allocate every rank's KV cache (rank 0 sized it)."""
        try:
            send_block_counts(self.ps, num_blocks)
        except BaseException as e:
            self._fail(e)
        self.runner = ModelRunner(self.cfg, self.model, num_blocks, capture_graphs=False)  # graphs: one process only

    @torch.inference_mode()
    def execute(self, seqs_per_replica: list[list[ScheduledSeq]]) -> list[StepLogits]:
        """One lock-step of every replica: their scheduled sequences in, their logits out."""
        self.workers.check()
        par, runner = self.cfg.parallel, self.runner
        plan, rows = [], []
        for seqs in seqs_per_replica:
            batches, replica_rows, offset = [], [], 0
            for micro in split_micro_batches(seqs, par.pipeline_parallel_size):
                batch, micro_rows = runner.prepare(micro)
                batches.append(batch)
                replica_rows += [(a + offset, b + offset) for a, b in micro_rows]
                offset += batch.logits_indices.shape[0]
            plan.append(batches)
            rows.append(replica_rows)
        plan = with_dp_tokens(plan)
        try:
            send_plan(self.ps.control, plan, runner.groups, self.cfg.device)
            mine = run_stage(self.model, runner.kv_caches, self.ps, plan[0], DTYPES[self.cfg.dtype])
            out = []
            for r, batches in enumerate(plan):
                leader = self.ps.rank_of(r, par.pipeline_parallel_size - 1, 0)
                n = sum(b.logits_indices.shape[0] for b in batches)
                logits = mine if leader == 0 else receive_logits(leader, n, self.cfg.model.vocab_size,
                                                                 self.cfg.device)
                out.append(StepLogits(logits, rows[r]))
            return out
        except BaseException as e:
            self._fail(e)

    def _fail(self, error: BaseException):
        """A collective failed: most likely a worker died. Wait briefly for the watchdog to say which, stop
        every worker, and raise WorkerFailed (or the original error if no worker died)."""
        deadline = time.monotonic() + 2.0
        while self.workers.failure is None and time.monotonic() < deadline and isinstance(error, Exception):
            time.sleep(0.05)
        self.workers.terminate()
        self.workers.expect_exit()
        if self.workers.failure is not None:
            raise WorkerFailed(f"a parallel worker died: {self.workers.failure}") from error
        raise error

    def close(self) -> None:
        """Stop the workers (a shutdown message, then wait) and leave the world. Safe to call twice."""
        if self.workers.failure is None and self.ps is not None and not self.workers.closing:
            self.workers.expect_exit()
            try:
                send_shutdown(self.ps.control, self.cfg.device)
            except Exception:
                log.exception("sending the shutdown message failed")
        self.workers.expect_exit()
        self.workers.close()
        if self.ps is not None:
            self.ps.destroy()
            self.ps = None


class ReplicaRunner:
    """The engine's runner seam for one replica of a parallel model: a step where only this replica has work
    (the others run empty batches). DPEngine steps every replica at once through `ParallelExecutor.execute`."""

    def __init__(self, executor: ParallelExecutor, index: int):
        self.executor, self.index = executor, index
        self.device = executor.device

    def execute(self, seqs: list[ScheduledSeq]) -> StepLogits:
        dp = self.executor.cfg.parallel.data_parallel_size
        return self.executor.execute([seqs if r == self.index else [] for r in range(dp)])[self.index]
