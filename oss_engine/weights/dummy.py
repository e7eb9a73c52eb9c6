"""Random weights made directly on the device (`load_format="dummy"`): the real shapes for measurements on a
machine that cannot download the real weights. The values keep activations in a sane range and route tokens
roughly uniformly, like presets.write_random_checkpoint: linear weights N(0, 1/in), biases N(0, 0.1^2), norm
weights 1 + N(0, 0.1^2), MXFP4 bytes uniform with scales 2^-9..2^-5."""

from __future__ import annotations

import torch


@torch.no_grad()
def fill_random(model: torch.nn.Module, seed: int) -> None:
    g = torch.Generator(device=next(model.parameters()).device).manual_seed(seed)
    for name, p in model.named_parameters():
        if p.dtype == torch.uint8:
            lo, hi = (118, 123) if name.endswith("_scales") else (0, 256)
            p.copy_(torch.randint(lo, hi, p.shape, generator=g, device=p.device, dtype=torch.uint8))
            continue
        leaf = name.rsplit(".", 1)[-1]
        if "norm" in name:
            p.normal_(0.0, 0.1, generator=g).add_(1.0)
        elif leaf.endswith("bias"):
            p.normal_(0.0, 0.1, generator=g)
        elif leaf == "sinks" or "embed" in name:
            p.normal_(0.0, 1.0, generator=g)
        else:  # a weight [.., out, in]
            p.normal_(0.0, p.shape[-1] ** -0.5, generator=g)
