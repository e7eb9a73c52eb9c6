"""`ModelConfig`: a gpt-oss `config.json`, read and validated (field names are the json keys; errors name the
field), and the end-of-sequence ids a checkpoint directory declares.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LAYER_SLIDING = "sliding_attention"
LAYER_FULL = "full_attention"
MXFP4_BLOCK = 32  # input values sharing one e8m0 scale


class ConfigError(ValueError):
    """A config.json (or engine argument) that cannot describe a gpt-oss model; names the field."""


@dataclass(frozen=True)
class RopeScaling:
    """YaRN settings (GPT_OSS_SPEC section 3). `truncate` defaults to False, as the published checkpoints set."""

    rope_type: str = "yarn"
    factor: float = 32.0
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    original_max_position_embeddings: int = 4096
    truncate: bool = False


@dataclass(frozen=True)
class QuantizationConfig:
    quant_method: str
    modules_to_not_convert: tuple[str, ...] = ()


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    num_local_experts: int
    num_experts_per_tok: int
    sliding_window: int
    layer_types: tuple[str, ...]
    rope_theta: float
    rope_scaling: RopeScaling
    max_position_embeddings: int
    attention_bias: bool = True
    swiglu_limit: float = 7.0
    swiglu_alpha: float = 1.702
    rms_norm_eps: float = 1e-5
    tie_word_embeddings: bool = False
    eos_token_id: tuple[int, ...] = (200002,)
    pad_token_id: int | None = 199999
    quantization_config: QuantizationConfig | None = None

    @property
    def weight_format(self) -> str:
        """"mxfp4" when the experts are stored packed, else "bf16" (any dense floating dtype)."""
        if self.quantization_config is not None and self.quantization_config.quant_method == "mxfp4":
            return "mxfp4"
        return "bf16"

    @property
    def num_queries_per_kv(self) -> int:
        return self.num_attention_heads // self.num_key_value_heads

    def window_of(self, layer: int) -> int | None:
        """Sliding window of a layer (keys j with i - window < j <= i), or None for full attention."""
        return self.sliding_window if self.layer_types[layer] == LAYER_SLIDING else None

    @classmethod
    def from_dir(cls, model_dir: str | Path) -> ModelConfig:
        path = Path(model_dir) / "config.json"
        if not path.is_file():
            raise ConfigError(f"{path}: no config.json in the model directory")
        try:
            raw = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"{path}: not valid JSON ({e})") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: expected a JSON object")
        try:
            return cls.from_dict(raw)
        except ConfigError as e:
            raise ConfigError(f"{path}: {e}") from None

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ModelConfig:
        if raw.get("model_type") != "gpt_oss":
            raise ConfigError(f"model_type must be 'gpt_oss', got {raw.get('model_type')!r}")
        r = _Reader(raw)
        num_layers = r.int("num_hidden_layers")
        hidden = r.int("hidden_size")
        heads = r.int("num_attention_heads")
        kv_heads = r.int("num_key_value_heads")
        head_dim = r.int("head_dim", default=hidden // heads if heads else 0)
        experts_per_tok = r.int("num_experts_per_tok", default=raw.get("experts_per_token"))
        rope_theta, rope = _read_rope(raw)
        cfg = cls(
            vocab_size=r.int("vocab_size"),
            hidden_size=hidden,
            intermediate_size=r.int("intermediate_size"),
            num_hidden_layers=num_layers,
            num_attention_heads=heads,
            num_key_value_heads=kv_heads,
            head_dim=head_dim,
            num_local_experts=r.int("num_local_experts"),
            num_experts_per_tok=experts_per_tok,
            sliding_window=r.int("sliding_window"),
            layer_types=_read_layer_types(raw, num_layers),
            rope_theta=rope_theta,
            rope_scaling=rope,
            max_position_embeddings=r.int("max_position_embeddings", default=131072),
            attention_bias=r.bool("attention_bias", default=True),
            swiglu_limit=r.float("swiglu_limit", default=7.0),
            rms_norm_eps=r.float("rms_norm_eps", default=1e-5),
            tie_word_embeddings=r.bool("tie_word_embeddings", default=False),
            eos_token_id=_int_tuple(raw.get("eos_token_id", 200002), "eos_token_id"),
            pad_token_id=raw.get("pad_token_id"),
            quantization_config=_read_quant(raw.get("quantization_config")),
        )
        cfg.validate()
        return cfg

    def validate(self) -> None:
        positive = ["vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                    "num_key_value_heads", "head_dim", "num_local_experts", "num_experts_per_tok",
                    "sliding_window", "max_position_embeddings"]
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(f"num_attention_heads ({self.num_attention_heads}) must be divisible by "
                              f"num_key_value_heads ({self.num_key_value_heads})")
        if self.head_dim % 2:
            raise ConfigError(f"head_dim must be even for rotary embeddings, got {self.head_dim}")
        if self.num_experts_per_tok > self.num_local_experts:
            raise ConfigError(f"num_experts_per_tok ({self.num_experts_per_tok}) exceeds "
                              f"num_local_experts ({self.num_local_experts})")
        if self.weight_format == "mxfp4":
            for name in ("hidden_size", "intermediate_size"):
                if getattr(self, name) % MXFP4_BLOCK:
                    raise ConfigError(f"{name} ({getattr(self, name)}) must be a multiple of {MXFP4_BLOCK} "
                                      f"for MXFP4 experts")
        if self.tie_word_embeddings:
            raise ConfigError("tie_word_embeddings must be false for gpt-oss (the unembedding is untied)")
        if self.rope_scaling.rope_type != "yarn":
            raise ConfigError(f"rope_scaling.rope_type must be 'yarn', got {self.rope_scaling.rope_type!r}")
        if not (self.rope_scaling.factor >= 1.0 and self.rope_scaling.beta_fast > self.rope_scaling.beta_slow > 0):
            raise ConfigError(f"rope_scaling has nonsensical values: {self.rope_scaling}")
        if self.rope_theta <= 1.0:
            raise ConfigError(f"rope_theta must be > 1, got {self.rope_theta}")
        for v in (self.rms_norm_eps, self.swiglu_limit):
            if not (math.isfinite(v) and v > 0):
                raise ConfigError(f"rms_norm_eps and swiglu_limit must be finite and positive, got {v}")


class _Reader:
    """Typed access to a raw config dict; errors name the field."""

    def __init__(self, raw: dict[str, Any]):
        self.raw = raw

    def _get(self, key: str, default: Any) -> Any:
        if key in self.raw and self.raw[key] is not None:
            return self.raw[key]
        if default is None:
            raise ConfigError(f"missing field {key!r}")
        return default

    def int(self, key: str, default: Any = None) -> int:
        v = self._get(key, default)
        if isinstance(v, bool) or not isinstance(v, int):
            raise ConfigError(f"{key} must be an integer, got {v!r}")
        return v

    def float(self, key: str, default: Any = None) -> float:
        v = self._get(key, default)
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ConfigError(f"{key} must be a number, got {v!r}")
        return float(v)

    def bool(self, key: str, default: Any = None) -> bool:
        v = self._get(key, default)
        if not isinstance(v, bool):
            raise ConfigError(f"{key} must be true or false, got {v!r}")
        return v


def _read_rope(raw: dict[str, Any]) -> tuple[float, RopeScaling]:
    """Both spellings: `rope_scaling` + `rope_theta` (older) or `rope_parameters` holding rope_theta (newer)."""
    params = raw.get("rope_parameters") or raw.get("rope_scaling")
    if params is None:
        raise ConfigError("missing field 'rope_scaling' (or 'rope_parameters')")
    if not isinstance(params, dict):
        raise ConfigError(f"rope_scaling must be an object, got {params!r}")
    theta = params.get("rope_theta", raw.get("rope_theta"))
    if isinstance(theta, bool) or not isinstance(theta, (int, float)):
        raise ConfigError(f"rope_theta must be a number, got {theta!r}")
    r = _Reader(params)
    rope_type = params.get("rope_type", params.get("type", "yarn"))
    truncate = params.get("truncate", False)
    if not isinstance(truncate, bool):
        raise ConfigError(f"rope_scaling.truncate must be true or false, got {truncate!r}")
    orig = params.get("original_max_position_embeddings", raw.get("initial_context_length", 4096))
    if isinstance(orig, bool) or not isinstance(orig, int) or orig <= 0:
        raise ConfigError(f"rope_scaling.original_max_position_embeddings must be a positive integer, got {orig!r}")
    return float(theta), RopeScaling(
        rope_type=rope_type,
        factor=r.float("factor", default=32.0),
        beta_fast=r.float("beta_fast", default=32.0),
        beta_slow=r.float("beta_slow", default=1.0),
        original_max_position_embeddings=orig,
        truncate=truncate,
    )


def _read_layer_types(raw: dict[str, Any], num_layers: int) -> tuple[str, ...]:
    """`layer_types`, or the published alternation (layer 0 sliding) when the key is absent."""
    types = raw.get("layer_types")
    if types is None:
        return tuple(LAYER_SLIDING if i % 2 == 0 else LAYER_FULL for i in range(num_layers))
    if not isinstance(types, list) or len(types) != num_layers:
        raise ConfigError(f"layer_types must be a list of num_hidden_layers ({num_layers}) entries, got {types!r}")
    for t in types:
        if t not in (LAYER_SLIDING, LAYER_FULL):
            raise ConfigError(f"layer_types entries must be {LAYER_SLIDING!r} or {LAYER_FULL!r}, got {t!r}")
    return tuple(types)


def _read_quant(q: Any) -> QuantizationConfig | None:
    if q is None:
        return None
    if not isinstance(q, dict) or not isinstance(q.get("quant_method"), str):
        raise ConfigError(f"quantization_config must be an object with a quant_method, got {q!r}")
    method = q["quant_method"].lower()
    if method != "mxfp4":
        raise ConfigError(f"quantization_config.quant_method {method!r} is not supported (supported: mxfp4)")
    return QuantizationConfig(method, tuple(q.get("modules_to_not_convert") or ()))


def _int_tuple(v: Any, name: str) -> tuple[int, ...]:
    if v is None:  # no end-of-sequence token (e.g. a tiny test vocabulary)
        return ()
    vals = v if isinstance(v, list) else [v]
    if any(isinstance(x, bool) or not isinstance(x, int) for x in vals):
        raise ConfigError(f"{name} must be an integer or a list of integers, got {v!r}")
    return tuple(vals)


def generation_eos_ids(model_dir: str | Path, cfg: ModelConfig) -> tuple[int, ...]:
    """End-of-sequence ids: config.json's plus generation_config.json's (gpt-oss: 200002, 199999, 200012)."""
    ids = list(cfg.eos_token_id)
    path = Path(model_dir) / "generation_config.json"
    if path.is_file():
        try:
            extra = json.loads(path.read_text()).get("eos_token_id", [])
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError) as e:
            raise ConfigError(f"{path}: not a valid generation config ({e})") from None
        ids += [t for t in _int_tuple(extra, "eos_token_id") if t not in ids]
    return tuple(ids)
