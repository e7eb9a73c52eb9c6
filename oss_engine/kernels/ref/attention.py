"""Paged attention with learned sinks and an optional sliding window, the reference.

Legend: T tokens in the step, B sequences, H q-heads, K kv-heads, D head_dim, N cache blocks, S block size.

Contract: the step's K/V have already been written to the cache (`store_kv_ref`), so every key a query may
see, its own included, is read from the cache through the sequence's block table. Query t of sequence b sits
at absolute position `positions[t]`; key j (absolute position j, 0 <= j < seq_lens[b]) lives in block
`block_tables[b, j // S]`, row `j % S`. Query at position i sees keys i - window < j <= i (window None: all
j <= i). The sink logit of head h joins the softmax unscaled and is then dropped.
"""

import torch

from ...model.forward_batch import AttentionMetadata


def store_kv_ref(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                 slot_mapping: torch.Tensor) -> None:
    # k, v [T, K, D]; caches [N, S, K, D]; slot_mapping [T] = block * S + row
    k_cache.view(-1, *k_cache.shape[2:])[slot_mapping] = k.to(k_cache.dtype)  # [N*S, K, D] view
    v_cache.view(-1, *v_cache.shape[2:])[slot_mapping] = v.to(v_cache.dtype)


def paged_attention_ref(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, sinks: torch.Tensor,
                        meta: AttentionMetadata, positions: torch.Tensor, window: int | None,
                        scale: float) -> torch.Tensor:
    # q [T, H, D]; caches [N, S, K, D]; sinks [H] -> out [T, H, D] in q.dtype
    T, H, D = q.shape
    S, K = k_cache.shape[1], k_cache.shape[2]
    out = torch.empty_like(q)
    starts = meta.query_start_loc.tolist()
    seq_lens = meta.seq_lens.tolist()
    for b, L in enumerate(seq_lens):
        q0, q1 = starts[b], starts[b + 1]
        if q1 == q0:
            continue
        blocks = meta.block_tables[b, : (L + S - 1) // S].long()
        keys = k_cache[blocks].reshape(-1, K, D)[:L].float()  # [L, K, D]
        vals = v_cache[blocks].reshape(-1, K, D)[:L].float()
        keys = keys.repeat_interleave(H // K, dim=1)  # [L, H, D]: q head h uses kv head h // (H/K)
        vals = vals.repeat_interleave(H // K, dim=1)
        qb = q[q0:q1].float()  # [Tq, H, D]
        scores = torch.einsum("thd,lhd->htl", qb, keys) * scale  # [H, Tq, L]
        i = positions[q0:q1].long()[:, None]  # [Tq, 1]
        j = torch.arange(L, device=q.device)[None, :]  # [1, L]
        allowed = j <= i
        if window is not None:
            allowed &= j > i - window
        scores = scores.masked_fill(~allowed[None], float("-inf"))
        sink = sinks.float()[:, None, None].expand(H, q1 - q0, 1)  # [H, Tq, 1]
        probs = torch.softmax(torch.cat([scores, sink], dim=-1), dim=-1)[..., :-1]  # sink dropped
        out[q0:q1] = torch.einsum("htl,lhd->thd", probs, vals).to(q.dtype)
    return out
