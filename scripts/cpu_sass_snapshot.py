"""CPU machine (no GPU needed): compile the hot Triton and Gluon kernels for sm_90 at their default tiles and write
each build's machine code (`cuobjdump -sass`, address comments and headers stripped) to DEST/<name>.sass, so
that a change meant to move code without changing it can be checked: run it on the tree before and after, then
`diff -r`. Identical files mean identical GPU code for those builds.

Run: python scripts/cpu_sass_snapshot.py DEST        (TRITON_INTERPRET unset; the tree on PYTHONPATH first)
     e.g. git archive REV oss_engine | tar -x -C /tmp/old
          PYTHONPATH=/tmp/old python scripts/cpu_sass_snapshot.py /tmp/sass_old
          PYTHONPATH=. python scripts/cpu_sass_snapshot.py /tmp/sass_new && diff -r /tmp/sass_old /tmp/sass_new

A kernel is looked up in each of its candidate modules in turn (code moves between files), and skipped with a
line saying so where none has it. Covered: paged attention (decode with splits and one token a sequence, decode
with the search, prefill full and 128-key window), the MoE grouping kernels and combine, the Gluon MoE GEMMs
(the decode path's pair GEMMs, the grouped ones at blocks of 8 and 16) and the wgmma GEMM 1, each Gluon one in
the standard and the tiled byte layout; add + RMSNorm.
"""

from __future__ import annotations

import importlib
import os
import re
import subprocess
import sys
import tempfile

import triton
import triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

PKG = "oss_engine.kernels.triton."


def find(name: str, *modules: str):
    """`name` (a jit function or a constant) from the first of `modules` (under oss_engine.kernels.triton) that
    has it; LookupError where none does (`main` then skips the build)."""
    for m in modules:
        try:
            mod = importlib.import_module(PKG + m)
        except ImportError:
            continue
        if hasattr(mod, name):
            return getattr(mod, name)
    raise LookupError(f"{name} is in none of {', '.join(modules)}")


def sass(k) -> str:
    nv = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "k.cubin")
        open(path, "wb").write(k.asm["cubin"])
        out = subprocess.run([os.path.join(nv, "cuobjdump"), "-sass", path], capture_output=True, text=True).stdout
    lines = (re.sub(r"/\*[0-9a-f]{4}\*/", "", line).strip() for line in out.splitlines())
    return "\n".join(x for x in lines if x and not x.startswith(("code for", "Fatbin", "Function", ".", "---")))


def build(fn, consts: dict, ptrs: dict, floats=(), num_warps: int = 4, options: dict | None = None, gluon=False):
    """fn compiled for sm_90: constexprs `consts`, pointer types `ptrs`, float32 scalars `floats`, other scalars
    i32. Declared 16-divisible: the pointers, and for Gluon kernels the integers too (as the compile tests of
    tests/kernels declare them); the same on both trees of a comparison, which is all a diff needs."""
    sig = {n: "constexpr" if n in consts else ptrs.get(n, "fp32" if n in floats else "i32") for n in fn.arg_names}
    div = {(i,): [["tt.divisibility", 16]] for i, n in enumerate(fn.arg_names)
           if (n in ptrs) or (gluon and sig[n] not in ("constexpr", "fp32"))}
    opts = dict(options or {}, num_warps=num_warps)
    if gluon:
        from triton.experimental.gluon._runtime import GluonASTSource
        src = GluonASTSource(fn, sig, consts, attrs=div)
    else:
        src = ASTSource(fn, sig, consts, div)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options=opts)


def attention_builds() -> dict:
    ptrs = dict(q_ptr="*bf16", k_ptr="*bf16", v_ptr="*bf16", sinks_ptr="*bf16", out_ptr="*bf16",
                part_acc_ptr="*fp32", part_ml_ptr="*fp32", qsl_ptr="*i32", seq_lens_ptr="*i32", bt_ptr="*i32",
                pos_ptr="*i64")
    base = dict(G=8, G_PAD=8, D=64, S=16, COMPUTE=tl.bfloat16, DOT_PRECISION=None, WHILE_LOOP=False, PDL=True)
    decode = dict(BLOCK_Q=2, BLOCK_M=16, BLOCK_N=64, SPANS=False)
    cases = {  # name: (constexprs, warps, stages), pick_config's choices for gpt-oss
        "attn_decode_split_one": (dict(decode, SPLIT=True, ONE_EACH=True), 4, 3),
        "attn_decode_search": (dict(decode, SPLIT=False, ONE_EACH=False), 4, 3),
        "attn_prefill_full": (dict(BLOCK_Q=16, BLOCK_M=128, BLOCK_N=64, SPLIT=False, ONE_EACH=False, SPANS=True), 8, 2),
        "attn_prefill_window": (dict(BLOCK_Q=8, BLOCK_M=64, BLOCK_N=32, SPLIT=False, ONE_EACH=False, SPANS=True), 4, 2),
    }
    return {n: lambda c=c, w=w, st=st: build(find("_attn_kernel", "attention"), dict(base, **c), ptrs, ("qk_scale",),
                                             w, {"num_stages": st})
            for n, (c, w, st) in cases.items()}


def grouping_builds() -> dict:
    g = dict(ids_ptr="*i64", order_ptr="*i64", bounds_ptr="*i32", counts_ptr="*i32")
    where = ("moe_grouping", "moe")
    return {
        "group_small": lambda: build(find("_group_small_kernel", *where),
                                     dict(E=32, E_PAD=32, P_PAD=32, CHUNK=32, PDL=True), g, num_warps=8),
        "group_chunked": lambda: build(find("_group_chunked_kernel", *where),
                                       dict(E=32, E_PAD=32, CHUNK=256, ONE=False, PDL=True), g),
        "group_count": lambda: build(find("_group_count_kernel", *where), dict(E_PAD=32, CHUNK=256, PDL=True), g),
        "group_place": lambda: build(find("_group_place_kernel", *where),
                                     dict(E=32, E_PAD=32, CHUNK=256, C_BLOCK=64, PDL=True), g),
        "moe_combine": lambda: build(find("_combine_kernel", "moe"), dict(A=4, BLOCK_T=16, BLOCK_D=128, PDL=True),
                                     dict(y_ptr="*bf16", out_ptr="*bf16")),
    }


def norm_builds() -> dict:
    """add + RMSNorm as the model launches it: after attention, at the first layer (no residual), and on an MoE's
    RowSum of 8 float32 rows (the decode path's A * S; trees whose kernel has no N skip it)."""
    ptrs = dict(x_ptr="*bf16", res_ptr="*bf16", w_ptr="*fp32", out_ptr="*bf16", r_out_ptr="*bf16")

    def norm(has_res: bool, n: int):
        fn = find("_add_rms_norm_kernel", "norm")
        summing = "SUM_ROWS" in fn.arg_names
        if n and not summing:
            raise LookupError("this tree's _add_rms_norm_kernel sums no rows (no SUM_ROWS)")
        consts = dict(HAS_RESIDUAL=has_res, BLOCK_D=4096, PDL=True, **({"SUM_ROWS": n} if summing else {}))
        return build(fn, consts, dict(ptrs, x_ptr="*fp32") if n else ptrs, ("eps",), num_warps=8)

    return {"add_rms_norm": lambda: norm(True, 0), "rms_norm_first": lambda: norm(False, 0),
            "add_rms_norm_rowsum8": lambda: norm(True, 8)}


def gluon_builds() -> dict:
    try:
        G = importlib.import_module(PKG + "moe_gluon")
        W = importlib.import_module(PKG + "moe_gluon_wgmma")
    except ImportError:
        return {}
    grouped = ("moe_gluon_grouped", "moe_gluon")
    t = find("WGMMA_GEMM1", "moe_config", "moe")  # the wgmma GEMM 1's default tiles

    def opts(stages, block_k=128, num_warps=2):
        o = G.launch_options(block_k, num_warps, stages)
        o.pop("num_warps")
        return o

    p1 = dict(x_ptr="*i32", ids_ptr="*i64", w_ptr="*i32", s_ptr="*u8", b_ptr="*bf16", act_ptr="*bf16")
    p2 = dict(act_ptr="*i32", ids_ptr="*i64", w_ptr="*i32", s_ptr="*u8", b_ptr="*bf16", route_w_ptr="*bf16",
              y_ptr="*fp32")
    q1 = dict(x_ptr="*i32", order_ptr="*i64", bounds_ptr="*i32", w_ptr="*i32", s_ptr="*u8", b_ptr="*bf16",
              act_ptr="*bf16")
    q2 = dict(act_ptr="*i32", order_ptr="*i64", bounds_ptr="*i32", w_ptr="*i32", s_ptr="*u8", b_ptr="*bf16",
              route_w_ptr="*bf16", y_ptr="*bf16")
    wg = dict(xp_ptr="*bf16", order_ptr="*i64", bounds_ptr="*i32", w_ptr="*i32", s_ptr="*u8", b_ptr="*bf16",
              act_ptr="*bf16")
    la = ("limit", "alpha")
    out = {}
    for tiled in (False, True):
        sfx = "tiled" if tiled else "std"
        out[f"gluon_pair1_{sfx}"] = lambda tiled=tiled: build(
            G._pair_gemm1_gluon, dict(K=2880, A=4, BN=32, PDL=True, TILED=tiled, **opts(2)), p1, la, 2, gluon=True)
        out[f"gluon_pair2_{sfx}"] = lambda tiled=tiled: build(
            G._pair_gemm2_gluon, dict(K=2880, S=2, K_SPLIT=1536, BN=32, PDL=True, TILED=tiled, **opts(3)), p2, (), 2,
            gluon=True)
        for bm, o in ((8, opts(4, 128, 4)), (16, opts(3, 64, 4))):
            consts = dict(E=32, E_PAD=32, BM=bm, BN=64, PDL=True, HALF_TAIL=bm == 16, TILED=tiled, **o)
            out[f"gluon_group1_bm{bm}_{sfx}"] = lambda c=consts: build(
                find("_group_gemm1_gluon", *grouped), dict(c, K=2880, A=4), q1, la, 4, gluon=True)
            out[f"gluon_group2_bm{bm}_{sfx}"] = lambda c=consts: build(
                find("_group_gemm2_gluon", *grouped), dict(c, K=2880), q2, (), 4, gluon=True)
        consts = dict(K=2880, N=5760, A=4, E=32, E_PAD=32, BT=t.block_m, BK=t.block_k, GROUP_M=t.group_m,
                      W_L=W.words_layout(t.block_k, t.num_warps), STAGES=t.num_stages, HALF_TAIL=t.half_tail,
                      TILED=tiled)
        out[f"wgmma_gemm1_{sfx}"] = lambda c=consts: build(W._group_gemm1_wgmma, c, wg, la, t.num_warps, gluon=True)
    return out


def main() -> None:
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise SystemExit("unset TRITON_INTERPRET: the interpreter compiles nothing")
    dest = sys.argv[1]
    os.makedirs(dest, exist_ok=True)
    for name, make in {**attention_builds(), **grouping_builds(), **norm_builds(), **gluon_builds()}.items():
        try:
            text = sass(make())
        except LookupError as e:  # a kernel none of its candidate modules has
            print(f"{name}: skipped ({e})")
            continue
        open(os.path.join(dest, name + ".sass"), "w").write(text)
        print(f"{name}: {len(text.splitlines())} lines")


if __name__ == "__main__":
    main()
