"""Build a GptOssModel for an EngineConfig: allocate parameters once on the target device, then fill them
from the checkpoint (weights/loader.py). No parameter is initialised twice, none is left unfilled."""

from __future__ import annotations

import torch

from ..config import EngineConfig
from ..kernels import get_ops
from ..weights.dummy import fill_random
from ..weights.loader import load_weights
from .gpt_oss import GptOssModel
from .rope import yarn_params

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def build_model(cfg: EngineConfig, *, progress: bool = True) -> GptOssModel:
    with torch.device("meta"):
        model = GptOssModel(cfg.model, DTYPES[cfg.dtype], get_ops(cfg.kernels))
    model = model.to_empty(device=cfg.device)
    model.rotary.inv_freq.copy_(yarn_params(cfg.model).inv_freq)  # buffers are not in the checkpoint
    if cfg.load_format == "dummy":
        fill_random(model, cfg.seed)
    else:
        load_weights(model, cfg.model_dir, cfg.model, progress=progress)
    return model.eval()
