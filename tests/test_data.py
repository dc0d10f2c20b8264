"""Sources, token caches, packed batches: coverage, determinism, resume, hosts, errors."""

import json
import shutil
import time

import jax
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from llm_jax import cli, data
from llm_jax import config as config_lib
from llm_jax import corpus as corpus_lib
from llm_jax.cli.data import main as data_main

SEQ = 128


def _config(cache_dir, **data_overrides):
    c = config_lib.default_config()
    c.data.cache_dir = str(cache_dir)
    c.data.update(data_overrides)
    return c


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("llm_jax_cache")


@pytest.fixture(scope="session")
def shakespeare(cache_dir):
    """The default corpus, prepared once for the whole session (about 2 s)."""
    return data.prepare(_config(cache_dir))


# --- sources ------------------------------------------------------------------------------


def test_shakespeare_holds_out_whole_plays(shakespeare, cache_dir):
    corpus = corpus_lib.Corpus(_config(cache_dir).data, cache_dir / "hf")
    train, val = list(corpus.documents("train")), list(corpus.documents("val"))
    assert (len(train), len(val)) == (35, 3)
    assert [v.splitlines()[0] for v in val] == ["# Twelfth Night", "# Henry V", "# Macbeth"]
    assert not set(train) & set(val)
    splits = shakespeare.manifest["splits"]
    assert (splits["train"]["documents"], splits["val"]["documents"]) == (35, 3)
    assert splits["val"]["bytes"] == sum(len(v.encode()) for v in val)
    assert 1.2 < shakespeare.val_bytes_per_token < 4.0


def test_token_cache_decodes_back_to_the_documents(shakespeare, cache_dir):
    corpus = corpus_lib.Corpus(_config(cache_dir).data, cache_dir / "hf")
    tokens = np.asarray(shakespeare.tokens("val"))
    assert tokens.dtype == np.uint16 and tokens[-1] == shakespeare.tokenizer.eos_id
    docs = np.split(tokens, np.flatnonzero(tokens == shakespeare.tokenizer.eos_id)[:-1] + 1)
    decoded = [shakespeare.tokenizer.decode(d) for d in docs]
    assert decoded == list(corpus.documents("val"))
    assert shakespeare.train_tokens == len(shakespeare.tokens("train"))


def test_txt_jsonl_csv_parquet_sources(tmp_path):
    (tmp_path / "a.txt").write_text("first line\nsecond line\n")
    (tmp_path / "b.txt").write_text("another file")
    (tmp_path / "c.jsonl").write_text(
        "".join(json.dumps({"text": t, "id": i}) + "\n" for i, t in enumerate(["j1", "j2"]))
    )
    (tmp_path / "d.csv").write_text('text,n\n"c1, with comma",1\nc2,2\n')
    pq.write_table(pa.table({"body": ["p1", "p2"]}), tmp_path / "e.parquet")

    def docs(path, **kw):
        c = _config(tmp_path / "cache", source="files", path=str(path), val_fraction=0.5, **kw)
        corpus = corpus_lib.Corpus(c.data, tmp_path / "cache" / "hf")
        return list(corpus.documents("train")) + list(corpus.documents("val"))

    assert docs(tmp_path / "*.txt") == ["first line\nsecond line\n", "another file"]
    assert sorted(docs(tmp_path / "a.txt", txt_document="line")) == ["first line", "second line"]
    assert sorted(docs(tmp_path / "c.jsonl")) == ["j1", "j2"]
    assert sorted(docs(tmp_path / "d.csv")) == ["c1, with comma", "c2"]
    assert sorted(docs(tmp_path / "e.parquet", text_field="body")) == ["p1", "p2"]
    assert sorted(docs(f"{tmp_path}/b.txt,{tmp_path}/c.jsonl")) == ["another file", "j1", "j2"]


@pytest.mark.parametrize("with_val_split", [True, False])
def test_hf_source_from_a_local_dataset_folder(tmp_path, with_val_split):
    folder = tmp_path / "dataset"
    folder.mkdir()
    (folder / "train.jsonl").write_text(
        "".join(json.dumps({"text": f"train {i}"}) + "\n" for i in range(10))
    )
    if with_val_split:
        (folder / "validation.jsonl").write_text(json.dumps({"text": "val 0"}) + "\n")
    c = _config(
        tmp_path / "cache",
        source="hf",
        hf_name=str(folder),
        hf_streaming=True,
        hf_max_documents=8,
        val_fraction=0.25,
    )
    corpus = corpus_lib.Corpus(c.data, tmp_path / "cache" / "hf")
    train, val = list(corpus.documents("train")), list(corpus.documents("val"))
    if with_val_split:
        assert (train, val) == ([f"train {i}" for i in range(8)], ["val 0"])
    else:  # every 4th of the first 8 documents is held out
        assert val == ["train 3", "train 7"] and len(train) == 6 and not set(train) & set(val)


def test_one_document_corpus_gives_its_tail_to_validation(tmp_path):
    text = "".join(f"line {i}\n" for i in range(100))
    (tmp_path / "one.txt").write_text(text)
    c = _config(tmp_path, source="files", path=str(tmp_path / "one.txt"), val_fraction=0.1)
    corpus = corpus_lib.Corpus(c.data, tmp_path / "hf")
    train, val = list(corpus.documents("train")), list(corpus.documents("val"))
    assert train[0] + val[0] == text
    # The cut is the first line end after 90% of the characters (790 of them).
    assert val[0] == text[text.index("line 91\n") :]


# --- caches -------------------------------------------------------------------------------


def test_tokenizer_and_cache_are_reused(shakespeare, cache_dir):
    shards = [*shakespeare.train_path.glob("*.bin"), *shakespeare.val_path.glob("*.bin")]
    files = [*cache_dir.glob("tokenizers/*.model"), *shards]
    stamps = [f.stat().st_mtime_ns for f in files]
    again = data.prepare(_config(cache_dir))
    assert again.folder == shakespeare.folder
    assert again.tokenizer.sha256 == shakespeare.tokenizer.sha256
    assert [f.stat().st_mtime_ns for f in files] == stamps  # nothing rewritten
    assert len(list(cache_dir.glob("tokenizers/*.model"))) == 1


class _InterruptedCorpus:
    """A corpus whose reading stops half way, as Ctrl-C or a preempted VM would."""

    identity = {"source": "interrupted"}
    decode_replacements = 0

    def stream(self):
        yield "train", "To be, or not to be, that is the question."
        raise KeyboardInterrupt


def test_interrupted_write_leaves_no_valid_cache(shakespeare, tmp_path):
    folder = tmp_path / "tokens" / "key"
    with pytest.raises(KeyboardInterrupt):
        data._build_cache(folder, shakespeare.tokenizer, _InterruptedCorpus())
    assert not folder.exists() and data._read_manifest(folder) is None
    assert list((tmp_path / "tokens").iterdir()) == []  # the temporary folder is gone too
    # A complete cache whose token file was later truncated is not valid either.
    broken = tmp_path / "broken"
    shutil.copytree(shakespeare.folder, broken)
    shard = broken / "train" / "00000.bin"
    shard.write_bytes(shard.read_bytes()[:-2])
    assert data._read_manifest(broken) is None
    shutil.copy(shakespeare.train_path / "00000.bin", shard)
    assert data._read_manifest(broken) == shakespeare.manifest


def test_files_corpus_with_a_given_tokenizer(shakespeare, tmp_path):
    root = corpus_lib.shakespeare_dir()
    for play in ("tragedies/hamlet.md", "tragedies/othello.md"):
        (tmp_path / play.split("/")[1]).write_bytes((root / play).read_bytes())
    c = _config(
        tmp_path / "cache",
        source="files",
        path=str(tmp_path / "*.md"),
        val_fraction=0.5,
        tokenizer_path=str(shakespeare.tokenizer.path),
    )
    prepared = data.prepare(c)
    assert prepared.tokenizer.sha256 == shakespeare.tokenizer.sha256
    assert prepared.manifest["splits"]["val"]["documents"] == 1
    val_text = prepared.tokenizer.decode(prepared.tokens("val"))
    assert val_text == (tmp_path / "othello.md").read_text()


# --- batches ------------------------------------------------------------------------------


def _windows(batch):
    """Rows of seq_len+1 tokens back from inputs and targets."""
    return np.concatenate([batch["inputs"], batch["targets"][:, -1:]], axis=1)


def test_one_epoch_covers_every_token_exactly_once():
    # Distinct token values make each token's position visible. 'Every token' means every
    # token of [offset, offset + windows*(seq_len+1)): the epoch's offset and the tail
    # after the last window (fewer than seq_len+1 tokens in all) are skipped this epoch.
    seq_len, batch = 8, 4
    tokens = np.arange(1007, dtype=np.uint32)  # 111 windows of 9, 8 tokens of slack
    it = data.BatchIterator(tokens, batch, seq_len, seed=3, process_index=0, process_count=1)
    rows = np.concatenate([_windows(next(it)) for _ in range(-(-it.windows // batch))])
    epoch0 = rows[: it.windows]
    offset = it.epoch_offset(0)
    assert np.array_equal(np.sort(epoch0[:, 0]), offset + 9 * np.arange(111))
    assert np.array_equal(np.sort(epoch0.ravel()), np.arange(offset, offset + 999))
    assert len({it.epoch_offset(e) for e in range(10)}) > 1  # the dropped tail moves
    assert it.epoch == pytest.approx(112 / 111)


def test_one_epoch_of_shakespeare_sees_each_token_once(shakespeare):
    it = data.BatchIterator(shakespeare, 64, SEQ, process_index=0, process_count=1)
    seen = np.concatenate([_windows(next(it)) for _ in range(-(-it.windows // 64))])
    seen = seen[: it.windows]
    tokens = np.asarray(shakespeare.tokens("train"))
    offset = it.epoch_offset(0)
    expected = tokens[offset : offset + it.windows * (SEQ + 1)]
    assert np.array_equal(
        np.bincount(seen.ravel(), minlength=512), np.bincount(expected, minlength=512)
    )


def test_order_depends_on_seed_and_epoch(shakespeare):
    def first(seed):
        return next(
            data.BatchIterator(shakespeare, 8, SEQ, seed=seed, process_index=0, process_count=1)
        )["inputs"]

    assert np.array_equal(first(0), first(0))
    assert not np.array_equal(first(0), first(1))
    it = data.BatchIterator(np.arange(90), 5, 8, process_index=0, process_count=1)
    epochs = [np.concatenate([_windows(next(it)) for _ in range(2)])[:, 0] for _ in range(3)]
    assert all(sorted(e - e.min()) == list(range(0, 90, 9)) for e in epochs)  # all windows
    assert not np.array_equal(epochs[0], epochs[1])  # the next epoch reshuffles
    assert it.epoch == 3.0


def test_resume_yields_the_batches_an_uninterrupted_run_would(shakespeare):
    def make():
        # A 3-window corpus so the run crosses several epoch boundaries.
        return data.BatchIterator(
            shakespeare.tokens("val")[: 3 * 17 + 5],
            2,
            16,
            seed=7,
            process_index=0,
            process_count=1,
            segment_ids=True,
        )

    run = make()
    for _ in range(5):
        next(run)
    state = json.loads(json.dumps(run.get_state()))
    expected = [next(run) for _ in range(6)]
    resumed = make()
    resumed.set_state(state)
    assert resumed.epoch == pytest.approx(10 / 3)
    for want in expected:
        got = next(resumed)
        assert all(np.array_equal(got[k], want[k]) for k in want)
    other = data.BatchIterator(np.arange(100), 2, 8, process_index=0, process_count=1)
    with pytest.raises(data.DataError, match="seq_len=16 over 3 windows"):
        other.set_state(state)


def test_two_hosts_read_disjoint_halves_of_the_global_batch(shakespeare):
    def host(index, count):
        return data.BatchIterator(
            shakespeare.tokens("val")[:20_000],
            12,
            32,
            seed=1,
            process_index=index,
            process_count=count,
            segment_ids=True,
        )

    single, hosts = host(0, 1), [host(0, 2), host(1, 2)]
    for _ in range(60):  # 60 * 12 windows: crosses the 606-window epoch boundary
        want = next(single)
        parts = [next(h) for h in hosts]
        assert parts[0]["inputs"].shape == (6, 32)
        for key in want:
            assert np.array_equal(np.concatenate([p[key] for p in parts]), want[key])
    assert [h.get_state() for h in hosts] == [single.get_state()] * 2
    val = data.val_batches(shakespeare, 8, SEQ, 2, process_index=0, process_count=1)
    halves = [
        data.val_batches(shakespeare, 8, SEQ, 2, process_index=p, process_count=2) for p in (0, 1)
    ]
    for b, whole in enumerate(val):
        assert np.array_equal(np.concatenate([h[b]["targets"] for h in halves]), whole["targets"])


def test_segment_ids_restart_after_each_eos():
    tokens = np.array([5, 6, 2, 7, 2, 2, 8, 9, 10, 11], dtype=np.uint16)
    it = data.BatchIterator(tokens, 1, 9, process_index=0, process_count=1, segment_ids=True)
    batch = next(it)
    assert batch["segment_ids"].dtype == np.int32 and batch["inputs"].dtype == np.int32
    np.testing.assert_array_equal(batch["inputs"][0], [5, 6, 2, 7, 2, 2, 8, 9, 10])
    np.testing.assert_array_equal(batch["segment_ids"][0], [1, 1, 1, 2, 2, 3, 4, 4, 4])
    np.testing.assert_array_equal(batch["targets"][0], tokens[1:])


def test_val_batches_are_fixed_and_fit_the_split(shakespeare):
    first = data.val_batches(shakespeare, 16, SEQ, 4, process_index=0, process_count=1)
    again = data.val_batches(shakespeare, 16, SEQ, 4, process_index=0, process_count=1)
    assert len(first) == 4 and first[0]["inputs"].shape == (16, SEQ)
    assert all(np.array_equal(a["inputs"], b["inputs"]) for a, b in zip(first, again, strict=True))
    windows = shakespeare.val_tokens // (SEQ + 1)
    many = data.val_batches(shakespeare, 256, SEQ, 100, process_index=0, process_count=1)
    assert len(many) == windows // 256
    with pytest.raises(data.DataError, match="fewer than one batch"):
        data.val_batches(shakespeare, windows + 1, SEQ, 1, process_index=0, process_count=1)


def test_to_global_assembles_a_sharded_batch(shakespeare):
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    sharding = NamedSharding(mesh, PartitionSpec("data"))
    batch = next(data.BatchIterator(shakespeare, 8, SEQ, segment_ids=True))
    arrays = data.to_global(batch, sharding)
    assert set(arrays) == {"inputs", "targets", "segment_ids"}
    assert arrays["inputs"].shape == (8, SEQ) and arrays["inputs"].sharding == sharding
    assert np.array_equal(np.asarray(arrays["targets"]), batch["targets"])


def test_device_batches_fetch_ahead_but_save_the_position_of_those_handed_out():
    mesh = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    sharding = NamedSharding(mesh, PartitionSpec("data"))
    tokens = np.arange(1007, dtype=np.uint32)  # 111 windows of 9: an epoch ends at batch 14

    def iterator():
        return data.BatchIterator(tokens, 8, 8, seed=3, process_index=0, process_count=1)

    plain, ahead = iterator(), data.DeviceBatches(iterator(), sharding, ahead=5)
    for i in range(17):
        batch = ahead.next(left=100)
        assert batch["inputs"].sharding == sharding
        assert np.array_equal(np.asarray(batch["inputs"]), next(plain)["inputs"]), i
        # What a checkpoint saves here resumes at the next batch to train on.
        assert ahead.get_state() == plain.get_state() and ahead.epoch == plain.epoch, i
    assert ahead.iterator.get_state() != plain.get_state()  # it did fetch ahead
    # `left` bounds how far ahead: the run's last batches draw no more than it needs.
    last = data.DeviceBatches(iterator(), sharding, ahead=5)
    last.next(left=2)
    plain = iterator()
    for _ in range(2):
        next(plain)
    assert last.iterator.get_state() == plain.get_state()


# --- bad input ----------------------------------------------------------------------------


def _documents(tmp_path, **overrides):
    c = _config(tmp_path / "cache", source="files", **overrides)
    corpus = corpus_lib.Corpus(c.data, tmp_path / "cache" / "hf")
    return list(corpus.documents("train")), corpus


@pytest.mark.parametrize("path", ["missing.txt", "*.jsonl"])
def test_missing_file_or_empty_glob(tmp_path, path):
    with pytest.raises(data.DataError, match="no file matches .*; fix the path or glob"):
        _documents(tmp_path, path=str(tmp_path / path))


def test_empty_corpus(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(data.DataError, match="holds no text"):
        _documents(tmp_path, path=str(tmp_path / "empty.txt"))


def test_split_too_small_for_one_sequence(tmp_path, shakespeare):
    with pytest.raises(data.DataError, match=r"10 tokens.*--config\.data\.seq_len"):
        data.BatchIterator(np.arange(10), 2, 16, process_index=0, process_count=1)
    (tmp_path / "tiny.txt").write_text("A short play.\nExeunt.\n")
    c = _config(
        tmp_path / "cache",
        source="files",
        path=str(tmp_path / "tiny.txt"),
        tokenizer_path=shakespeare.tokenizer.path,
    )
    with pytest.raises(data.DataError, match="train split has .* fewer than one sequence"):
        data.prepare(c)


def test_undecodable_bytes_error_or_replace(tmp_path):
    (tmp_path / "bad.txt").write_bytes(b"good text\n\xff\xfe more\n")
    (tmp_path / "bad.jsonl").write_bytes(b'{"text": "caf\xe9"}\n{"text": "ok"}\n')
    with pytest.raises(data.DataError, match=r"bad\.txt: byte offset 10 .*on_decode_error="):
        _documents(tmp_path, path=str(tmp_path / "bad.txt"))
    with pytest.raises(data.DataError, match=r"bad\.jsonl: byte offset 13"):
        _documents(tmp_path, path=str(tmp_path / "bad.jsonl"))
    _, corpus = _documents(
        tmp_path, path=str(tmp_path / "bad.*"), on_decode_error="replace", val_fraction=0.5
    )
    before = corpus.decode_replacements  # counts every read: documents('train') was one
    assert "caf\ufffd" in [doc for _, doc in corpus.stream()]
    assert corpus.decode_replacements - before == 3  # \xff, \xfe in bad.txt, \xe9 in bad.jsonl


def test_jsonl_without_the_text_field(tmp_path):
    (tmp_path / "x.jsonl").write_text('{"content": "hi"}\n')
    with pytest.raises(data.DataError, match=r"no column 'text'.*--config\.data\.text_field"):
        _documents(tmp_path, path=str(tmp_path / "x.jsonl"))


def test_unknown_extension(tmp_path):
    (tmp_path / "x.bin").write_text("data")
    with pytest.raises(data.DataError, match=r"--config\.data\.format="):
        _documents(tmp_path, path=str(tmp_path / "x.bin"))


def test_offline_hub_request_fails_at_once(tmp_path):
    if not corpus_lib._hub_reachable():
        pytest.skip("the HuggingFace Hub is reachable from here")
    c = _config(tmp_path, source="hf", hf_name="roneneldan/TinyStories")
    start = time.monotonic()
    with pytest.raises(data.DataError, match=r"offline; point at local files .*source=files"):
        data.prepare(c)
    assert time.monotonic() - start < 10


# --- the CLI --------------------------------------------------------------------------------


def test_data_prepare_prints_statistics(shakespeare, cache_dir, capsys):
    assert data_main(["llm-jax data", "prepare", f"--config.data.cache_dir={cache_dir}"]) == 0
    out = capsys.readouterr().out
    assert str(shakespeare.folder) in out
    assert f"{shakespeare.val_tokens:,}" in out and "bytes/token" in out


def test_data_prepare_bad_input_is_one_line(tmp_path, capsys):
    code = cli.run(
        [
            "data",
            "prepare",
            "--config.data.source=files",
            f"--config.data.path={tmp_path}/none/*.txt",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: no file matches") and "Traceback" not in err
    assert cli.run(["data", "shuffle"]) == 2


def test_data_prepare_reads_a_config_file_with_overrides(shakespeare, cache_dir, tmp_path, capsys):
    (tmp_path / "exp.py").write_text(
        "from llm_jax import config\n\n\ndef get_config():\n"
        f"    c = config.default_config()\n    c.data.cache_dir = {str(cache_dir)!r}\n"
        "    return c\n"
    )
    assert (
        data_main(
            [
                "llm-jax data",
                "prepare",
                "--config",
                str(tmp_path / "exp.py"),
                "--config.data.seq_len=64",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "seq_len+1=65" in out and str(shakespeare.folder) in out
