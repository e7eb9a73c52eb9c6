"""Shared fixtures: tiny random gpt-oss checkpoints in the exact Hugging Face layout, made once per session."""

from __future__ import annotations

import pytest
import torch

from oss_engine.tiny import make_tiny_checkpoint

# The parity checkpoints of the foundation issue: >= 3 layers, 8 experts top-2, sliding window 8, and an
# original context (64) shorter than the test prompts so YaRN's scaled range is exercised.
PARITY_SPEC = dict(num_layers=3, num_experts=8, experts_per_token=2, sliding_window=8,
                   original_max_position_embeddings=64)


@pytest.fixture(scope="session", autouse=True)
def _private_cache_dir(tmp_path_factory):
    """Tests never touch the user's cache: the tokenizer ranks and the default model go to a temp dir."""
    mp = pytest.MonkeyPatch()
    mp.setenv("OSS_ENGINE_CACHE_DIR", str(tmp_path_factory.mktemp("oss_engine_cache")))
    yield
    mp.undo()


@pytest.fixture(scope="session")
def tiny_with_tokenizer(tmp_path_factory):
    """A tiny mxfp4 checkpoint with the real vocabulary and tokenizer files (text prompts work)."""
    path = tmp_path_factory.mktemp("tiny-tok")
    make_tiny_checkpoint(path, fmt="mxfp4", seed=0, num_layers=2)
    return path


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session", params=["mxfp4", "bf16"])
def parity_checkpoint(request, tmp_path_factory):
    """(format, directory) of a tiny checkpoint without tokenizer files (token-id prompts only)."""
    path = tmp_path_factory.mktemp(f"tiny-{request.param}")
    make_tiny_checkpoint(path, fmt=request.param, seed=1, write_tokenizer=False, **PARITY_SPEC)
    return request.param, path


@pytest.fixture(scope="session", params=["mxfp4", "bf16"])
def dense_routing_checkpoint(request, tmp_path_factory):
    """Like parity_checkpoint but every token uses all 8 experts: routing has no discrete choice that
    rounding could flip, so logits can be compared with a tolerance at every position."""
    path = tmp_path_factory.mktemp(f"tiny-dense-{request.param}")
    make_tiny_checkpoint(path, fmt=request.param, seed=1, write_tokenizer=False,
                         **dict(PARITY_SPEC, experts_per_token=8))
    return request.param, path
