"""Ways to spoil a tiny checkpoint directory, shared by the loader's tests (tests/weights/test_loader.py) and the
server's refusal tests (tests/server/test_server_corrupt_checkpoint.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

FILE = "model.safetensors"  # a single-file checkpoint's tensors


def edit_tensors(d: Path, edit) -> None:
    """Let `edit` change the tensor dict of d's model.safetensors, written back in place."""
    tensors = load_file(d / FILE)
    edit(tensors)
    save_file(tensors, d / FILE, metadata={"format": "pt"})


def rewrite(src: Path, dst: Path, edit) -> Path:
    """Copy the checkpoint at src to dst, letting `edit` change its tensor dict."""
    shutil.copytree(src, dst)
    edit_tensors(dst, edit)
    return dst


def drop(name):
    return lambda t: t.pop(name)


def add(name):
    return lambda t: t.__setitem__(name, torch.zeros(3))


def reshape(name):
    return lambda t: t.__setitem__(name, t[name].reshape(-1)[:-1].clone())


def retype(name, dtype):
    return lambda t: t.__setitem__(name, t[name].to(dtype))


def truncate(d: Path, n: int = 100) -> None:
    """Cut the last n bytes of d's model.safetensors (the last tensor's data)."""
    f = d / FILE
    f.write_bytes(f.read_bytes()[:-n])


def plant_code(d: Path, marker: Path) -> None:
    """Put a module in d that would create `marker` if it ever ran, and name it in config.json's auto_map (as
    transformers' remote-code checkpoints do)."""
    (d / "modeling_evil.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n")
    cfg = json.loads((d / "config.json").read_text())
    cfg["auto_map"] = {"AutoModelForCausalLM": "modeling_evil.Evil", "AutoConfig": "modeling_evil.Config"}
    (d / "config.json").write_text(json.dumps(cfg))
