"""The set-up and result messages between rank 0 and the workers (tensors only, never pickled): the engine
config as JSON text when torchrun started the ranks, load reports gathered at start, KV block counts sent
after rank 0 sized the cache, logits back each step."""

from __future__ import annotations

import torch
import torch.distributed as dist

from ..weights.loader import LoadReport
from .state import ParallelState


def broadcast_text(text: str | None, device: str) -> str:
    """Rank 0's text (set-up data) to every rank over the default group, before any other group exists: its
    byte count, then its UTF-8 bytes. Rank 0 passes the text, the others None; all get it back."""
    data = torch.frombuffer(bytearray(text.encode()), dtype=torch.uint8) if text is not None else None
    n = torch.tensor([0 if data is None else data.numel()], dtype=torch.int64, device=device)
    dist.broadcast(n, src=0)
    buf = data.to(device) if data is not None else torch.empty(int(n), dtype=torch.uint8, device=device)
    dist.broadcast(buf, src=0)
    return bytes(buf.cpu().tolist()).decode()


def exchange_load_reports(ps: ParallelState, report: LoadReport) -> list[LoadReport]:
    """Every rank's LoadReport, in rank order (all-gathered over the control group)."""
    mine = torch.tensor([report.bytes_read, report.param_bytes, report.tensors_read], dtype=torch.int64,
                        device=ps.device)
    every = [torch.empty_like(mine) for _ in range(ps.control.size)]
    if ps.control.active:
        dist.all_gather(every, mine, group=ps.control.group)
    else:
        every = [mine]
    return [LoadReport(*t.tolist()) for t in every]


def send_block_counts(ps: ParallelState, blocks: dict[str, int]) -> None:
    t = torch.tensor([blocks[g] for g in sorted(blocks)], dtype=torch.int64, device=ps.device)
    if ps.control.active:
        dist.broadcast(t, group_src=0, group=ps.control.group)


def receive_block_counts(ps: ParallelState, groups: list[str]) -> dict[str, int]:
    t = torch.empty(len(groups), dtype=torch.int64, device=ps.device)
    dist.broadcast(t, group_src=0, group=ps.control.group)
    return dict(zip(groups, t.tolist()))


def send_logits(logits: torch.Tensor) -> None:
    """A replica's last stage (tp rank 0) -> rank 0; rank 0 knows the shape from the plan."""
    if logits.numel():
        dist.send(logits.contiguous(), dst=0)


def receive_logits(src: int, rows: int, vocab: int, device: str) -> torch.Tensor:
    out = torch.empty(rows, vocab, dtype=torch.float32, device=device)  # [R, V]
    if out.numel():
        dist.recv(out, src=src)
    return out
