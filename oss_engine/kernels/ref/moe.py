"""Mixture of experts, the reference (GPT_OSS_SPEC section 2). Legend: T tokens, D hidden, I intermediate,
E experts, A experts per token (top-k)."""

import torch

from ..types import ExpertWeight, RowSum


def route_ref(router_logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k on the raw logits, then softmax over the k selected logits only.

    router_logits [T, E] -> (weights [T, A] float32, expert ids [T, A] int64)
    """
    top_vals, top_ids = torch.topk(router_logits, k, dim=-1)
    return torch.softmax(top_vals.float(), dim=-1), top_ids


def swiglu_ref(u: torch.Tensor, limit: float, alpha: float) -> torch.Tensor:
    # u [T, 2I] with gate/up interleaved (even columns gate, odd up) -> [T, I]
    gate = u[:, 0::2].clamp(max=limit)
    up = u[:, 1::2].clamp(min=-limit, max=limit)
    return gate * torch.sigmoid(alpha * gate) * (up + 1)


def moe_experts_ref(x: torch.Tensor, weights: torch.Tensor, ids: torch.Tensor, w1: ExpertWeight,
                    w2: ExpertWeight, limit: float, alpha: float,
                    defer_sum: bool = False) -> torch.Tensor | RowSum:
    """sum over the A selected experts of weight * (W2 swiglu(W1 x + b1) + b2), in float32.

    x [T, D], weights [T, A], ids [T, A] -> [T, D] in x.dtype; with defer_sum the float32 sum as a RowSum of one
    row a token (the same values once rounded: the op table's contract, Ops.moe_experts)
    """
    out = torch.zeros(x.shape, dtype=torch.float32, device=x.device)  # [T, D]
    xf = x.float()
    for e in torch.unique(ids).tolist():
        tok, slot = torch.nonzero(ids == e, as_tuple=True)  # tokens routed to e, and which of their A slots
        u = xf[tok] @ w1.expert(e, torch.float32).T + w1.bias[e].float()  # [t, 2I]
        y = swiglu_ref(u, limit, alpha) @ w2.expert(e, torch.float32).T + w2.bias[e].float()  # [t, D]
        out.index_add_(0, tok, y * weights[tok, slot, None].float())
    return RowSum(out, 1, x.dtype) if defer_sum else out.to(x.dtype)
