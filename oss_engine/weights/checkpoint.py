"""A safetensors checkpoint directory: validated up front, then read lazily one tensor at a time.

Knows nothing of gpt-oss: names, dtypes and shapes are whatever the files say.

Contract of `Checkpoint.open(model_dir)`:
  - `model.safetensors.index.json` present -> exactly the shards its weight_map names are used;
    otherwise every top-level `*.safetensors` file is used.
  - Before any tensor byte is read, every file's header is parsed and checked (see `_parse_header`),
    and the index is cross-checked against the headers. Any inconsistency raises `CheckpointError`
    naming the file and, where one is involved, the tensor. So a bad checkpoint is refused before a
    partial model exists.
  - No pickle, no torch.load, nothing from the directory is imported or executed; shard names in the
    index must be plain file names inside the directory.
Tensor bytes are read with the `safetensors` library (`safe_open`, one handle per file, opened lazily).
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import torch
from safetensors import safe_open

INDEX_FILE = "model.safetensors.index.json"
_MAX_HEADER_BYTES = 100_000_000  # the safetensors library's own limit
_METADATA_KEY = "__metadata__"

# safetensors dtype string -> (torch dtype, bytes per element)
_DTYPES: dict[str, tuple[torch.dtype, int]] = {
    "BOOL": (torch.bool, 1),
    "U8": (torch.uint8, 1),
    "I8": (torch.int8, 1),
    "F8_E4M3": (torch.float8_e4m3fn, 1),
    "F8_E5M2": (torch.float8_e5m2, 1),
    "U16": (torch.uint16, 2),
    "I16": (torch.int16, 2),
    "F16": (torch.float16, 2),
    "BF16": (torch.bfloat16, 2),
    "U32": (torch.uint32, 4),
    "I32": (torch.int32, 4),
    "F32": (torch.float32, 4),
    "U64": (torch.uint64, 8),
    "I64": (torch.int64, 8),
    "F64": (torch.float64, 8),
}


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and, where relevant, the tensor."""


@dataclass(frozen=True)
class TensorMeta:
    name: str
    file: Path
    dtype: torch.dtype
    shape: tuple[int, ...]


@dataclass(frozen=True)
class _Entry:
    """One tensor as a header describes it; offsets are relative to the start of the data area."""

    meta: TensorMeta
    begin: int
    end: int


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _read_header_bytes(path: Path) -> tuple[bytes, int]:
    """-> (header JSON bytes, file size). Reads only the 8-byte length and the header itself."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            if size < 8:
                raise CheckpointError(f"{path}: file is {size} bytes, too small for a safetensors header")
            (n,) = struct.unpack("<Q", f.read(8))  # little-endian u64 header length
            if n == 0 or n > _MAX_HEADER_BYTES or n > size - 8:
                raise CheckpointError(
                    f"{path}: bad safetensors header length {n} (file is {size} bytes, limit {_MAX_HEADER_BYTES})"
                )
            raw = f.read(n)
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read: {e}") from e
    if len(raw) != n:
        raise CheckpointError(f"{path}: file ended inside the {n}-byte header")
    return raw, size


def _no_duplicate_keys(path: Path):
    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for k, v in pairs:
            if k in out:
                raise CheckpointError(f"{path}: key {k!r} appears twice in the header")
            out[k] = v
        return out

    return hook


def _parse_entry(path: Path, name: str, info: Any) -> _Entry:
    where = f"{path}: tensor {name!r}"
    if not isinstance(info, dict):
        raise CheckpointError(f"{where}: header entry is not an object")
    dtype_str = info.get("dtype")
    if dtype_str not in _DTYPES:
        raise CheckpointError(f"{where}: unknown dtype {dtype_str!r}")
    shape = info.get("shape")
    if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
        raise CheckpointError(f"{where}: shape {shape!r} is not a list of non-negative integers")
    offsets = info.get("data_offsets")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_int(o) for o in offsets)):
        raise CheckpointError(f"{where}: data_offsets {offsets!r} is not a pair of integers")
    begin, end = offsets
    dtype, itemsize = _DTYPES[dtype_str]
    nbytes = math.prod(shape) * itemsize
    if begin < 0 or end < begin or end - begin != nbytes:
        raise CheckpointError(
            f"{where}: data_offsets [{begin}, {end}] do not fit {dtype_str} {shape} ({nbytes} bytes)"
        )
    return _Entry(TensorMeta(name=name, file=path, dtype=dtype, shape=tuple(shape)), begin, end)


def _parse_header(path: Path) -> dict[str, _Entry]:
    """Validates one safetensors file's header against the file; -> tensor name -> entry.

    File layout: [u64 LE n][n bytes JSON header][data area]. Every tensor's bytes must lie in the data
    area, tensors must tile it exactly (no overlap, no gap), and the last must end at the end of file.
    """
    raw, size = _read_header_bytes(path)
    try:
        header = json.loads(raw.decode("utf-8"), object_pairs_hook=_no_duplicate_keys(path))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: header is not valid JSON: {e}") from e
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: header is not a JSON object")
    metadata = header.pop(_METADATA_KEY, {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise CheckpointError(f"{path}: {_METADATA_KEY} is not a string-to-string map")
    entries = {name: _parse_entry(path, name, info) for name, info in header.items()}

    data_bytes = size - 8 - len(raw)
    expected_begin = 0
    for entry in sorted(entries.values(), key=lambda e: (e.begin, e.end)):
        name = entry.meta.name
        if entry.end > data_bytes:
            raise CheckpointError(
                f"{path}: truncated: tensor {name!r} needs data bytes [{entry.begin}, {entry.end}) "
                f"but the data area holds {data_bytes} bytes"
            )
        if entry.begin != expected_begin:
            raise CheckpointError(
                f"{path}: tensor {name!r} starts at data byte {entry.begin}, expected {expected_begin} "
                "(tensors overlap or leave a gap)"
            )
        expected_begin = entry.end
    if expected_begin != data_bytes:
        raise CheckpointError(
            f"{path}: data area is {data_bytes} bytes but the tensors cover {expected_begin} (trailing bytes)"
        )
    return entries


def _read_index(model_dir: Path) -> dict[str, str]:
    """-> weight_map (tensor name -> shard file name), checked for shape and for safe file names."""
    path = model_dir / INDEX_FILE
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: cannot read the index: {e}") from e
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise CheckpointError(f"{path}: no weight_map object (tensor name -> shard file)")
    for name, shard in weight_map.items():
        if not isinstance(shard, str) or shard != Path(shard).name or shard in ("", ".", ".."):
            raise CheckpointError(f"{path}: tensor {name!r} maps to {shard!r}, not a file name in the directory")
    return weight_map


def _check_index_against_headers(
    index_path: Path, weight_map: dict[str, str], tensors: dict[str, _Entry]
) -> None:
    """Every indexed tensor must sit in the shard the index names; every shard tensor must be indexed."""
    for name, shard in weight_map.items():
        entry = tensors.get(name)
        if entry is None:
            raise CheckpointError(f"{index_path}: tensor {name!r} is listed in {shard} but absent from its header")
        if entry.meta.file.name != shard:
            raise CheckpointError(
                f"{index_path}: tensor {name!r} is listed in {shard} but found in {entry.meta.file.name}"
            )
    for name, entry in tensors.items():
        if name not in weight_map:
            raise CheckpointError(f"{entry.meta.file}: tensor {name!r} is not listed in {index_path.name}")


def _collect(files: list[Path]) -> dict[str, _Entry]:
    """Parses every header; a tensor name in two files is an error naming both."""
    tensors: dict[str, _Entry] = {}
    for path in files:
        for name, entry in _parse_header(path).items():
            if name in tensors:
                raise CheckpointError(f"{path}: tensor {name!r} also appears in {tensors[name].meta.file}")
            tensors[name] = entry
    return tensors


class Checkpoint:
    """Validated view of a safetensors checkpoint directory. Build with `Checkpoint.open`."""

    def __init__(self, model_dir: Path, tensors: dict[str, _Entry]):
        self.model_dir = model_dir
        self._tensors = tensors
        self._handles: dict[Path, Any] = {}  # file -> safe_open handle, opened on first read

    @classmethod
    def open(cls, model_dir: str | Path) -> Checkpoint:
        model_dir = Path(model_dir)
        if not model_dir.is_dir():
            raise CheckpointError(f"{model_dir}: not a directory")
        index_path = model_dir / INDEX_FILE
        if index_path.exists():
            weight_map = _read_index(model_dir)
            first_tensor: dict[str, str] = {}  # shard -> a tensor it should hold (for error messages)
            for name, shard in sorted(weight_map.items()):
                first_tensor.setdefault(shard, name)
            files = [model_dir / shard for shard in sorted(first_tensor)]
            for path in files:
                if not path.is_file():
                    raise CheckpointError(
                        f"{path}: shard named in {INDEX_FILE} is missing (it should hold {first_tensor[path.name]!r})"
                    )
            tensors = _collect(files)
            _check_index_against_headers(index_path, weight_map, tensors)
        else:
            files = sorted(p for p in model_dir.glob("*.safetensors") if p.is_file())
            if not files:
                raise CheckpointError(f"{model_dir}: no {INDEX_FILE} and no *.safetensors files")
            tensors = _collect(files)
        return cls(model_dir, tensors)

    def names(self) -> list[str]:
        return sorted(self._tensors)

    def __contains__(self, name: str) -> bool:
        return name in self._tensors

    def meta(self, name: str) -> TensorMeta:
        entry = self._tensors.get(name)
        if entry is None:
            raise CheckpointError(f"{self.model_dir}: no tensor {name!r} in the checkpoint")
        return entry.meta

    def _handle(self, meta: TensorMeta) -> Any:
        handle = self._handles.get(meta.file)
        if handle is None:
            try:
                handle = safe_open(str(meta.file), framework="pt", device="cpu")
            except Exception as e:  # the library raises its own error types
                raise CheckpointError(f"{meta.file}: cannot open for tensor {meta.name!r}: {e}") from e
            self._handles[meta.file] = handle
        return handle

    def _checked(self, meta: TensorMeta, tensor: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
        if tensor.dtype != meta.dtype or tuple(tensor.shape) != shape:
            raise CheckpointError(
                f"{meta.file}: tensor {meta.name!r} read as {tensor.dtype} {tuple(tensor.shape)}, "
                f"expected {meta.dtype} {shape} (file changed since open?)"
            )
        return tensor

    def read(self, name: str) -> torch.Tensor:
        """The whole tensor, in CPU memory (only its own bytes are read)."""
        meta = self.meta(name)
        try:
            tensor = self._handle(meta).get_tensor(name)
        except CheckpointError:
            raise
        except Exception as e:
            raise CheckpointError(f"{meta.file}: cannot read tensor {name!r}: {e}") from e
        return self._checked(meta, tensor, meta.shape)

    def read_slice(self, name: str, dim: int, start: int, stop: int) -> torch.Tensor:
        """tensor[..., start:stop, ...] along `dim` (negative dims count from the end); reads only that slice."""
        return self.read_region(name, {dim: (start, stop)})

    def read_region(self, name: str, ranges: dict[int, tuple[int, int]]) -> torch.Tensor:
        """The sub-tensor with dim d limited to ranges[d] = (start, stop) (other dims whole); reads only
        those bytes. E.g. {0: (2, 4), 1: (8, 16)} on an [E, 2I, G, 16] tensor -> [2, 8, G, 16]."""
        meta = self.meta(name)
        ndim = len(meta.shape)
        index = [slice(None)] * ndim
        shape = list(meta.shape)
        for dim, (start, stop) in ranges.items():
            if not -ndim <= dim < ndim:
                raise CheckpointError(f"{meta.file}: tensor {name!r} has {ndim} dims, cannot slice dim {dim}")
            dim %= ndim
            if not 0 <= start <= stop <= meta.shape[dim]:
                raise CheckpointError(
                    f"{meta.file}: tensor {name!r} slice [{start}:{stop}] out of range for dim {dim} "
                    f"of size {meta.shape[dim]}"
                )
            index[dim], shape[dim] = slice(start, stop), stop - start
        try:
            tensor = self._handle(meta).get_slice(name)[tuple(index)]
        except CheckpointError:
            raise
        except Exception as e:
            raise CheckpointError(f"{meta.file}: cannot read a slice of tensor {name!r}: {e}") from e
        return self._checked(meta, tensor, tuple(shape))

    def close(self) -> None:
        handles, self._handles = self._handles, {}
        for handle in handles.values():
            handle.__exit__(None, None, None)

    def __enter__(self) -> Checkpoint:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
