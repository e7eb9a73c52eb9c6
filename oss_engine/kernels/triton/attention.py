"""Paged attention with learned sinks and an optional sliding window, in Triton: the twin of
`kernels/ref/attention.py` (same contract, read its docstring), plus the KV-store scatter.

Legend: T tokens in the step, B sequences, H q-heads, K kv-heads, G = H / K q-heads per kv-head, D head_dim,
N cache blocks, S block size, P key splits, M rows of a q tile, BN keys per inner step.

Design.
- One FlashAttention-style kernel, `_attn_kernel`. A program owns (q tile, kv head, key split), grid axes
  (0, 1, 2). Its q tile is BLOCK_Q consecutive new tokens of ONE sequence times the G q-heads that share
  the kv head (GQA packing): row r of the [M, D] tile is token r // G_PAD, head r % G_PAD, M = BLOCK_Q * G_PAD
  >= 16 (G_PAD = G rounded up to a power of two; pad rows are masked). A decode step of gpt-oss (G = 8) is
  then one M = 16 tile per (sequence, kv head) and each key tile read from memory serves all 8 heads.
- The keys are walked BN at a time through the block table (key j -> block_tables[b, j // S], row j % S,
  gathered per key, so BN and S are independent). Only tiles meeting [lo, hi] are visited, lo = first key any
  row of the tile may see (min position - window + 1), hi = last (max position, capped at seq_len - 1):
  a sliding layer costs O(window + M) keys, not O(context). Keys outside [lo, hi] are never loaded (masked
  loads), so placeholder blocks (id 0) before the window are never read, even if they hold NaN.
- Masks only where needed (SPANS, q tiles of >= SPAN_MIN_ROWS rows, i.e. prefill): the key tiles that every
  row of the q tile sees whole (inside every row's window, at or before every row's position:
  `_visible_span`) take an unmasked step, and only the tiles at the diagonal and at a window's lower edge are
  masked. The spans are walked in key order, so the online softmax sees the same tiles in the same order as
  with every tile masked. On an H100 (scripts/gpu_bench_attention.py's shapes, graph replays): 8 prompts of
  2,048, full attention, 1,359 -> 932-940 us; a 2,048-token chunk after 6,144 keys 1,181-1,191 -> 760 us.
  Decode tiles keep the one masked loop: there the three loops' set-up cost more than the masks (one token,
  1k context, 5.4 -> 6.2 us).
- Online softmax in float32 in the log2 domain (scores scaled by scale * log2(e), exp2). The running max
  starts at -1e30 (finite), so a fully masked tile leaves the state unchanged instead of making NaN.
- The sink of head h enters once, at the end: with s = sink * log2(e), m' = max(m, s),
  out = acc * 2^(m - m') / (l * 2^(m - m') + 2^(s - m')), which is o_plain * sigmoid(LSE - sink).
- Split-KV (decode with long contexts, where B * K programs would leave most SMs idle): P programs per
  (q tile, kv head) each take an equal share of the tile's visible key tiles and write their partial
  (m, l, acc) in float32 without the sink; `_combine_kernel` merges the P partials per (token, head) and
  applies the sink. A split with no keys writes only (m = -1e30, l = 0), which the merge weighs as 0 without
  reading its acc. Such splits are common: in a decode graph the host knows only the block table's width, so
  P is chosen for the longest context (e.g. 32 at one sequence) and a 1k context leaves half of them empty
  (H100, one token, context 1088, P = 32: 10.8 us with their acc written and read, 10.4 without; P = 17,
  which the host cannot know to pick, 8.9).
  Correct for any batch (prefill rows too); the wrapper chooses it only for decode-like steps.
- Operands are loaded in COMPUTE dtype (bf16 on the GPU, tl.dot accumulating in float32; float32 in the CPU
  interpreter, where a bf16 tl.dot returns garbage, and for float32 inputs, where "ieee" avoids tf32).

Grid without host synchronisation (the per-sequence query lengths live on the device). Sequence b owns the
axis-0 program ids [F(b), F(b+1)) with F(b) = query_start_loc[b] // BLOCK_Q + b. That range holds
floor(qsl[b+1] / BQ) - floor(qsl[b] / BQ) + 1 >= ceil(len_b / BQ) programs, enough for its tiles, and the
grid is F(B) = T // BLOCK_Q + B programs. A program finds its b by binary search over F (F strictly
increases), takes local tile i = pid - F(b) (tokens qsl[b] + i*BQ ...) and returns at once if that is past
the sequence's end. Worked example, BLOCK_Q = 4, query_start_loc = [0, 3, 4, 13] (lengths 3, 1, 9):
F = [0, 1, 3], grid = 13 // 4 + 3 = 6; pid 0 -> seq 0 rows 0..2; pid 1 -> seq 1 row 3; pid 2 -> seq 1,
i = 1, offset 4 >= length 1: returns; pids 3, 4, 5 -> seq 2, rows 4..7, 8..11, 12.
When the host knows that every sequence has one new token (max_query_len = 1 and T = B: decode steps and
their CUDA graphs), query_start_loc is 0 .. B and program b is sequence b: ONE_EACH skips the search and
its dependent loads (log2(B) + 2 of them, each a round trip to memory before the first key is read).

Key split worked example: BN = 64, a decode query at position 1000 (full attention), P = 4: lo = 0,
hi = 1000, visible tiles start at 0, n_tiles = ceil(1001 / 64) = 16, 4 tiles per split: split 2 takes keys
[512, 768), split 3 keys [768, 1001).

PDL (`launch.py`): `_attn_kernel` and `_store_kv_kernel` call `gdc_wait()` first (q, the caches and every
metadata tensor are produced on the GPU); `_combine_kernel` reads only the sinks (weights) before it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ...model.forward_batch import AttentionMetadata
from . import launch

_LOG2E = 1.4426950408889634
_NO_WINDOW = 1 << 30  # window None: every key j <= i is visible
SHORT_WINDOW = 256  # sliding windows up to this many keys take their own prefill tiles (`pick_config`)
SPAN_MIN_ROWS = 64  # q tiles of at least this many rows take `_visible_span`'s unmasked tiles (below)
_NEG_INIT = tl.constexpr(-1.0e30)  # initial running max, finite: exp2(m_old - m_new) never sees -inf + inf


def _empty(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype, device=device)  # tests poison it with NaN


@triton.jit
def _attn_tile(q, pos, row_ok, m_i, l_i, acc, start, lo_key, hi_key, window, qk_scale, k_ptr, v_ptr, bt_ptr,
               s_kn, s_ks, s_kd, s_vn, s_vs, s_vd,
               BLOCK_N: tl.constexpr, D: tl.constexpr, S: tl.constexpr, COMPUTE: tl.constexpr,
               DOT_PRECISION: tl.constexpr, MASKED: tl.constexpr):
    # one online-softmax step over keys [start, start + BN); k_ptr, v_ptr at the kv head, bt_ptr at row b.
    # MASKED False: the caller knows every key of the tile is visible to every row (`_visible_span`), so no
    # key is masked and no score either (the same values as the masked form would compute)
    j = start + tl.arange(0, BLOCK_N)  # [BN] absolute key positions
    # key j lives in block bt[b, j // S], row j % S; e.g. S = 16, j = 35 -> bt[b, 2], row 3
    row = j % S
    d = tl.arange(0, D)
    if MASKED:
        key_ok = (j >= lo_key) & (j <= hi_key)
        blk = tl.load(bt_ptr + j // S, mask=key_ok, other=0).to(tl.int64)
        k = tl.load(k_ptr + blk[:, None] * s_kn + row[:, None] * s_ks + d[None, :] * s_kd,
                    mask=key_ok[:, None], other=0.0).to(COMPUTE)  # [BN, D]
        v = tl.load(v_ptr + blk[:, None] * s_vn + row[:, None] * s_vs + d[None, :] * s_vd,
                    mask=key_ok[:, None], other=0.0).to(COMPUTE)  # [BN, D]
    else:
        blk = tl.load(bt_ptr + j // S).to(tl.int64)
        k = tl.load(k_ptr + blk[:, None] * s_kn + row[:, None] * s_ks + d[None, :] * s_kd).to(COMPUTE)
        v = tl.load(v_ptr + blk[:, None] * s_vn + row[:, None] * s_vs + d[None, :] * s_vd).to(COMPUTE)
    s = tl.dot(q, tl.trans(k), input_precision=DOT_PRECISION) * qk_scale  # [M, BN], log2 domain
    if MASKED:
        visible = (row_ok[:, None] & key_ok[None, :] & (j[None, :] <= pos[:, None])
                   & (j[None, :] > pos[:, None] - window))
        s = tl.where(visible, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(s - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = tl.dot(p.to(COMPUTE), v, acc * alpha[:, None], input_precision=DOT_PRECISION)
    return m_new, l_i, acc


@triton.jit
def _visible_span(tile0, k_begin, k_end, pos_min, pos_max, hi_key, window, BLOCK_N: tl.constexpr):
    """[a, b): the key tiles of [k_begin, k_end) (a split's share, tiles aligned to tile0) that every row of
    the q tile sees whole: keys > pos_max - window (inside every row's window) and <= min(pos_min, hi_key)
    (causal for every row). Tiles before a and from b on take the masked step. Full attention, q tile at
    positions 100..115, BN = 64, tile0 = 0: a = 0, b = 64 (keys 0..63 unmasked, 64..115 masked); window 128,
    positions 1000..1015: a = 896 (keys > 887), b = 960."""
    first = tl.maximum(pos_max - window + 1, tile0)
    u_lo = tile0 + tl.cdiv(first - tile0, BLOCK_N) * BLOCK_N
    u_hi = tile0 + ((tl.minimum(pos_min, hi_key) + 1 - tile0) // BLOCK_N) * BLOCK_N
    a = tl.minimum(tl.maximum(u_lo, k_begin), k_end)
    b = tl.minimum(tl.maximum(u_hi, a), k_end)
    return a, b


@triton.jit
def _program_rows(pid, qsl_ptr, num_seqs, BLOCK_Q: tl.constexpr, ONE_EACH: tl.constexpr):
    """Axis-0 program pid -> (sequence b, its first token row, the sequence's end row) by the module docstring's
    F(b) = qsl[b] // BLOCK_Q + b; the caller returns when first row >= end (a program past its sequence)."""
    if ONE_EACH:  # one new token a sequence (T = B, token b is sequence b's): program b, no search
        b = pid
        first_tok = pid
        q_end = pid + 1
    else:
        # sequence b = the last one with F(b) <= pid
        lo = pid * 0
        hi = pid * 0 + num_seqs
        while lo < hi:
            mid = (lo + hi) // 2
            go_right = tl.load(qsl_ptr + mid) // BLOCK_Q + mid <= pid
            lo = tl.where(go_right, mid + 1, lo)
            hi = tl.where(go_right, hi, mid)
        b = lo - 1
        q_start = tl.load(qsl_ptr + b)
        q_end = tl.load(qsl_ptr + b + 1)
        first_tok = q_start + (pid - (q_start // BLOCK_Q + b)) * BLOCK_Q
    return b, first_tok, q_end


@triton.jit
def _store_partials(part_acc_ptr, part_ml_ptr, m_i, l_i, acc, split, num_tokens, num_heads, tok, head, row_ok,
                    has_keys, D: tl.constexpr):
    """A key split's partial state, without the sink: acc [M, D] into part_acc [P, T, H, D] (only where the
    split had keys), (m, l) into part_ml [P, T, H, 2]; float32, contiguous."""
    d = tl.arange(0, D)
    row_off = (split * num_tokens + tok.to(tl.int64)) * num_heads + head  # [M]
    tl.store(part_acc_ptr + row_off[:, None] * D + d[None, :], acc, mask=row_ok[:, None] & has_keys)
    tl.store(part_ml_ptr + row_off * 2, m_i, mask=row_ok)
    tl.store(part_ml_ptr + row_off * 2 + 1, l_i, mask=row_ok)


@triton.jit
def _store_with_sink(out_ptr, sinks_ptr, m_i, l_i, acc, tok, head, row_ok, s_ot, s_oh, s_od, D: tl.constexpr):
    """The single-pass epilogue: the sink enters once (module docstring), out [T, H, D] in its dtype."""
    d = tl.arange(0, D)
    sink = tl.load(sinks_ptr + head, mask=row_ok, other=0.0).to(tl.float32) * 1.4426950408889634
    m_f = tl.maximum(m_i, sink)
    a = tl.exp2(m_i - m_f)
    o = acc * (a / (l_i * a + tl.exp2(sink - m_f)))[:, None]
    tl.store(out_ptr + tok[:, None] * s_ot + head[:, None] * s_oh + d[None, :] * s_od,
             o.to(out_ptr.dtype.element_ty), mask=row_ok[:, None])


@triton.jit
def _attn_kernel(
    q_ptr, k_ptr, v_ptr, sinks_ptr, out_ptr, part_acc_ptr, part_ml_ptr,
    qsl_ptr, seq_lens_ptr, bt_ptr, pos_ptr,
    s_qt, s_qh, s_qd, s_ot, s_oh, s_od,
    s_kn, s_ks, s_kk, s_kd, s_vn, s_vs, s_vk, s_vd, s_bt,
    num_seqs, num_tokens, num_heads, window, qk_scale,
    G: tl.constexpr, G_PAD: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr, D: tl.constexpr, S: tl.constexpr, SPLIT: tl.constexpr,
    COMPUTE: tl.constexpr, DOT_PRECISION: tl.constexpr, WHILE_LOOP: tl.constexpr, PDL: tl.constexpr,
    ONE_EACH: tl.constexpr, SPANS: tl.constexpr,
):
    launch.wait_for_inputs(PDL)  # the metadata, q and the caches are all produced on the GPU
    pid = tl.program_id(0)
    kvh = tl.program_id(1)
    split = tl.program_id(2)
    num_splits = tl.num_programs(2)

    b, first_tok, q_end = _program_rows(pid, qsl_ptr, num_seqs, BLOCK_Q, ONE_EACH)
    if first_tok >= q_end:  # past its sequence's end (never with ONE_EACH)
        return

    r = tl.arange(0, BLOCK_M)
    tok = first_tok + r // G_PAD  # [M] token row of q/out
    hg = r % G_PAD
    head = kvh * G + hg  # [M] q head: GQA q head h uses kv head h // G
    row_ok = (tok < q_end) & (hg < G)
    d = tl.arange(0, D)
    q = tl.load(q_ptr + tok[:, None] * s_qt + head[:, None] * s_qh + d[None, :] * s_qd,
                mask=row_ok[:, None], other=0.0).to(COMPUTE)  # [M, D]
    pos = tl.load(pos_ptr + tok, mask=row_ok, other=0).to(tl.int32)  # [M] absolute query positions

    # visible keys of the whole tile: [lo_key, hi_key], inclusive; row 0 is always valid
    seq_len = tl.load(seq_lens_ptr + b)
    pos_max = tl.max(tl.where(row_ok, pos, -1), 0)
    pos_min = tl.min(tl.where(row_ok, pos, pos_max), 0)
    hi_key = tl.minimum(pos_max, seq_len - 1)
    lo_key = tl.maximum(pos_min - window + 1, 0)
    tile0 = (lo_key // BLOCK_N) * BLOCK_N
    n_tiles = tl.maximum(tl.cdiv(hi_key + 1 - tile0, BLOCK_N), 0)
    per_split = tl.cdiv(n_tiles, num_splits)
    k_begin = tile0 + split * per_split * BLOCK_N
    k_end = tl.minimum(k_begin + per_split * BLOCK_N, hi_key + 1)

    m_i = tl.full([BLOCK_M], _NEG_INIT, tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, D], tl.float32)
    kp = k_ptr + kvh * s_kk
    vp = v_ptr + kvh * s_vk
    bp = bt_ptr + b * s_bt
    if SPANS:  # tiles every row sees whole skip the masks: [a, b_span) (`_visible_span`)
        a, b_span = _visible_span(tile0, k_begin, k_end, pos_min, pos_max, hi_key, window, BLOCK_N)
    else:  # every tile masked, one loop
        a = k_end
        b_span = k_end
    # three spans in key order (the order of the online softmax, so the result does not depend on the split
    # into spans): masked [k_begin, a) (a window's lower edge), whole [a, b_span), masked [b_span, k_end)
    if WHILE_LOOP:  # the CPU interpreter: with numpy >= 2 it cannot turn a run-time bound into range()'s int
        start = k_begin
        while start < k_end:
            m_i, l_i, acc = _attn_tile(q, pos, row_ok, m_i, l_i, acc, start, lo_key, hi_key, window, qk_scale,
                                       kp, vp, bp, s_kn, s_ks, s_kd, s_vn, s_vs, s_vd, BLOCK_N, D, S, COMPUTE,
                                       DOT_PRECISION, (start < a) | (start >= b_span))  # (run time here)
            start += BLOCK_N
    else:  # for loops, which the compiler software-pipelines (num_stages); a while loop it would not
        for start in range(k_begin, a, BLOCK_N):
            m_i, l_i, acc = _attn_tile(q, pos, row_ok, m_i, l_i, acc, start, lo_key, hi_key, window, qk_scale,
                                       kp, vp, bp, s_kn, s_ks, s_kd, s_vn, s_vs, s_vd, BLOCK_N, D, S, COMPUTE,
                                       DOT_PRECISION, True)
        if SPANS:
            for start in range(a, b_span, BLOCK_N):
                m_i, l_i, acc = _attn_tile(q, pos, row_ok, m_i, l_i, acc, start, lo_key, hi_key, window,
                                           qk_scale, kp, vp, bp, s_kn, s_ks, s_kd, s_vn, s_vs, s_vd, BLOCK_N, D,
                                           S, COMPUTE, DOT_PRECISION, False)
            for start in range(b_span, k_end, BLOCK_N):
                m_i, l_i, acc = _attn_tile(q, pos, row_ok, m_i, l_i, acc, start, lo_key, hi_key, window,
                                           qk_scale, kp, vp, bp, s_kn, s_ks, s_kd, s_vn, s_vs, s_vd, BLOCK_N, D,
                                           S, COMPUTE, DOT_PRECISION, True)

    if SPLIT:
        has_keys = k_begin < k_end  # else acc is all zero, and the merge does not read it (l = 0)
        _store_partials(part_acc_ptr, part_ml_ptr, m_i, l_i, acc, split, num_tokens, num_heads, tok, head, row_ok,
                        has_keys, D)
    else:
        _store_with_sink(out_ptr, sinks_ptr, m_i, l_i, acc, tok, head, row_ok, s_ot, s_oh, s_od, D)


@triton.jit
def _combine_kernel(part_acc_ptr, part_ml_ptr, sinks_ptr, out_ptr, s_ot, s_oh, s_od, num_tokens, num_heads,
                    NUM_SPLITS: tl.constexpr, BLOCK_H: tl.constexpr, D: tl.constexpr, PDL: tl.constexpr):
    # one program per (token, block of heads): merge the P partials (m_p, l_p, acc_p) and the sink s:
    # M = max(s, m_p...), out = sum_p acc_p 2^(m_p - M) / (2^(s - M) + sum_p l_p 2^(m_p - M))
    t = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    h_ok = h < num_heads
    d = tl.arange(0, D)
    sink = tl.load(sinks_ptr + h, mask=h_ok, other=0.0).to(tl.float32) * 1.4426950408889634  # a weight
    launch.wait_for_inputs(PDL)  # the partials are `_attn_kernel`'s output
    m_max = sink
    for p in tl.static_range(NUM_SPLITS):
        m_p = tl.load(part_ml_ptr + ((p * num_tokens + t) * num_heads + h) * 2, mask=h_ok, other=_NEG_INIT)
        m_max = tl.maximum(m_max, m_p)
    denom = tl.exp2(sink - m_max)
    acc = tl.zeros([BLOCK_H, D], tl.float32)
    for p in tl.static_range(NUM_SPLITS):
        row = (p * num_tokens + t) * num_heads + h  # [BLOCK_H]
        m_p = tl.load(part_ml_ptr + row * 2, mask=h_ok, other=_NEG_INIT)
        l_p = tl.load(part_ml_ptr + row * 2 + 1, mask=h_ok, other=0.0)
        w = tl.exp2(m_p - m_max)
        denom += l_p * w
        has_keys = h_ok & (l_p > 0.0)  # a split with no keys (l = 0) left its acc unwritten: it adds 0
        acc += tl.load(part_acc_ptr + row[:, None] * D + d[None, :], mask=has_keys[:, None], other=0.0) * w[:, None]
    o = acc / denom[:, None]
    tl.store(out_ptr + t * s_ot + h[:, None] * s_oh + d[None, :] * s_od, o.to(out_ptr.dtype.element_ty),
             mask=h_ok[:, None])


@triton.jit
def _store_kv_kernel(k_ptr, v_ptr, kc_ptr, vc_ptr, slot_ptr, s_kt, s_kh, s_kd, s_vt, s_vh, s_vd,
                     s_cn, s_cs, s_ch, s_cd, s_dn, s_ds, s_dh, s_dd,
                     K: tl.constexpr, D: tl.constexpr, S: tl.constexpr, BLOCK: tl.constexpr, PDL: tl.constexpr):
    # one program per token t: k[t], v[t] ([K, D] each) -> slot = block * S + row; e.g. S = 16, slot 35 ->
    # block 2, row 3. A negative slot (a padding row) is skipped.
    launch.wait_for_inputs(PDL)
    t = tl.program_id(0).to(tl.int64)
    slot = tl.load(slot_ptr + t).to(tl.int64)
    if slot < 0:
        return
    blk = slot // S
    row = slot % S
    i = tl.arange(0, BLOCK)
    h = i // D
    d = i % D
    ok = i < K * D
    kv = tl.load(k_ptr + t * s_kt + h * s_kh + d * s_kd, mask=ok)
    tl.store(kc_ptr + blk * s_cn + row * s_cs + h * s_ch + d * s_cd, kv.to(kc_ptr.dtype.element_ty), mask=ok)
    vv = tl.load(v_ptr + t * s_vt + h * s_vh + d * s_vd, mask=ok)
    tl.store(vc_ptr + blk * s_dn + row * s_ds + h * s_dh + d * s_dd, vv.to(vc_ptr.dtype.element_ty), mask=ok)


def store_kv_triton(k: torch.Tensor, v: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                    slot_mapping: torch.Tensor) -> None:
    # k, v [T, K, D]; caches [N, S, K, D]; slot_mapping [T] = block * S + row (store_kv_ref's contract;
    # deviation: a negative slot is skipped, where the reference would wrap around)
    T, K, D = k.shape
    if T == 0:
        return
    S = k_cache.shape[1]
    pdl = launch.use_pdl(k.device)
    _store_kv_kernel[(T,)](k, v, k_cache, v_cache, slot_mapping, *k.stride(), *v.stride(), *k_cache.stride(),
                           *v_cache.stride(), K=K, D=D, S=S, BLOCK=triton.next_power_of_2(K * D), PDL=pdl,
                           num_warps=4 if K * D >= 512 else 1, launch_pdl=pdl)


@dataclass(frozen=True)
class AttentionConfig:
    """Launch shape of `_attn_kernel`; `pick_config` chooses it from host-known shapes only."""

    block_m: int  # rows of a q tile: block_q tokens x g_pad heads, >= 16
    block_n: int  # keys per inner step
    num_splits: int  # P: 1 = single pass with the sink applied in-kernel; > 1 = split-KV + combine
    num_warps: int
    num_stages: int


def pick_config(num_tokens: int, num_seqs: int, num_kv_heads: int, group: int, context_bound: int,
                window: int | None, max_query_len: int | None, num_sms: int, on_gpu: bool,
                num_splits: int | None = None) -> AttentionConfig:
    """Tile sizes from shapes known on the host. `max_query_len` None: the bound T - B + 1 (exact when every
    sequence has at least one new token; it only steers tile sizes, never correctness). `context_bound` is
    the block-table width x S. Split-KV for decode-like steps whose B * K programs would leave SMs idle
    and whose visible context spans at least 4 key tiles, with at least 2 tiles per split."""
    g_pad = triton.next_power_of_2(group)
    q_bound = max_query_len if max_query_len is not None else max(num_tokens - num_seqs + 1, 1)
    block_m = min(max(triton.next_power_of_2(q_bound * g_pad), 16), 128 if on_gpu else 64)
    block_m = max(block_m, g_pad)
    block_n = 64 if on_gpu else 32
    decode_like = q_bound * g_pad <= block_m <= 32
    if num_splits is None:
        num_splits = 1
        if decode_like:
            visible = context_bound if window is None else min(context_bound, window + block_m + block_n)
            tiles = triton.cdiv(visible, block_n)
            if tiles >= 4:  # 2 splits + the merge beat one pass from 4 tiles (a 128-key window, H100, one
                # token: 7.6 vs 8.5 and 7.8 vs 8.1 us in two runs; 8 sequences tie); shorter ranges stay one pass
                num_splits = max(1, min(triton.cdiv(2 * num_sms, num_seqs * num_kv_heads), tiles // 2, 32))
    if on_gpu and not decode_like and window is not None and window <= SHORT_WINDOW:
        # a short window's prefill: q tiles of 8 tokens, 32-key steps, 4 warps. H100, 8 prompts of 2,048, window
        # 128: 307.2 -> 257.7 us (one prompt 42.4 -> 36.0) against the full layers' 128-row tiles of 64-key
        # steps; 64 x 16 tied (253.6); 3 stages 273.4, 64-key steps at 64 rows 368.1-377.7, 4 warps at 128 rows
        # 313.5-359.3, 2 warps 340.7-427.0
        block_m, block_n = min(block_m, 64), 32
    num_warps = 8 if block_m >= 128 else 4
    return AttentionConfig(block_m, block_n, num_splits, num_warps, num_stages=3 if decode_like else 2)


def _num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 16  # the CPU interpreter: a nominal count, so the automatic split path runs in tests too


def paged_attention_triton(q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor, sinks: torch.Tensor,
                           meta: AttentionMetadata, positions: torch.Tensor, window: int | None, scale: float,
                           *, max_query_len: int | None = None, num_splits: int | None = None,
                           out: torch.Tensor | None = None, config: AttentionConfig | None = None
                           ) -> torch.Tensor:
    """`paged_attention_ref`'s contract; q [T, H, D]; caches [N, S, K, D]; sinks [H] -> out [T, H, D], q.dtype.

    Needs D a power of two >= 16 and H a multiple of K; positions, query_start_loc and seq_lens contiguous,
    block_tables contiguous along its rows. Extras (keyword-only): `max_query_len` (the most new tokens of
    any sequence, if the caller knows it; steers tiles only), `num_splits` (force P), `out` (write here),
    `config` (override everything).
    Nothing here reads a device tensor on the host: the launch is asynchronous and graph-capturable.
    """
    T, H, D = q.shape
    S, K = k_cache.shape[1], k_cache.shape[2]
    B = meta.seq_lens.shape[0]
    G = H // K
    if out is None:
        out = torch.empty_like(q)
    if T == 0:
        return out
    on_gpu = q.device.type == "cuda"
    cfg = config or pick_config(T, B, K, G, meta.block_tables.shape[1] * S, window, max_query_len,
                                _num_sms(q.device), on_gpu, num_splits)
    low_precision = on_gpu and q.dtype in (torch.bfloat16, torch.float16)
    compute = (tl.bfloat16 if q.dtype == torch.bfloat16 else tl.float16) if low_precision else tl.float32
    g_pad = triton.next_power_of_2(G)
    block_q = cfg.block_m // g_pad
    P = cfg.num_splits
    if P > 1:
        part_acc = _empty((P, T, H, D), torch.float32, q.device)
        part_ml = _empty((P, T, H, 2), torch.float32, q.device)
    else:
        part_acc = part_ml = out  # not touched when SPLIT is off
    one_each = max_query_len == 1 and T == B  # then query_start_loc is 0 .. B and the search is skipped
    grid = (B if one_each else T // block_q + B, K, P)
    pdl = launch.use_pdl(q.device)
    _attn_kernel[grid](
        q, k_cache, v_cache, sinks, out, part_acc, part_ml,
        meta.query_start_loc, meta.seq_lens, meta.block_tables, positions,
        q.stride(0), q.stride(1), q.stride(2), out.stride(0), out.stride(1), out.stride(2),
        *k_cache.stride()[:4], *v_cache.stride()[:4], meta.block_tables.stride(0),
        B, T, H, _NO_WINDOW if window is None else window, scale * _LOG2E,
        G=G, G_PAD=g_pad, BLOCK_Q=block_q, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, D=D, S=S, SPLIT=P > 1,
        COMPUTE=compute, DOT_PRECISION=None if low_precision else "ieee", WHILE_LOOP=not on_gpu, PDL=pdl,
        ONE_EACH=one_each, SPANS=cfg.block_m >= SPAN_MIN_ROWS, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        launch_pdl=pdl,
    )
    if P > 1:
        block_h = min(triton.next_power_of_2(H), 16)
        _combine_kernel[(T, triton.cdiv(H, block_h))](
            part_acc, part_ml, sinks, out, out.stride(0), out.stride(1), out.stride(2), T, H,
            NUM_SPLITS=P, BLOCK_H=block_h, D=D, PDL=pdl, num_warps=4, launch_pdl=pdl)
    return out
