"""Token caches and packed, per-host, resumable batches.

Public API (the trainer codes against these):
  - `prepare(config, verify=False) -> Prepared`: trains or loads the tokenizer and
    tokenizes both splits once into on-disk caches; later calls (a rerun, the 20th trial
    of a sweep) reuse them. `Prepared` fields: `tokenizer`, `folder`, `train_path`,
    `val_path` (each split's folder of shards), `manifest`, `train_tokens`, `val_tokens`,
    `train_bytes_per_token`, `val_bytes_per_token`; `Prepared.tokens(split) ->
    shards.ShardedTokens` (`len`, integer/slice/array indexing, `np.asarray`).
  - `BatchIterator(prepared_or_tokens, batch_size, seq_len, seed=0, process_index=None,
    process_count=None, segment_ids=False, eos_id=None)`: yields this process's rows of
    each global batch, `{'inputs', 'targets'[, 'segment_ids']}` int32
    `[batch_size // process_count, seq_len]`; `get_state() -> dict`, `set_state(dict)`,
    `epoch` (float), `epoch_offset(epoch) -> int`.
  - `val_batches(prepared, batch_size, seq_len, num_batches, process_index=None,
    process_count=None, segment_ids=False) -> list[dict]`: the fixed validation batches.
  - `to_global(batch, sharding) -> dict[str, jax.Array]`; `DeviceBatches(iterator,
    sharding, ahead=8)`: `next(left)` a batch on the devices, several put at once;
    `get_state()`, `epoch` as of the batches handed out.
  - `cache_root(data_cfg) -> Path`, `DataError` (from `llm_jax.tokenizer`).

Caches live under `data.cache_dir`, else `$LLM_JAX_CACHE`, else `~/.cache/llm_jax`:
`tokenizers/<key>.model` keyed by (corpus identity, tokenizer settings) and
`tokens/<key>/{manifest.json, train/00000.bin..., val/00000.bin...}` keyed by (corpus
identity, the tokenizer's sha256). Building streams the corpus (`Corpus.stream`) through
`data.workers` tokenizer processes into shards (`llm_jax.shards`): memory holds a few
chunks, not the corpus, and the tokens do not depend on the number of workers. The
manifest records each shard's tokens, text bytes, documents and BLAKE2b (hashed as it
is written). Opening a cache, as every host of a run does, checks the shards' sizes
(stats, no reads); `prepare(config, verify=True)` (`llm-jax data prepare --verify`)
re-hashes every shard. A cache that fails is rebuilt, as is a cached tokenizer that
does not load; a shard whose size changes after opening is a DataError on first read.
A cache folder is built under a temporary name and renamed into place, so an
interrupted preparation never leaves a folder that looks valid (the next build removes
its leftovers); a file lock makes concurrent trials wait for one builder.

Token stream: each document's tokens followed by eos, concatenated; uint16 when the
vocab fits, else uint32. Bytes per token = UTF-8 bytes of the documents / tokens
(eos included), so bits per byte = loss_per_token / ln(2) / bytes_per_token.

Packing: the T train tokens are cut into W = T // (seq_len+1) non-overlapping windows;
inputs are a window's first seq_len tokens, targets its last seq_len. Epoch e starts the
windows at a random offset o_e in [0, T - W*(seq_len+1)] and visits them in a random
order, both drawn from numpy's default_rng([seed, e]); the o_e tokens before the first
window and the tokens after the last (fewer than seq_len+1 in all) are dropped that
epoch, and a different tail next epoch. The global window stream runs on across
epochs, so batch b holds stream windows [b*batch_size, (b+1)*batch_size); process p
reads the p-th contiguous `batch_size // process_count` of them.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import jax
import ml_collections
import numpy as np

from llm_jax import shards, storage
from llm_jax.corpus import Corpus
from llm_jax.tokenizer import EOS_ID, DataError, Tokenizer, load_tokenizer, train_tokenizer

__all__ = [
    "DataError",
    "Prepared",
    "BatchIterator",
    "prepare",
    "val_batches",
    "to_global",
    "cache_root",
]

CACHE_FORMAT = 2  # bump when the cache layout or the tokenizer settings change
log = logging.getLogger(__name__)


def cache_root(data_cfg: ml_collections.ConfigDict) -> Path:
    """The folder holding tokenizers and token caches (shared by all trials of a sweep)."""
    root = data_cfg.cache_dir or os.environ.get("LLM_JAX_CACHE") or "~/.cache/llm_jax"
    if storage.is_gcs(root):
        raise DataError(
            f"data.cache_dir={root!r}: token caches are memory-mapped local files; set a local "
            "folder (each host builds its own from the corpus, which may be on gs://)"
        )
    return Path(root).expanduser()


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:20]


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on `path`.lock while building what `path` names."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@dataclass(frozen=True)
class Prepared:
    """A tokenizer and the token caches of both splits, with their statistics."""

    tokenizer: Tokenizer
    folder: Path
    train_path: Path  # the folder of the train split's shard files
    val_path: Path  # the folder of the val split's shard files
    manifest: dict
    train_tokens: int
    val_tokens: int
    train_bytes_per_token: float
    val_bytes_per_token: float

    def tokens(self, split: str = "train") -> shards.ShardedTokens:
        """The split's token stream: an array-like over its memory-mapped shards."""
        return shards.ShardedTokens(
            self.folder, self.manifest["splits"][split], self.manifest["dtype"]
        )


def _get_tokenizer(config: ml_collections.ConfigDict, corpus: Corpus, root: Path) -> Tokenizer:
    d, vocab_size = config.data, config.model.vocab_size
    if d.tokenizer_path:
        return load_tokenizer(d.tokenizer_path, vocab_size)
    key = _digest(
        {
            "corpus": corpus.identity,
            "vocab_size": vocab_size,
            "max_chars": d.tokenizer_max_chars,
            "type": d.tokenizer_type,
            "format": CACHE_FORMAT,
        }
    )
    path = root / "tokenizers" / f"{key}.model"
    with _file_lock(path):
        if path.is_file():
            try:
                return load_tokenizer(path, vocab_size)
            except DataError as e:
                log.warning("warning: cached tokenizer %s is damaged (%s); rebuilding it", path, e)
        log.info("training a %s tokenizer (vocab %d) for %s", d.tokenizer_type, vocab_size, path)
        tokenizer = train_tokenizer(
            corpus.documents("train"), vocab_size, d.tokenizer_type, d.tokenizer_max_chars
        )
        tokenizer.save(path)
    return tokenizer


def _read_manifest(folder: Path, verify: bool = False) -> dict | None:
    """The manifest of a complete cache folder whose shards have their recorded sizes
    (and, with `verify`, hashes), else None (with a warning if the folder exists)."""
    if not (folder / "manifest.json").exists():
        return None
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
        itemsize = np.dtype(manifest["dtype"]).itemsize
        for split in ("train", "val"):
            shards.check_shards(folder, manifest["splits"][split], itemsize, hashes=verify)
        return manifest
    except (OSError, ValueError, KeyError) as e:
        log.warning("warning: token cache %s is damaged (%s); rebuilding it", folder, e)
        return None


def _workers(data_cfg: ml_collections.ConfigDict) -> int:
    """Tokenizer processes for a build: data.workers, or 0 = one per core up to 8."""
    return data_cfg.workers or min(os.cpu_count() or 1, 8)


def _build_cache(folder: Path, tokenizer: Tokenizer, corpus: Corpus, n_workers: int = 1) -> dict:
    """Tokenize the corpus, streamed, into shards in a temporary folder, then rename it to
    `folder`. Memory: a few chunks of text and tokens, never the corpus."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    for stale in folder.parent.glob(folder.name + ".tmp-*"):  # left by a killed builder
        shutil.rmtree(stale, ignore_errors=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=folder.name + ".tmp-"))
    try:
        dtype = "uint16" if tokenizer.vocab_size <= 1 << 16 else "uint32"
        writers = {split: shards.ShardWriter(tmp / split, dtype) for split in ("train", "val")}
        replaced_before = corpus.decode_replacements
        chunks = shards.chunks(corpus.stream())
        for encoded in shards.encode_in_order(chunks, tokenizer, dtype, n_workers):
            for split, part in encoded.items():
                writers[split].write(part)
        splits = {split: writer.close() for split, writer in writers.items()}
        for split, info in splits.items():
            if not info["documents"]:
                raise DataError(
                    f"the {split} split of the corpus is empty; add documents or "
                    "raise config.data.val_fraction"
                )
        manifest = {
            "format": CACHE_FORMAT,
            "source": corpus.identity,
            "dtype": dtype,
            "tokenizer": {
                "sha256": tokenizer.sha256,
                "path": tokenizer.path,
                "vocab_size": tokenizer.vocab_size,
            },
            "eos_id": tokenizer.eos_id,
            "splits": splits,
            "decode_replacements": corpus.decode_replacements - replaced_before,
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
        if folder.exists():  # an incomplete or damaged folder: replace it
            shutil.rmtree(folder)
        os.rename(tmp, folder)
        return manifest
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def prepare(config: ml_collections.ConfigDict, verify: bool = False) -> Prepared:
    """Tokenizer and token caches for `config.data`, built on first use, reused after.

    Opening a cache checks its shards' sizes only; `verify` also re-hashes every shard
    (one full read) and rebuilds a cache whose bytes changed.
    """
    root = cache_root(config.data)
    corpus = Corpus(config.data, root / "hf")
    tokenizer = _get_tokenizer(config, corpus, root)
    folder = (
        root
        / "tokens"
        / _digest(
            {"corpus": corpus.identity, "tokenizer": tokenizer.sha256, "format": CACHE_FORMAT}
        )
    )
    with _file_lock(folder):  # checking under the lock: a concurrent rebuild is never read
        manifest = _read_manifest(folder, verify) or _build_cache(
            folder, tokenizer, corpus, _workers(config.data)
        )
    if manifest["decode_replacements"]:
        log.warning(
            "replaced %d undecodable byte sequences with U+FFFD", manifest["decode_replacements"]
        )
    train, val = manifest["splits"]["train"], manifest["splits"]["val"]
    for split, info in (("train", train), ("val", val)):
        _count_windows(info["tokens"], config.data.seq_len, split)
    return Prepared(
        tokenizer,
        folder,
        folder / "train",
        folder / "val",
        manifest,
        train["tokens"],
        val["tokens"],
        train["bytes_per_token"],
        val["bytes_per_token"],
    )


def _count_windows(n_tokens: int, seq_len: int, split: str) -> int:
    windows = n_tokens // (seq_len + 1)
    if windows == 0:
        raise DataError(
            f"the {split} split has {n_tokens} tokens, fewer than one sequence of seq_len+1="
            f"{seq_len + 1}; lower --config.data.seq_len or use a bigger corpus"
        )
    return windows


def _process(index: int | None, count: int | None, batch_size: int) -> tuple[int, int]:
    index = jax.process_index() if index is None else index
    count = jax.process_count() if count is None else count
    if batch_size % count or not 0 <= index < count:
        raise DataError(
            f"batch size {batch_size} cannot be split over {count} processes "
            f"(process {index}); use a batch size divisible by {count}"
        )
    return index, batch_size // count


def _make_batch(
    tokens: np.ndarray, starts: np.ndarray, seq_len: int, eos_id: int, segment_ids: bool
) -> dict[str, np.ndarray]:
    """Windows of seq_len+1 tokens at `starts` -> inputs, targets (and segment ids)."""
    rows = np.asarray(tokens[starts[:, None] + np.arange(seq_len + 1)], dtype=np.int32)
    batch = {"inputs": rows[:, :-1], "targets": rows[:, 1:]}
    if segment_ids:
        # A new segment starts after each eos; ids count from 1 within the row (0 = padding).
        is_eos = (batch["inputs"] == eos_id).astype(np.int32)
        batch["segment_ids"] = 1 + np.cumsum(is_eos, axis=1, dtype=np.int32) - is_eos
    return batch


class BatchIterator:
    """Packed training batches: deterministic in (seed, epoch), per host, resumable."""

    def __init__(
        self,
        prepared_or_tokens: Prepared | shards.ShardedTokens | np.ndarray,
        batch_size: int,
        seq_len: int,
        seed: int = 0,
        process_index: int | None = None,
        process_count: int | None = None,
        segment_ids: bool = False,
        eos_id: int | None = None,
    ):
        if isinstance(prepared_or_tokens, Prepared):
            self.tokens = prepared_or_tokens.tokens("train")
            self.eos_id = prepared_or_tokens.tokenizer.eos_id
        else:  # a token stream; eos_id only matters for segment ids
            tokens = prepared_or_tokens
            self.tokens = tokens if isinstance(tokens, shards.ShardedTokens) else np.asarray(tokens)
            self.eos_id = EOS_ID if eos_id is None else eos_id
        self.process_index, self.local_batch = _process(process_index, process_count, batch_size)
        self.batch_size, self.seq_len, self.segment_ids = batch_size, seq_len, segment_ids
        self.windows = _count_windows(len(self.tokens), seq_len, "train")
        self.slack = len(self.tokens) - self.windows * (seq_len + 1)
        self.seed, self._epoch, self._position = seed, 0, 0
        self._orders: dict[int, tuple[int, np.ndarray]] = {}

    @property
    def epoch(self) -> float:
        """Epochs seen: completed passes plus the fraction of this pass's windows consumed."""
        return self._epoch + self._position / self.windows

    def _order(self, epoch: int) -> tuple[int, np.ndarray]:
        if epoch not in self._orders:
            rng = np.random.default_rng([self.seed, epoch])
            offset = int(rng.integers(0, self.slack + 1))
            # Keep only the epochs a batch can still touch: memory stays two permutations.
            self._orders = {e: o for e, o in self._orders.items() if e >= epoch - 1}
            self._orders[epoch] = (offset, rng.permutation(self.windows))
        return self._orders[epoch]

    def epoch_offset(self, epoch: int) -> int:
        """First token of epoch `epoch`'s windows; tokens before it are skipped that epoch."""
        return self._order(epoch)[0]

    def __iter__(self) -> BatchIterator:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        stream = (
            self._position + self.process_index * self.local_batch + np.arange(self.local_batch)
        )
        epochs, index = self._epoch + stream // self.windows, stream % self.windows
        starts = np.empty(self.local_batch, dtype=np.int64)
        for epoch in np.unique(epochs):
            offset, order = self._order(int(epoch))
            mine = epochs == epoch
            starts[mine] = offset + order[index[mine]] * (self.seq_len + 1)
        consumed = self._position + self.batch_size
        self._epoch += consumed // self.windows
        self._position = consumed % self.windows
        return _make_batch(self.tokens, starts, self.seq_len, self.eos_id, self.segment_ids)

    def get_state(self) -> dict:
        """A JSON-able position: restoring it yields exactly the batches that come next."""
        return {
            "seed": int(self.seed),
            "epoch": int(self._epoch),
            "position": int(self._position),
            "seq_len": self.seq_len,
            "windows": self.windows,
        }

    def set_state(self, state: dict) -> None:
        """Continue from a `get_state()` dict saved by an iterator over the same data."""
        if (state["seq_len"], state["windows"]) != (self.seq_len, self.windows):
            raise DataError(
                f"the saved data position is for seq_len={state['seq_len']} over "
                f"{state['windows']} windows, but this run has seq_len={self.seq_len} over "
                f"{self.windows}; resume with the data config and corpus of the saved run"
            )
        self.seed, self._epoch, self._position = state["seed"], state["epoch"], state["position"]


def val_batches(
    prepared: Prepared,
    batch_size: int,
    seq_len: int,
    num_batches: int,
    process_index: int | None = None,
    process_count: int | None = None,
    segment_ids: bool = False,
) -> list[dict[str, np.ndarray]]:
    """The fixed validation batches: windows spread evenly over the whole val split.

    Uses `num_batches` batches when the split holds that many windows, else as many
    whole batches as fit (at least one, else DataError).
    """
    process_index, local = _process(process_index, process_count, batch_size)
    tokens = prepared.tokens("val")
    windows = _count_windows(len(tokens), seq_len, "val")
    num_batches = min(num_batches, windows // batch_size)
    if num_batches == 0:
        raise DataError(
            f"the val split holds {windows} sequences of seq_len+1={seq_len + 1} tokens, "
            f"fewer than one batch of {batch_size}; lower config.data.val_batch_size or "
            "seq_len, or hold out more text (config.data.val_fraction)"
        )
    total = num_batches * batch_size
    starts = (np.arange(total) * windows // total) * (seq_len + 1)
    return [
        _make_batch(
            tokens,
            starts[b * batch_size + process_index * local :][:local],
            seq_len,
            prepared.tokenizer.eos_id,
            segment_ids,
        )
        for b in range(num_batches)
    ]


def to_global(
    batch: dict[str, np.ndarray], sharding: jax.sharding.Sharding
) -> dict[str, jax.Array]:
    """Assemble each process's rows into global arrays laid out by `sharding`.

    The sharding must split the batch axis over processes in process order (as a mesh
    from `jax.make_mesh` does), so process p's rows are rows p*local..(p+1)*local.
    """
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}


class DeviceBatches:
    """An iterator's batches, put on the devices up to `ahead` at a time (one transfer for
    them in a single process: on a CPU a put per batch cost ~0.25 ms of a small model's
    ~4 ms step). `get_state()` and `epoch` are those after the batches handed out so far, so a
    checkpoint resumes at the next one to train on, whatever was fetched ahead."""

    def __init__(self, iterator, sharding: jax.sharding.Sharding, ahead: int = 8):
        self.iterator, self.sharding, self.ahead = iterator, sharding, ahead
        self._queue: list[dict[str, jax.Array]] = []
        self._before: list[tuple[dict, float]] = []  # (state, epoch) before each queued one

    def next(self, left: int) -> dict[str, jax.Array]:
        """The next batch, on the devices; `left`: batches the run still needs (>= 1)."""
        if not self._queue:
            before, batches = [], []
            for _ in range(max(1, min(self.ahead, left))):
                before.append((self.iterator.get_state(), self.iterator.epoch))
                batches.append(next(self.iterator))
            if jax.process_count() == 1:
                self._queue = jax.device_put(batches, self.sharding)
            else:
                self._queue = [to_global(b, self.sharding) for b in batches]
            self._before = before
        self._before.pop(0)
        return self._queue.pop(0)

    def get_state(self) -> dict:
        return self._before[0][0] if self._before else self.iterator.get_state()

    @property
    def epoch(self) -> float:
        return self._before[0][1] if self._before else self.iterator.epoch
