"""Collective wrappers the model's parallel layers call; no group (`group=None`, a group of one) makes each of
them the identity, so a single process runs the same model code with no process group at all. A real group
of one (the forced multi-process path at world size 1) runs them through the backend. An empty tensor skips its
collective: its size is known alike on every member (sizes come from the step plan that all ranks share).

Legend: T tokens of this rank's replica, Ta tokens of every data-parallel replica together, D hidden,
V vocab, R logits rows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class GroupComm:
    """One process group seen from one member: `rank` is the index in `ranks` (global ranks)."""

    group: object | None = None  # torch.distributed ProcessGroup; None: a group of one with no collectives
    ranks: tuple[int, ...] = (0,)
    rank: int = 0

    @property
    def size(self) -> int:
        return len(self.ranks)

    @property
    def active(self) -> bool:
        """Whether collectives run (a real group, possibly of one), or are the identity."""
        return self.group is not None

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        """Sum over the group, in place; returns x."""
        if self.active and x.numel():
            dist.all_reduce(x, group=self.group)
        return x

    def all_gather_rows(self, x: torch.Tensor, counts: tuple[int, ...]) -> torch.Tensor:
        """Rows of every member concatenated in rank order; member i holds counts[i] rows (padded for the
        collective, which wants equal sizes, then cut). x [counts[rank], ...] -> [sum(counts), ...]"""
        if not self.active:
            return x
        width = max(counts)
        if width == 0:
            return x
        padded = x.new_zeros((width, *x.shape[1:]))
        padded[: x.shape[0]] = x
        parts = [torch.empty_like(padded) for _ in range(self.size)]
        dist.all_gather(parts, padded, group=self.group)
        return torch.cat([p[:n] for p, n in zip(parts, counts)])

    def gather_columns_to_first(self, x: torch.Tensor, widths: tuple[int, ...]) -> torch.Tensor | None:
        """Member i's x [R, widths[i]]; member 0 gets them side by side [R, sum(widths)], the others None."""
        if not self.active:
            return x
        if x.shape[0] == 0:
            return x.new_zeros((0, sum(widths))) if self.rank == 0 else None
        width = max(widths)
        padded = x.new_zeros((x.shape[0], width))
        padded[:, : x.shape[1]] = x
        parts = [torch.empty_like(padded) for _ in range(self.size)] if self.rank == 0 else None
        dist.gather(padded, parts, group_dst=0, group=self.group)
        if self.rank != 0:
            return None
        return torch.cat([p[:, :w] for p, w in zip(parts, widths)], dim=1)


@dataclass(frozen=True)
class MoEComm:
    """The MoE of one pipeline stage spans tp x dp ranks. Each rank computes its part (its experts, or its
    intermediate slice) for the tokens of every data-parallel replica, then the partial sums are added up
    over the MoE group and each rank keeps its own replica's rows. This is "all-gather + reduce-scatter"
    with the reduce-scatter done as an all-reduce plus a slice (simple; the tokens are the same on every tp
    rank of a replica, so an all-to-all would save only the dp-fold gather)."""

    moe: GroupComm = GroupComm()
    dp: GroupComm = GroupComm()

    @property
    def local(self) -> bool:
        """No collective runs: gather and reduce are the identity (one rank, no group)."""
        return not (self.moe.active or self.dp.active) and self.moe.size == 1 and self.dp.size == 1

    def gather(self, h: torch.Tensor, dp_tokens: tuple[int, ...]) -> torch.Tensor:
        # h [T, D] -> [Ta, D]: every replica's tokens, replica 0 first
        if self.dp.size == 1:  # one replica (dp_tokens is None): nothing to gather
            return h
        return self.dp.all_gather_rows(h, dp_tokens)

    def reduce(self, y: torch.Tensor, dp_tokens: tuple[int, ...]) -> torch.Tensor:
        # y [Ta, D] partial sums -> [T, D]: the full sums of this replica's rows
        self.moe.all_reduce(y)
        if self.dp.size == 1:
            return y
        start = sum(dp_tokens[: self.dp.rank])
        return y[start: start + dp_tokens[self.dp.rank]]


@dataclass(frozen=True)
class ModelComms:
    """What the model's layers communicate over: attention and vocabulary over `tp`, the MoE over `moe`."""

    tp: GroupComm = GroupComm()
    moe: MoEComm = MoEComm()
