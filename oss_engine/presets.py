"""The published gpt-oss shapes, and random checkpoints at those shapes for measurements on a GPU machine
that cannot download the real weights. Random MXFP4 bytes with scales near 2**-6 route roughly uniformly."""

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


def write_random_checkpoint(out_dir: str | Path, preset: str, seed: int = 0) -> Path:
    """An MXFP4 checkpoint of the preset's shapes with random weights, one shard per layer (streamed: host
    memory holds one layer at a time)."""
    out, cfg = Path(out_dir), preset_config(preset)
    out.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    E, D, I, V = cfg["num_local_experts"], cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    H, K, hd = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]

    def normal(*shape, std):
        return (torch.randn(*shape, generator=g) * std).to(torch.bfloat16)

    def mxfp4(rows, cols):
        return (torch.randint(0, 256, (E, rows, cols // 32, 16), generator=g, dtype=torch.uint8),
                torch.randint(118, 123, (E, rows, cols // 32), generator=g, dtype=torch.uint8))

    n_shards = cfg["num_hidden_layers"] + 1
    weight_map, total = {}, 0

    def save(i: int, t: dict[str, torch.Tensor]) -> None:
        nonlocal total
        fname = f"model-{i + 1:05d}-of-{n_shards:05d}.safetensors"
        save_file(t, out / fname, metadata={"format": "pt"})
        for name, x in t.items():
            weight_map[name] = fname
            total += x.numel() * x.element_size()

    save(0, {"model.embed_tokens.weight": normal(V, D, std=1.0), "model.norm.weight": 1 + normal(D, std=0.1),
             "lm_head.weight": normal(V, D, std=D ** -0.5)})
    for L in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{L}."
        t = {p + "input_layernorm.weight": 1 + normal(D, std=0.1),
             p + "post_attention_layernorm.weight": 1 + normal(D, std=0.1),
             p + "self_attn.sinks": normal(H, std=1.0), p + "mlp.router.weight": normal(E, D, std=D ** -0.5),
             p + "mlp.router.bias": normal(E, std=0.1),
             p + "self_attn.o_proj.weight": normal(D, H * hd, std=(H * hd) ** -0.5),
             p + "self_attn.o_proj.bias": normal(D, std=0.1),
             p + "mlp.experts.gate_up_proj_bias": normal(E, 2 * I, std=0.1),
             p + "mlp.experts.down_proj_bias": normal(E, D, std=0.1)}
        for name, rows in (("q", H * hd), ("k", K * hd), ("v", K * hd)):
            t[p + f"self_attn.{name}_proj.weight"] = normal(rows, D, std=D ** -0.5)
            t[p + f"self_attn.{name}_proj.bias"] = normal(rows, std=0.1)
        t[p + "mlp.experts.gate_up_proj_blocks"], t[p + "mlp.experts.gate_up_proj_scales"] = mxfp4(2 * I, D)
        t[p + "mlp.experts.down_proj_blocks"], t[p + "mlp.experts.down_proj_scales"] = mxfp4(D, I)
        save(L + 1, t)
    (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}))
    (out / "config.json").write_text(json.dumps(cfg, indent=2))
    return out
