"""Tiny random gpt-oss checkpoints in the exact Hugging Face layout (GPT_OSS_SPEC.md sections 1 and 4).

Used by tests and `make-tiny`: transformers' GptOssForCausalLM loads them (both formats), and so must we.

Properties:
  - Deterministic: the same arguments (seed included) give byte-identical files.
  - The expert weights are always MXFP4-representable: they are drawn in float, quantized with
    `quantize_mxfp4`, and the bf16 format stores the dequantized values (transposed to its input-major
    layout). So for one seed the "mxfp4" and "bf16" checkpoints describe exactly the same model, and
    every other tensor is identical between them.
  - Initial scales keep activations O(1) through the layers and give non-degenerate logits: projections
    ~ N(0, 1/fan_in), embeddings ~ N(0, 1), norms ~ 1 + N(0, 0.1^2), biases ~ N(0, 0.1^2), sinks ~ N(0, 1).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

from oss_engine.weights.mxfp4 import quantize_mxfp4

INDEX_FILE = "model.safetensors.index.json"
FORMATS = ("mxfp4", "bf16")
# Harmony special tokens as the published configs name them (GPT_OSS_SPEC.md sections 1 and 6).
BOS_TOKEN_ID = 199998  # <|startoftext|>
PAD_TOKEN_ID = 199999  # <|endoftext|>
EOS_TOKEN_ID = 200002  # <|return|>
GENERATION_EOS_TOKEN_IDS = (200002, 199999, 200012)  # <|return|>, <|endoftext|>, <|call|>


@dataclass(frozen=True)
class TinySpec:
    """The shape of a tiny model; field names follow config.json."""

    num_hidden_layers: int
    num_local_experts: int
    num_experts_per_tok: int
    hidden_size: int
    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    sliding_window: int
    vocab_size: int
    original_max_position_embeddings: int
    rope_factor: float


def make_tiny_checkpoint(
    out_dir: str | Path,
    *,
    fmt: str = "mxfp4",
    seed: int = 0,
    num_layers: int = 4,
    num_experts: int = 8,
    experts_per_token: int = 2,
    hidden_size: int = 64,
    intermediate_size: int = 64,
    num_attention_heads: int = 4,
    num_key_value_heads: int = 2,
    head_dim: int = 32,
    sliding_window: int = 8,
    vocab_size: int = 201088,
    original_max_position_embeddings: int = 64,
    rope_factor: float = 32.0,
    max_shard_bytes: int | None = None,
    write_tokenizer: bool = True,
) -> Path:
    """Writes config.json, generation_config.json, the weights (and tokenizer files) into `out_dir`.

    `max_shard_bytes` given -> `model-0000k-of-0000n.safetensors` shards plus the index (always, even
    for one shard); else a single `model.safetensors`. Refuses a directory that already holds
    safetensors files or an index (it never deletes anything). Returns `out_dir` as a Path.
    Special token ids (pad/eos/bos) that do not fit a vocab_size below harmony's are written as null.
    """
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")
    if max_shard_bytes is not None and max_shard_bytes <= 0:
        raise ValueError(f"max_shard_bytes must be positive, got {max_shard_bytes}")
    spec = TinySpec(
        num_hidden_layers=num_layers,
        num_local_experts=num_experts,
        num_experts_per_tok=experts_per_token,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads,
        head_dim=head_dim,
        sliding_window=sliding_window,
        vocab_size=vocab_size,
        original_max_position_embeddings=original_max_position_embeddings,
        rope_factor=float(rope_factor),
    )
    _check_spec(spec)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    existing = sorted(p.name for p in out.iterdir() if p.name.endswith(".safetensors") or p.name == INDEX_FILE)
    if existing:
        raise FileExistsError(f"{out}: already holds checkpoint files {existing}; use an empty directory")

    tensors = make_tensors(spec, fmt=fmt, seed=seed)
    _write_json(out / "config.json", make_config(spec, fmt=fmt))
    _write_json(out / "generation_config.json", make_generation_config(spec.vocab_size))
    _save_tensors(out, tensors, max_shard_bytes)
    if write_tokenizer:
        from oss_engine.chat.tokenizer_files import write_tokenizer_files  # lazy: optional for weight-only use

        write_tokenizer_files(out)
    return out


def _check_spec(spec: TinySpec) -> None:
    if spec.hidden_size % 32 or spec.intermediate_size % 32:
        raise ValueError("hidden_size and intermediate_size must be multiples of 32 (MXFP4 groups)")
    if spec.num_attention_heads % spec.num_key_value_heads:
        raise ValueError("num_attention_heads must be a multiple of num_key_value_heads")
    if not 1 <= spec.num_experts_per_tok <= spec.num_local_experts:
        raise ValueError("experts_per_token must be in 1..num_experts")
    if spec.head_dim % 2:
        raise ValueError("head_dim must be even (RoPE rotates halves)")


def make_config(spec: TinySpec, *, fmt: str) -> dict:
    """config.json as published for gpt-oss (GPT_OSS_SPEC.md section 1), at tiny sizes."""
    config = {
        "architectures": ["GptOssForCausalLM"],
        "model_type": "gpt_oss",
        "num_hidden_layers": spec.num_hidden_layers,
        "num_local_experts": spec.num_local_experts,
        "num_experts_per_tok": spec.num_experts_per_tok,
        "experts_per_token": spec.num_experts_per_tok,
        "hidden_size": spec.hidden_size,
        "intermediate_size": spec.intermediate_size,
        "num_attention_heads": spec.num_attention_heads,
        "num_key_value_heads": spec.num_key_value_heads,
        "head_dim": spec.head_dim,
        "sliding_window": spec.sliding_window,
        "layer_types": [
            "sliding_attention" if i % 2 == 0 else "full_attention" for i in range(spec.num_hidden_layers)
        ],
        "attention_bias": True,
        "attention_dropout": 0.0,
        "swiglu_limit": 7.0,
        "rms_norm_eps": 1e-05,
        "rope_theta": 150000,
        "rope_scaling": {
            "rope_type": "yarn",
            "factor": spec.rope_factor,
            "beta_fast": 32.0,
            "beta_slow": 1.0,
            "original_max_position_embeddings": spec.original_max_position_embeddings,
            "truncate": False,
        },
        "max_position_embeddings": int(spec.original_max_position_embeddings * spec.rope_factor),
        "initial_context_length": spec.original_max_position_embeddings,
        "vocab_size": spec.vocab_size,
        "tie_word_embeddings": False,
        "eos_token_id": _in_vocab(EOS_TOKEN_ID, spec.vocab_size),
        "pad_token_id": _in_vocab(PAD_TOKEN_ID, spec.vocab_size),
        "hidden_act": "silu",
        "initializer_range": 0.02,
        "output_router_logits": False,
        "router_aux_loss_coef": 0.9,
        "use_cache": True,
        "torch_dtype": "bfloat16",
    }
    if fmt == "mxfp4":
        config["quantization_config"] = {
            "quant_method": "mxfp4",
            "modules_to_not_convert": [
                "model.layers.*.self_attn",
                "model.layers.*.mlp.router",
                "model.embed_tokens",
                "lm_head",
            ],
        }
    return config


def make_generation_config(vocab_size: int) -> dict:
    return {
        "bos_token_id": _in_vocab(BOS_TOKEN_ID, vocab_size),
        "eos_token_id": [t for t in GENERATION_EOS_TOKEN_IDS if t < vocab_size] or None,
        "pad_token_id": _in_vocab(PAD_TOKEN_ID, vocab_size),
    }


def _in_vocab(token_id: int, vocab_size: int) -> int | None:
    """Deviation for vocabularies smaller than harmony's: ids that do not fit are written as null
    (transformers refuses a pad id outside the embedding). At the default vocab_size nothing changes."""
    return token_id if token_id < vocab_size else None


class _Init:
    """Draws tensors in a fixed order from one seeded generator (the order is part of determinism)."""

    def __init__(self, seed: int):
        self.gen = torch.Generator().manual_seed(seed)

    def normal(self, shape: tuple[int, ...], std: float, mean: float = 0.0) -> torch.Tensor:
        return torch.randn(shape, generator=self.gen, dtype=torch.float32) * std + mean  # float32 [shape]

    def linear(self, out_features: int, in_features: int, lead: tuple[int, ...] = ()) -> torch.Tensor:
        return self.normal((*lead, out_features, in_features), 1.0 / math.sqrt(in_features))


def make_tensors(spec: TinySpec, *, fmt: str, seed: int) -> dict[str, torch.Tensor]:
    """Every checkpoint tensor (GPT_OSS_SPEC.md section 4), in model order.

    Legend: V vocab, D hidden, H q-heads, K kv-heads, hd head_dim, E experts, I intermediate.
    """
    init = _Init(seed)
    bf16 = torch.bfloat16
    d, hd, e, i = spec.hidden_size, spec.head_dim, spec.num_local_experts, spec.intermediate_size
    h, k = spec.num_attention_heads, spec.num_key_value_heads
    t: dict[str, torch.Tensor] = {"model.embed_tokens.weight": init.normal((spec.vocab_size, d), 1.0).to(bf16)}
    for n in range(spec.num_hidden_layers):
        p = f"model.layers.{n}."
        t[p + "input_layernorm.weight"] = init.normal((d,), 0.1, mean=1.0).to(bf16)  # [D]
        attn_shapes = (("q", h * hd, d), ("k", k * hd, d), ("v", k * hd, d), ("o", d, h * hd))  # (out, in)
        for proj, out_features, in_features in attn_shapes:
            t[p + f"self_attn.{proj}_proj.weight"] = init.linear(out_features, in_features).to(bf16)
            t[p + f"self_attn.{proj}_proj.bias"] = init.normal((out_features,), 0.1).to(bf16)
        t[p + "self_attn.sinks"] = init.normal((h,), 1.0).to(bf16)  # [H]
        t[p + "post_attention_layernorm.weight"] = init.normal((d,), 0.1, mean=1.0).to(bf16)  # [D]
        t[p + "mlp.router.weight"] = init.linear(e, d).to(bf16)  # [E, D]
        t[p + "mlp.router.bias"] = init.normal((e,), 0.1).to(bf16)  # [E]
        gate_up = quantize_mxfp4(init.linear(2 * i, d, lead=(e,)))  # [E, 2I, D] output-major
        gate_up_bias = init.normal((e, 2 * i), 0.1).to(bf16)  # [E, 2I]
        down = quantize_mxfp4(init.linear(d, i, lead=(e,)))  # [E, D, I] output-major
        down_bias = init.normal((e, d), 0.1).to(bf16)  # [E, D]
        x = p + "mlp.experts."
        if fmt == "mxfp4":
            t[x + "gate_up_proj_blocks"] = gate_up.blocks  # uint8 [E, 2I, D/32, 16]
            t[x + "gate_up_proj_scales"] = gate_up.scales  # uint8 [E, 2I, D/32]
            t[x + "down_proj_blocks"] = down.blocks  # uint8 [E, D, I/32, 16]
            t[x + "down_proj_scales"] = down.scales  # uint8 [E, D, I/32]
        else:  # bf16 stores input-major: y = x @ W
            t[x + "gate_up_proj"] = gate_up.dequantize(bf16).transpose(1, 2).contiguous()  # [E, D, 2I]
            t[x + "down_proj"] = down.dequantize(bf16).transpose(1, 2).contiguous()  # [E, I, D]
        t[x + "gate_up_proj_bias"] = gate_up_bias
        t[x + "down_proj_bias"] = down_bias
    t["model.norm.weight"] = init.normal((d,), 0.1, mean=1.0).to(bf16)  # [D]
    t["lm_head.weight"] = init.linear(spec.vocab_size, d).to(bf16)  # [V, D]
    return t


def _write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def _plan_shards(tensors: dict[str, torch.Tensor], max_shard_bytes: int) -> list[list[str]]:
    """Greedy in model order: a shard closes when the next tensor would push it past the limit.
    A tensor bigger than the limit gets a shard of its own."""
    shards: list[list[str]] = [[]]
    used = 0
    for name, tensor in tensors.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and used + nbytes > max_shard_bytes:
            shards.append([])
            used = 0
        shards[-1].append(name)
        used += nbytes
    return shards


def _save_tensors(out: Path, tensors: dict[str, torch.Tensor], max_shard_bytes: int | None) -> None:
    metadata = {"format": "pt"}
    if max_shard_bytes is None:
        save_file(tensors, str(out / "model.safetensors"), metadata=metadata)
        return
    plan = _plan_shards(tensors, max_shard_bytes)
    weight_map: dict[str, str] = {}
    for n, names in enumerate(plan, start=1):
        file_name = f"model-{n:05d}-of-{len(plan):05d}.safetensors"
        save_file({name: tensors[name] for name in names}, str(out / file_name), metadata=metadata)
        weight_map.update({name: file_name for name in names})
    total = sum(tensor.numel() * tensor.element_size() for tensor in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    _write_json(out / INDEX_FILE, index)
