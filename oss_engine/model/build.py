"""Build a GptOssModel for an EngineConfig: allocate parameters once on the target device, then fill them
from the checkpoint (weights/loader.py). No parameter is initialised twice, none is left unfilled.
Under parallelism the model is one rank's shard (`RankShard`, `ModelComms`) and reads only its slices;
what it read and holds is kept on `model.load_report`."""

from __future__ import annotations

import torch

from ..config import EngineConfig
from ..kernels import get_ops
from ..parallel.comm import ModelComms
from ..parallel.shard import RankShard
from ..weights.dummy import RandomCheckpoint
from ..weights.loader import load_weights
from .gpt_oss import GptOssModel
from .rope import yarn_params

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def build_model(cfg: EngineConfig, *, shard: RankShard | None = None, comms: ModelComms | None = None,
                progress: bool = True) -> GptOssModel:
    with torch.device("meta"):
        model = GptOssModel(cfg.model, DTYPES[cfg.dtype], get_ops(cfg.kernels), shard, comms)
    model = model.to_empty(device=cfg.device)
    model.rotary.inv_freq.copy_(yarn_params(cfg.model).inv_freq)  # buffers are not in the checkpoint
    # "dummy": random tensors made on the device, the same for every parallel layout, through the same loader
    source = None
    if cfg.load_format == "dummy":
        source = RandomCheckpoint(cfg.model, DTYPES[cfg.dtype], cfg.seed, cfg.device)
    model.load_report = load_weights(model, cfg.model_dir, cfg.model, shard=model.shard, progress=progress,
                                     source=source)
    return model.eval()
