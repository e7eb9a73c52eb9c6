"""Frozen configuration dataclasses: the engine's (`CacheConfig`, `SchedulerConfig`, `ParallelConfig`,
`EngineConfig`) here, `ModelConfig` (config.json) in model_config.py and re-exported. Everything is validated
and every "auto" is resolved before an object is frozen; the rest of the package only reads these objects.
This module is the only reader of environment variables.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .model_config import (LAYER_FULL, LAYER_SLIDING, MXFP4_BLOCK, ConfigError, ModelConfig,  # noqa: F401
                           QuantizationConfig, RopeScaling, generation_eos_ids)


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
    async_scheduling: bool = True  # read sampled tokens a step late, overlapping host work (llm_engine.py)

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
    `backend`: "gloo" or "nccl" (`resolve_collective_backend`: NCCL on CUDA and gloo on CPU unless asked).
    `timeout_s` bounds every collective inside a step (a worker that stops answering turns into an error, not a
    hang).
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


COLLECTIVE_BACKENDS = ("auto", "nccl", "gloo")  # distributed_backend / --distributed-backend


def resolve_collective_backend(requested: str, device: str) -> str:
    """"auto": NCCL on CUDA, gloo on CPU. gloo also runs on CUDA, where several ranks may share one GPU: a check
    of the sharded model on a one-GPU machine, not a fast path (torch's gloo stages every CUDA collective
    through host memory)."""
    if requested == "auto":
        return "nccl" if device.startswith("cuda") else "gloo"
    if requested not in COLLECTIVE_BACKENDS:
        raise ConfigError(f"distributed_backend must be 'auto', 'nccl' or 'gloo', got {requested!r}")
    if requested == "nccl" and not device.startswith("cuda"):
        raise ConfigError(f"distributed_backend 'nccl' needs a CUDA device, got {device!r}; use 'gloo' on CPU")
    return requested


def check_rank_devices(par: ParallelConfig, device: str, gpus: int) -> None:
    """Refuse a layout the ranks' devices cannot run, before any process starts. NCCL wants a GPU of its own for
    each rank, and "mp" puts this host's ranks on cuda:<rank mod gpus>. torch's gloo sends no CUDA tensor
    point to point, which pipeline stages and data-parallel replicas' logits need."""
    if not device.startswith("cuda") or par.world_size == 1:
        return
    if par.backend == "nccl" and par.distributed_executor_backend == "mp" and par.world_size > gpus:
        raise ConfigError(f"tp x pp x dp = {par.world_size} ranks need {par.world_size} GPUs with NCCL, this host "
                          f"has {gpus}; distributed_backend='gloo' lets ranks share a GPU (a correctness check, "
                          "not a fast path)")
    if par.backend == "gloo" and (par.pipeline_parallel_size > 1 or par.data_parallel_size > 1):
        raise ConfigError("gloo on CUDA runs tensor and expert parallel only: pipeline stages and data-parallel "
                          "replicas send CUDA tensors point to point, which torch's gloo cannot; use NCCL")


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r} requested but CUDA is not available")
    if device != "cpu" and not device.startswith("cuda"):
        raise ConfigError(f"device must be 'auto', 'cpu' or 'cuda[:N]', got {device!r}")
    return device


def default_max_num_batched_tokens(device: str) -> int:
    """Tokens a step when the caller names none, vLLM's offline default: 16384 on a CUDA device of >= 70 GiB
    (H100, H200; larger prefill steps keep the MoE GEMMs fuller: 20b prefill of 2k prompts on an H100 56.2k-56.3k
    -> 59.5k-59.6k tok/s, docs/performance.md), else 8192. The server's CLI passes its own (8192, as vLLM's)."""
    import torch

    if device.startswith("cuda") and torch.cuda.get_device_properties(device).total_memory >= 70 * 2**30:
        return 16384
    return 8192


def resolve_dtype(dtype: str, device: str) -> str:
    """"auto" is bfloat16 on CUDA (the checkpoints' dtype) and float32 on CPU (exact and faster there)."""
    aliases = {"bf16": "bfloat16", "fp32": "float32", "float": "float32"}
    dtype = aliases.get(dtype, dtype)
    if dtype == "auto":
        return "bfloat16" if device.startswith("cuda") else "float32"
    if dtype not in ("float32", "bfloat16"):
        raise ConfigError(f"dtype must be 'auto', 'float32' or 'bfloat16', got {dtype!r}")
    return dtype
