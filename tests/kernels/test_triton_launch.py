"""Programmatic dependent launch (`kernels/triton/launch.py`): when it is on, and that the kernels built with
PDL=True for sm_90 carry the griddepcontrol instructions where the module docstrings say.

No GPU needed: the PTX comes from compiling for sm_90 on the CPU (nothing launched). A launch with PDL is only
checked on a Hopper GPU (scripts), not here.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from oss_engine.kernels.triton import launch
from oss_engine.kernels.triton.norm import add_rms_norm_triton
from triton_cases import DEV, INTERPRET, run_compile_check


def test_off_on_cpu():
    assert launch.use_pdl(torch.device("cpu")) is False


def test_off_under_the_interpreter(monkeypatch):
    # returns before it asks CUDA anything, so this runs without a GPU too
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert launch.use_pdl(torch.device("cuda")) is False


def test_is_sm90_only_for_hopper(monkeypatch):
    """The wgmma kernels' gate (moe_config.default_config and moe_gluon_wgmma.takes both ask it)."""
    assert launch.is_sm90(torch.device("cpu")) is False
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for cap, want in (((9, 0), True), ((8, 0), False), ((9, 1), False), ((10, 0), False)):
        monkeypatch.setattr(launch, "capability", lambda device, cap=cap: cap)
        assert launch.is_sm90(torch.device("cuda")) is want


def test_wrappers_ask_at_call_time(monkeypatch):
    """Scripts A/B PDL by replacing `launch.use_pdl`; a wrapper must look it up when it launches."""
    asked = []
    monkeypatch.setattr(launch, "use_pdl", lambda device: asked.append(device) or False)
    x = torch.randn(2, 64, device=DEV)
    add_rms_norm_triton(x, x, torch.ones(64, device=DEV), 1e-5)
    assert asked == [x.device]


# gemv prefetches its first weight tile before the wait ([8, 512] bf16 over 128 threads: four 16-byte loads),
# or with its loads 3 steps ahead (the lm_head) its first three;
# the norm reads its weight first but writes nothing before the wait; the pair GEMM (MXFP4, Triton's e2m1
# upcast as on the GPU) reads nothing before it (its expert comes from ids).
_PDL_IN_PTX = r"""
from oss_engine.kernels.triton import gemv as GV, moe_decode as MD, norm as NO


skip_without_sm90()

def before_wait(fn, consts, ptrs, **kw):
    ptx = compile_sm90(fn, {**consts, "PDL": True}, ptrs, **kw).asm["ptx"]
    assert ptx.count("griddepcontrol.wait") == 1, fn.__name__
    w = ptx.index("griddepcontrol.wait")
    assert ptx.index("griddepcontrol.launch_dependents") > w, fn.__name__
    pre = ptx[:w]
    assert "st.global" not in pre, fn.__name__
    return pre


gemv_ptrs = dict(x_ptr="*bf16", w_ptr="*bf16", b_ptr="*bf16", y_ptr="*bf16")
gemv_div = ("x_ptr", "w_ptr", "b_ptr", "y_ptr", "s_wn")
pre = before_wait(GV._gemv_kernel, dict(K=2880, HAS_BIAS=True, BLOCK_N=8, BLOCK_K=512, DEPTH=0, PRE_K=0, s_xk=1,
                                        s_wk=1, s_yn=1), gemv_ptrs, divisible=gemv_div)
assert pre.count("ld.global") == 4 and pre.count("ld.global.v4.b32") == 4, pre.count("ld.global")
# the lm_head's tiles: 3 steps of [4, 512] before the wait (two 16-byte loads a thread each)
pre = before_wait(GV._gemv_kernel, dict(K=2880, HAS_BIAS=False, BLOCK_N=4, BLOCK_K=512, DEPTH=3, PRE_K=0, s_xk=1,
                                        s_wk=1, s_yn=1), gemv_ptrs, divisible=gemv_div)
assert pre.count("ld.global") == 6 and pre.count("ld.global.v4.b32") == 6, pre.count("ld.global")
# the tile option pre_k (not a default): columns 0-2047 of 8 rows before the wait, sixteen 16-byte loads a thread
pre = before_wait(GV._gemv_kernel, dict(K=4096, HAS_BIAS=False, BLOCK_N=8, BLOCK_K=512, DEPTH=0, PRE_K=2048, s_xk=1,
                                        s_wk=1, s_yn=1), gemv_ptrs, divisible=gemv_div)
assert pre.count("ld.global") == 16 and pre.count("ld.global.v4.b32") == 16, pre.count("ld.global")
for n, x in ((0, "*bf16"), (8, "*fp32")):  # a tensor, and a RowSum of 8 rows
    before_wait(NO._add_rms_norm_kernel, dict(SUM_ROWS=n, HAS_RESIDUAL=True, BLOCK_D=4096),
                dict(x_ptr=x, res_ptr="*bf16", w_ptr="*bf16", out_ptr="*bf16", r_out_ptr="*bf16"), floats=("eps",))
pre = before_wait(MD._pair_gemm1_kernel,
                  dict(K=2880, N=5760, A=4, MODE=2, BLOCK_N=32, BLOCK_K=256, COMPUTE=tl.bfloat16, PRECISION="tf32",
                       TILED=False, s_xk=1, s_wk=1, s_bn=1, s_sg=1, s_ah=1),
                  dict(x_ptr="*bf16", ids_ptr="*i64", w_ptr="*u8", s_ptr="*u8", b_ptr="*bf16", act_ptr="*bf16"),
                  floats=("limit", "alpha"))
assert "ld.global" not in pre
print("ok")
"""


@pytest.mark.skipif(not INTERPRET, reason="on a GPU the kernels run compiled; this checks the CPU-built PTX")
def test_pdl_kernels_wait_in_ptx():
    run_compile_check(_PDL_IN_PTX)
