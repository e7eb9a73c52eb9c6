"""Frozen configuration dataclasses.

`ModelConfig` mirrors a gpt-oss `config.json` (field names are the json keys). Everything is validated and
every "auto" is resolved before an object is frozen; the rest of the package only reads these objects.
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


@dataclass(frozen=True)
class CacheConfig:
    """Paged KV cache. Capacity: `num_kv_blocks` (an explicit override per cache group, for tests), else a
    memory budget: `kv_cache_memory_bytes`, or on CUDA `gpu_memory_utilization` of the device after a
    profiling pass (on CPU the default budget is 1 GiB)."""

    block_size: int = 16
    enable_prefix_caching: bool = True
    gpu_memory_utilization: float = 0.9
    kv_cache_memory_bytes: int | None = None
    num_kv_blocks: int | None = None

    def validate(self) -> None:
        if self.block_size < 1 or self.block_size > 1024:
            raise ConfigError(f"block_size must be in [1, 1024], got {self.block_size}")
        if not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise ConfigError(f"gpu_memory_utilization must be in (0, 1], got {self.gpu_memory_utilization}")
        if self.kv_cache_memory_bytes is not None and self.kv_cache_memory_bytes <= 0:
            raise ConfigError(f"kv_cache_memory_bytes must be positive, got {self.kv_cache_memory_bytes}")
        if self.num_kv_blocks is not None and self.num_kv_blocks < 1:
            raise ConfigError(f"num_kv_blocks must be >= 1, got {self.num_kv_blocks}")


@dataclass(frozen=True)
class SchedulerConfig:
    """Continuous batching: each step grants at most `max_num_batched_tokens` tokens to at most
    `max_num_seqs` running requests; a request's prompt + output never exceeds `max_model_len`."""

    max_model_len: int
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    debug_checks: bool = False  # KV accounting checked after every step (tests)

    def validate(self) -> None:
        if self.max_num_seqs < 1:
            raise ConfigError(f"max_num_seqs must be >= 1, got {self.max_num_seqs}")
        if self.max_num_batched_tokens < 1:
            raise ConfigError(f"max_num_batched_tokens must be >= 1, got {self.max_num_batched_tokens}")


@dataclass(frozen=True)
class ParallelConfig:
    """How one model is spread over processes (vLLM's semantics, GPT_OSS_SPEC section 5).

    World = dp x pp x tp ranks on one host. Attention and the vocabulary are split over `tensor_parallel_size`
    ranks; layers over `pipeline_parallel_size` stages; `data_parallel_size` replicas each own their requests
    and KV cache but step in lock-step, because the MoE of a pipeline stage spans its tp x dp ranks: split
    along the intermediate dimension (expert parallel off) or by whole experts (`enable_expert_parallel`).
    `backend`: "gloo" (CPU) or "nccl" (CUDA), resolved from the device. `timeout_s` bounds every collective
    inside a step (a worker that stops answering turns into an error, not a hang).
    `distributed_executor_backend` (vLLM's names, "auto" resolved by `resolve_executor_backend`): "uni" one
    process, no process group; "mp" rank 0 starts ranks 1.. as subprocesses and they meet at
    master_addr:master_port (at world size 1 it still makes a process group of one, so every collective runs
    through the backend); "external_launcher" torchrun started every rank and they meet at its rendezvous."""

    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    data_parallel_size: int = 1
    enable_expert_parallel: bool = False
    backend: str = "gloo"
    master_addr: str = "127.0.0.1"
    master_port: int = 0  # 0: a free port is picked at launch
    timeout_s: float = 300.0
    distributed_executor_backend: str = "uni"  # "uni", "mp" or "external_launcher"

    @property
    def init_method(self) -> str:
        """Where the ranks meet: torchrun's store (env://, which also uses the agent's store when torchrun
        hosts one), else a TCP store that rank 0 opens at master_addr:master_port."""
        if self.distributed_executor_backend == "external_launcher":
            return "env://"
        return f"tcp://{self.master_addr}:{self.master_port}"

    @property
    def world_size(self) -> int:
        return self.tensor_parallel_size * self.pipeline_parallel_size * self.data_parallel_size

    @property
    def moe_size(self) -> int:
        """Ranks that share one stage's MoE: tp x dp (as experts with EP, as intermediate slices without)."""
        return self.tensor_parallel_size * self.data_parallel_size

    def validate(self, model: ModelConfig | None = None) -> None:
        for name in ("tensor_parallel_size", "pipeline_parallel_size", "data_parallel_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.backend not in ("gloo", "nccl"):
            raise ConfigError(f"backend must be 'gloo' or 'nccl', got {self.backend!r}")
        if not self.timeout_s > 0:
            raise ConfigError(f"timeout_s must be positive, got {self.timeout_s}")
        if self.distributed_executor_backend not in EXECUTOR_BACKENDS:
            raise ConfigError(f"distributed_executor_backend must be one of {', '.join(EXECUTOR_BACKENDS)}, "
                              f"got {self.distributed_executor_backend!r}")
        if model is None:
            return
        tp = self.tensor_parallel_size
        # Deviation from vLLM, which replicates kv heads when tp > K: we refuse (the KV cache per rank would
        # hold copies); gpt-oss has K = 8, so tp 1, 2, 4, 8 work.
        if model.num_key_value_heads % tp:
            raise ConfigError(f"tensor_parallel_size ({tp}) must divide num_key_value_heads "
                              f"({model.num_key_value_heads})")
        if self.pipeline_parallel_size > model.num_hidden_layers:
            raise ConfigError(f"pipeline_parallel_size ({self.pipeline_parallel_size}) exceeds num_hidden_layers "
                              f"({model.num_hidden_layers})")
        if self.enable_expert_parallel and model.num_local_experts % self.moe_size:
            raise ConfigError(f"with expert parallel, tensor_parallel_size x data_parallel_size ({self.moe_size}) "
                              f"must divide num_local_experts ({model.num_local_experts})")


@dataclass(frozen=True)
class EngineConfig:
    """What an engine runs with: the model, where, in which dtype, and its cache and scheduler settings.
    Built once by `LLM` or the CLI, then passed down."""

    model_dir: str
    model: ModelConfig
    device: str  # "cpu" or "cuda[:N]", resolved from "auto"
    dtype: str  # "float32" or "bfloat16", resolved from "auto"
    cache: CacheConfig
    scheduler: SchedulerConfig
    kernels: str = "ref"  # op table: "ref" (torch reference) or "triton" (GPU kernels), resolved from "auto"
    enforce_eager: bool = False  # no CUDA graphs: every step runs eagerly
    load_format: str = "auto"  # "auto": read the checkpoint; "dummy": random weights made on the device
    parallel: ParallelConfig = ParallelConfig()
    skip_tokenizer_init: bool = False
    seed: int = 0

    @property
    def max_model_len(self) -> int:
        return self.scheduler.max_model_len


def cache_dir() -> Path:
    """Where oss-engine keeps what it makes on first use (the default tiny model, the tokenizer ranks):
    $OSS_ENGINE_CACHE_DIR, else $XDG_CACHE_HOME/oss_engine, else ~/.cache/oss_engine."""
    import os

    if os.environ.get("OSS_ENGINE_CACHE_DIR"):
        return Path(os.environ["OSS_ENGINE_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "oss_engine"


EXECUTOR_BACKENDS = ("uni", "mp", "external_launcher")


@dataclass(frozen=True)
class LaunchEnv:
    """What torchrun (or a launcher that sets the same variables) tells a process about its place."""

    rank: int
    local_rank: int
    world_size: int
    master_addr: str
    master_port: int


def launch_env() -> LaunchEnv | None:
    """This process's LaunchEnv when RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT are all set
    (torchrun sets them for every process it starts), else None."""
    import os

    names = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    if not all(os.environ.get(n) for n in names):
        return None
    try:
        return LaunchEnv(int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"]), int(os.environ["WORLD_SIZE"]),
                         os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]))
    except ValueError as e:
        raise ConfigError(f"torchrun environment: {e}") from None


def resolve_executor_backend(requested: str, world_size: int, env: LaunchEnv | None) -> str:
    """"auto": "external_launcher" when torchrun started this process, else "mp" for several ranks and
    "uni" for one. An explicit "external_launcher" needs torchrun's variables and its world size to be
    tp x pp x dp; "mp" at world size 1 forces the multi-process path (a process group of one)."""
    if requested == "auto":
        requested = "external_launcher" if env is not None else ("mp" if world_size > 1 else "uni")
    if requested == "external_launcher":
        if env is None:
            raise ConfigError("distributed_executor_backend 'external_launcher' needs torchrun's RANK, LOCAL_RANK, "
                              "WORLD_SIZE, MASTER_ADDR and MASTER_PORT")
        if env.world_size != world_size:
            raise ConfigError(f"torchrun started {env.world_size} processes but tp x pp x dp = {world_size}")
    elif requested == "uni" and world_size > 1:
        raise ConfigError(f"distributed_executor_backend 'uni' runs one process, but tp x pp x dp = {world_size}")
    elif requested not in EXECUTOR_BACKENDS:
        raise ConfigError(f"distributed_executor_backend must be 'auto' or one of {', '.join(EXECUTOR_BACKENDS)}, "
                          f"got {requested!r}")
    return requested


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


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} requested but CUDA is not available")
    if device != "cpu" and not device.startswith("cuda"):
        raise ConfigError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {device!r}")
    return device


def resolve_dtype(dtype: str, device: str) -> str:
    """"auto" is bfloat16 on CUDA (the checkpoints' dtype) and float32 on CPU (exact and faster there)."""
    aliases = {"bf16": "bfloat16", "fp32": "float32", "float": "float32"}
    dtype = aliases.get(dtype, dtype)
    if dtype == "auto":
        return "bfloat16" if device.startswith("cuda") else "float32"
    if dtype not in ("float32", "bfloat16"):
        raise ConfigError(f"dtype must be 'auto', 'float32' or 'bfloat16', got {dtype!r}")
    return dtype
