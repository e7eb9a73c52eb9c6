"""Checkpoint: lazy reads of valid checkpoints, and refusal of corrupt ones naming the file and tensor."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from oss_engine.tiny import make_tiny_checkpoint
from oss_engine.weights.checkpoint import INDEX_FILE, Checkpoint, CheckpointError, TensorMeta

SMALL = dict(num_layers=2, vocab_size=1024, write_tokenizer=False)


@pytest.fixture(scope="module")
def single_dir(tmp_path_factory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("single"), fmt="mxfp4", **SMALL)


@pytest.fixture(scope="module")
def sharded_dir(tmp_path_factory) -> Path:
    return make_tiny_checkpoint(tmp_path_factory.mktemp("sharded"), fmt="mxfp4", max_shard_bytes=60_000, **SMALL)


@pytest.fixture
def single_copy(single_dir, tmp_path) -> Path:
    return Path(shutil.copytree(single_dir, tmp_path / "ckpt"))


@pytest.fixture
def sharded_copy(sharded_dir, tmp_path) -> Path:
    return Path(shutil.copytree(sharded_dir, tmp_path / "ckpt"))


# --- helpers that edit safetensors files by hand (independent of the code under test) ---


def _split(path: Path) -> tuple[dict, bytes]:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def _join(path: Path, header: dict, data: bytes) -> None:
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + data)


def _last_tensor(header: dict) -> str:
    """The tensor whose bytes end the data area."""
    return max((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][1])


def _weight_map(model_dir: Path) -> dict[str, str]:
    return json.loads((model_dir / INDEX_FILE).read_text())["weight_map"]


def _refused(model_dir: Path, *fragments: str) -> str:
    with pytest.raises(CheckpointError) as info:
        Checkpoint.open(model_dir)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message


# --- valid checkpoints ---


def test_reads_every_tensor_of_a_single_file(single_dir):
    expected = load_file(single_dir / "model.safetensors")
    with Checkpoint.open(single_dir) as ckpt:
        assert ckpt.names() == sorted(expected)
        for name, tensor in expected.items():
            meta = ckpt.meta(name)
            assert meta == TensorMeta(name, single_dir / "model.safetensors", tensor.dtype, tuple(tensor.shape))
            assert torch.equal(ckpt.read(name), tensor)
        assert ckpt.meta("model.layers.0.mlp.experts.gate_up_proj_blocks").dtype == torch.uint8


def test_sharded_checkpoint_follows_the_index(sharded_dir, single_dir):
    weight_map = _weight_map(sharded_dir)
    assert len(set(weight_map.values())) > 2
    with Checkpoint.open(sharded_dir) as sharded, Checkpoint.open(single_dir) as single:
        assert sharded.names() == single.names() == sorted(weight_map)
        for name in sharded.names():
            assert sharded.meta(name).file == sharded_dir / weight_map[name]
            assert torch.equal(sharded.read(name), single.read(name))


def test_several_files_without_index_are_all_used(sharded_copy, sharded_dir):
    (sharded_copy / INDEX_FILE).unlink()
    with Checkpoint.open(sharded_copy) as ckpt:
        assert ckpt.names() == sorted(_weight_map(sharded_dir))


@pytest.mark.parametrize("dim", [0, 1, 2, 3, -1])
def test_read_slice(single_dir, dim):
    name = "model.layers.1.mlp.experts.gate_up_proj_blocks"  # uint8 [E, 2I, D/32, 16]
    with Checkpoint.open(single_dir) as ckpt:
        full = ckpt.read(name)
        size = full.shape[dim]
        start, stop = size // 4, size // 4 + max(1, size // 2)
        expected = full.narrow(dim, start, stop - start)
        assert torch.equal(ckpt.read_slice(name, dim, start, stop), expected)
        assert torch.equal(ckpt.read_slice("model.norm.weight", 0, 3, 9), ckpt.read("model.norm.weight")[3:9])
        with pytest.raises(CheckpointError, match="out of range"):
            ckpt.read_slice(name, dim, 0, size + 1)
        with pytest.raises(CheckpointError, match="cannot slice dim"):
            ckpt.read_slice(name, 4, 0, 1)


def test_unknown_tensor_name(single_dir):
    with Checkpoint.open(single_dir) as ckpt, pytest.raises(CheckpointError, match="no tensor 'nope'"):
        ckpt.meta("nope")


# --- corrupt checkpoints: refused at open, naming the file and tensor ---


def test_truncated_file(single_copy):
    path = single_copy / "model.safetensors"
    header, _ = _split(path)
    path.write_bytes(path.read_bytes()[:-1])
    _refused(single_copy, str(path), _last_tensor(header), "truncated")


def test_truncated_shard(sharded_copy):
    shard = sorted(set(_weight_map(sharded_copy).values()))[1]
    path = sharded_copy / shard
    header, data = _split(path)
    path.write_bytes(path.read_bytes()[: -len(data) // 2])
    _refused(sharded_copy, shard, "truncated")


def test_trailing_bytes(single_copy):
    path = single_copy / "model.safetensors"
    path.write_bytes(path.read_bytes() + b"\0" * 8)
    _refused(single_copy, str(path), "trailing")


@pytest.mark.parametrize("length", [2**63, 10**9, 0])
def test_garbage_header_length(single_copy, length):
    path = single_copy / "model.safetensors"
    raw = path.read_bytes()
    path.write_bytes(struct.pack("<Q", length) + raw[8:])
    _refused(single_copy, str(path), "header length")


def test_file_too_small_for_a_header(single_copy):
    path = single_copy / "model.safetensors"
    path.write_bytes(b"\x01\x02")
    _refused(single_copy, str(path), "too small")


def test_invalid_json_header(single_copy):
    path = single_copy / "model.safetensors"
    raw = bytearray(path.read_bytes())
    raw[8:16] = b"#garbage"
    path.write_bytes(bytes(raw))
    _refused(single_copy, str(path), "not valid JSON")


def test_header_not_an_object(single_copy):
    path = single_copy / "model.safetensors"
    _, data = _split(path)
    _join(path, [1, 2], data)  # type: ignore[arg-type]
    _refused(single_copy, str(path), "not a JSON object")


def test_unknown_dtype(single_copy):
    path = single_copy / "model.safetensors"
    header, data = _split(path)
    header["model.norm.weight"]["dtype"] = "F4"
    _join(path, header, data)
    _refused(single_copy, str(path), "'model.norm.weight'", "unknown dtype 'F4'")


def test_offsets_inconsistent_with_shape(single_copy):
    path = single_copy / "model.safetensors"
    header, data = _split(path)
    name = "model.layers.0.self_attn.sinks"
    header[name]["shape"] = [header[name]["shape"][0] + 1]
    _join(path, header, data)
    _refused(single_copy, str(path), repr(name), "data_offsets")


def test_offsets_inconsistent_with_dtype(single_copy):
    path = single_copy / "model.safetensors"
    header, data = _split(path)
    name = "model.layers.1.mlp.router.bias"
    header[name]["dtype"] = "F32"  # was BF16: twice the bytes
    _join(path, header, data)
    _refused(single_copy, str(path), repr(name), "data_offsets")


@pytest.mark.parametrize("shape", [[-1, 2], [2.0], "3", [True]])
def test_bad_shape(single_copy, shape):
    path = single_copy / "model.safetensors"
    header, data = _split(path)
    header["model.norm.weight"]["shape"] = shape
    _join(path, header, data)
    _refused(single_copy, str(path), "'model.norm.weight'", "shape")


def test_overlapping_tensors(single_copy):
    path = single_copy / "model.safetensors"
    header, data = _split(path)
    a, b = "model.layers.0.input_layernorm.weight", "model.layers.1.input_layernorm.weight"
    header[b]["data_offsets"] = header[a]["data_offsets"]  # same size, so consistent with its shape
    _join(path, header, data)
    _refused(single_copy, str(path), "overlap or leave a gap")


def test_duplicate_key_in_header(single_copy):
    path = single_copy / "model.safetensors"
    header, data = _split(path)
    text = json.dumps(header, separators=(",", ":"))
    entry = json.dumps(header["model.norm.weight"], separators=(",", ":"))
    text = text[:-1] + f',"model.norm.weight":{entry}' + "}"
    blob = text.encode() + b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + data)
    _refused(single_copy, str(path), "'model.norm.weight' appears twice")


def test_shard_named_in_index_but_absent(sharded_copy):
    weight_map = _weight_map(sharded_copy)
    shard = sorted(set(weight_map.values()))[-1]
    held = sorted(name for name, file in weight_map.items() if file == shard)
    (sharded_copy / shard).unlink()
    _refused(sharded_copy, shard, "missing", repr(held[0]))


def test_tensor_in_index_but_not_in_shard(sharded_copy):
    index = json.loads((sharded_copy / INDEX_FILE).read_text())
    shard = sorted(set(index["weight_map"].values()))[0]
    index["weight_map"]["model.layers.0.mlp.extra"] = shard
    (sharded_copy / INDEX_FILE).write_text(json.dumps(index))
    _refused(sharded_copy, shard, "'model.layers.0.mlp.extra'", "absent")


def test_tensor_in_index_under_another_shard(sharded_copy):
    index = json.loads((sharded_copy / INDEX_FILE).read_text())
    shards = sorted(set(index["weight_map"].values()))
    index["weight_map"]["model.norm.weight"] = next(s for s in shards if s != index["weight_map"]["model.norm.weight"])
    (sharded_copy / INDEX_FILE).write_text(json.dumps(index))
    _refused(sharded_copy, "'model.norm.weight'", "found in")


def test_shard_tensor_missing_from_index(sharded_copy):
    index = json.loads((sharded_copy / INDEX_FILE).read_text())
    name = "model.layers.0.self_attn.sinks"
    shard = index["weight_map"].pop(name)
    assert shard in index["weight_map"].values()  # the shard is still used by the index
    (sharded_copy / INDEX_FILE).write_text(json.dumps(index))
    _refused(sharded_copy, shard, repr(name), "not listed")


def test_index_path_outside_the_directory(sharded_copy):
    index = json.loads((sharded_copy / INDEX_FILE).read_text())
    index["weight_map"]["model.norm.weight"] = "../model.safetensors"
    (sharded_copy / INDEX_FILE).write_text(json.dumps(index))
    _refused(sharded_copy, INDEX_FILE, "'model.norm.weight'", "not a file name")


@pytest.mark.parametrize("text", ["{not json", "[]", '{"weight_map": {}}'])
def test_bad_index(sharded_copy, text):
    (sharded_copy / INDEX_FILE).write_text(text)
    _refused(sharded_copy, INDEX_FILE)


def test_tensor_in_two_files(single_copy):
    save_file({"model.norm.weight": torch.ones(64, dtype=torch.bfloat16)}, str(single_copy / "extra.safetensors"))
    _refused(single_copy, "'model.norm.weight'", "extra.safetensors", "model.safetensors")


def test_empty_or_missing_directory(tmp_path):
    _refused(tmp_path, str(tmp_path), "no model.safetensors.index.json")
    _refused(tmp_path / "absent", "not a directory")


def test_file_changed_after_open_is_an_error_not_a_crash(single_copy):
    path = single_copy / "model.safetensors"
    with Checkpoint.open(single_copy) as ckpt:
        path.write_bytes(path.read_bytes()[:1000])
        with pytest.raises(CheckpointError) as info:
            ckpt.read("lm_head.weight")
        assert str(path) in str(info.value) and "'lm_head.weight'" in str(info.value)


def test_other_files_are_ignored(single_copy, single_dir):
    (single_copy / "pytorch_model.bin").write_bytes(b"not a pickle to be loaded")
    (single_copy / "modeling_evil.py").write_text("raise SystemExit('executed')\n")
    with Checkpoint.open(single_copy) as ckpt:
        assert ckpt.names() == sorted(load_file(single_dir / "model.safetensors"))
