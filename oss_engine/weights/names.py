"""The one declarative name table: checkpoint tensor -> our parameter (which rows of it) and its shard rule.

`{L}` stands for a layer index. A rule with `part` fills a row range of a fused parameter (q | k | v inside
`qkv`); `formats` limits a rule to the checkpoint formats that carry that tensor; `convert` names the
function in formats.py that turns the stored tensor into our layout; `shard` names the rule in shards.py
that says which slice of the tensor a rank reads (in our layout's dims); `stage` says which pipeline
stage holds a tensor that is not per layer.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..config import ModelConfig
from ..parallel.shard import RankShard
from .shards import SHARDS, Region


@dataclass(frozen=True)
class NameRule:
    checkpoint: str
    param: str
    part: str | None = None  # "q", "k", "v": row range of a fused parameter
    formats: tuple[str, ...] = ("mxfp4", "bf16")
    convert: str = "copy"
    shard: str = "replicated"
    stage: str | None = None  # "first" / "last" for tensors outside the layers


_LAYER = "model.layers.{L}."
_X = _LAYER + "mlp.experts."
RULES: tuple[NameRule, ...] = (
    NameRule("model.embed_tokens.weight", "embed.weight", shard="vocab", stage="first"),
    NameRule("model.norm.weight", "norm.weight", stage="last"),
    NameRule("lm_head.weight", "lm_head.weight", shard="vocab", stage="last"),
    NameRule(_LAYER + "input_layernorm.weight", "layers.{L}.input_norm.weight"),
    NameRule(_LAYER + "post_attention_layernorm.weight", "layers.{L}.post_attn_norm.weight"),
    *(NameRule(f"{_LAYER}self_attn.{p}_proj.{kind}", f"layers.{{L}}.attn.qkv.{kind}", part=p, shard="heads")
      for p in "qkv" for kind in ("weight", "bias")),
    NameRule(_LAYER + "self_attn.o_proj.weight", "layers.{L}.attn.o_proj.weight", shard="head_columns"),
    NameRule(_LAYER + "self_attn.o_proj.bias", "layers.{L}.attn.o_proj.bias", shard="row_bias"),
    NameRule(_LAYER + "self_attn.sinks", "layers.{L}.attn.sinks", shard="sinks"),
    NameRule(_LAYER + "mlp.router.weight", "layers.{L}.mlp.router.weight"),
    NameRule(_LAYER + "mlp.router.bias", "layers.{L}.mlp.router.bias"),
    NameRule(_X + "gate_up_proj_bias", "layers.{L}.mlp.experts.w1_bias", shard="expert_rows"),
    NameRule(_X + "down_proj_bias", "layers.{L}.mlp.experts.w2_bias", shard="expert_bias"),
    NameRule(_X + "gate_up_proj_blocks", "layers.{L}.mlp.experts.w1_blocks", formats=("mxfp4",),
             shard="expert_rows"),
    NameRule(_X + "gate_up_proj_scales", "layers.{L}.mlp.experts.w1_scales", formats=("mxfp4",),
             shard="expert_rows"),
    NameRule(_X + "down_proj_blocks", "layers.{L}.mlp.experts.w2_blocks", formats=("mxfp4",),
             shard="expert_block_columns"),
    NameRule(_X + "down_proj_scales", "layers.{L}.mlp.experts.w2_scales", formats=("mxfp4",),
             shard="expert_block_columns"),
    NameRule(_X + "gate_up_proj", "layers.{L}.mlp.experts.w1", formats=("bf16",), convert="experts_input_major",
             shard="expert_rows"),
    NameRule(_X + "down_proj", "layers.{L}.mlp.experts.w2", formats=("bf16",), convert="experts_input_major",
             shard="expert_columns"),
)


@dataclass(frozen=True)
class Placement:
    """Where one checkpoint tensor goes: parameter `param`, rows [row_start, row_stop) of dim 0 (or all),
    from the region of the tensor this rank reads (`region` None: the tensor belongs to another rank)."""

    checkpoint: str
    param: str
    rows: tuple[int, int] | None
    convert: str
    region: Region | None


def _held(rule: NameRule, layer: int | None, shard: RankShard) -> bool:
    if layer is not None:
        return shard.holds_layer(layer) and not (rule.param.startswith("layers.{L}.mlp.experts.")
                                                 and shard.intermediate_size == 0)
    return {"first": shard.first_stage, "last": shard.last_stage, None: True}[rule.stage]


def expected_tensors(cfg: ModelConfig, shard: RankShard | None = None) -> dict[str, Placement]:
    """Every checkpoint tensor a model of `cfg` must have, mapped to its placement on the rank of `shard`
    (the whole model by default)."""
    shard = shard or RankShard.full(cfg)
    fmt = cfg.weight_format
    H, K, hd = shard.num_heads, shard.num_kv_heads, cfg.head_dim
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
            region = SHARDS[rule.shard](cfg, shard, rule.part) if _held(rule, L, shard) else None
            out[ck] = Placement(ck, param, rows, rule.convert, region)
    return out
