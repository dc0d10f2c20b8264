"""Safetensors files read tensor by tensor and written shard by shard, with numpy only.

A safetensors file is an 8-byte little-endian header length, a JSON header
(`{name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {...}}`) and the
raw bytes. `TensorReader` memory-maps each file and hands out one tensor at a time,
releasing the file's pages after each, so converting a checkpoint never holds a second
full copy of it in host memory; bfloat16
comes back as `ml_dtypes.bfloat16` (numpy has no such type). A sharded checkpoint
(`model.safetensors.index.json` with its `weight_map`) reads like a single file.
"""

from __future__ import annotations

import json
import mmap
import os
import struct
from collections.abc import Iterable, Iterator
from pathlib import Path

import ml_dtypes
import numpy as np

from llm_jax.checkpoint import CheckpointError

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
MAX_SHARD_BYTES = 5 * 1024**3  # transformers' default max_shard_size

_DTYPES = {
    "F64": np.dtype(np.float64),
    "F32": np.dtype(np.float32),
    "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16),
    "I64": np.dtype(np.int64),
    "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16),
    "I8": np.dtype(np.int8),
    "U8": np.dtype(np.uint8),
    "BOOL": np.dtype(np.bool_),
}
_NAMES = {dtype: name for name, dtype in _DTYPES.items()}


def _read_header(path: Path) -> tuple[dict, int]:
    """(header without __metadata__, offset where tensor data starts)."""
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        try:
            header = json.loads(f.read(length))
        except ValueError as e:
            raise CheckpointError(f"{path} is not a safetensors file ({e})") from e
    header.pop("__metadata__", None)
    return header, 8 + length


class TensorReader:
    """The tensors of one checkpoint (one file or an index of shards), read one at a time.

    Use as a context manager (or call `close`).
    """

    def __init__(self, paths: Iterable[str | os.PathLike]):
        self._files: dict[str, tuple[dict, int, mmap.mmap]] = {}
        self._where: dict[str, str] = {}
        for path in map(Path, paths):
            header, start = _read_header(path)
            with open(path, "rb") as f:
                mapped = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            self._files[str(path)] = (header, start, mapped)
            self._where.update(dict.fromkeys(header, str(path)))

    @classmethod
    def from_dir(cls, folder: str | os.PathLike) -> TensorReader:
        """The checkpoint in an HF model directory: an index of shards or one file."""
        folder = Path(folder)
        if (folder / INDEX_FILE).is_file():
            index = json.loads((folder / INDEX_FILE).read_text())
            shards = sorted(set(index["weight_map"].values()))
            return cls(folder / shard for shard in shards)
        files = sorted(folder.glob("*.safetensors"))
        if not files:
            raise CheckpointError(f"{folder} holds no *.safetensors file")
        return cls(files)

    def names(self) -> list[str]:
        """Every tensor name, in file order."""
        return list(self._where)

    def shape(self, name: str) -> tuple[int, ...]:
        """Shape of tensor `name`, without reading it."""
        return tuple(self._files[self._where[name]][0][name]["shape"])

    def dtype(self, name: str) -> np.dtype:
        """Dtype of tensor `name`, without reading it."""
        return _DTYPES[self._files[self._where[name]][0][name]["dtype"]]

    def read(self, name: str) -> np.ndarray:
        """Tensor `name`, copied out of the mapped file.

        The file's pages are released right after the copy, so reading a checkpoint
        tensor by tensor keeps at most one tensor of it resident, not the whole file.
        """
        header, start, mapped = self._files[self._where[name]]
        info = header[name]
        if info["dtype"] not in _DTYPES:
            raise CheckpointError(f"tensor {name} has dtype {info['dtype']}, which is unsupported")
        dtype = _DTYPES[info["dtype"]]
        begin, end = (start + offset for offset in info["data_offsets"])
        view = np.frombuffer(mapped, dtype, (end - begin) // dtype.itemsize, begin)
        array = view.reshape(info["shape"]).copy()
        del view
        page_start = begin - begin % mmap.PAGESIZE
        mapped.madvise(mmap.MADV_DONTNEED, page_start, end - page_start)
        return array

    def __contains__(self, name: str) -> bool:
        return name in self._where

    def close(self) -> None:
        """Unmap every file."""
        for _, _, mapped in self._files.values():
            mapped.close()
        self._files.clear()

    def __enter__(self) -> TensorReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _shard_groups(
    tensors: list[tuple[str, tuple[int, ...], np.dtype]], max_bytes: int
) -> list[list[int]]:
    """Indices of `tensors` split into consecutive groups of at most `max_bytes` each."""
    groups, size = [[]], 0
    for i, (_, shape, dtype) in enumerate(tensors):
        nbytes = int(np.prod(shape)) * dtype.itemsize
        if groups[-1] and size + nbytes > max_bytes:
            groups.append([])
            size = 0
        groups[-1].append(i)
        size += nbytes
    return groups


def _write_file(path: Path, entries: list[tuple[str, tuple, np.dtype]], arrays: Iterator) -> None:
    header, offset = {}, 0
    for name, shape, dtype in entries:
        nbytes = int(np.prod(shape)) * dtype.itemsize
        header[name] = {
            "dtype": _NAMES[dtype],
            "shape": list(shape),
            "data_offsets": [offset, offset + nbytes],
        }
        offset += nbytes
    header["__metadata__"] = {"format": "pt"}  # transformers refuses files without it
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # tensor data starts 8-byte aligned
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(encoded)) + encoded)
        for (name, shape, dtype), array in zip(entries, arrays, strict=True):
            array = np.ascontiguousarray(array, dtype=dtype)
            if array.shape != tuple(shape):
                raise ValueError(f"{name}: shape {array.shape}, declared {shape}")
            f.write(array.tobytes())
    os.replace(tmp, path)


def write_checkpoint(
    folder: str | os.PathLike,
    tensors: list[tuple[str, tuple[int, ...], np.dtype]],
    produce,
    max_shard_bytes: int = MAX_SHARD_BYTES,
) -> list[str]:
    """Write `tensors` (name, shape, dtype) as HF safetensors in `folder`; returns the files.

    `produce(name)` makes one tensor when its turn comes, so only one is in memory. One
    shard is `model.safetensors`; more are `model-0000i-of-0000n.safetensors` plus the
    index `model.safetensors.index.json` that transformers reads.
    """
    folder = Path(folder)
    groups = _shard_groups(tensors, max_shard_bytes)
    names = (
        [SINGLE_FILE]
        if len(groups) == 1
        else [f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors" for i in range(len(groups))]
    )
    weight_map = {}
    for file_name, group in zip(names, groups, strict=True):
        entries = [tensors[i] for i in group]
        _write_file(folder / file_name, entries, (produce(name) for name, _, _ in entries))
        weight_map.update(dict.fromkeys((name for name, _, _ in entries), file_name))
    if len(groups) > 1:
        total = sum(int(np.prod(s)) * d.itemsize for _, s, d in tensors)
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (folder / INDEX_FILE).write_text(json.dumps(index, indent=2))
    return names
