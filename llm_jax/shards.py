"""Sharded token streams: parallel in-order encoding, a shard writer, a memory-mapped reader.

Public API (used by `llm_jax.data`):
  - `encode_in_order(chunks, tokenizer, dtype, workers) -> Iterator[dict[str, Encoded]]`:
    each chunk (a list of (split, document) pairs) encoded, in order; after the first
    `INLINE_CHUNKS`, on `workers` processes with at most 2 * workers chunks in flight.
  - `chunks(pairs) -> Iterator[list[tuple[str, str]]]`: pairs grouped by `CHUNK_CHARS`.
  - `ShardWriter(folder, dtype)`: `.write(encoded)`, `.close() -> dict` (the split's
    manifest entry: documents, bytes, tokens, bytes_per_token and its shards).
  - `ShardedTokens(folder, split_info, dtype)`: a split's token stream as one array:
    `len()`, `shape`, `dtype`, integer, slice and integer-array indexing, `np.asarray`,
    `tolist()`.
  - `check_shards(folder, split_info, itemsize, hashes=False)`: ValueError naming the
    first shard that is missing, has the wrong size or (hashes=True) fails its BLAKE2b.

A split is the concatenation of its shards `<split>/00000.bin`, `00001.bin`, ... Each shard
holds whole documents: it is closed at the first chunk boundary after it reaches
`SHARD_TOKENS` tokens, so its manifest entry (tokens, text bytes, documents, BLAKE2b of
its bytes, hashed as they are written) describes it exactly. A training window may span
two shards; the reader gathers across them. Each document's tokens are the same however
the documents are chunked or spread over processes, so the stream does not depend on
`workers`.
"""

from __future__ import annotations

import collections
import hashlib
import itertools
import multiprocessing
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import NamedTuple

import numpy as np

from llm_jax.tokenizer import DataError

SHARD_TOKENS = 1 << 25  # a shard closes past this many tokens: 64 MiB as uint16
CHUNK_CHARS = 1 << 20  # text per encode task: a few of these in flight bound the memory
INLINE_CHUNKS = 8  # chunks encoded in-process before workers start: small corpora skip the pool


class Encoded(NamedTuple):
    """One chunk's documents of one split: tokens (each document's, then eos), counts."""

    tokens: np.ndarray
    bytes: int
    documents: int


def chunks(pairs: Iterable[tuple[str, str]]) -> Iterator[list[tuple[str, str]]]:
    """Consecutive (split, document) pairs, grouped until a group holds CHUNK_CHARS."""
    chunk, size = [], 0
    for split, doc in pairs:
        chunk.append((split, doc))
        size += len(doc)
        if size >= CHUNK_CHARS:
            yield chunk
            chunk, size = [], 0
    if chunk:
        yield chunk


def _encode(chunk: list[tuple[str, str]], tokenizer, dtype: str) -> dict[str, Encoded]:
    out = {}
    for split in dict.fromkeys(s for s, _ in chunk):  # the splits, in order of appearance
        docs = [doc for s, doc in chunk if s == split]
        ids = tokenizer.encode_batch(docs)
        tokens = np.fromiter(
            itertools.chain.from_iterable(d + [tokenizer.eos_id] for d in ids),
            dtype=dtype,
            count=sum(len(d) + 1 for d in ids),
        )
        out[split] = Encoded(tokens, sum(len(d.encode("utf-8")) for d in docs), len(docs))
    return out


_worker: dict = {}  # a worker process's tokenizer and dtype, set once by _init_worker


def _init_worker(tokenizer, dtype: str) -> None:
    _worker.update(tokenizer=tokenizer, dtype=dtype)


def _encode_in_worker(chunk: list[tuple[str, str]]) -> dict[str, Encoded]:
    return _encode(chunk, _worker["tokenizer"], _worker["dtype"])


def encode_in_order(
    chunk_iter: Iterable[list[tuple[str, str]]], tokenizer, dtype: str, workers: int
) -> Iterator[dict[str, Encoded]]:
    """Encode each chunk, in order, keeping at most 2 * workers chunks in flight."""
    chunk_iter = iter(chunk_iter)
    inline = INLINE_CHUNKS if workers > 1 else None  # None: all of them, in this process
    for chunk in itertools.islice(chunk_iter, inline):
        yield _encode(chunk, tokenizer, dtype)
    if workers <= 1:
        return
    # spawn, not fork: the parent may hold JAX's threads, which a fork would copy mid-state.
    # The pool starts its processes on the first submit: a corpus that ended above costs none.
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(
        workers, mp_context=context, initializer=_init_worker, initargs=(tokenizer, dtype)
    ) as pool:
        pending = collections.deque()
        for chunk in chunk_iter:
            pending.append(pool.submit(_encode_in_worker, chunk))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


class ShardWriter:
    """Writes one split's encoded chunks into shard files under `folder`."""

    def __init__(self, folder: Path, dtype: str):
        self.folder, self.dtype = folder, dtype
        self.shards: list[dict] = []
        self._file = None
        folder.mkdir(parents=True)

    def write(self, encoded: Encoded) -> None:
        """Append a chunk; close the shard once it holds SHARD_TOKENS tokens."""
        if self._file is None:
            name = f"{len(self.shards):05d}.bin"
            self._file = open(self.folder / name, "wb")  # closed by _close_shard
            self._hash = hashlib.blake2b(digest_size=16)
            self._shard = dict(file=f"{self.folder.name}/{name}", tokens=0, bytes=0, documents=0)
        data = encoded.tokens.tobytes()
        self._file.write(data)
        self._hash.update(data)
        self._shard["tokens"] += encoded.tokens.size
        self._shard["bytes"] += encoded.bytes
        self._shard["documents"] += encoded.documents
        if self._shard["tokens"] >= SHARD_TOKENS:
            self._close_shard()

    def _close_shard(self) -> None:
        self._file.close()
        self._file = None
        self.shards.append({**self._shard, "blake2b": self._hash.hexdigest()})

    def close(self) -> dict:
        """Finish the split: its manifest entry (totals and shards)."""
        if self._file is not None:
            self._close_shard()
        tokens = sum(s["tokens"] for s in self.shards)
        n_bytes = sum(s["bytes"] for s in self.shards)
        return {
            "documents": sum(s["documents"] for s in self.shards),
            "bytes": n_bytes,
            "tokens": tokens,
            "bytes_per_token": n_bytes / max(tokens, 1),
            "shards": self.shards,
        }


def _file_hash(path: Path) -> str:
    """BLAKE2b of a file, read in 8 MiB blocks (about 1 GB/s on one core)."""
    digest = hashlib.blake2b(digest_size=16)
    with open(path, "rb") as f:
        while block := f.read(8 << 20):
            digest.update(block)
    return digest.hexdigest()


def _size_problem(path: Path, expected: int) -> str:
    """Why `path` is not a shard of `expected` bytes ('' if it is)."""
    if not path.is_file():
        return f"{path} is missing"
    size = path.stat().st_size
    return f"{path} has {size} bytes, its manifest says {expected}" if size != expected else ""


def check_shards(folder: Path, split_info: dict, itemsize: int, hashes: bool = False) -> None:
    """ValueError naming the first shard that is missing, of the wrong size, or (with
    `hashes`, one full read) whose bytes fail their BLAKE2b."""
    for shard in split_info["shards"]:
        path = folder / shard["file"]
        if problem := _size_problem(path, shard["tokens"] * itemsize):
            raise ValueError(problem)
        if hashes and _file_hash(path) != shard["blake2b"]:
            raise ValueError(f"{path} fails its checksum")


class ShardedTokens:
    """A split's token stream over its shard files, indexed like one 1-D array.

    Shards are memory-mapped on first use, after a size check (a stat, no read): only the
    pages a process indexes are read from disk.
    """

    ndim = 1

    def __init__(self, folder: Path, split_info: dict, dtype: str):
        self.dtype = np.dtype(dtype)
        self.files = [folder / s["file"] for s in split_info["shards"]]
        sizes = [s["tokens"] for s in split_info["shards"]]
        self.starts = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])
        self._maps: dict[int, np.memmap] = {}

    def __len__(self) -> int:
        return int(self.starts[-1])

    @property
    def shape(self) -> tuple[int]:
        """(tokens,), as a 1-D array's."""
        return (len(self),)

    def _shard(self, i: int) -> np.memmap:
        if i not in self._maps:
            expected = int(self.starts[i + 1] - self.starts[i]) * self.dtype.itemsize
            if problem := _size_problem(self.files[i], expected):
                raise DataError(
                    f"token cache damaged after it was built: {problem}; rerun `llm-jax data "
                    "prepare` with this run's config to rebuild it"
                )
            self._maps[i] = np.memmap(self.files[i], dtype=self.dtype, mode="r")
        return self._maps[i]

    def _range(self, start: int, stop: int) -> np.ndarray:
        """Tokens [start, stop) as one array, read shard by shard."""
        first = int(np.searchsorted(self.starts, start, side="right")) - 1
        parts = []
        for i in range(max(first, 0), len(self.files)):
            lo, hi = self.starts[i], self.starts[i + 1]
            if lo >= stop:
                break
            parts.append(self._shard(i)[max(start - lo, 0) : min(stop, hi) - lo])
        return np.concatenate(parts) if parts else np.empty(0, self.dtype)

    def __getitem__(self, index) -> np.ndarray:
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            if step == 1:
                return self._range(start, max(start, stop))
            index = np.arange(start, stop, step)
        index = np.asarray(index)
        if index.dtype.kind not in "iu":
            raise TypeError(f"token indices must be integers, not {index.dtype}")
        flat = index.ravel().astype(np.int64)
        flat = np.where(flat < 0, flat + len(self), flat)
        if flat.size and (flat.min() < 0 or flat.max() >= len(self)):
            raise IndexError(f"token index out of range for a stream of {len(self)}")
        shard = np.searchsorted(self.starts, flat, side="right") - 1
        out = np.empty(flat.size, self.dtype)
        for i in np.unique(shard):
            mine = shard == i
            out[mine] = self._shard(int(i))[flat[mine] - self.starts[i]]
        return out.reshape(index.shape) if index.ndim else out[0]

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        tokens = self._range(0, len(self))
        return tokens if dtype is None else tokens.astype(dtype)

    def tolist(self) -> list[int]:
        """Every token, as Python ints (for small splits and tests)."""
        return self._range(0, len(self)).tolist()
