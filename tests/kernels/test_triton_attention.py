"""paged_attention_triton / store_kv_triton against their reference twins.

Without a GPU the kernels run in Triton's interpreter with float32 operands (a bf16 tl.dot is garbage there);
on a CUDA machine the same cases run compiled (float32, "ieee" dots) and a bf16 variant runs too. Every case
draws fresh random inputs and poisons the output with NaN, so a row the kernel forgets to write fails.
Legend: T tokens, B sequences, H q-heads, K kv-heads, D head_dim, N cache blocks, S block size.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("triton")

from oss_engine.kernels.ref.attention import paged_attention_ref, store_kv_ref
from oss_engine.kernels.triton.attention import (
    SPAN_MIN_ROWS,
    paged_attention_triton,
    pick_config,
    store_kv_triton,
)
from oss_engine.model.forward_batch import AttentionMetadata
from triton_cases import DEV, INTERPRET, rel_l2, run_compile_check

SINK_OFF = -1.0e30  # a huge negative sink contributes exp(-1e30) = 0: plain softmax


def make_case(seqs: list[tuple[int, int]], S: int, H: int, K: int, D: int, window: int | None,
              sinks_on: bool, dtype=torch.float32, device=DEV, extra_blocks: int = 3):
    """seqs: (num_computed, num_new) per sequence. Physical blocks are a shuffled permutation of 1..N-1;
    block 0 is the placeholder (sliding layers: blocks wholly before the window; padding of the table),
    filled with large finite garbage. Returns (q, k_cache, v_cache, sinks, meta, positions)."""
    g = None  # the global generator, seeded per test by `_seed`
    need = [-(-(nc + nn) // S) for nc, nn in seqs]
    N = 1 + sum(need) + extra_blocks
    perm = (torch.randperm(N - 1, generator=g) + 1).tolist()
    tables, pos, qsl, lens = [], [], [0], []
    for (nc, nn), nb in zip(seqs, need):
        table = [perm.pop() for _ in range(nb)]
        if window is not None:  # the KV manager's first_needed_block: earlier blocks are placeholders
            first = max(0, nc - window + 1) // S
            table[:first] = [0] * first
        tables.append(table)
        pos += range(nc, nc + nn)
        qsl.append(qsl[-1] + nn)
        lens.append(nc + nn)
    width = max(len(t) for t in tables) + 1  # one spare column of padding, as a wider batch would leave
    tables = [t + [0] * (width - len(t)) for t in tables]
    T = qsl[-1]
    k_cache = torch.randn(N, S, K, D, generator=g)
    v_cache = torch.randn(N, S, K, D, generator=g)
    k_cache[0] = 50 * torch.randn(S, K, D, generator=g)  # garbage that must stay masked
    v_cache[0] = 50 * torch.randn(S, K, D, generator=g)
    q = 2 * torch.randn(T, H, D, generator=g)  # peaky enough that the softmax is not flat
    sinks = 2 * torch.randn(H, generator=g) if sinks_on else torch.full((H,), SINK_OFF)
    meta = AttentionMetadata(
        query_start_loc=torch.tensor(qsl, dtype=torch.int32, device=device),
        seq_lens=torch.tensor(lens, dtype=torch.int32, device=device),
        block_tables=torch.tensor(tables, dtype=torch.int32, device=device),
        slot_mapping=torch.zeros(T, dtype=torch.int64, device=device),  # unused by attention
    )
    cast = {"dtype": dtype, "device": device}
    return (q.to(**cast), k_cache.to(**cast), v_cache.to(**cast), sinks.to(device),
            meta, torch.tensor(pos, dtype=torch.int64, device=device))


def check(case, window, **kw) -> None:
    q, k_cache, v_cache, sinks, meta, positions = case
    scale = q.shape[-1] ** -0.5
    want = paged_attention_ref(q, k_cache, v_cache, sinks, meta, positions, window, scale)
    # block 0 (placeholders, table padding) is never read by the kernel: NaN there must not reach the output
    k_cache, v_cache = k_cache.clone(), v_cache.clone()
    k_cache[0], v_cache[0] = float("nan"), float("nan")
    out = torch.full_like(q, float("nan"))
    got = paged_attention_triton(q, k_cache, v_cache, sinks, meta, positions, window, scale, out=out, **kw)
    assert got is out
    assert not got.isnan().any(), "rows left unwritten"
    err = rel_l2(got, want)
    assert err < 1e-5, err


# prefill chunk starting mid-sequence, fresh prefill, decodes (one deep), single-token sequence
MIXED = [(37, 20), (0, 13), (150, 1), (0, 1), (9, 1)]
HEADS = [(4, 4, 16), (4, 2, 64), (8, 1, 16), (16, 2, 64)]  # (H, K, D): GQA ratios 1, 2, 8, 8


@pytest.mark.parametrize("sinks_on", [True, False])
@pytest.mark.parametrize("window", [None, 8, 128])
@pytest.mark.parametrize("S", [4, 16])
@pytest.mark.parametrize("H,K,D", HEADS[::3] + HEADS[1:3])
def test_mixed_batch(sinks_on, window, S, H, K, D):
    check(make_case(MIXED, S, H, K, D, window, sinks_on), window, num_splits=1)


@pytest.mark.parametrize("window", [None, 8])
@pytest.mark.parametrize("H,K,D", [(4, 2, 16), (16, 2, 64), (6, 2, 32)])
def test_long_prefill_chunks(window, H, K, D):
    # several q tiles per sequence, causal tile skipping on the diagonal, chunk starting mid-block;
    # G = 3 leaves a padded head row in every token of the tile
    check(make_case([(5, 70), (130, 33)], 4, H, K, D, window, True), window, num_splits=1)


@pytest.mark.parametrize("num_splits", [None, 5])
@pytest.mark.parametrize("window", [None, 8, 128])
@pytest.mark.parametrize("H,K,D", [(8, 1, 16), (16, 2, 64)])
def test_split_kv_decode(num_splits, window, H, K, D):
    # long contexts; more splits than some sequences have key tiles (empty splits merge as weight 0)
    seqs = [(300, 1), (517, 1), (20, 1), (0, 1)]
    case = make_case(seqs, 16, H, K, D, window, True)
    if num_splits is None:  # the automatic choice must pick the split path for this decode step
        q, _, _, _, meta, _ = case
        cfg = pick_config(q.shape[0], len(seqs), K, H // K, meta.block_tables.shape[1] * 16, window, None, 16,
                          on_gpu=False)
        if window != 128:  # full attention splits; an 8-key window never does
            assert (cfg.num_splits > 1) == (window is None), cfg
    check(case, window, num_splits=num_splits)


def test_empty_splits_acc_never_read(monkeypatch):
    """A split with no keys writes only (m, l); the merge must not read its acc. The partials start as NaN,
    so a read of an unwritten acc (NaN * weight 0 = NaN) would poison the output. 12 splits over contexts of
    1-2 key tiles leave most of them empty."""
    import oss_engine.kernels.triton.attention as attn_mod

    monkeypatch.setattr(attn_mod, "_empty", lambda shape, dtype, device: torch.full(shape, float("nan"),
                                                                                  dtype=dtype, device=device))
    check(make_case([(40, 1), (3, 1), (0, 1)], 16, 16, 2, 64, None, True), None, num_splits=12, max_query_len=1)


def test_short_window_splits_on_gpu_config():
    """On the GPU tiles (64 keys), a 128-key window spans 4 key tiles: one decode sequence takes 2 splits
    (H100: 7.6-7.8 vs 8.1-8.5 us one pass); 3 tiles (a 64-key window) stay one pass."""
    for window, want in ((128, 2), (64, 1)):
        cfg = pick_config(1, 1, 8, 8, 8192, window, 1, 132, on_gpu=True)
        assert cfg.num_splits == want, (window, cfg)


@pytest.mark.parametrize("num_splits", [None, 1])
@pytest.mark.parametrize("window", [None, 8])
def test_decode_one_token_each(num_splits, window):
    # max_query_len = 1 with T = B (decode steps, their CUDA graphs): program b is sequence b, no search
    check(make_case([(300, 1), (517, 1), (20, 1), (0, 1), (33, 1)], 16, 16, 2, 64, window, True), window,
          num_splits=num_splits, max_query_len=1)


@pytest.mark.parametrize("window", [None, 8, 128])
@pytest.mark.parametrize("num_splits", [1, 3])
def test_unmasked_spans_change_no_value(monkeypatch, window, num_splits):
    """The whole tiles' unmasked steps (SPANS) give the same output as masking every tile, with and without key
    splits (whose shares cut the spans): both within 1e-5 of the reference, and bit for bit in the interpreter
    (compiled, the unmasked steps may fuse the scale and the max into one FMA: equal to ~1 ulp)."""
    import oss_engine.kernels.triton.attention as attn_mod

    case = make_case([(5, 70), (130, 33), (150, 1), (0, 1)], 4, 8, 1, 16, window, True)
    q, k_cache, v_cache, sinks, meta, positions = case
    outs = []
    for rows in (1, 1 << 20):  # every q tile takes the spans; none does
        monkeypatch.setattr(attn_mod, "SPAN_MIN_ROWS", rows)
        check(case, window, num_splits=num_splits)
        outs.append(paged_attention_triton(q, k_cache, v_cache, sinks, meta, positions, window, 0.125,
                                           num_splits=num_splits))
    if INTERPRET:
        assert torch.equal(outs[0], outs[1])


def test_prefill_tiles_take_the_spans():
    """The prefill tiles reach SPAN_MIN_ROWS on both targets; decode tiles stay below it (one masked loop)."""
    for on_gpu in (True, False):
        assert pick_config(2048, 1, 8, 8, 2048, None, 2048, 132, on_gpu).block_m >= SPAN_MIN_ROWS
        assert pick_config(8, 8, 8, 8, 2048, None, 1, 132, on_gpu).block_m < SPAN_MIN_ROWS


def test_short_window_prefill_tiles():
    """On the GPU a 128-key window's prefill takes 64-row q tiles and 32-key steps (they still take the spans);
    full attention keeps 128-row tiles of 64-key steps; decode tiles are unchanged by the window."""
    short = pick_config(16384, 8, 8, 8, 2048, 128, 2048, 132, on_gpu=True)
    assert (short.block_m, short.block_n, short.num_warps) == (64, 32, 4) and short.block_m >= SPAN_MIN_ROWS
    full = pick_config(16384, 8, 8, 8, 2048, None, 2048, 132, on_gpu=True)
    assert (full.block_m, full.block_n, full.num_warps) == (128, 64, 8)
    dec = pick_config(8, 8, 8, 8, 2048, 128, 1, 132, on_gpu=True)
    assert (dec.block_m, dec.block_n) == (16, 64)


def test_split_kv_mixed_batch_and_max_query_len():
    # the split path is correct for prefill rows and without GQA too; max_query_len only steers tiles
    case = make_case(MIXED, 4, 4, 4, 16, None, True)
    check(case, None, num_splits=3)
    check(case, None, max_query_len=20)


def test_sink_identity_against_plain_softmax():
    # o_with_sink = o_plain * sigmoid(LSE - sink): compare kernel(sink) / kernel(no sink) with the gate
    q, k_cache, v_cache, sinks, meta, positions = make_case([(0, 1)], 16, 1, 1, 16, None, True)
    scale = 0.25
    with_sink = paged_attention_triton(q, k_cache, v_cache, sinks, meta, positions, None, scale)
    plain = paged_attention_triton(q, k_cache, v_cache, torch.full_like(sinks, SINK_OFF), meta, positions,
                                   None, scale)
    score = (q[0, 0] @ k_cache[meta.block_tables[0, 0], 0, 0]) * scale  # one key: LSE = its score
    gate = torch.sigmoid(score - sinks[0])
    assert torch.allclose(with_sink, plain * gate, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("K,D", [(2, 16), (8, 64)])
def test_store_kv(K, D):
    N, S, T = 6, 4, 9
    k_cache, v_cache = torch.randn(N, S, K, D, device=DEV), torch.randn(N, S, K, D, device=DEV)
    qkv = torch.randn(T, (4 + 2) * K * D, device=DEV)  # k, v: strided views of a fused projection, as in the model
    k = qkv[:, 4 * K * D:5 * K * D].view(T, K, D)
    v = qkv[:, 5 * K * D:].view(T, K, D)
    slots = torch.randperm(N * S, device=DEV)[:T]
    want_k, want_v = k_cache.clone(), v_cache.clone()
    store_kv_ref(k, v, want_k, want_v, slots)
    store_kv_triton(k, v, k_cache, v_cache, slots)
    assert torch.equal(k_cache, want_k) and torch.equal(v_cache, want_v)


@pytest.mark.gpu
@pytest.mark.skipif(INTERPRET, reason="TRITON_INTERPRET=1: a bf16 tl.dot is wrong in the interpreter")
@pytest.mark.parametrize("num_splits", [1, None])
@pytest.mark.parametrize("window", [None, 128])
def test_bf16_gpu(num_splits, window):
    seqs = [(700, 64), (0, 300), (2000, 1), (5, 1), (0, 1)]
    case = make_case(seqs, 16, 64, 8, 64, window, True, dtype=torch.bfloat16, device="cuda")
    q, k_cache, v_cache, sinks, meta, positions = case
    want = paged_attention_ref(q.float(), k_cache.float(), v_cache.float(), sinks, meta, positions, window,
                               0.125)
    got = paged_attention_triton(q, k_cache, v_cache, sinks, meta, positions, window, 0.125,
                                 num_splits=num_splits, out=torch.full_like(q, float("nan")))
    assert got.dtype == torch.bfloat16 and rel_l2(got.float(), want) < 1e-2
    decode = make_case([(3000, 1), (64, 1), (1500, 1)], 16, 64, 8, 64, window, True, dtype=torch.bfloat16,
                       device="cuda")
    q, k_cache, v_cache, sinks, meta, positions = decode
    want = paged_attention_ref(q.float(), k_cache.float(), v_cache.float(), sinks, meta, positions, window,
                               0.125)
    got = paged_attention_triton(q, k_cache, v_cache, sinks, meta, positions, window, 0.125,
                                 num_splits=num_splits, max_query_len=1)
    assert rel_l2(got.float(), want) < 1e-2
    k, v = torch.randn(2, 7, 8, 64, device="cuda").unbind(0)
    slots = torch.randperm(k_cache.shape[0] * 16, device="cuda")[:7]
    want_k, want_v = k_cache.clone(), v_cache.clone()
    store_kv_ref(k, v, want_k, want_v, slots)
    store_kv_triton(k, v, k_cache, v_cache, slots)
    assert torch.equal(k_cache, want_k) and torch.equal(v_cache, want_v)


# Compiles the kernels for sm_90 (PTX and cubin through the bundled ptxas; nothing launched), specialised as a
# real launch would be (unit strides as constants, 16-divisible pointers and strides). It covers the for-loop
# branch that the interpreter never runs. In a subprocess: TRITON_INTERPRET is fixed when the kernels are defined.
_COMPILE_FOR_HOPPER = r"""
from oss_engine.kernels.triton import attention as A

ptrs = dict(q_ptr="*bf16", k_ptr="*bf16", v_ptr="*bf16", sinks_ptr="*fp32", out_ptr="*bf16", part_acc_ptr="*fp32",
            part_ml_ptr="*fp32", qsl_ptr="*i32", seq_lens_ptr="*i32", bt_ptr="*i32", pos_ptr="*i64")
strides = ("s_qt", "s_qh", "s_ot", "s_oh", "s_kn", "s_ks", "s_kk", "s_vn", "s_vs", "s_vk")
for block_m, split, one_each in ((16, True, True), (16, True, False), (16, False, False), (128, False, False)):
    # decode split (one token a sequence, or searched) / single pass, prefill
    consts = dict(G=8, G_PAD=8, BLOCK_Q=block_m // 8, BLOCK_M=block_m, BLOCK_N=64, D=64, S=16, SPLIT=split,
                  COMPUTE=tl.bfloat16, DOT_PRECISION=None, WHILE_LOOP=False, PDL=True, ONE_EACH=one_each, s_qd=1,
                  s_od=1, s_kd=1, s_vd=1)
    compile_sm90(A._attn_kernel, consts, ptrs, floats=("qk_scale",), divisible=(*ptrs, *strides))
compile_sm90(A._combine_kernel, dict(NUM_SPLITS=8, BLOCK_H=16, D=64, PDL=True, s_od=1),
             dict(part_acc_ptr="*fp32", part_ml_ptr="*fp32", sinks_ptr="*fp32", out_ptr="*bf16"))
compile_sm90(A._store_kv_kernel, dict(K=8, D=64, S=16, BLOCK=512, PDL=True, s_kd=1, s_vd=1, s_cd=1, s_dd=1),
             dict(k_ptr="*bf16", v_ptr="*bf16", kc_ptr="*bf16", vc_ptr="*bf16", slot_ptr="*i64"))
print("ok")
"""


@pytest.mark.skipif(not INTERPRET, reason="on a GPU the tests above run the compiled kernels")
def test_compiles_for_hopper():
    run_compile_check(_COMPILE_FOR_HOPPER)
