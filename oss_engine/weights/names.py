"""The one declarative name table: checkpoint tensor -> our parameter (and which rows of it).

`{L}` stands for a layer index. A rule with `part` fills a row range of a fused parameter (q | k | v inside
`qkv`); `formats` limits a rule to the checkpoint formats that carry that tensor; `convert` names the
function in formats.py that turns the stored tensor into our layout.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import ModelConfig


@dataclass(frozen=True)
class NameRule:
    checkpoint: str
    param: str
    part: str | None = None  # "q", "k", "v": row range of a fused parameter
    formats: tuple[str, ...] = ("mxfp4", "bf16")
    convert: str = "copy"


_LAYER = "model.layers.{L}."
RULES: tuple[NameRule, ...] = (
    NameRule("model.embed_tokens.weight", "embed.weight"),
    NameRule("model.norm.weight", "norm.weight"),
    NameRule("lm_head.weight", "lm_head.weight"),
    NameRule(_LAYER + "input_layernorm.weight", "layers.{L}.input_norm.weight"),
    NameRule(_LAYER + "post_attention_layernorm.weight", "layers.{L}.post_attn_norm.weight"),
    *(NameRule(f"{_LAYER}self_attn.{p}_proj.{kind}", f"layers.{{L}}.attn.qkv.{kind}", part=p)
      for p in "qkv" for kind in ("weight", "bias")),
    NameRule(_LAYER + "self_attn.o_proj.weight", "layers.{L}.attn.o_proj.weight"),
    NameRule(_LAYER + "self_attn.o_proj.bias", "layers.{L}.attn.o_proj.bias"),
    NameRule(_LAYER + "self_attn.sinks", "layers.{L}.attn.sinks"),
    NameRule(_LAYER + "mlp.router.weight", "layers.{L}.mlp.router.weight"),
    NameRule(_LAYER + "mlp.router.bias", "layers.{L}.mlp.router.bias"),
    NameRule(_LAYER + "mlp.experts.gate_up_proj_bias", "layers.{L}.mlp.experts.w1_bias"),
    NameRule(_LAYER + "mlp.experts.down_proj_bias", "layers.{L}.mlp.experts.w2_bias"),
    NameRule(_LAYER + "mlp.experts.gate_up_proj_blocks", "layers.{L}.mlp.experts.w1_blocks", formats=("mxfp4",)),
    NameRule(_LAYER + "mlp.experts.gate_up_proj_scales", "layers.{L}.mlp.experts.w1_scales", formats=("mxfp4",)),
    NameRule(_LAYER + "mlp.experts.down_proj_blocks", "layers.{L}.mlp.experts.w2_blocks", formats=("mxfp4",)),
    NameRule(_LAYER + "mlp.experts.down_proj_scales", "layers.{L}.mlp.experts.w2_scales", formats=("mxfp4",)),
    NameRule(_LAYER + "mlp.experts.gate_up_proj", "layers.{L}.mlp.experts.w1", formats=("bf16",),
             convert="experts_input_major"),
    NameRule(_LAYER + "mlp.experts.down_proj", "layers.{L}.mlp.experts.w2", formats=("bf16",),
             convert="experts_input_major"),
)


@dataclass(frozen=True)
class Placement:
    """Where one checkpoint tensor goes: parameter `param`, rows [row_start, row_stop) of dim 0 (or all)."""

    checkpoint: str
    param: str
    rows: tuple[int, int] | None
    convert: str


def expected_tensors(cfg: ModelConfig) -> dict[str, Placement]:
    """Every checkpoint tensor a model of `cfg` must have, mapped to its placement."""
    fmt = cfg.weight_format
    H, K, hd = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    part_rows = {"q": (0, H * hd), "k": (H * hd, (H + K) * hd), "v": ((H + K) * hd, (H + 2 * K) * hd)}
    out: dict[str, Placement] = {}
    for rule in RULES:
        if fmt not in rule.formats:
            continue
        layers = range(cfg.num_hidden_layers) if "{L}" in rule.checkpoint else [None]
        for L in layers:
            ck = rule.checkpoint.replace("{L}", str(L))
            param = rule.param.replace("{L}", str(L))
            rows = part_rows[rule.part] if rule.part else None
            out[ck] = Placement(ck, param, rows, rule.convert)
    return out
