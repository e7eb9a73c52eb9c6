"""The MoE's sum left to the next layer's norm (Ops.defer_moe_sum: the experts' rows returned as a RowSum and
summed inside add_rms_norm) changes no bit: the same logits and greedy tokens as with the separate combine, on
the CPU with the reference table and on the GPU with the Triton table (the decode and grouped paths' rows, the
fused norm kernel, CUDA graphs on). And the model defers only where the norm is the output's one reader."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from oss_engine import LLM
from oss_engine.config import ModelConfig, ParallelConfig
from oss_engine.kernels import get_ops
from oss_engine.model.gpt_oss import GptOssModel
from oss_engine.model.moe import MoE
from oss_engine.parallel.comm import GroupComm, ModelComms, MoEComm
from oss_engine.parallel.shard import RankShard
from oss_engine.tiny import TinySpec, make_config, make_tiny_checkpoint

from ..conftest import PARITY_SPEC
from .model_runs import assert_same_logits_and_tokens, load_with_switches

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-defer")
    make_tiny_checkpoint(path, fmt="mxfp4", seed=3, write_tokenizer=False, **PARITY_SPEC)
    return path


def load(path, device: str, defer: bool) -> LLM:
    """A bf16 LLM whose op table asks (or not) for the deferred sum; asserts which MoE layers took it: all but
    the last (whose output goes to the final norm through the model's carry)."""
    llm = load_with_switches(path, dtype="bfloat16", device=device, defer_moe_sum=defer)
    flags = [layer.mlp.defer_sum for layer in llm.model.layers]
    assert flags == [defer] * (len(flags) - 1) + [False]
    return llm


@pytest.mark.parametrize("device", DEVICES)
def test_deferred_sum_same_logits_and_tokens(checkpoint, device):
    std, fused = load(checkpoint, device, False), load(checkpoint, device, True)
    assert_same_logits_and_tokens(std, fused, seed=7)


def tiny_model_config() -> ModelConfig:
    spec = TinySpec(num_hidden_layers=4, num_local_experts=8, num_experts_per_tok=2, hidden_size=64,
                    intermediate_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=16, sliding_window=8,
                    vocab_size=1003, original_max_position_embeddings=64, rope_factor=32.0)
    return ModelConfig.from_dict(make_config(spec, fmt="mxfp4"))


def defer_flags(par: ParallelConfig, pp_rank: int, comms: ModelComms) -> list[bool]:
    cfg = tiny_model_config()
    shard = RankShard.of(cfg, par, tp_rank=0, pp_rank=pp_rank, moe_rank=0)
    ops = dataclasses.replace(get_ops("ref"), defer_moe_sum=True)
    with torch.device("meta"):
        model = GptOssModel(cfg, torch.bfloat16, ops, shard, comms)
    return [model.layers[i].mlp.defer_sum for i in range(*shard.layers)]


def test_defers_only_into_a_norm_of_the_same_stage():
    """Two pipeline stages of 2 layers: each stage's last layer hands a tensor to the next stage (or the final
    norm); an MoE whose output is reduced over ranks never defers, and refuses to be asked to."""
    assert defer_flags(ParallelConfig(), 0, ModelComms()) == [True, True, True, False]
    pp = ParallelConfig(pipeline_parallel_size=2)
    assert defer_flags(pp, 0, ModelComms()) == [True, False]
    assert defer_flags(pp, 1, ModelComms()) == [True, False]
    two = ModelComms(moe=MoEComm(GroupComm(None, (0, 1), 0)))  # an MoE group of two (no process group: meta only)
    assert defer_flags(ParallelConfig(), 0, two) == [False] * 4
    assert not two.moe.local and ModelComms().moe.local
    with pytest.raises(ValueError, match="cannot defer"):
        cfg = tiny_model_config()
        MoE(cfg, torch.bfloat16, get_ops("ref"), RankShard.full(cfg), two.moe, defer_sum=True)
