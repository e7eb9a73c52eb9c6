"""The experts' clamped SwiGLU, one device function for every Triton MoE kernel that applies it (the twin of
`kernels/ref/moe.py` `swiglu_ref`): GEMM 1's epilogues in moe.py and moe_decode.py, moe_grouped_mm.py's pass."""

import triton
import triton.language as tl


@triton.jit
def clamped_swiglu(gate, up, limit, alpha):
    """float32 gate and up (GEMM 1's columns 2i and 2i + 1, bias added) -> the activation, same shape:
    min(gate, limit) * sigmoid(alpha * min(gate, limit)) * (clamp(up, -limit, limit) + 1)."""
    gate = tl.minimum(gate, limit)
    up = tl.minimum(tl.maximum(up, -limit), limit)
    return gate * tl.sigmoid(alpha * gate) * (up + 1.0)
