"""load_format="dummy": random weights through the real loader, identical under every parallel layout."""

from __future__ import annotations

import pytest
import torch

from oss_engine import LLM, SamplingParams
from oss_engine.weights.dummy import RandomCheckpoint
from oss_engine.config import ModelConfig

GREEDY = SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True)


def test_regions_are_cuts_of_one_tensor(parity_checkpoint):
    fmt, path = parity_checkpoint
    src = RandomCheckpoint(ModelConfig.from_dir(path), torch.float32, seed=5, device="cpu")
    name = next(n for n in src.names() if n.endswith(("gate_up_proj_blocks", "gate_up_proj")))
    full = src.read_region(name, {})
    assert full.shape == src.meta(name).shape
    assert torch.equal(src.read_region(name, {1: (2, 5)}), full[:, 2:5])
    assert not torch.equal(full, RandomCheckpoint(ModelConfig.from_dir(path), torch.float32, 6, "cpu").read_region(name, {}))


def test_dummy_weights_same_with_tensor_parallel_2(parity_checkpoint):
    fmt, path = parity_checkpoint
    kw = dict(device="cpu", dtype="float32", skip_tokenizer_init=True, progress=False, load_format="dummy", seed=3)
    ids = [[5, 17, 230, 9, 41], [7, 7, 1000]]
    one = LLM(str(path), **kw)
    want = [o.outputs[0].token_ids for o in one.generate(prompt_token_ids=ids, sampling_params=GREEDY)]
    with LLM(str(path), tensor_parallel_size=2, **kw) as two:
        got = [o.outputs[0].token_ids for o in two.generate(prompt_token_ids=ids, sampling_params=GREEDY)]
    assert got == want
    assert len(set(want[0])) > 1  # not a degenerate repeat


@pytest.mark.parametrize("preset", ["gpt-oss-20b"])
def test_preset_shapes_are_planned_without_memory(tmp_path, preset):
    from oss_engine.presets import write_preset_config

    src = RandomCheckpoint(ModelConfig.from_dir(write_preset_config(tmp_path, preset)), torch.bfloat16, 0, "cpu")
    assert src.meta("model.layers.0.mlp.experts.gate_up_proj_blocks").shape == (32, 5760, 90, 16)
    assert src.meta("lm_head.weight").shape == (201088, 2880)
