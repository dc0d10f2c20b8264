"""Packed trials (llm_jax/pack.py): K same-shape trials as one vmapped program, each with
its own workdir files, equal to the trials run alone; resume after SIGTERM; grouping."""

import os

import pytest
from tiny_run import tiny_config, write_corpus

from llm_jax import metrics as metrics_lib
from llm_jax import pack, trainer
from llm_jax.config import ConfigError

LRS, SEEDS = (3e-3, 1e-2, 3e-2), (0, 1, 2)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("pack_data")
    return write_corpus(root / "corpus"), root / "cache"


def _trial(corpus, lr, seed, **extra):
    corpus_glob, cache = corpus
    return tiny_config(corpus_glob, cache, train__lr=lr, train__seed=seed, **extra)


def _rows(workdir):
    rows = metrics_lib.read_metrics(os.path.join(workdir, "metrics.jsonl"))
    return [{k: v for k, v in r.items() if k not in ("tokens_per_s", "mfu")} for r in rows]


def _assert_close_rows(got, expected, rtol=1e-5):
    assert [r["step"] for r in got] == [r["step"] for r in expected]
    for g, e in zip(got, expected, strict=True):
        assert g.keys() == e.keys()
        for key, value in e.items():
            assert g[key] == pytest.approx(value, rel=rtol), (g["step"], key)


def test_packed_trials_equal_each_trial_alone(corpus, tmp_path):
    configs = [_trial(corpus, lr, seed) for lr, seed in zip(LRS, SEEDS, strict=True)]
    packed_dirs = [str(tmp_path / f"packed{k}") for k in range(3)]
    result = pack.train_packed(configs, packed_dirs)
    assert not result["preempted"] and not result["failed"]
    for k, config in enumerate(configs):
        alone_dir = str(tmp_path / f"alone{k}")
        trainer.train_and_evaluate(config, alone_dir)
        expected, got = _rows(alone_dir), _rows(packed_dirs[k])
        assert expected[-1]["step"] == 6 and "val/loss" in expected[-1]
        _assert_close_rows(got, expected)
        assert sorted(os.listdir(os.path.join(packed_dirs[k], "checkpoints"))) == sorted(
            os.listdir(os.path.join(alone_dir, "checkpoints"))
        )
    # Different lrs and seeds give different curves: the equality above is per trial.
    first_losses = {_rows(d)[0]["train/loss"] for d in packed_dirs}
    assert len(first_losses) == 3


def test_trials_of_different_shapes_are_refused(corpus, tmp_path):
    configs = [_trial(corpus, 1e-3, 0), _trial(corpus, 1e-3, 1, model__d_model=64)]
    with pytest.raises(ConfigError, match="model.d_model"):
        pack.train_packed(configs, [str(tmp_path / "a"), str(tmp_path / "b")])
