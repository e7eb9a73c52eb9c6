"""GPU machine: which loads bound the decode path's Gluon GEMMs at one token (gpt-oss-20b shapes, 4 pairs)?

Timing-only copies of `moe_gluon.py`, made from its text in a temporary folder (never used by the engine):
  base     the module as it is
  noscale  every scale byte a runtime constant 120 (no scale-byte loads; a kernel argument, so that ptxas
           cannot fold the factors)
  noact    every activation pair a constant (no activation loads)
  noboth   both; the weight words are still loaded
  tile16   the weight words read as if re-laid tile-major (a warp's 16 rows x 64 bytes of a step contiguous, the
           even rows' 512 bytes then the odd rows'; a 16-row block's steps one after another, so that a warp
           streams one contiguous run): only the addresses change, the weights are not permuted
GEMM 1 (32 x 128, 2 warps, 2 ahead) and GEMM 2 (split 2; 3 and 2 ahead), 8 launches a CUDA graph, per launch
us: weights from HBM ("hbm": 8 expert sets, 280 MB) or L2 ("one": every pair reads expert 0). The outputs of
the variants are wrong by design; a model run with them still reads 4 experts a layer at batch 1.
`--module PATH` adds another copy of the module (e.g. a branch's) as a variant named after its file.
Results: docs/performance.md, "Nineteenth session".

Run: PYTHONPATH=.:scripts python scripts/gpu_probe_decode_loads.py [--module PATH ...] [--variants base,tile16]
"""

from __future__ import annotations

import argparse
import importlib.util
import pathlib
import sys
import tempfile

import torch

from gpu_probe_moe_decode_limits import gemm1, gemm2, operands, per_launch_us

MODULE = pathlib.Path(__file__).resolve().parent.parent / "oss_engine/kernels/triton/moe_gluon.py"
SCALES = """    if not RAW:
        se = _factor(se)"""  # in `_load_w`, just after the scale bytes' loads
ROWS = "        even = (2 * j) * (s_wn // 4) + word  # [BH, 4, W]\n"  # in `_load_w`'s standard-layout branch
ODD = "        odd = even + s_wn // 4\n"  # the odd rows' words, just after it
ACT = """    if TT == 2:
        if MASKED:
            a2 ="""  # in `_load_a`, just after the activations' load


def variants(text: str) -> dict[str, str]:
    """The module's text and its three timing-only variants (module docstring)."""
    text = text.replace("from ..types import", "from oss_engine.kernels.types import")
    noscale = "    se = (gl.full([BH, 4, 1], 0, gl.int32, L) + (s_sg + 119)).to(gl.uint8)\n    so = se\n"
    noact = "    a = gl.full([1, 4, 4 * W], 0, gl.int32, LA) + k_end * 0 + 0x3F803F80\n"
    # tile16: 16-row block j // 8 (4 s_wn words), the step's chunk (16 rows x c4 words: c4 = 16, 8 in K's last
    # half step), row j % 8 of the even (odd: + 8 c4) half, the lane's quarter
    # (the kernels run with TILED off, so this branch is the one they take)
    tile = ("        c4 = gl.minimum(s_wn - k0 // 2, BK // 2) // 4\n"
            "        even = (j // 8) * (4 * s_wn) + 4 * (k0 // 2) + (j % 8) * c4 + t * W + w\n")
    if text.count(SCALES) != 1 or text.count(ACT) != 1 or text.count(ROWS) != 1 or text.count(ODD) != 1:
        sys.exit("moe_gluon.py no longer has the lines the variants patch: update SCALES / ACT / ROWS / ODD")
    return {"base": text, "noscale": text.replace(SCALES, noscale + SCALES),
            "noact": text.replace(ACT, noact + ACT),
            "noboth": text.replace(SCALES, noscale + SCALES).replace(ACT, noact + ACT),
            "tile16": text.replace(ROWS, tile).replace(ODD, "        odd = even + 8 * c4\n")}


def load(name: str, path: pathlib.Path):
    spec = importlib.util.spec_from_file_location(f"moe_gluon_{name}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--module", action="append", default=[], type=pathlib.Path)
    parser.add_argument("--variants", default="base,noscale,noact,noboth,tile16")
    args = parser.parse_args()
    tmp = pathlib.Path(tempfile.mkdtemp())
    texts = {k: v for k, v in variants(MODULE.read_text()).items() if k in args.variants.split(",")}
    texts.update({p.stem: p.read_text().replace("from ..types import", "from oss_engine.kernels.types import")
                  for p in args.module})
    mods = {}
    for name, text in texts.items():
        (tmp / f"{name}.py").write_text(text)
        mods[name] = load(name, tmp / f"{name}.py")
    w1, w2, x, act, route_w, y, sets = operands()
    sets = {where: sets[where] for where in ("hbm", "one")}
    print(torch.cuda.get_device_name(), "per launch us; GEMM 1 35.2 MB, GEMM 2 17.6 MB (4 experts)")
    for rnd in range(2):
        for name, G in mods.items():
            cells = []
            for where, id_sets in sets.items():
                g1 = per_launch_us(lambda: [gemm1(x, ids, w1, act, (32, 128, 2, 2), G=G) for ids in id_sets], 30)
                g2 = [per_launch_us(lambda: [gemm2(act, ids, w2, route_w, y, (32, 128, 2, d), G=G)
                                             for ids in id_sets], 30) for d in (3, 2)]
                cells.append(f"{where}: g1 {g1:5.1f} g2 (3 ahead) {g2[0]:5.1f} (2 ahead) {g2[1]:5.1f}")
            print(f"round {rnd} {name:8s} " + " | ".join(cells), flush=True)


if __name__ == "__main__":
    main()
