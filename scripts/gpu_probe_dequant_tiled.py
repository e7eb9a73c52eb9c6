"""GPU machine: moe_grouped_mm.py's dequantization of gpt-oss-20b experts (W1 [32, 5760, 90, 16], W2 [32, 2880,
90, 16]), standard and tiled byte layouts, the package's kernels against the forms they replaced, each checked
bit for bit against the standard output first.

Why: the twenty-third session's H100 A/B found 2k prefill (8,192-token steps, this path) 77.0k-77.3k tok/s with
standard experts and 71.3k-72.4k tiled, after f3eda8f had made the tiled kernel's byte loads 16-byte vectors.

Forms: "std" and "tiled" the package's kernels; "f3eda8f tiled" the tiled kernel as f3eda8f left it (one program
a 16-row block's 256 columns, a [16, 256] tensor). First run (H100, twenty-third session) of that form and of a 3-D
[16 rows, 16 groups, 16 bytes] one with a scale byte loaded once a group: W1 1,066-1,069 and 976-977 us against the
standard kernel's 487-490 (a 2-D [256 groups, 16] standard form with scales loaded once: 573-578). Their Triton IR
converts layouts through shared memory 8-11 times, the 1-D standard kernel's once. Twenty-fourth session (H100):
8502f81's 1-D tiled form ("8502f81 tiled") W1 686-690 us against std's 538-541; in row order ("row-order tiled")
710-732. Both load a scale byte for every byte in the compiled code (std: once per 16), which the package's
kernel now avoids. SWEEP times both package kernels at other program sizes.

Run: PYTHONPATH=.:scripts python scripts/gpu_probe_dequant_tiled.py
"""

from __future__ import annotations

from functools import partial

import torch
import triton
import triton.language as tl

from oss_engine.kernels.triton.moe_grouped_mm import (_dequant_kernel, _dequant_tiled_kernel, _e2m1_bf16_bits,
                                                    _pair_words, dequantize, pair_table)
from oss_engine.kernels.triton.tiles import tiled_offsets
from oss_engine.kernels.types import ExpertWeight
from oss_engine.weights.tiles import tile_rows

E, D, I = 32, 2880, 2880
BLOCK = 4096
# (bytes a program, warps): 8192 / 8 ran std 642-645 us and the row-order tiled form 765-779 on W1 (24th session)
SWEEP = ((1024, 1), (1024, 2), (2048, 2), (2048, 4), (4096, 2), (4096, 8))


@triton.jit
def _old_tiled_kernel(blocks_ptr, scales_ptr, table_ptr, out_ptr, row_bytes, BLOCK_C: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * 16 + tl.arange(0, 16)
    col = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    mask = (col < row_bytes)[None, :]
    std = rows[:, None] * row_bytes + col[None, :]
    byte = tl.load(blocks_ptr + tiled_offsets(rows[:, None], col[None, :], row_bytes), mask=mask,
                   other=0).to(tl.int32)
    s = tl.load(scales_ptr + std // 16, mask=mask, other=127).to(tl.int32)
    tl.store(out_ptr + std, _pair_words(byte, s, table_ptr), mask=mask)


def old_tiled(blocks, scales, out):
    E_, rows, groups, _ = blocks.shape
    _old_tiled_kernel[(E_ * rows // 16, triton.cdiv(groups * 16, BLOCK // 16))](
        blocks, scales, pair_table(blocks.device), out.view(torch.int32), groups * 16, BLOCK_C=BLOCK // 16,
        num_warps=4)
    return out


@triton.jit
def _per_byte_scale_tiled_kernel(blocks_ptr, scales_ptr, table_ptr, out_ptr, row_bytes, n_prog,
                                 BLOCK: tl.constexpr):
    """The tiled kernel as 8502f81 left it: its scale index std // 16 computed from each byte's position, so the
    compiled code loads a scale byte for every byte (32 loads a thread; the standard kernel's code loads 2). H100,
    twenty-fourth session: W1 686-690 us, W2 358-366, against the standard kernel's 538-541 and 296-299."""
    pid = tl.program_id(0)
    block = (pid // n_prog).to(tl.int64) * 16 * row_bytes
    part = pid % n_prog
    k = tl.arange(0, BLOCK)
    chunk = part * (BLOCK // 512) + k // 512
    mask = chunk < row_bytes // 32
    std = (k // 32) % 16 * row_bytes + chunk * 32 + k % 32
    byte = tl.load(blocks_ptr + block + part * BLOCK + k, mask=mask, other=0).to(tl.int32)
    s = tl.load(scales_ptr + block // 16 + std // 16, mask=mask, other=127).to(tl.int32)
    tl.store(out_ptr + block + std, _pair_words(byte, s, table_ptr), mask=mask)


@triton.jit
def _row_order_tiled_kernel(blocks_ptr, scales_ptr, table_ptr, out_ptr, row_bytes, n_prog, BLOCK: tl.constexpr):
    """8502f81's tiled kernel with its BLOCK bytes taken in row order (row, chunk, byte), not in memory order
    (chunk, row, byte): a thread still reads 16 contiguous bytes, but a warp's 32 threads hold 2 rows x 8 chunks,
    so its scale-byte loads touch 2 rows' 16 contiguous scales, not 16 rows' 2. Tried in the twenty-fourth
    session (378d1c0) and lost: W1 710-732 us against memory order's 686-690."""
    pid = tl.program_id(0)
    block = (pid // n_prog).to(tl.int64) * 16 * row_bytes
    n_c: tl.constexpr = BLOCK // 512
    k = tl.arange(0, BLOCK)  # [BLOCK] = (row 16, chunk n_c, byte 32)
    r = k // (32 * n_c)
    chunk = pid % n_prog * n_c + (k // 32) % n_c
    mask = chunk < row_bytes // 32
    std = r * row_bytes + chunk * 32 + k % 32
    byte = tl.load(blocks_ptr + block + chunk * 512 + r * 32 + k % 32, mask=mask, other=0).to(tl.int32)
    s = tl.load(scales_ptr + block // 16 + std // 16, mask=mask, other=127).to(tl.int32)
    tl.store(out_ptr + block + std, _pair_words(byte, s, table_ptr), mask=mask)


@triton.jit
def _pair_words_inc(byte, s, table_ptr):
    """`_pair_words` with the exponent-shift multiplier (1 in each half whose code is nonzero) computed from the
    byte instead of gathered from the table's second half: one table gather a byte instead of two."""
    if (tl.min(s) >= 2) & (tl.max(s) <= 252):
        inc = ((byte & 7) != 0).to(tl.int32) | (((byte & 0x70) != 0).to(tl.int32) << 16)
        word = tl.load(table_ptr + byte) + inc * ((s - 127) << 7)
    else:
        word = _e2m1_bf16_bits(byte & 15, s) | (_e2m1_bf16_bits(byte >> 4, s) << 16)
    return word


@triton.jit
def _std_inc_kernel(blocks_ptr, scales_ptr, table_ptr, out_ptr, n_bytes, BLOCK: tl.constexpr):
    """The package's standard kernel with `_pair_words_inc`."""
    b = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = b < n_bytes
    byte = tl.load(blocks_ptr + b, mask=mask, other=0).to(tl.int32)
    s = tl.load(scales_ptr + b // 16, mask=mask, other=127).to(tl.int32)
    tl.store(out_ptr + b, _pair_words_inc(byte, s, table_ptr), mask=mask)


def tiled_form(kernel, blocks, scales, out, block=BLOCK, warps=4):
    """kernel (a tiled one of _dequant_tiled_kernel's signature) over whole-chunk blocks [E, rows, G, 16]."""
    E_, rows, groups, _ = blocks.shape
    n_prog = triton.cdiv(groups * 16 // 32, block // 512)
    kernel[(E_ * rows // 16 * n_prog,)](blocks, scales, pair_table(blocks.device), out.view(torch.int32),
                                        groups * 16, n_prog, BLOCK=block, num_warps=warps)
    return out


def std_form(kernel, blocks, scales, out, block=BLOCK, warps=4):
    """kernel (a standard one of _dequant_kernel's signature) over blocks [E, rows, G, 16]."""
    kernel[(triton.cdiv(blocks.numel(), block),)](blocks, scales, pair_table(blocks.device), out.view(torch.int32),
                                                  blocks.numel(), BLOCK=block, num_warps=warps)
    return out


def time_us(fn, reps=20) -> float:
    """Median microseconds of fn over reps (CUDA events; each call writes >= 0.5 GB, far past L2)."""
    fn()
    torch.cuda.synchronize()
    ts = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        ts.append(a.elapsed_time(b) * 1e3)
    return sorted(ts)[len(ts) // 2]


def main() -> None:
    print(torch.cuda.get_device_name(), flush=True)
    gen = torch.Generator(device="cuda").manual_seed(0)
    for name, out_f, in_f in (("W1", 2 * I, D), ("W2", D, I)):
        blocks = torch.randint(0, 256, (E, out_f, in_f // 32, 16), generator=gen, dtype=torch.uint8, device="cuda")
        scales = torch.randint(118, 123, (E, out_f, in_f // 32), generator=gen, dtype=torch.uint8, device="cuda")
        tiled = torch.stack([tile_rows(blocks[e]) for e in range(E)])
        std_w = ExpertWeight(torch.zeros(E, out_f, device="cuda"), blocks=blocks, scales=scales)
        til_w = ExpertWeight(torch.zeros(E, out_f, device="cuda"), blocks=tiled, scales=scales, tiled=True)
        out = torch.empty((E, out_f, in_f), dtype=torch.bfloat16, device="cuda")
        want = dequantize(std_w)
        gb = (want.numel() * 2 + blocks.numel() + scales.numel()) / 1e9
        forms = {"std": lambda: dequantize(std_w), "f3eda8f tiled": lambda: old_tiled(tiled, scales, out),
                 "tiled": lambda: dequantize(til_w),
                 "std, inc computed": lambda: std_form(_std_inc_kernel, blocks, scales, out),
                 "8502f81 tiled": lambda: tiled_form(_per_byte_scale_tiled_kernel, tiled, scales, out),
                 "row-order tiled": lambda: tiled_form(_row_order_tiled_kernel, tiled, scales, out)}
        for blk, warps in SWEEP:  # the package's two kernels at other program sizes
            forms[f"std {blk}/{warps}w"] = partial(std_form, _dequant_kernel, blocks, scales, out, blk, warps)
            forms[f"tiled {blk}/{warps}w"] = partial(tiled_form, _dequant_tiled_kernel, tiled, scales, out, blk, warps)
        print(f"{name}: {tuple(blocks.shape)}, {gb:.2f} GB moved")
        for rnd in range(2):
            for fname, fn in forms.items():
                out.zero_()
                ok = torch.equal(fn().view(torch.int16), want.view(torch.int16))
                us = time_us(fn)
                print(f"  r{rnd} {fname:18s} {us:8.1f} us  {gb / us * 1e6 / 1e3:5.2f} TB/s  "
                      f"{'same bits' if ok else 'DIFFERENT'}", flush=True)


if __name__ == "__main__":
    main()
