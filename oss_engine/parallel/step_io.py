"""A step's inputs from rank 0 to every rank, as tensors over torch.distributed (never pickled).

A step is a plan: for each data-parallel replica, `pp` micro-batches (ForwardBatch, possibly empty). Rank 0
broadcasts on the control group:
  1. control [3] int64: (command, 0, payload length); command STEP or SHUTDOWN.
  2. header [dp * pp * (4 + G)] int64 (a fixed length): per micro-batch T, R, B, the longest query
     (max_query_len) and per cache group (sorted names) the block-table width W.
  3. payload [payload length] int64: per micro-batch input_ids [T], positions [T], logits_indices [R], then
     per group query_start_loc [B + 1], seq_lens [B], block_tables [B * W], slot_mapping [T].
Worked example, one replica, one micro-batch, one group, a 3-token prefill: header [3, 1, 1, 3, 1];
payload [ids x3, 0 1 2, 2, 0 3, 3, b0, s0 s1 s2].
"""

from __future__ import annotations

from dataclasses import replace

import torch

from ..model.forward_batch import AttentionMetadata, ForwardBatch
from .comm import GroupComm

SHUTDOWN, STEP = 0, 1
Plan = list[list[ForwardBatch]]  # [replica][micro-batch]


def _broadcast(comm: GroupComm, t: torch.Tensor) -> torch.Tensor:
    if comm.active and t.numel():  # an empty tensor is known empty on every rank: nothing to send
        import torch.distributed as dist

        dist.broadcast(t, group_src=0, group=comm.group)
    return t


def pack(plan: Plan, groups: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    header, parts = [], []
    for replica in plan:
        for b in replica:
            metas = [b.attention[g] for g in groups]
            B = metas[0].seq_lens.shape[0]
            header += [b.num_tokens, b.logits_indices.shape[0], B, metas[0].max_query_len or 0]
            header += [m.block_tables.shape[1] for m in metas]
            parts += [b.input_ids, b.positions, b.logits_indices]
            for m in metas:
                parts += [m.query_start_loc, m.seq_lens, m.block_tables.reshape(-1), m.slot_mapping]
    payload = torch.cat([p.to(torch.int64).cpu() for p in parts]) if parts else torch.zeros(0, dtype=torch.int64)
    return torch.tensor(header, dtype=torch.int64), payload


def unpack(header: torch.Tensor, payload: torch.Tensor, dp: int, pp: int, groups: list[str],
           device: str) -> Plan:
    h = header.tolist()
    payload = payload.to(device)
    pos, plan = 0, []

    def take(n: int, dtype: torch.dtype) -> torch.Tensor:
        nonlocal pos
        pos += n
        return payload[pos - n: pos].to(dtype)

    k = 0
    for _ in range(dp):
        replica = []
        for _ in range(pp):
            T, R, B, Q, widths = h[k], h[k + 1], h[k + 2], h[k + 3], h[k + 4: k + 4 + len(groups)]
            k += 4 + len(groups)
            ids, positions, logits_idx = take(T, torch.int64), take(T, torch.int64), take(R, torch.int64)
            attention = {}
            for g, W in zip(groups, widths):
                attention[g] = AttentionMetadata(query_start_loc=take(B + 1, torch.int32),
                                                 seq_lens=take(B, torch.int32),
                                                 block_tables=take(B * W, torch.int32).view(B, W),
                                                 slot_mapping=take(T, torch.int64), max_query_len=Q)
            replica.append(ForwardBatch(ids, positions, attention, logits_idx))
        plan.append(replica)
    return with_dp_tokens(plan)


def with_dp_tokens(plan: Plan) -> Plan:
    """Tell each micro-batch how many tokens every replica's same micro-batch has (the MoE's gather)."""
    if len(plan) == 1:
        return plan
    counts = [tuple(replica[m].num_tokens for replica in plan) for m in range(len(plan[0]))]
    return [[replace(b, dp_tokens=counts[m]) for m, b in enumerate(replica)] for replica in plan]


def send_plan(control: GroupComm, plan: Plan, groups: list[str], device: str) -> None:
    header, payload = pack(plan, groups)
    _broadcast(control, torch.tensor([STEP, 0, payload.numel()], dtype=torch.int64, device=device))
    _broadcast(control, header.to(device))
    _broadcast(control, payload.to(device))


def send_shutdown(control: GroupComm, device: str) -> None:
    _broadcast(control, torch.tensor([SHUTDOWN, 0, 0], dtype=torch.int64, device=device))


def receive_plan(control: GroupComm, dp: int, pp: int, groups: list[str], device: str) -> Plan | None:
    """A worker's wait for the next step: the plan, or None on shutdown."""
    head = _broadcast(control, torch.empty(3, dtype=torch.int64, device=device))
    if int(head[0]) == SHUTDOWN:
        return None
    header = _broadcast(control, torch.empty(dp * pp * (4 + len(groups)), dtype=torch.int64, device=device))
    payload = _broadcast(control, torch.empty(int(head[2]), dtype=torch.int64, device=device))
    return unpack(header.cpu(), payload, dp, pp, groups, device)
