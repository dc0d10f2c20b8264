"""Weighted mixtures of corpora: `config.data.sources`, one token cache per source.

Public API (the trainer codes against these; config.validate calls `check_sources`):
  - `parse_sources(data_cfg) -> list[Source]`, `check_sources(config)`: the entries of
    `data.sources`, or ConfigError naming the bad one.
  - `prepare(config) -> Mixture`: every source prepared through `llm_jax.data.prepare`.
  - `MixtureIterator(sources, weights, batch_size, seq_len, ...)`: BatchIterator's
    interface over a mixture (`__next__`, `get_state`/`set_state`, `epoch`).
Validation: each source's own `data.val_batches` (the trainer logs `val/<name>/loss`).

A source entry is `(path, weight)`, `(name, path, weight)`, or a dict with `weight`, an
optional `name` and corpus keys of `config.data` (`path`, `source`, `val_path`, `format`,
`text_field`, `hf_name`, ...); a name defaults to the path's last plain folder or file
stem. Keys not given come from `config.data`, so top-level corpus options (`val_fraction`,
`txt_document`, ...) apply to every source.

One tokenizer serves every source: `data.tokenizer_path` when set, else the one trained
on the FIRST source (put the most representative source first); the others are tokenized
with it. Each source keeps its own caches, shared with single-source runs of that corpus.

Sampling: slot i of global batch b (row i of the batch_size rows all hosts together
train on) is drawn from the sources with the given weights by numpy's
default_rng([seed, b, _MIX_STREAM]); the k-th slot given to source s gets the k-th
window of that source's own window stream (a `data.BatchIterator` over it, seed `seed`).
The state is global: the next batch index and how many windows each source has given,
so a run resumes exactly, on any number of hosts, and host p reads only its own rows.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import ml_collections
import numpy as np

from llm_jax import config as config_lib
from llm_jax import data as data_lib
from llm_jax.config import ConfigError
from llm_jax.data import DataError, Prepared

__all__ = [
    "Source",
    "Mixture",
    "MixtureIterator",
    "parse_sources",
    "check_sources",
    "prepare",
]

_MIX_STREAM = 0x6D6978  # 'mix': keeps slot draws apart from BatchIterator's (seed, epoch) draws
# config.data keys a source may set; the rest (seq_len, tokenizer, cache) are the run's
_CORPUS_KEYS = (
    "source",
    "path",
    "val_path",
    "format",
    "text_field",
    "txt_document",
    "hf_name",
    "hf_config",
    "hf_train_split",
    "hf_val_split",
    "hf_streaming",
    "hf_max_documents",
    "val_fraction",
    "on_decode_error",
)
_NAME = re.compile(r"[A-Za-z0-9_.-]+")


@dataclass(frozen=True)
class Source:
    """One entry of `data.sources`: its name, weight and `config.data` overrides."""

    name: str
    weight: float
    data: dict


def _default_name(path: str) -> str:
    """'corpus/comedies/*.md' -> 'comedies', 'data/wiki.jsonl' -> 'wiki'."""
    parts = [p for p in path.split(",")[0].rstrip("/").split("/") if p]
    if parts and not re.search(r"[*?\[]", parts[-1]):
        return parts[-1].split(".")[0]
    plain = [p for p in parts if not re.search(r"[*?\[]", p)]
    return plain[-1] if plain else ""


def _parse_entry(i: int, entry) -> Source:
    where = f"config.data.sources[{i}]"
    if isinstance(entry, Mapping):
        unknown = sorted(set(entry) - {"name", "weight", *_CORPUS_KEYS})
        if unknown:
            raise ConfigError(
                f"{where} has unknown keys {unknown}; a source takes name, weight and "
                f"{', '.join(_CORPUS_KEYS)}"
            )
        data = {k: v for k, v in entry.items() if k not in ("name", "weight")}
        name, weight = entry.get("name"), entry.get("weight")
    elif isinstance(entry, Sequence) and not isinstance(entry, str) and len(entry) in (2, 3):
        *name, path, weight = entry
        name, data = (name[0] if name else None), {"path": path}
    else:
        raise ConfigError(
            f"{where}={entry!r}: write (path, weight), (name, path, weight) or a dict with "
            "name, path and weight"
        )
    if not data.get("path") and data.get("source", "files") == "files":
        raise ConfigError(f"{where} has no path; give each source a path (a file or glob)")
    if data.get("path"):
        data.setdefault("source", "files")
    if isinstance(weight, bool) or not isinstance(weight, int | float) or not weight > 0:
        raise ConfigError(f"{where} has weight {weight!r}; weights must be numbers > 0")
    if not math.isfinite(weight):
        raise ConfigError(f"{where} has weight {weight!r}; weights must be finite")
    name = _default_name(data["path"]) if name is None and data.get("path") else name
    name = data.get("source") if name is None else name
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise ConfigError(
            f"{where} needs a name of letters, digits, '_', '.' or '-' (got {name!r}); "
            "write (name, path, weight)"
        )
    return Source(name, float(weight), data)


def parse_sources(data_cfg: ml_collections.ConfigDict) -> list[Source]:
    """The entries of `data_cfg.sources`; ConfigError names the first bad one."""
    sources = data_cfg.sources
    if isinstance(sources, str) or not isinstance(sources, Sequence) or not sources:
        raise ConfigError(
            f"config.data.sources={sources!r}: give a non-empty list of (path, weight), or "
            "None for the single corpus of data.source/data.path"
        )
    parsed = [_parse_entry(i, entry) for i, entry in enumerate(sources)]
    names = [s.name for s in parsed]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ConfigError(
            f"config.data.sources names {repeated} more than once; name each source: "
            "(name, path, weight)"
        )
    return parsed


def source_config(config: ml_collections.ConfigDict, source: Source) -> ml_collections.ConfigDict:
    """The run's config with `data` describing this one source alone (validated)."""
    derived = ml_collections.ConfigDict(config.to_dict())
    derived.data.sources = None
    overrides = {f"data.{k}": v for k, v in source.data.items()}
    return config_lib.validate(config_lib.apply_overrides(derived, overrides))


def check_sources(config: ml_collections.ConfigDict) -> None:
    """ConfigError unless `data.sources` is a valid mixture for this run."""
    d = config.data
    for key in ("path", "val_path", "hf_name"):
        if d[key]:
            raise ConfigError(
                f"config.data.{key} is set together with data.sources; give each source "
                f"its own {key} in data.sources, or clear data.sources"
            )
    if config.task.name != "lm":
        raise ConfigError(
            f"config.data.sources (a mixture) trains task.name='lm' only, not "
            f"{config.task.name!r}; clear data.sources"
        )
    for source in parse_sources(d):
        source_config(config, source)


@dataclass(frozen=True)
class Mixture:
    """Each source's prepared caches and its normalised weight, in config order."""

    sources: dict[str, Prepared]
    weights: dict[str, float]

    @property
    def tokenizer(self):
        """The one tokenizer every source was tokenized with."""
        return next(iter(self.sources.values())).tokenizer

    def _mean(self, field: str) -> float:
        return sum(w * getattr(self.sources[n], field) for n, w in self.weights.items())

    @property
    def train_bytes_per_token(self) -> float:
        """Bytes per token of the sampled stream: the weighted mean over sources."""
        return self._mean("train_bytes_per_token")

    @property
    def val_bytes_per_token(self) -> float:
        """The weighted mean of the sources' val bytes per token (for the overall val/bpb)."""
        return self._mean("val_bytes_per_token")


def prepare(
    config: ml_collections.ConfigDict,
    prepare_source: Callable[[ml_collections.ConfigDict], Prepared] = data_lib.prepare,
) -> Mixture:
    """Tokenizer and token caches of every source (built on first use, reused after).

    `prepare_source(source_config)` prepares one source (`llm-jax data prepare` passes
    one that also prints its statistics)."""
    sources = parse_sources(config.data)
    prepared: dict[str, Prepared] = {}
    for source in sources:
        derived = source_config(config, source)
        if prepared:  # the first source's tokenizer (or data.tokenizer_path) for all
            derived.data.tokenizer_path = next(iter(prepared.values())).tokenizer.path
        try:
            prepared[source.name] = prepare_source(derived)
        except DataError as e:  # name the source: its paths may not say which it is
            raise DataError(f"data.sources {source.name!r}: {e}") from e
    total = sum(s.weight for s in sources)
    return Mixture(prepared, {s.name: s.weight / total for s in sources})


class MixtureIterator:
    """Packed training batches drawn from weighted sources: deterministic, per host,
    resumable on any host count. `data.BatchIterator`'s interface."""

    def __init__(
        self,
        sources: Mapping[str, Prepared | np.ndarray],
        weights: Mapping[str, float],
        batch_size: int,
        seq_len: int,
        seed: int = 0,
        process_index: int | None = None,
        process_count: int | None = None,
        segment_ids: bool = False,
    ):
        # Validates the split over processes (DataError), as BatchIterator does.
        split = data_lib.BatchIterator(
            next(iter(sources.values())), batch_size, seq_len, seed, process_index, process_count
        )
        self.local_batch = split.local_batch
        self.first_row = split.process_index * self.local_batch
        self.batch_size, self.seq_len, self.seed = batch_size, seq_len, seed
        self.names = list(sources)
        given = np.array([weights[n] for n in self.names], dtype=np.float64)
        self.weights = given / given.sum()
        self._cumulative = np.cumsum(self.weights)
        # One window stream per source, read a row at a time at any position.
        self._streams = [
            data_lib.BatchIterator(s, 1, seq_len, seed, 0, 1, segment_ids) for s in sources.values()
        ]
        self._batch = 0
        self._consumed = np.zeros(len(self.names), dtype=np.int64)

    @property
    def epoch(self) -> float:
        """Passes over the most repeated source (its windows given / its windows)."""
        return max(c / s.windows for c, s in zip(self._consumed, self._streams, strict=True))

    def slot_sources(self, batch: int) -> np.ndarray:
        """The source index of each of global batch `batch`'s rows."""
        draws = np.random.default_rng([self.seed, batch, _MIX_STREAM]).random(self.batch_size)
        return np.minimum(
            np.searchsorted(self._cumulative, draws, side="right"), len(self.names) - 1
        )

    def __iter__(self) -> MixtureIterator:
        return self

    def _read(self, source: int, first: int, count: int) -> dict[str, np.ndarray]:
        """Windows first..first+count-1 of a source's stream."""
        stream = self._streams[source]
        # BatchIterator's state is a global (epoch, position) in its window stream: jump there.
        stream.set_state(
            {
                **stream.get_state(),
                "epoch": first // stream.windows,
                "position": first % stream.windows,
            }
        )
        rows = [next(stream) for _ in range(count)]
        return {k: np.concatenate([r[k] for r in rows]) for k in rows[0]}

    def __next__(self) -> dict[str, np.ndarray]:
        source_B = self.slot_sources(self._batch)
        mine = source_B[self.first_row : self.first_row + self.local_batch]
        before = np.bincount(source_B[: self.first_row], minlength=len(self.names))
        batch: dict[str, np.ndarray] = {}
        for s in np.unique(mine):
            rows = np.flatnonzero(mine == s)
            # This host's rows of source s follow the rows of s on the hosts before it.
            part = self._read(s, int(self._consumed[s] + before[s]), rows.size)
            for key, value in part.items():
                batch.setdefault(key, np.empty((self.local_batch, *value.shape[1:]), value.dtype))
                batch[key][rows] = value
        self._consumed += np.bincount(source_B, minlength=len(self.names))
        self._batch += 1
        return batch

    def get_state(self) -> dict:
        """A JSON-able global position (the same on every host): next batch, per-source
        windows given, and what they were counted over."""
        return {
            "seed": int(self.seed),
            "batch": self._batch,
            "batch_size": self.batch_size,
            "seq_len": self.seq_len,
            "sources": {
                name: {"weight": float(w), "consumed": int(c), "windows": s.windows}
                for name, w, c, s in zip(
                    self.names, self.weights, self._consumed, self._streams, strict=True
                )
            },
        }

    def set_state(self, state: dict) -> None:
        """Continue from a `get_state()` dict of a mixture of the same sources and weights."""
        if "sources" not in state:
            raise DataError(
                "the saved data position is of a single corpus, but this run samples a "
                "mixture (data.sources); resume with the saved run's data config"
            )
        mine = self.get_state()
        described = {k: state.get(k) for k in ("batch_size", "seq_len")}
        saved = {
            n: (s.get("weight"), s.get("windows")) for n, s in state.get("sources", {}).items()
        }
        now = {n: (s["weight"], s["windows"]) for n, s in mine["sources"].items()}
        if described != {k: mine[k] for k in described} or saved.keys() != now.keys():
            raise DataError(
                f"the saved data position is for batch {described['batch_size']}, seq_len "
                f"{described['seq_len']} over sources {sorted(saved)}; this run has batch "
                f"{self.batch_size}, seq_len {self.seq_len} over {sorted(now)}; resume with "
                "the saved run's data config"
            )
        changed = [
            n for n in now if not np.isclose(saved[n][0], now[n][0]) or saved[n][1] != now[n][1]
        ]
        if changed:
            raise DataError(
                f"data.sources {changed} changed weight or corpus since the saved position "
                f"(saved weight, windows: {[saved[n] for n in changed]}; now "
                f"{[now[n] for n in changed]}); resume with the saved run's data config"
            )
        self.seed, self._batch = state["seed"], state["batch"]
        self._consumed = np.array(
            [state["sources"][n]["consumed"] for n in self.names], dtype=np.int64
        )
