"""The published gpt-oss shapes, and random checkpoints at those shapes for measurements on a GPU machine
that cannot download the real weights (random MXFP4 bytes with scales near 2**-7 route roughly uniformly)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

_COMMON = dict(
    architectures=["GptOssForCausalLM"], model_type="gpt_oss", num_experts_per_tok=4, experts_per_token=4,
    hidden_size=2880, intermediate_size=2880, num_attention_heads=64, num_key_value_heads=8, head_dim=64,
    sliding_window=128, attention_bias=True, swiglu_limit=7.0, rms_norm_eps=1e-05, rope_theta=150000,
    rope_scaling={"rope_type": "yarn", "factor": 32.0, "beta_fast": 32.0, "beta_slow": 1.0,
                  "original_max_position_embeddings": 4096, "truncate": False},
    max_position_embeddings=131072, initial_context_length=4096, vocab_size=201088, tie_word_embeddings=False,
    eos_token_id=200002, pad_token_id=199999, torch_dtype="bfloat16",
    quantization_config={"quant_method": "mxfp4", "modules_to_not_convert": [
        "model.layers.*.self_attn", "model.layers.*.mlp.router", "model.embed_tokens", "lm_head"]},
)
PRESETS = {
    "gpt-oss-20b": dict(_COMMON, num_hidden_layers=24, num_local_experts=32),
    "gpt-oss-120b": dict(_COMMON, num_hidden_layers=36, num_local_experts=128),
}


def preset_config(name: str) -> dict:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r} (available: {', '.join(PRESETS)})")
    cfg = json.loads(json.dumps(PRESETS[name]))
    cfg["layer_types"] = ["sliding_attention", "full_attention"] * (cfg["num_hidden_layers"] // 2)
    return cfg


def write_preset_config(out_dir: str | Path, preset: str) -> Path:
    """`out_dir`/config.json with the preset's shapes (made if needed); returns out_dir as a Path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(preset_config(preset), indent=2))
    return out


def write_random_checkpoint(out_dir: str | Path, preset: str, seed: int = 0) -> Path:
    """An MXFP4 checkpoint of the preset's shapes with random weights, one shard per layer (streamed: host
    memory holds one layer at a time). The values are `load_format="dummy"`'s (weights/dummy.py), stored as
    published checkpoints store them: float tensors in bf16, MXFP4 blocks and scales as bytes."""
    from .config import ModelConfig
    from .weights.dummy import RandomCheckpoint

    out = write_preset_config(out_dir, preset)
    src = RandomCheckpoint(ModelConfig.from_dir(out), torch.bfloat16, seed, "cpu")
    shards: dict[int, list[str]] = {}  # 0: embeddings, final norm, lm_head; L + 1: layer L
    for name in src.names():
        shards.setdefault(int(name.split(".")[2]) + 1 if name.startswith("model.layers.") else 0, []).append(name)
    weight_map, total = {}, 0
    for i, names in sorted(shards.items()):
        fname = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        tensors = {}
        for name in names:
            t = src.read_region(name, {})
            tensors[name] = t.to(torch.bfloat16) if t.is_floating_point() else t
            weight_map[name] = fname
            total += tensors[name].numel() * tensors[name].element_size()
        save_file(tensors, out / fname, metadata={"format": "pt"})
    (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total},
                                                                  "weight_map": weight_map}))
    return out
