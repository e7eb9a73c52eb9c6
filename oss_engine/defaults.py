"""The embedded default model: a tiny random gpt-oss checkpoint, made on first use in the cache directory,
so every command works on a machine with no model and no network."""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path

from .config import cache_dir

log = logging.getLogger(__name__)

DEFAULT_TINY = {"fmt": "mxfp4", "seed": 0}


def default_model_dir() -> Path:
    path = cache_dir() / "tiny-gpt-oss-mxfp4"
    if (path / "config.json").is_file():
        log.warning("No --model given: using the embedded tiny random gpt-oss model at %s", path)
        return path
    from .tiny import make_tiny_checkpoint

    log.warning("No --model given: making the embedded tiny random gpt-oss model at %s (first use)", path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".tiny-", dir=path.parent))
    try:
        make_tiny_checkpoint(tmp, **DEFAULT_TINY)
        tmp.rename(path)  # atomic: a half-written model is never seen
    except OSError:
        if not (path / "config.json").is_file():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path
