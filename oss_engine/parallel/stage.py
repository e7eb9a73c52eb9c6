"""One rank's share of a step: its pipeline stage's layers over its replica's micro-batches.

Schedule (the simple pipelined one, GPipe-like forward only): every stage walks the micro-batches in order;
stage s receives micro-batch m's (hidden, residual) from stage s - 1, runs its layers and sends the result
on without waiting (isend), so while stage s + 1 works on micro-batch m, stage s already works on m + 1.
The last stage normalizes and computes the logits rows; its tp rank 0 returns them (the others None).
Legend: T tokens of a micro-batch, D hidden, R logits rows, V vocab.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from ..model.forward_batch import ForwardBatch
from ..model.gpt_oss import GptOssModel, KVCaches
from .state import ParallelState


def run_stage(model: GptOssModel, kv_caches: KVCaches, ps: ParallelState, micro_batches: list[ForwardBatch],
              dtype: torch.dtype) -> torch.Tensor | None:
    """-> the logits [R, V] float32 of every micro-batch, concatenated, on the last stage's tp rank 0."""
    D = model.cfg.hidden_size
    prev = ps.rank_of(ps.dp_rank, ps.pp_rank - 1, ps.tp_rank) if not ps.is_first_stage else None
    nxt = ps.rank_of(ps.dp_rank, ps.pp_rank + 1, ps.tp_rank) if not ps.is_last_stage else None
    pending, logits = [], []
    for batch in micro_batches:
        carry = None
        if prev is not None:
            x = torch.empty(batch.num_tokens, D, dtype=dtype, device=ps.device)  # [T, D]
            residual = torch.empty_like(x)
            if batch.num_tokens:  # every rank knows T: an empty micro-batch sends nothing
                dist.recv(x, src=prev)
                dist.recv(residual, src=prev)
            carry = (x, residual)
        x, residual = model(batch, kv_caches, carry)
        if nxt is not None:
            if batch.num_tokens:
                for t in (x.contiguous(), residual.contiguous()):
                    pending.append((dist.isend(t, dst=nxt), t))  # the tensor lives until the send is done
        else:
            out = model.compute_logits(model.final_hidden((x, residual))[batch.logits_indices])
            logits.append(out)
    for work, _ in pending:
        work.wait()
    if nxt is not None or logits[0] is None:
        return None
    return torch.cat(logits)
