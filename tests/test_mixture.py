"""Weighted mixtures (llm_jax/mixture.py): sampling, resume, hosts, config errors, trainer."""

import json
import os

import numpy as np
import pytest
from tiny_run import tiny_config, write_corpus

from llm_jax import config as config_lib
from llm_jax import data as data_lib
from llm_jax import metrics as metrics_lib
from llm_jax import mixture
from llm_jax import trainer as trainer_lib
from llm_jax.checkpoint import CheckpointError
from llm_jax.cli.data import main as data_main
from llm_jax.errors import UsageError

SEQ = 9
# Source a's tokens are < 1000, b's >= 1000: a row's first token names its source.
SOURCES = {"a": np.arange(2000) % 997, "b": 1000 + np.arange(400)}
WEIGHTS = {"a": 3.0, "b": 1.0}


def _iterator(seed=0, index=0, count=1, batch=8, weights=WEIGHTS):
    return mixture.MixtureIterator(SOURCES, weights, batch, SEQ, seed, index, count)


def _take(iterator, n):
    return [next(iterator)["inputs"] for _ in range(n)]


def test_proportions_match_the_weights():
    rows = np.concatenate(_take(_iterator(batch=64), 100))  # 6400 slots
    share_a = np.mean(rows[:, 0] < 1000)
    sigma = np.sqrt(0.75 * 0.25 / len(rows))
    assert abs(share_a - 0.75) < 4 * sigma  # about +-0.02


def test_each_source_is_read_in_its_own_stream_order():
    """Rows of source b, in slot order, are b's BatchIterator windows (across epochs)."""
    rows = np.concatenate(_take(_iterator(), 40))  # b has 40 windows: ~2 epochs of it
    from_b = rows[rows[:, 0] >= 1000]
    stream = data_lib.BatchIterator(SOURCES["b"], 1, SEQ, 0, 0, 1)
    assert len(from_b) > 40
    np.testing.assert_array_equal(from_b, np.concatenate(_take(stream, len(from_b))))


def test_one_source_gives_the_batch_iterators_batches():
    only = mixture.MixtureIterator({"a": SOURCES["a"]}, {"a": 1.0}, 8, SEQ, 5, 0, 1)
    plain = data_lib.BatchIterator(SOURCES["a"], 8, SEQ, 5, 0, 1)
    for mixed, single in zip(_take(only, 30), _take(plain, 30), strict=True):  # 1.2 epochs
        np.testing.assert_array_equal(mixed, single)


def test_deterministic_and_seeded():
    first, again, other = (_take(_iterator(seed), 5) for seed in (0, 0, 1))
    assert all(np.array_equal(x, y) for x, y in zip(first, again, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(first, other, strict=True))


def test_hosts_split_each_global_batch_and_resume_on_another_host_count():
    whole = _take(_iterator(), 6)
    hosts = [_iterator(index=p, count=2) for p in range(2)]
    for step in range(3):
        rows = np.concatenate([next(h)["inputs"] for h in hosts])
        np.testing.assert_array_equal(rows, whole[step])
    state = json.loads(json.dumps(hosts[0].get_state()))  # through a checkpoint's JSON
    assert state == hosts[1].get_state()  # a global position: every host agrees
    one = _iterator()
    one.set_state(state)  # 2 hosts -> 1
    np.testing.assert_array_equal(next(one)["inputs"], whole[3])
    back = [_iterator(index=p, count=2) for p in range(2)]
    for host in back:  # 1 host -> 2
        host.set_state(one.get_state())
    for step in (4, 5):
        rows = np.concatenate([next(h)["inputs"] for h in back])
        np.testing.assert_array_equal(rows, whole[step])


def test_state_resumes_exactly_and_refuses_another_mixture():
    it = _iterator()
    _take(it, 7)
    state = it.get_state()
    expected = _take(it, 5)
    resumed = _iterator()
    resumed.set_state(state)
    assert all(np.array_equal(x, y) for x, y in zip(expected, _take(resumed, 5), strict=True))
    assert resumed.epoch == it.epoch > 0
    with pytest.raises(data_lib.DataError, match=r"\['a', 'b'\] changed weight"):
        _iterator(weights={"a": 1.0, "b": 1.0}).set_state(state)
    with pytest.raises(data_lib.DataError, match="batch 8, seq_len 9 .* this run has batch 16"):
        _iterator(batch=16).set_state(state)


@pytest.mark.parametrize(
    "sources, message",
    [
        ([], r"give a non-empty list"),
        ((("a/*.txt", 0),), r"sources\[0\] has weight 0; weights must be numbers > 0"),
        ((("a/*.txt", 1), ("b", -2.0)), r"sources\[1\] has weight -2.0"),
        (({"name": "x", "weight": 1},), r"sources\[0\] has no path"),
        ((("a/x/*.txt", 1), ("b/x/*.txt", 1)), r"names \['x'\] more than once"),
        (({"path": "a", "weight": 1, "seq_len": 8},), r"unknown keys \['seq_len'\]"),
        ("a/*.txt", r"give a non-empty list"),
    ],
)
def test_bad_sources_are_one_line_config_errors(sources, message):
    config = config_lib.default_config()
    config.data.sources = sources
    with pytest.raises(config_lib.ConfigError, match=message) as error:
        config_lib.validate(config)
    assert "\n" not in str(error.value)


def test_source_names_and_overrides():
    config = config_lib.default_config()
    config.data.sources = (
        ("corpus/comedies/*.md", 2),
        ("wiki", "data/wiki.jsonl", 1),
        {"path": "gs://b/web/*.jsonl", "weight": 1, "text_field": "body"},
        {"source": "shakespeare", "weight": 1},
    )
    parsed = mixture.parse_sources(config_lib.validate(config).data)
    assert [s.name for s in parsed] == ["comedies", "wiki", "web", "shakespeare"]
    derived = mixture.source_config(config, parsed[2])
    assert (derived.data.source, derived.data.text_field, derived.data.sources) == (
        "files",
        "body",
        None,
    )
    config.data.path = "x.txt"
    with pytest.raises(config_lib.ConfigError, match="data.path is set together with"):
        config_lib.validate(config)


def test_a_source_without_files_is_named(tmp_path):
    config = tiny_config("", tmp_path / "cache", data__source="shakespeare")
    config.data.sources = (("gone", str(tmp_path / "none" / "*.txt"), 1),)
    with pytest.raises(data_lib.DataError, match=r"data.sources 'gone': no file matches"):
        mixture.prepare(config_lib.validate(config))


def test_data_prepare_builds_each_source_and_inspect_refuses_a_mixture(tmp_path, capsys):
    a, b = (write_corpus(tmp_path / name) for name in ("a", "b"))
    flags = [
        f"--config.data.cache_dir={tmp_path / 'cache'}",
        "--config.data.val_fraction=0.25",
        "--config.model.vocab_size=320",
        f"--config.data.sources=(('a', '{a}', 1), ('b', '{b}', 1))",
    ]
    assert data_main(["llm-jax data", "prepare", *flags]) == 0
    out = capsys.readouterr().out
    assert f"corpus     files {a}" in out and f"corpus     files {b}" in out
    with pytest.raises(UsageError, match="not a data.sources mixture"):
        data_main(["llm-jax data", "inspect", *flags])


def _mixture_config(tmp_path):
    first = write_corpus(tmp_path / "a")
    second = write_corpus(tmp_path / "b")
    for path in (tmp_path / "b").glob("*.txt"):  # another text than the first source's
        path.write_text(path.read_text().upper())
    config = tiny_config("", tmp_path / "cache", data__source="shakespeare")
    config.data.sources = (("first", first, 3), ("second", second, 1))
    return config_lib.validate(config)


def test_a_mixture_logs_each_sources_val_loss_and_saves_its_position(tmp_path):
    config = _mixture_config(tmp_path)
    prepared = mixture.prepare(config)
    assert prepared.weights == {"first": 0.75, "second": 0.25}
    assert len({p.tokenizer.sha256 for p in prepared.sources.values()}) == 1  # one tokenizer
    with trainer_lib.Trainer(config, str(tmp_path / "run")) as trainer:
        assert isinstance(trainer.iterator, mixture.MixtureIterator)
        scores = trainer.evaluate()
        _take(trainer.iterator, 2)
        trainer.save(force=True)
        state = trainer.iterator.get_state()
    rows = metrics_lib.read_metrics(os.path.join(tmp_path, "run", "metrics.jsonl"))
    assert rows[-1] == {**rows[-1], **scores}  # logged as returned
    first, second = scores["val/first/loss"], scores["val/second/loss"]
    assert first != second  # two val sets (an untrained model: close losses)
    assert scores["val/loss"] == pytest.approx(0.75 * first + 0.25 * second, rel=1e-9)
    assert {"val/first/bpb", "val/second/bpb", "val/bpb"} < scores.keys()
    with trainer_lib.Trainer(config, str(tmp_path / "run")) as resumed:
        assert resumed.iterator.get_state() == state and state["batch"] == 2
    config.train.batch_size = 16
    with pytest.raises(CheckpointError, match=r"written with train.batch_size=8, this run has 16"):
        trainer_lib.Trainer(config, str(tmp_path / "run"))
    config.train.batch_size, config.data.sources = 8, None  # a single corpus now
    config.data.update(source="files", path=str(tmp_path / "a" / "*.txt"))
    with pytest.raises(CheckpointError, match=r"the data position in .* lacks 'windows'"):
        trainer_lib.Trainer(config, str(tmp_path / "run"))


def test_the_single_corpus_path_is_unchanged(tmp_path):
    corpus_glob = write_corpus(tmp_path / "corpus")
    config = config_lib.validate(tiny_config(corpus_glob, tmp_path / "cache"))
    with trainer_lib.Trainer(config, str(tmp_path / "run")) as trainer:
        assert isinstance(trainer.iterator, data_lib.BatchIterator)
        assert list(trainer.val_sets) == [""]
        plain = data_lib.BatchIterator(
            data_lib.prepare(config), config.train.batch_size, config.data.seq_len, 0, 0, 1
        )
        for _ in range(3):
            got, want = next(trainer.iterator), next(plain)
            assert all(np.array_equal(got[k], want[k]) for k in want)
        assert set(trainer.evaluate()) == {"val/loss", "val/bpb"}
