"""The Triton rope + KV store against its reference twin `rope_store_kv_ref`.

Without a GPU the kernel runs in Triton's interpreter with float32 operands (the interpreter casts float32 to
bf16 by truncation, not round-to-nearest-even, so bf16 cases are GPU-only); on a CUDA machine the same float32
cases run compiled, and the bf16 cases run too. q_rot starts as NaN (`poisoned`) and the cache rows the step
must write start as NaN, so anything never written fails; cache rows outside the step must stay untouched.
q, k, v are strided views of one fused projection [T, (H + 2K) D], as in the model.
Legend: T tokens, H q-heads, K kv-heads, D head_dim, N cache blocks, S block size.
"""

from __future__ import annotations

import math

import pytest
import torch

pytest.importorskip("triton")

from oss_engine.kernels.ref.rope import rope_store_kv_ref
from oss_engine.kernels.triton import rope as rope_mod
from oss_engine.kernels.triton.rope import rope_store_kv_triton
from triton_cases import DEV, INTERPRET, rel_l2, run_compile_check


@pytest.fixture(autouse=True)
def poisoned(monkeypatch):
    """q_rot, which the wrapper allocates, starts as NaN, so a head or half never written shows."""
    monkeypatch.setattr(rope_mod, "_empty", lambda shape, dtype, device: torch.full(shape, float("nan"),
                                                                                     dtype=dtype, device=device))


def make(T: int, H: int, K: int, D: int, S: int = 4, dtype=torch.float32, cache_dtype=None, device=DEV):
    """(q, k, v, cos, sin, k_cache, v_cache, slots): q, k, v strided views of a fused [T, (H + 2K) D] tensor,
    cos/sin of random positions with a concentration folded in (as the model's rope table), caches [N, S, K, D]
    with two spare blocks, slots a random choice of T distinct slots in random order."""
    N = -(-T // S) + 2
    qkv = torch.randn(T, (H + 2 * K) * D).to(dtype=dtype, device=device)  # [T, (H + 2K) D]
    q, k, v = qkv.split([H * D, K * D, K * D], dim=-1)
    q, k, v = q.view(T, H, D), k.view(T, K, D), v.view(T, K, D)  # row stride (H + 2K) D, as in the model
    pos = torch.randint(0, 4096, (T,)).double()
    inv_freq = 150000.0 ** (-torch.arange(0, D // 2).double() / (D // 2))
    angle = pos[:, None] * inv_freq[None, :]  # [T, D/2]
    conc = 0.1 * math.log(32) + 1
    cos, sin = (angle.cos() * conc).float().to(device), (angle.sin() * conc).float().to(device)
    cache = {"dtype": cache_dtype or dtype, "device": device}
    k_cache, v_cache = torch.randn(N, S, K, D).to(**cache), torch.randn(N, S, K, D).to(**cache)
    slots = torch.randperm(N * S)[:T].to(device)
    return q, k, v, cos, sin, k_cache, v_cache, slots


def run_both(q, k, v, cos, sin, k_cache, v_cache, slots):
    """Reference and kernel on the same inputs; the kernel's caches start with the step's rows as NaN."""
    want_k, want_v = k_cache.clone(), v_cache.clone()
    want_q = rope_store_kv_ref(q, k, v, cos, sin, want_k, want_v, slots)
    got_k, got_v = k_cache.clone(), v_cache.clone()
    ok = slots[slots >= 0]
    got_k.view(-1, *k_cache.shape[2:])[ok] = float("nan")  # rows the kernel must write
    got_v.view(-1, *v_cache.shape[2:])[ok] = float("nan")
    inputs = [x.clone() for x in (q, k, v, cos, sin, slots)]
    got_q = rope_store_kv_triton(q, k, v, cos, sin, got_k, got_v, slots)
    assert all(torch.equal(a, b) for a, b in zip(inputs, (q, k, v, cos, sin, slots))), "an input was modified"
    return (want_q, want_k, want_v), (got_q, got_k, got_v)


@pytest.mark.parametrize("T", [1, 7, 33])
@pytest.mark.parametrize("H,K,D", [(8, 2, 16), (4, 4, 16), (6, 3, 32), (64, 8, 64)])  # GQA 4, 1, 2; gpt-oss
def test_rope_store_kv(T, H, K, D):
    q, k, v, cos, sin, k_cache, v_cache, slots = make(T, H, K, D)
    (want_q, want_k, want_v), (got_q, got_k, got_v) = run_both(q, k, v, cos, sin, k_cache, v_cache, slots)
    assert got_q.shape == (T, H, D) and got_q.dtype == q.dtype and got_q.is_contiguous()
    assert not got_q.isnan().any() and not got_k.isnan().any() and not got_v.isnan().any(), "left unwritten"
    assert rel_l2(got_q, want_q) < 1e-6
    assert torch.allclose(got_q, want_q, rtol=1e-5, atol=1e-5)  # every head and half, not just on average
    assert torch.equal(got_v, want_v)  # a copy: exact, and untouched rows equal the original
    assert torch.allclose(got_k, want_k, rtol=1e-5, atol=1e-5)
    untouched = torch.ones(k_cache.shape[0] * k_cache.shape[1], dtype=torch.bool, device=slots.device)
    untouched[slots] = False
    assert torch.equal(got_k.view(-1, K, D)[untouched], k_cache.view(-1, K, D)[untouched])


def test_any_strides():
    # every operand with a non-unit last stride (transposed storage), caches too: the kernel must use each stride
    T, H, K, D, S = 7, 4, 2, 16, 4
    q, k, v, cos, sin, k_cache, v_cache, slots = make(T, H, K, D, S=S)
    tq = torch.randn(D, H, T, device=DEV).permute(2, 1, 0).copy_(q)  # [T, H, D], strides (1, T, H T)
    tk, tv = (torch.randn(D, K, T, device=DEV).permute(2, 1, 0).copy_(x) for x in (k, v))
    tcos, tsin = (torch.randn(D // 2, T, device=DEV).t().copy_(x) for x in (cos, sin))
    tkc, tvc = (torch.randn(D, K, S, x.shape[0], device=DEV).permute(3, 2, 1, 0).copy_(x) for x in (k_cache, v_cache))
    want_k, want_v = k_cache.clone(), v_cache.clone()
    want_q = rope_store_kv_ref(q, k, v, cos, sin, want_k, want_v, slots)
    got_q = rope_store_kv_triton(tq, tk, tv, tcos, tsin, tkc, tvc, slots)
    assert tq.stride(-1) != 1 and tkc.stride(-1) != 1 and tcos.stride(-1) != 1
    assert torch.allclose(got_q, want_q, rtol=1e-5, atol=1e-5)
    assert torch.allclose(tkc, want_k, rtol=1e-5, atol=1e-5) and torch.equal(tvc, want_v)


def test_rotation_identity():
    # cos = 1, sin = 0 leaves q and k unchanged; cos = 0, sin = 1 maps (x1, x2) -> (-x2, x1)
    q, k, v, cos, sin, k_cache, v_cache, slots = make(5, 4, 2, 16)
    one, zero = torch.ones_like(cos), torch.zeros_like(sin)
    assert torch.equal(rope_store_kv_triton(q, k, v, one, zero, k_cache, v_cache, slots), q)
    assert torch.equal(k_cache.view(-1, 2, 16)[slots], k)
    got = rope_store_kv_triton(q, k, v, zero, one, k_cache, v_cache, slots)
    assert torch.equal(got, torch.cat((-q[..., 8:], q[..., :8]), dim=-1))


def test_negative_slot_writes_no_cache_row():
    # padding rows (slot -1, as a CUDA-graph batch pads) still rotate q but leave the caches untouched
    q, k, v, cos, sin, k_cache, v_cache, slots = make(6, 8, 2, 16)
    slots[[1, 4]] = -1
    kc, vc = k_cache.clone(), v_cache.clone()
    got_q = rope_store_kv_triton(q, k, v, cos, sin, kc, vc, slots)
    want_q = rope_store_kv_ref(q, k, v, cos, sin, k_cache.clone(), v_cache.clone(), slots.clamp_min(0))
    assert torch.allclose(got_q, want_q, rtol=1e-5, atol=1e-5)
    ok = slots >= 0
    changed = (kc != k_cache).flatten(2).any(-1).flatten()  # [N * S] slots whose k row changed
    assert set(changed.nonzero().flatten().tolist()) == set(slots[ok].tolist())
    assert torch.equal(vc.view(-1, 2, 16)[slots[ok]], v[ok])


def test_empty_batch():
    q, k, v, cos, sin, k_cache, v_cache, slots = make(0, 4, 2, 16)
    kc = k_cache.clone()
    assert rope_store_kv_triton(q, k, v, cos, sin, kc, v_cache, slots).shape == (0, 4, 16)
    assert torch.equal(kc, k_cache)


@pytest.mark.gpu
@pytest.mark.skipif(INTERPRET, reason="TRITON_INTERPRET=1 casts float32 to bf16 by truncation")
@pytest.mark.parametrize("cache_dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("T", [1, 7, 33, 2048])
def test_bf16_gpu(T, cache_dtype):
    case = make(T, 64, 8, 64, S=16, dtype=torch.bfloat16, cache_dtype=cache_dtype, device="cuda")
    (want_q, want_k, want_v), (got_q, got_k, got_v) = run_both(*case)
    assert got_q.dtype == torch.bfloat16 and not got_q.isnan().any() and not got_k.isnan().any()
    # float32 math, then one rounding to bf16: at most one bf16 ulp apart where an FMA moved a tie (8 bits)
    assert ((got_q.float() - want_q.float()).abs() <= want_q.float().abs() * 2.0**-7 + 1e-6).all()
    assert ((got_k.float() - want_k.float()).abs() <= want_k.float().abs() * 2.0**-7 + 1e-6).all()
    assert torch.equal(got_v, want_v)


@pytest.mark.gpu
@pytest.mark.skipif(INTERPRET, reason="needs CUDA graphs")
def test_cuda_graph_capture_gpu():
    q, k, v, cos, sin, k_cache, v_cache, slots = make(64, 64, 8, 64, S=16, dtype=torch.bfloat16, device="cuda")
    rope_store_kv_triton(q, k, v, cos, sin, k_cache, v_cache, slots)  # compile outside the capture
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        got_q = rope_store_kv_triton(q, k, v, cos, sin, k_cache, v_cache, slots)
    v.copy_(torch.randn_like(v))  # new inputs in the same buffers: the replay must see them
    slots.copy_(torch.randperm(k_cache.shape[0] * 16, device="cuda")[:64])
    g.replay()
    want_k, want_v = k_cache.clone(), v_cache.clone()
    want_q = rope_store_kv_ref(q, k, v, cos, sin, want_k, want_v, slots)
    assert torch.equal(v_cache, want_v)
    assert ((got_q.float() - want_q.float()).abs() <= want_q.float().abs() * 2.0**-7 + 1e-6).all()


# Compiles the kernel for sm_90 (PTX and cubin through the bundled ptxas; nothing launched) in bf16 with a bf16
# and a float32 cache, specialised as a real launch would be. In a subprocess: TRITON_INTERPRET is fixed when
# the kernel is defined.
_COMPILE_FOR_HOPPER = r"""
from oss_engine.kernels.triton import rope as R

fn = R._rope_store_kv_kernel
unit = ("s_qd", "s_kd", "s_vd", "s_cd", "s_sd", "s_od", "s_cx", "s_dx")
for cache in ("*bf16", "*fp32"):
    ptrs = dict(q_ptr="*bf16", k_ptr="*bf16", v_ptr="*bf16", cos_ptr="*fp32", sin_ptr="*fp32", qo_ptr="*bf16",
                kc_ptr=cache, vc_ptr=cache, slot_ptr="*i64")
    consts = dict(H=64, K=8, D2=32, S=16, H_PAD=64, K_PAD=8, D2_PAD=32, D_PAD=64, PDL=True, **{n: 1 for n in unit})
    compile_sm90(fn, consts, ptrs, divisible=fn.arg_names)  # every runtime argument 16-divisible
print("ok")
"""


@pytest.mark.skipif(not INTERPRET, reason="on a GPU the tests above run the compiled kernel")
def test_compiles_for_hopper():
    run_compile_check(_COMPILE_FOR_HOPPER)
