"""moe_gluon_wgmma.py, the prefill GEMM 1 on wgmma (moe.py's "wgmma" mode), against its twins:
`moe_experts_ref` and the Triton "dot_scaled" kernels, on a GPU (gpu marker); on the CPU machine the kernel
is compiled for sm_90 at the gpt-oss-20b shapes, the k-slot permutation is checked in Python and the default
config's choice is checked with the GPU's kind faked."""

import pytest
import torch

pytest.importorskip("triton")
pytest.importorskip("triton.experimental.gluon.language.nvidia.hopper")

from oss_engine.kernels.ref.moe import moe_experts_ref
from oss_engine.kernels.triton import moe as moe_mod
from oss_engine.kernels.triton import moe_config
from oss_engine.kernels.triton import moe_gluon_wgmma as W
from oss_engine.kernels.triton.moe import moe_experts_triton
from oss_engine.kernels.triton.moe_config import GemmTiles, MoeTritonConfig
from test_triton_moe import ALPHA, bf16_case
from triton_cases import DEV, INTERPRET, rel_l2, run_compile_check


@pytest.mark.parametrize("block_k", [64, 128])
def test_stored_k_is_a_permutation_of_each_step(block_k):
    """Every stored k of a step is multiplied by exactly one MMA k-slot, slots 2j, 2j + 1 (one bf16x2
    register) are a word's codes m and m + 4 (the upcast's pairs), and `x_permutation` (device ops) is
    `stored_k` step by step."""
    ks = [W.stored_k(s, block_k) for s in range(block_k)]
    assert sorted(ks) == list(range(block_k))
    assert all(ks[2 * j + 1] == ks[2 * j] + 4 and ks[2 * j] % 8 < 4 for j in range(block_k // 2))
    perm = W.x_permutation(3 * block_k, block_k, torch.device("cpu"))
    assert perm.tolist() == [k0 + k for k0 in (0, block_k, 2 * block_k) for k in ks]


@pytest.mark.parametrize("T,K", [(1, 64), (45, 640), (33, 300)])
def test_gather_columns_matches_indexing(T, K):
    """`gather_columns` (GEMM 1's permutation of x) equals torch's x[:, perm]: rows and columns past whole
    tiles, a row stride wider than K, and the real permutation as well as a random one."""
    dtype = torch.float32 if INTERPRET else torch.bfloat16
    x = torch.randn(T, K + 7, device=DEV, dtype=dtype)[:, :K]
    for perm in (torch.randperm(K, device=DEV), W.x_permutation(K, 64, torch.device(DEV)) if K % 64 == 0 else None):
        if perm is not None:
            got = W.gather_columns(x, perm)
            assert got.is_contiguous() and torch.equal(got, x[:, perm])


def test_compiles_for_sm90():
    """At the 20b shapes and the default tiles (two warpgroups, 3 slots) the kernel compiles for sm_90 with
    its weights reaching wgmma's register A operand with no shared memory read and no shuffle on the way (the
    module docstring's layout argument; the few shuffles are the expert lookup's reductions), 4 wgmma a
    64-wide step (in both the full blocks and the half-width tails: GemmTiles.half_tail), no spills, and at most
    128 registers: two programs an SM, which the measured speed rests on (moe_gluon_wgmma's docstring). The same
    with the weights tiled (weights/tiles.py), whose words load in as many instructions."""
    run_compile_check(r'''
import re
from triton.experimental.gluon._runtime import GluonASTSource
from oss_engine.kernels.triton import moe_gluon_wgmma as W
from oss_engine.kernels.triton.moe_config import WGMMA_GEMM1 as t

fn = W._group_gemm1_wgmma
types = dict(xp_ptr="*bf16", order_ptr="*i64", bounds_ptr="*i32", w_ptr="*i32", s_ptr="*u8", b_ptr="*bf16",
             act_ptr="*bf16")
loads = {}
for tiled in (False, True):  # the standard and weights/tiles.py's byte layouts
    consts = dict(K=2880, N=5760, A=4, E=32, E_PAD=32, BT=t.block_m, BK=t.block_k, GROUP_M=t.group_m,
                  W_L=W.words_layout(t.block_k, t.num_warps), STAGES=t.num_stages, HALF_TAIL=t.half_tail,
                  TILED=tiled)
    sig = {n: "constexpr" if n in consts else types.get(n, "fp32" if n in ("limit", "alpha") else "i32")
           for n in fn.arg_names}
    # pointers and integers divisible by 16, as the launch specializes them (every stride here is: rows of K)
    div = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(fn.arg_names)
           if sig[n] not in ("constexpr", "fp32")}
    k = triton.compile(GluonASTSource(fn, sig, consts, attrs=div), target=GPUTarget("cuda", 90, 32),
                       options={"num_warps": t.num_warps})
    ptx = k.asm["ptx"]
    assert "ld.shared" not in ptx and ptx.count("shfl") <= 6, (ptx.count("ld.shared"), ptx.count("shfl"))
    assert len(re.findall(r"wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16", ptx)) == 4
    assert t.half_tail and len(re.findall(r"wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16", ptx)) == 4
    sass, res = cuobjdump(k, "-sass"), cuobjdump(k, "-res-usage")
    assert "STL" not in sass and sass.count("HGMMA") == 8  # 4 a step, in the full blocks and the half ones
    regs = int(re.search(r"REG:(\d+)", res).group(1))
    assert regs <= 128, regs
    loads[tiled] = ptx.count("ld.global")
assert loads[True] == loads[False], loads  # the tiled words still load as whole vectors
print("ok")
''')


def test_default_config_takes_wgmma_above_32_rows_on_sm90(monkeypatch):
    """GEMM 1 by wgmma from 33 rows an expert, on sm_90 only; GEMM 2 keeps the dot_scaled tiles."""
    cuda = torch.device("cuda")
    monkeypatch.setattr(moe_mod.launch, "is_sm90", lambda device: True)
    assert moe_config.default_config(4 * 256, 32, cuda).mxfp4_decode == "dot_scaled"  # 32 rows an expert
    assert moe_config.default_config(4 * 264, 32, cuda).mxfp4_decode == "wgmma"  # 33
    cfg = moe_config.default_config(4 * 520, 32, cuda)
    assert cfg.mxfp4_decode == "wgmma" and cfg.gemm1 == moe_config.WGMMA_GEMM1
    assert cfg.gemm2 == moe_config.triton_config(4 * 520, 32, cuda).gemm2
    assert moe_config.default_config(4 * 520, 32, torch.device("cpu")).mxfp4_decode == "arith"
    monkeypatch.setattr(moe_mod.launch, "is_sm90", lambda device: False)  # e.g. sm_100: dot_scaled
    assert moe_config.default_config(4 * 520, 32, cuda) == moe_config.triton_config(4 * 520, 32, cuda)


def wgmma_config(block_t: int = 128, group_m: int = 8, num_warps: int = 8, stages: int = 3,
                 half_tail: bool = False) -> MoeTritonConfig:
    return MoeTritonConfig(GemmTiles(block_t, 16 * num_warps, 64, num_warps, stages, group_m, half_tail),
                           GemmTiles(128, 128, 64, 4, 3, group_m, half_tail), "wgmma")


@pytest.mark.gpu
@pytest.mark.skipif(INTERPRET, reason="inline PTX and wgmma: a GPU only")
@pytest.mark.parametrize("fmt", ["mxfp4", "bytes"])
@pytest.mark.parametrize("T,kind,group_m", [(1, "uniform", 8), (7, "ragged", 8), (300, "ragged", 8),
                                            (300, "uniform", 3), (1100, "uniform", 8)])
@pytest.mark.parametrize("num_warps,stages", [(8, 3), (4, 3), (8, 4)])
def test_gpu_against_twins(fmt, T, kind, group_m, num_warps, stages):
    """bf16 on an sm_90 GPU (E = 8, top-4, D = 320, I = 384: 5 steps, shorter than a 4-slot ring's lead;
    scale ranges measured), one warpgroup or two, 3 or 4 slots: within 2e-2 of the float32 reference and
    2e-3 of the Triton "dot_scaled" kernels (both multiply bf16 operands exactly)."""
    dev = torch.device("cuda")
    if torch.cuda.get_device_capability(dev) != (9, 0):
        pytest.skip("wgmma: sm_90")
    x, weights, ids, w1, w2, limit = bf16_case(fmt, kind, T, E=8, A=4, D=320, I=384, seed=T)
    assert W.takes(x, w1, 64, num_warps), "the wgmma GEMM 1 would not run"
    out = moe_experts_triton(x, weights, ids, w1, w2, limit, ALPHA,
                             config=wgmma_config(group_m=group_m, num_warps=num_warps, stages=stages))
    twin = moe_experts_triton(x, weights, ids, w1, w2, limit, ALPHA,
                              config=MoeTritonConfig(GemmTiles(128, 128, 64, 4, 3, 8), GemmTiles(128, 128, 64, 4, 3, 8),
                                                     "dot_scaled"))
    ref = moe_experts_ref(x, weights, ids, w1, w2, limit, ALPHA)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()
    assert rel_l2(out, ref) < 2e-2
    assert rel_l2(out, twin) < 2e-3


@pytest.mark.gpu
@pytest.mark.skipif(INTERPRET, reason="inline PTX and wgmma: a GPU only")
@pytest.mark.parametrize("T", [300, 400, 1100])
def test_gpu_half_tail_blocks(T):
    """GemmTiles.half_tail on both GEMMs (wgmma GEMM 1, dot_scaled GEMM 2): uniform routing over 8 experts
    leaves tails of ~22 (T = 300), ~72 (T = 400: mostly full width) and ~38 (T = 1100, after 4 full blocks)
    rows of 128. The same bits as the full-width blocks, and within 2e-2 of the float32 reference."""
    dev = torch.device("cuda")
    if torch.cuda.get_device_capability(dev) != (9, 0):
        pytest.skip("wgmma: sm_90")
    x, weights, ids, w1, w2, limit = bf16_case("mxfp4", "uniform", T, E=8, A=4, D=320, I=384, seed=T)
    half = moe_experts_triton(x, weights, ids, w1, w2, limit, ALPHA, config=wgmma_config(half_tail=True))
    full = moe_experts_triton(x, weights, ids, w1, w2, limit, ALPHA, config=wgmma_config())
    assert torch.equal(half, full)
    assert rel_l2(half, moe_experts_ref(x, weights, ids, w1, w2, limit, ALPHA)) < 2e-2


@pytest.mark.gpu
@pytest.mark.skipif(INTERPRET, reason="a GPU only")
def test_gpu_default_takes_wgmma_and_falls_back():
    """The default config at 20b-like proportions (300 tokens over 8 experts: 150 rows an expert) runs the wgmma
    GEMM 1 on sm_90 and matches the reference; weights it does not take (scale bytes outside its exact range)
    fall back to dot_scaled and still match."""
    dev = torch.device("cuda")
    E, A, T = 8, 4, 300
    x, weights, ids, w1, w2, _ = bf16_case("mxfp4", "uniform", T, E, A, D=320, I=384, seed=5)
    cfg = moe_config.default_config(T * A, E, dev)
    assert cfg.mxfp4_decode == ("wgmma" if torch.cuda.get_device_capability(dev) == (9, 0) else "dot_scaled")
    ref = moe_experts_ref(x, weights, ids, w1, w2, 7.0, ALPHA)
    assert rel_l2(moe_experts_triton(x, weights, ids, w1, w2, 7.0, ALPHA), ref) < 2e-2
    w1.scales[0, 0, 0] = 200  # outside the upcast's exact range: `takes` refuses
    w1 = w1.with_scale_range()
    assert not W.takes(x, w1, 64, 8)
    ref = moe_experts_ref(x, weights, ids, w1, w2, 7.0, ALPHA)
    assert rel_l2(moe_experts_triton(x, weights, ids, w1, w2, 7.0, ALPHA), ref) < 2e-2


@pytest.mark.gpu
@pytest.mark.skipif(INTERPRET, reason="a GPU only")
def test_gpu_wgmma_in_a_cuda_graph():
    """Captured first in a CUDA graph (no permutation kept yet: it is made inside the capture, not kept), the
    wgmma path replays to the eager result, and the eager path afterwards keeps its own permutation."""
    dev = torch.device("cuda")
    if torch.cuda.get_device_capability(dev) != (9, 0):
        pytest.skip("wgmma: sm_90")
    x, weights, ids, w1, w2, _ = bf16_case("mxfp4", "uniform", 300, E=8, A=4, D=320, I=384, seed=9)
    cfg = wgmma_config()
    W._kept_permutation.cache_clear()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):  # compile the kernels outside the capture (not the permutation: cleared)
        moe_experts_triton(x, weights, ids, w1, w2, 7.0, ALPHA, config=cfg)
    torch.cuda.current_stream().wait_stream(stream)
    W._kept_permutation.cache_clear()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = moe_experts_triton(x, weights, ids, w1, w2, 7.0, ALPHA, config=cfg)
    assert W._kept_permutation.cache_info().currsize == 0
    graph.replay()
    eager = moe_experts_triton(x, weights, ids, w1, w2, 7.0, ALPHA, config=cfg)
    assert W._kept_permutation.cache_info().currsize == 1
    torch.cuda.synchronize()
    assert torch.equal(captured, eager)
    assert rel_l2(eager, moe_experts_ref(x, weights, ids, w1, w2, 7.0, ALPHA)) < 2e-2
