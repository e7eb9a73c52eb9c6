"""Our reference model against Hugging Face transformers' GptOssForCausalLM on the same tiny checkpoints
(float32, CPU): logits at every position and greedy continuations."""

from __future__ import annotations

import pytest
import torch

from oss_engine import LLM, SamplingParams

from .model_runs import PROMPT_LEN, our_logits, prompt

transformers = pytest.importorskip("transformers")


def rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


@pytest.fixture(scope="module")
def pair(parity_checkpoint):
    fmt, path = parity_checkpoint
    # transformers dequantizes MXFP4 for a CPU model, but on a machine with CUDA some versions keep the
    # dequantized experts in bf16; every MXFP4 value is exact in bf16, so `.float()` restores the float32
    # reference exactly whatever the version does.
    kwargs = {"quantization_config": transformers.Mxfp4Config(dequantize=True)} if fmt == "mxfp4" else {}
    hf = transformers.GptOssForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager",
                                                        **kwargs).float().eval()
    assert all(p.dtype == torch.float32 for p in hf.parameters())
    ours = LLM(str(path), dtype="float32", device="cpu", skip_tokenizer_init=True, progress=False)
    return fmt, hf, ours


def hf_logits(hf, ids: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return hf(torch.tensor([ids])).logits[0].float()


@pytest.mark.parametrize("seed", [0, 1])
def test_logits_every_position_match_transformers(pair, seed):
    fmt, hf, ours = pair
    ids = prompt(seed)
    ref = hf_logits(hf, ids)
    got = our_logits(ours, ids)
    assert got.shape == ref.shape == (PROMPT_LEN, 201088)
    err = rel_l2(got, ref)
    assert err < 1e-5, f"{fmt}: relative L2 error {err:.3g}"
    # the logits must be informative for the comparison to mean anything
    assert ref.std() > 0.1 and len(set(ref.argmax(-1).tolist())) > 10


def test_chunked_prefill_through_paged_cache_matches(pair):
    fmt, hf, ours = pair
    ids = prompt(7)
    ref = hf_logits(hf, ids)
    got = our_logits(ours, ids, chunks=[5, 1, 30, 44])
    assert rel_l2(got, ref) < 1e-5


def test_greedy_continuation_matches_transformers(pair):
    fmt, hf, ours = pair
    prompts = [prompt(11), prompt(12, 70)]
    outs = ours.generate(prompt_token_ids=prompts,
                         sampling_params=SamplingParams(max_tokens=32, temperature=0.0, ignore_eos=True))
    for ids, out in zip(prompts, outs):
        seq = list(ids)
        for _ in range(32):  # transformers, recomputing the whole sequence each step (no cache)
            seq.append(int(hf_logits(hf, seq)[-1].argmax()))
        ref = seq[len(ids):]
        assert out.outputs[0].token_ids == ref, f"{fmt}: greedy tokens differ"
        assert out.outputs[0].finish_reason == "length"
        assert len(set(ref)) > 5  # a varied continuation, not one token repeated
