"""Sharded token caches: a parallel, streamed build equals a single-process one and holds
few documents; windows across shard boundaries; killed builds; damaged shards."""

import json
import signal
import subprocess
import sys

import numpy as np
import pytest

from llm_jax import cli, data, shards
from llm_jax import config as config_lib
from llm_jax import corpus as corpus_lib

SMALL_SHARDS = 5_000  # tokens: the test corpus makes several shards per split


@pytest.fixture(scope="module")
def corpus_glob(tmp_path_factory):
    """200 documents of 2-4 kB cut from the plays (about 600 kB)."""
    folder = tmp_path_factory.mktemp("corpus")
    text = (corpus_lib.shakespeare_dir() / "tragedies" / "hamlet.md").read_text()
    rng = np.random.default_rng(0)
    for i in range(200):
        start = int(rng.integers(0, len(text) - 4000))
        (folder / f"doc{i:03d}.txt").write_text(text[start : start + int(rng.integers(2000, 4000))])
    return str(folder / "*.txt")


def _config(corpus_glob, cache_dir, **data_overrides):
    c = config_lib.default_config()
    c.model.vocab_size = 384
    c.data.update(
        source="files",
        path=corpus_glob,
        cache_dir=str(cache_dir),
        val_fraction=0.1,
        seq_len=16,
        tokenizer_max_chars=200_000,
        **data_overrides,
    )
    return config_lib.validate(c)


@pytest.fixture(scope="module")
def tokenizer_path(corpus_glob, tmp_path_factory):
    cache = tmp_path_factory.mktemp("tokenizer")
    return data.prepare(_config(corpus_glob, cache)).tokenizer.path


@pytest.fixture
def small_shards(monkeypatch):
    monkeypatch.setattr(shards, "SHARD_TOKENS", SMALL_SHARDS)
    monkeypatch.setattr(shards, "CHUNK_CHARS", 20_000)  # 5-10 documents a chunk
    monkeypatch.setattr(shards, "INLINE_CHUNKS", 2)  # then the worker pool


def _reference(config, tokenizer):
    """Each split as today's single-process build wrote it: documents + eos, in order."""
    corpus = corpus_lib.Corpus(config.data, config.data.cache_dir)
    return {
        split: np.array([t for doc in corpus.documents(split) for t in [*tokenizer.encode(doc), 2]])
        for split in ("train", "val")
    }


class _Counted:
    """A corpus whose stream records how many documents were read but not yet written."""

    def __init__(self, corpus, written):
        self.corpus, self.written, self.held = corpus, written, []
        self.identity, self.decode_replacements = corpus.identity, 0

    def stream(self):
        for read, pair in enumerate(self.corpus.stream()):
            self.held.append(read - self.written[0])
            yield pair


def test_parallel_build_equals_single_process_build_and_holds_few_documents(
    corpus_glob, tokenizer_path, tmp_path, small_shards, monkeypatch
):
    config = _config(corpus_glob, tmp_path / "one", tokenizer_path=tokenizer_path, workers=1)
    single = data.prepare(config)
    expected = _reference(config, single.tokenizer)
    written = [0]
    write = shards.ShardWriter.write

    def counting_write(self, encoded):
        written[0] += encoded.documents
        write(self, encoded)

    monkeypatch.setattr(shards.ShardWriter, "write", counting_write)
    corpus = _Counted(corpus_lib.Corpus(config.data, tmp_path), written)
    folder = tmp_path / "two" / "tokens" / "key"
    manifest = data._build_cache(folder, single.tokenizer, corpus, n_workers=2)
    parallel = data.Prepared(
        single.tokenizer, folder, folder / "train", folder / "val", manifest, *[0] * 4
    )
    for split in ("train", "val"):
        assert np.array_equal(np.asarray(single.tokens(split)), expected[split])
        assert np.array_equal(np.asarray(parallel.tokens(split)), expected[split])
    assert manifest["splits"] == single.manifest["splits"]  # shards, counts and hashes
    assert len(manifest["splits"]["train"]["shards"]) > 3
    # In flight: at most 2 * workers chunks plus the one being filled, 10 documents each.
    assert len(corpus.held) == 200 and max(corpus.held) <= 5 * 10


def test_windows_across_shard_boundaries(tmp_path, monkeypatch):
    monkeypatch.setattr(shards, "SHARD_TOKENS", 100)
    writer = shards.ShardWriter(tmp_path / "train", "uint16")
    stream = np.arange(1000, dtype=np.uint16)
    for cut in np.split(stream, [30, 130, 170, 400, 430, 777]):  # uneven chunks
        writer.write(shards.Encoded(cut, 0, 1))
    info = writer.close()
    tokens = shards.ShardedTokens(tmp_path, info, "uint16")
    # A shard closes at the first chunk end past 100 tokens: 130, 270, 377 and 223 tokens.
    assert [s["tokens"] for s in info["shards"]] == [130, 270, 377, 223] and len(tokens) == 1000
    starts = np.array([0, 125, 165, 395, 770, 990])  # 125, 395, 770: across a boundary
    windows = starts[:, None] + np.arange(10)
    assert np.array_equal(tokens[windows], windows)
    assert np.array_equal(tokens[120:405], stream[120:405]) and tokens[-1] == 999
    assert np.array_equal(tokens[::7], stream[::7]) and tokens.tolist() == stream.tolist()
    with pytest.raises(IndexError):
        tokens[np.array([1000])]
    iterators = [
        data.BatchIterator(t, 6, 12, seed=2, process_index=0, process_count=1, segment_ids=True)
        for t in (tokens, stream)
    ]
    for _ in range(20):  # 76 windows: crosses epoch boundaries too
        got, want = (next(it) for it in iterators)
        assert all(np.array_equal(got[k], want[k]) for k in want)


def test_a_killed_build_leaves_no_cache_and_the_next_one_rebuilds(
    corpus_glob, tokenizer_path, tmp_path
):
    config = _config(corpus_glob, tmp_path / "cache", tokenizer_path=tokenizer_path, workers=1)
    # The child dies by SIGKILL right after writing its first shard: mid-build.
    child = f"""
import json, os, signal, sys
from llm_jax import config as config_lib, data, shards
shards.SHARD_TOKENS = {SMALL_SHARDS}
close = shards.ShardWriter._close_shard
def close_then_die(self):
    close(self)
    os.kill(os.getpid(), signal.SIGKILL)
shards.ShardWriter._close_shard = close_then_die
c = config_lib.default_config()
c.model.vocab_size = 384
c.data.update(json.loads(sys.argv[1]))
data.prepare(c)
"""
    flags = json.dumps(config.data.to_dict())
    result = subprocess.run([sys.executable, "-c", child, flags], capture_output=True, timeout=120)
    assert result.returncode == -signal.SIGKILL, result.stderr.decode()[-2000:]
    tokens_dir = tmp_path / "cache" / "tokens"
    left = [p for p in tokens_dir.iterdir() if p.is_dir()]
    assert len(left) == 1 and ".tmp-" in left[0].name and list(left[0].rglob("*.bin"))
    key = tokens_dir / left[0].name.split(".tmp-")[0]
    assert data._read_manifest(key) is None  # nothing that looks like a cache
    prepared = data.prepare(config)
    assert prepared.folder == key and [p.name for p in tokens_dir.iterdir() if p.is_dir()] == [
        key.name
    ]  # the killed build's leftovers are gone
    expected = _reference(config, prepared.tokenizer)
    assert np.array_equal(np.asarray(prepared.tokens("train")), expected["train"])


def test_damaged_shards_are_found_and_rebuilt(
    corpus_glob, tokenizer_path, tmp_path, small_shards, caplog, capsys
):
    config = _config(corpus_glob, tmp_path / "cache", tokenizer_path=tokenizer_path, workers=1)
    prepared = data.prepare(config)
    shard = prepared.train_path / "00001.bin"
    good = shard.read_bytes()
    # Flipped bytes keep the size: opening (every host of a run) does not read the cache...
    shard.write_bytes(bytes([good[0] ^ 0xFF]) + good[1:])
    with caplog.at_level("WARNING", logger="llm_jax.data"):
        data.prepare(config)
    # (caplog or stderr: an earlier cli.run in the session sends llm_jax logs to stderr)
    assert "damaged" not in caplog.text + capsys.readouterr().err
    assert shard.read_bytes() != good
    # ... `data prepare --verify` re-hashes every shard, names the bad one and rebuilds.
    flags = [f"--config.data.{k}={v}" for k, v in config.data.items() if k in _FLAGS]
    assert cli.run(["data", "prepare", "--verify", "--config.model.vocab_size=384", *flags]) == 0
    printed = capsys.readouterr()
    assert "train/00001.bin fails its checksum); rebuilding it" in printed.err
    assert shard.read_bytes() == good and "shards" in printed.out
    # A shard cut short after a run opened the cache: a one-line DataError on first read.
    tokens = data.prepare(config).tokens("train")
    shard.write_bytes(good[:-2])
    first = int(tokens.starts[1])  # the first token of shard 1
    with pytest.raises(data.DataError, match=r"train/00001\.bin has .*llm-jax data prepare") as e:
        tokens[np.arange(first, first + 10)]
    assert "\n" not in str(e.value)
    again = data.prepare(config)  # the next open sees the size and rebuilds
    assert "00001.bin has" in capsys.readouterr().err and shard.read_bytes() == good
    assert np.array_equal(np.asarray(again.tokens("train")), np.asarray(prepared.tokens("train")))


_FLAGS = ("source", "path", "cache_dir", "val_fraction", "seq_len", "tokenizer_path", "workers")


def test_holdout_streams_with_at_most_k_documents_held():
    consumed = []

    def docs(n):
        for i in range(n):
            consumed.append(i)
            yield f"doc {i}"

    pairs = []
    for split, doc in corpus_lib._holdout(docs(1000), 0.1):
        pairs.append((split, doc))
        assert len(consumed) - len(pairs) <= 10
    assert [d for s, d in pairs if s == "val"] == [f"doc {i}" for i in range(9, 1000, 10)]
    assert [d for s, d in pairs if s == "train"] == [f"doc {i}" for i in range(1000) if i % 10 != 9]
    # Fewer than k documents: the last 10% of the last one, from a line start, validates.
    few = list(corpus_lib._holdout(iter(["a\nb\n", "line one\n" * 9 + "tail\n"]), 0.1))
    assert few == [("train", "a\nb\n"), ("train", "line one\n" * 9), ("val", "tail\n")]


@pytest.mark.parametrize("txt_document", ["file", "line"])
def test_a_bucket_txt_corpus_streams_like_the_local_copy(gs, tmp_path, txt_document):
    from llm_jax import storage

    for i in range(3):
        text = "".join(f"line {j} of file {i}, naïve café\n" for j in range(5))
        (tmp_path / f"f{i}.txt").write_text(text)
        storage.write_bytes(f"{gs}/txt/f{i}.txt", text.encode())

    def stream(path):
        c = config_lib.default_config()
        c.data.update(source="files", path=path, val_fraction=0.25, txt_document=txt_document)
        return list(corpus_lib.Corpus(c.data, tmp_path / "hf").stream())

    local = stream(str(tmp_path / "*.txt"))
    # Three files: fewer than k=4 documents, so the last one's tail is a 4th (val) part.
    assert stream(f"{gs}/txt/*.txt") == local
    assert len(local) == (4 if txt_document == "file" else 15)
