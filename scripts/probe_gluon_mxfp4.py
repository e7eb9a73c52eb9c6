"""CPU machine (no GPU needed): does Gluon, Triton 3.6's explicit-layout dialect, let an MXFP4 weight tile go
from global memory to the tensor cores with no shared memory and a hand-written e2m1 upcast? Compiles one
kernel for sm_90 and prints its registers and the SASS of its main loop per weight. Static only: the PTX
upcast is not run here and its numerics are unchecked (that needs the GPU).

The kernel, acc[16, BN] += A[16, BK] @ W[BN, BK]^T:
- the weight bytes are taken as re-laid at load time: for each row and BK-wide step, thread lane t's bytes
  kb = t, t + 4, t + 8, ... (the ones its mma.m16n8k16 B fragment needs: k = 2kb, 2kb + 1) sit together, so
  the tile is loaded as X[n, t, i] (kb = 4i + t) with one vector load a thread;
- X permuted and reshaped to [BK/2, BN] IS the B operand's layout with k halved (DotOperandLayout
  k_width=1): `convert_layout(..., assert_trivial=True)` proves it moves nothing;
- an inline-PTX upcast (prmt, shifts, masks: the e2m1 code placed in bf16 bits, i.e. the value times 2^-126,
  the scale left out) makes the low- and high-nibble values, joined and reshaped to [BK, BN] = the bf16 B
  operand (k_width=2), again a trivial conversion;
- mma_v2 (HMMA) on it.

Run: python scripts/probe_gluon_mxfp4.py [BK]   (needs triton 3.6 with its CUDA backend; no GPU)
"""

from __future__ import annotations

import collections
import os
import re
import subprocess
import sys
import tempfile

import triton
from triton.backends.compiler import GPUTarget
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon._runtime import GluonASTSource
from triton.experimental.gluon.language.nvidia.ampere import mma_v2

# 4 packed bytes b0..b3 -> bf16x2 (lo b0, lo b1), (lo b2, lo b3), (hi b0, hi b1), (hi b2, hi b3): a nibble's
# magnitude bits to bf16 bits 6-8 and its sign to bit 15 (of each half)
UPCAST = gl.constexpr("""{
.reg .b32 t0, t1, a, b;
prmt.b32 t0, $4, 0, 0x4140;
prmt.b32 t1, $4, 0, 0x4342;
shl.b32 a, t0, 6; and.b32 a, a, 0x01C001C0; shl.b32 b, t0, 12; and.b32 b, b, 0x80008000; or.b32 $0, a, b;
shl.b32 a, t1, 6; and.b32 a, a, 0x01C001C0; shl.b32 b, t1, 12; and.b32 b, b, 0x80008000; or.b32 $1, a, b;
shl.b32 a, t0, 2; and.b32 a, a, 0x01C001C0; shl.b32 b, t0, 8; and.b32 b, b, 0x80008000; or.b32 $2, a, b;
shl.b32 a, t1, 2; and.b32 a, a, 0x01C001C0; shl.b32 b, t1, 8; and.b32 b, b, 0x80008000; or.b32 $3, a, b;
}""")


@gluon.jit
def _probe_kernel(w_ptr, a_ptr, o_ptr, K, BN: gl.constexpr, BK: gl.constexpr, NW: gl.constexpr,
                  x_layout: gl.constexpr):
    mma: gl.constexpr = gl.NVMMADistributedLayout(version=[2, 0], warps_per_cta=[1, NW], instr_shape=[16, 8])
    b_layout: gl.constexpr = gl.DotOperandLayout(operand_index=1, parent=mma, k_width=2)  # [BK, BN] bf16
    packed_layout: gl.constexpr = gl.DotOperandLayout(operand_index=1, parent=mma, k_width=1)  # [BK/2, BN] u8
    a_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=mma, k_width=2)
    I: gl.constexpr = BK // 8
    n = gl.arange(0, BN, layout=gl.SliceLayout(1, gl.SliceLayout(2, x_layout)))
    t = gl.arange(0, 4, layout=gl.SliceLayout(0, gl.SliceLayout(2, x_layout)))
    i = gl.arange(0, I, layout=gl.SliceLayout(0, gl.SliceLayout(1, x_layout)))
    off = n[:, None, None] * (K // 2) + t[None, :, None] * I + i[None, None, :]  # re-laid row: [t][i] per step
    ma = gl.arange(0, 16, layout=gl.SliceLayout(1, a_layout))
    ka = gl.arange(0, BK, layout=gl.SliceLayout(0, a_layout))
    acc = gl.zeros([16, BN], gl.float32, layout=mma)
    for k0 in range(0, K, BK):
        x = gl.load(w_ptr + off + k0 // 2)  # [BN, 4, I] uint8
        p = gl.convert_layout(gl.reshape(gl.permute(x, [2, 1, 0]), [BK // 2, BN]), packed_layout,
                              assert_trivial=True)
        lo, hi = gl.inline_asm_elementwise(UPCAST, "=r,=r,=r,=r,r", [p], dtype=(gl.bfloat16, gl.bfloat16),
                                           is_pure=True, pack=4)
        w = gl.reshape(gl.permute(gl.join(lo, hi), [0, 2, 1]), [BK, BN])  # k = 2 kb + (0 lo, 1 hi)
        w = gl.convert_layout(w, b_layout, assert_trivial=True)
        a = gl.load(a_ptr + ma[:, None] * K + k0 + ka[None, :])
        acc = mma_v2(a, w, acc)
    mo = gl.arange(0, 16, layout=gl.SliceLayout(1, mma))
    no = gl.arange(0, BN, layout=gl.SliceLayout(0, mma))
    gl.store(o_ptr + mo[:, None] * BN + no[None, :], acc)


def x_layout(BN: int, BK: int) -> gl.DistributedLinearLayout:
    """X[n, t, i] (kb = 4 i + t): a thread's BK/8 bytes in registers, lanes over (t, n), warps over n: the
    B-operand layout of mma.m16n8k16 (with k halved) written over the re-laid memory order."""
    regs = [[0, 0, 1 << b] for b in range((BK // 8).bit_length() - 1)] + [[16, 0, 0]]
    lanes = [[0, 1, 0], [0, 2, 0], [1, 0, 0], [2, 0, 0], [4, 0, 0]]
    warps = [[8 << b, 0, 0] for b in range((BN // 16).bit_length() - 1)] if BN > 16 else []
    return gl.DistributedLinearLayout(reg_bases=regs, lane_bases=lanes, warp_bases=warps, block_bases=[],
                                      shape=[BN, 4, BK // 8])


def main() -> None:
    BK, NW = (int(sys.argv[1]) if len(sys.argv) > 1 else 64), 2
    BN = 16 * NW
    sig = {"w_ptr": "*u8", "a_ptr": "*bf16", "o_ptr": "*fp32", "K": "i32", "BN": "constexpr", "BK": "constexpr",
           "NW": "constexpr", "x_layout": "constexpr"}
    src = GluonASTSource(_probe_kernel, sig, {"BN": BN, "BK": BK, "NW": NW, "x_layout": x_layout(BN, BK)},
                         attrs={(0,): [["tt.divisibility", 16]], (3,): [["tt.divisibility", 16]]})
    k = triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": NW})
    ptx = k.asm["ptx"]
    print(f"BN {BN}, BK {BK}, {NW} warps: compiled for sm_90; shared-memory ops in the PTX: "
          f"{ptx.count('ld.shared') + ptx.count('st.shared')}")
    nv = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
    with tempfile.TemporaryDirectory() as tmp:
        cubin = os.path.join(tmp, "k.cubin")
        with open(cubin, "wb") as f:
            f.write(k.asm["cubin"])
        res = subprocess.run([os.path.join(nv, "cuobjdump"), "-res-usage", cubin], capture_output=True, text=True)
        print("registers a thread:", " ".join(re.findall(r"REG:\d+", res.stdout)))
        sass = subprocess.run([os.path.join(nv, "nvdisasm"), "-c", cubin], capture_output=True, text=True).stdout
    lines = sass.splitlines()
    # the main loop: from the label its backward branch jumps to, to that branch
    back = [j for j, ln in enumerate(lines) if re.search(r"BRA `\(\.L_x_\d+\)", ln)]
    loops = [(int(lines.index(next(ln for ln in lines if ln.startswith(lab + ":")))), j) for j in back
             for lab in re.findall(r"\((\.L_x_\d+)\)", lines[j])
             if any(ln.startswith(lab + ":") for ln in lines[:j])]
    start, end = max(loops, key=lambda p: p[1] - p[0])
    ops = collections.Counter()
    for ln in lines[start:end + 1]:
        m = re.search(r"\*/\s+(?:@!?U?P\w+\s+)?([A-Z][A-Z0-9]*)", ln)
        if m:
            ops[m.group(1)] += 1
    weights = BN * BK // (32 * NW)
    total = sum(ops.values())
    print(f"main loop: {total} instructions a thread for {weights} weights = {total / weights:.2f} a weight")
    print("  " + ", ".join(f"{op} {c}" for op, c in ops.most_common(10)))


if __name__ == "__main__":
    main()
