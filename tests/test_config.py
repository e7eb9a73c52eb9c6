"""config.json -> ModelConfig: both RoPE spellings, derived layer_types, and clear errors naming the field."""

from __future__ import annotations

import json
import math

import pytest

from oss_engine.config import ConfigError, ModelConfig
from oss_engine.model.rope import yarn_params

GPT_OSS_20B = {
    "architectures": ["GptOssForCausalLM"], "model_type": "gpt_oss", "num_hidden_layers": 24,
    "num_local_experts": 32, "experts_per_token": 4, "hidden_size": 2880, "intermediate_size": 2880,
    "num_attention_heads": 64, "num_key_value_heads": 8, "head_dim": 64, "sliding_window": 128,
    "layer_types": ["sliding_attention", "full_attention"] * 12, "attention_bias": True, "swiglu_limit": 7.0,
    "rms_norm_eps": 1e-05, "rope_theta": 150000,
    "rope_scaling": {"rope_type": "yarn", "factor": 32.0, "beta_fast": 32.0, "beta_slow": 1.0,
                     "original_max_position_embeddings": 4096, "truncate": False},
    "max_position_embeddings": 131072, "initial_context_length": 4096, "vocab_size": 201088,
    "tie_word_embeddings": False, "eos_token_id": 200002, "pad_token_id": 199999,
    "quantization_config": {"quant_method": "mxfp4", "modules_to_not_convert": [
        "model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"]},
}


def with_(**changes):
    raw = json.loads(json.dumps(GPT_OSS_20B))
    for k, v in changes.items():
        if v is None:
            raw.pop(k, None)
        else:
            raw[k] = v
    return raw


def test_published_config_reads():
    cfg = ModelConfig.from_dict(GPT_OSS_20B)
    assert cfg.num_experts_per_tok == 4 and cfg.weight_format == "mxfp4"
    assert cfg.window_of(0) == 128 and cfg.window_of(1) is None
    assert cfg.rope_scaling.truncate is False and cfg.rope_theta == 150000
    assert cfg.eos_token_id == (200002,)


def test_yarn_matches_spec_values():
    p = yarn_params(ModelConfig.from_dict(GPT_OSS_20B))
    assert p.low == pytest.approx(8.092779, abs=1e-5) and p.high == pytest.approx(17.398025, abs=1e-5)
    assert p.concentration == pytest.approx(1.3465736, abs=1e-6)
    assert p.inv_freq[0] == 1.0  # below `low`: unscaled
    assert p.inv_freq[-1] == pytest.approx(1 / (32 * 150000 ** (62 / 64)), rel=1e-5)  # above `high`: / factor


def test_truncate_true_floors_and_ceils():
    raw = with_()
    raw["rope_scaling"]["truncate"] = True
    p = yarn_params(ModelConfig.from_dict(raw))
    assert (p.low, p.high) == (8, 18)


def test_truncate_defaults_to_false_when_absent():
    raw = with_()
    del raw["rope_scaling"]["truncate"]
    assert ModelConfig.from_dict(raw).rope_scaling.truncate is False


def test_rope_parameters_spelling():
    raw = with_(rope_scaling=None, rope_theta=None)
    raw["rope_parameters"] = dict(GPT_OSS_20B["rope_scaling"], rope_theta=150000)
    assert ModelConfig.from_dict(raw) == ModelConfig.from_dict(GPT_OSS_20B)


def test_layer_types_derived_when_absent():
    cfg = ModelConfig.from_dict(with_(layer_types=None, num_hidden_layers=5))
    assert cfg.layer_types == ("sliding_attention", "full_attention") * 2 + ("sliding_attention",)


def test_num_experts_per_tok_spelling():
    assert ModelConfig.from_dict(with_(experts_per_token=None, num_experts_per_tok=2)).num_experts_per_tok == 2


@pytest.mark.parametrize("changes, field", [
    ({"model_type": "llama"}, "model_type"),
    ({"hidden_size": None}, "hidden_size"),
    ({"hidden_size": "2880"}, "hidden_size"),
    ({"num_key_value_heads": 7}, "num_key_value_heads"),
    ({"hidden_size": 2890}, "hidden_size"),  # not a multiple of 32 for MXFP4
    ({"intermediate_size": 100}, "intermediate_size"),
    ({"num_local_experts": 0}, "num_local_experts"),
    ({"experts_per_token": 64}, "num_experts_per_tok"),
    ({"layer_types": ["sliding_attention"] * 3}, "layer_types"),
    ({"layer_types": ["dense"] * 24}, "layer_types"),
    ({"rope_scaling": None}, "rope_scaling"),
    ({"head_dim": 63}, "head_dim"),
    ({"tie_word_embeddings": True}, "tie_word_embeddings"),
    ({"quantization_config": {"quant_method": "gptq"}}, "quant_method"),
    ({"rms_norm_eps": -1.0}, "rms_norm_eps"),
])
def test_bad_configs_name_the_field(changes, field):
    with pytest.raises(ConfigError, match=field):
        ModelConfig.from_dict(with_(**changes))


def test_from_dir_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="no config.json"):
        ModelConfig.from_dir(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="config.json.*not valid JSON"):
        ModelConfig.from_dir(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(with_(vocab_size=-5)))
    with pytest.raises(ConfigError, match="config.json.*vocab_size"):
        ModelConfig.from_dir(tmp_path)


def test_bf16_checkpoint_config_has_no_quantization():
    cfg = ModelConfig.from_dict(with_(quantization_config=None, hidden_size=2890))
    assert cfg.weight_format == "bf16" and math.isfinite(cfg.rms_norm_eps)


@pytest.mark.parametrize("device,gib,want", [("cpu", None, 8192), ("cuda", 80, 16384), ("cuda:1", 141, 16384),
                                             ("cuda", 48, 8192)])
def test_default_max_num_batched_tokens(monkeypatch, device, gib, want):
    """vLLM's offline default: 16384 tokens a step on a GPU of >= 70 GiB, else 8192 (the GPU's memory faked)."""
    import torch

    from oss_engine.config import default_max_num_batched_tokens

    class Props:
        total_memory = (gib or 0) * 2**30

    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda d: Props())
    assert default_max_num_batched_tokens(device) == want
