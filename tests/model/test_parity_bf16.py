"""bfloat16 (CPU, and CUDA on the GPU machine) against the float32 CPU reference, which test_parity_hf.py
ties to transformers: logits within 2e-2 relative L2, greedy tokens equal except at near-ties.

Why two checkpoints: with 8 random experts and top-2 routing, bf16 rounding flips the expert choice
wherever two router logits nearly tie, and a flipped expert changes that position's logits by tens of
percent, which then spreads through attention (transformers' own bf16 run does the same: 7.6e-2 on the
top-2 checkpoint). So the 2e-2 logits bound is asserted on a checkpoint whose tokens use all experts (no
discrete choice), and the top-2 checkpoint is held to greedy equality except at near-ties: a greedy
argmax whose reference lead is under NEAR_TIE or under TYPICAL_ERRORS times that row's median bf16 logit
error (the Triton path on an H200 flipped a lead of 0.071 where logits carry bf16 errors of that order), or a
position whose reference router margin (k-th minus (k+1)-th logit, smallest over layers) is under
ROUTER_NEAR_TIE.
"""

from __future__ import annotations

import pytest
import torch

from oss_engine import LLM, SamplingParams

from .model_runs import our_logits, prompt
from .test_parity_hf import rel_l2

NEAR_TIE = 0.05
ROUTER_NEAR_TIE = 0.05
TYPICAL_ERRORS = 4  # or a lead under 4x the median |bf16 - float32| logit error of that row
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


def load_pair(path, device):
    ref = LLM(str(path), dtype="float32", device="cpu", skip_tokenizer_init=True, progress=False)
    return ref, LLM(str(path), dtype="bfloat16", device=device, skip_tokenizer_init=True, progress=False)


def logits_and_router_margin(llm: LLM, ids: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits [T, V] and, per position, the smallest router top-k margin over all layers [T]."""
    margins = []
    hooks = []
    for layer in llm.model.layers:
        k = layer.mlp.top_k

        def record(module, inputs, out, k=k):  # out: router logits [T, E]
            top = torch.topk(out.float(), k + 1, dim=-1).values
            margins.append(top[:, k - 1] - top[:, k])

        hooks.append(layer.mlp.router.register_forward_hook(record))
    try:
        logits = our_logits(llm, ids)
    finally:
        for h in hooks:
            h.remove()
    return logits, torch.stack(margins).min(0).values


@pytest.mark.parametrize("device", DEVICES)
def test_bf16_logits_within_2e2_of_float32_reference(dense_routing_checkpoint, device):
    fmt, path = dense_routing_checkpoint
    ref, bf16 = load_pair(path, device)
    for seed in (0, 1):
        ids = prompt(seed)
        want, got = our_logits(ref, ids), our_logits(bf16, ids).cpu()
        per_pos = (got - want).norm(dim=-1) / want.norm(dim=-1)
        err = rel_l2(got, want)
        print(f"dense-routing {fmt} {device} seed {seed}: logits rel L2 {err:.3e}, worst position {float(per_pos.max()):.3e}")
        assert err < 2e-2


@pytest.mark.parametrize("device", DEVICES)
def test_bf16_one_token_steps_within_2e2_of_float32_reference(dense_routing_checkpoint, device):
    """The prompt fed one token a step, as decode runs it: on the GPU every step then takes the batch-1
    kernels (the one-row linears, the MoE decode path)."""
    fmt, path = dense_routing_checkpoint
    ref, bf16 = load_pair(path, device)
    ids = prompt(3, 40)
    want, got = our_logits(ref, ids), our_logits(bf16, ids, chunks=[1] * len(ids)).cpu()
    err = rel_l2(got, want)
    print(f"dense-routing {fmt} {device} one token a step: logits rel L2 {err:.3e}")
    assert err < 2e-2


@pytest.mark.parametrize("device", DEVICES)
def test_bf16_greedy_matches_except_near_ties(parity_checkpoint, device):
    fmt, path = parity_checkpoint
    ref, bf16 = load_pair(path, device)
    ids = prompt(0)
    want, got = our_logits(ref, ids), our_logits(bf16, ids).cpu()
    median = float(((got - want).norm(dim=-1) / want.norm(dim=-1)).median())
    print(f"top-2 {fmt} {device}: logits rel L2 {rel_l2(got, want):.3e} (median position {median:.3e})")
    params = SamplingParams(max_tokens=32, temperature=0.0, ignore_eos=True)
    prompts = [prompt(11), prompt(12, 70), prompt(13, 20)]
    near_ties = 0
    for ids, out in zip(prompts, bf16.generate(prompt_token_ids=prompts, sampling_params=params)):
        toks = out.outputs[0].token_ids
        # teacher-force bf16's choices through the reference: each must be its argmax or a near-tie
        logits, margin = logits_and_router_margin(ref, ids + toks)
        logits, margin = logits[len(ids) - 1:-1], margin[len(ids) - 1:-1]  # row i predicts toks[i]
        ours = our_logits(bf16, ids + toks)[len(ids) - 1:-1].cpu()
        for i, tok in enumerate(toks):
            best = int(logits[i].argmax())
            if tok != best:
                gap = float(logits[i, best] - logits[i, tok])
                typical = float((ours[i] - logits[i]).abs().median())  # this row's typical bf16 logit error
                assert gap < NEAR_TIE or margin[i] < ROUTER_NEAR_TIE or gap < TYPICAL_ERRORS * typical, \
                    f"{fmt}: token {i} is {tok}, the reference's argmax {best} leads by {gap:.3f} " \
                    f"(typical logit error there {typical:.3f})"
                near_ties += 1
    print(f"top-2 {fmt} {device}: {near_ties} near-tie divergences in {len(prompts) * 32} greedy tokens")
    assert median < 2e-2
    assert near_ties <= len(prompts) * 32 // 4
