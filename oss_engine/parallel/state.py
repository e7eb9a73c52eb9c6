"""ParallelState: this process's place in the world and its process groups; built once, passed down.

Rank layout (over every host): rank = (dp_rank * pp + pp_rank) * tp + tp_rank, so a data-parallel replica is a
contiguous run of pp x tp ranks, a pipeline stage of it a run of tp ranks. Groups:
  - tp: the tp ranks of one stage of one replica (attention heads, vocabulary).
  - moe: the tp x dp ranks of one stage across every replica (the MoE: intermediate slices or experts).
  - dp: the dp ranks with the same (pp_rank, tp_rank) (the MoE's token gather).
  - control: everybody, with no practical timeout: workers wait there for the next step, however long the
    engine idles. Every other collective runs under `ParallelConfig.timeout_s`.
Stages pass (hidden, residual) point to point, rank (dp, s, t) -> (dp, s + 1, t).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from ..config import ModelConfig, ParallelConfig
from .comm import GroupComm, ModelComms, MoEComm
from .shard import RankShard

_IDLE_TIMEOUT = timedelta(days=30)


@dataclass(frozen=True)
class ParallelState:
    config: ParallelConfig
    rank: int
    device: str  # this rank's device ("cpu", "cuda:N"); step tensors travel on it
    control: GroupComm
    tp: GroupComm
    moe: GroupComm
    dp: GroupComm

    @property
    def tp_rank(self) -> int:
        return self.rank % self.config.tensor_parallel_size

    @property
    def pp_rank(self) -> int:
        return self.rank // self.config.tensor_parallel_size % self.config.pipeline_parallel_size

    @property
    def dp_rank(self) -> int:
        return self.rank // (self.config.tensor_parallel_size * self.config.pipeline_parallel_size)

    def rank_of(self, dp_rank: int, pp_rank: int, tp_rank: int) -> int:
        c = self.config
        return (dp_rank * c.pipeline_parallel_size + pp_rank) * c.tensor_parallel_size + tp_rank

    @property
    def is_first_stage(self) -> bool:
        return self.pp_rank == 0

    @property
    def is_last_stage(self) -> bool:
        return self.pp_rank == self.config.pipeline_parallel_size - 1

    def shard(self, cfg: ModelConfig) -> RankShard:
        return RankShard.of(cfg, self.config, tp_rank=self.tp_rank, pp_rank=self.pp_rank, moe_rank=self.moe.rank)

    def comms(self) -> ModelComms:
        return ModelComms(tp=self.tp, moe=MoEComm(moe=self.moe, dp=self.dp))

    @classmethod
    def initialize(cls, par: ParallelConfig, rank: int, device: str) -> ParallelState:
        """Join the world, then build every group (see `build`)."""
        join_world(par.backend, par.init_method, rank, par.world_size, par.timeout_s, device)
        return cls.build(par, rank, device)

    @classmethod
    def build(cls, par: ParallelConfig, rank: int, device: str) -> ParallelState:
        """Every group, in a world already joined. All ranks must call this together: torch.distributed
        wants every group created by every rank, in the same order. A group of one is no group (its
        collectives are the identity), except at world size 1, where every group is a real group of one so
        that the forced multi-process path ("mp" at world size 1) runs each collective through the backend."""
        tp, pp, dp = par.tensor_parallel_size, par.pipeline_parallel_size, par.data_parallel_size

        def at(d: int, p: int, t: int) -> int:
            return (d * pp + p) * tp + t

        every = tuple(range(par.world_size))
        layouts = {
            "control": [every],
            "tp": [tuple(at(d, p, t) for t in range(tp)) for d in range(dp) for p in range(pp)],
            "moe": [tuple(at(d, p, t) for d in range(dp) for t in range(tp)) for p in range(pp)],
            "dp": [tuple(at(d, p, t) for d in range(dp)) for p in range(pp) for t in range(tp)],
        }
        mine: dict[str, GroupComm] = {}
        for kind, groups in layouts.items():
            timeout = _IDLE_TIMEOUT if kind == "control" else timedelta(seconds=par.timeout_s)
            for ranks in groups:
                real = len(ranks) > 1 or par.world_size == 1
                group = dist.new_group(list(ranks), timeout=timeout) if real else None
                if rank in ranks:
                    mine[kind] = GroupComm(group, ranks, ranks.index(rank))
        return cls(par, rank, device, **mine)

    def destroy(self) -> None:
        if dist.is_initialized():
            dist.destroy_process_group()


def join_world(backend: str, init_method: str, rank: int, world_size: int, timeout_s: float, device: str) -> None:
    """Enter the default process group (the rendezvous); on CUDA first bind this process to its GPU."""
    if device.startswith("cuda"):
        torch.cuda.set_device(device)
    dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=world_size,
                            timeout=timedelta(seconds=timeout_s))


def rank_device(device: str, local_rank: int) -> str:
    """One GPU per rank on a host: "cuda" -> "cuda:<local rank mod GPUs>" (the local rank is the rank when
    one host runs every rank); CPU ranks share the CPU."""
    if device.startswith("cuda"):
        return f"cuda:{local_rank % torch.cuda.device_count()}"
    return device
