"""Packed trials (llm_jax/pack.py): K same-shape trials as one vmapped program, each with
its own workdir files, equal to the trials run alone; resume after SIGTERM; grouping."""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from tiny_run import (
    BASE_CONFIG,
    metric_rows,
    sigterm_after_checkpoint,
    subprocess_env,
    tiny_config,
    tiny_overrides,
    tiny_train_config,
    write_corpus,
)

from llm_jax import pack, trainer
from llm_jax import sharding as sharding_lib
from llm_jax import train as train_lib
from llm_jax.config import ConfigError
from llm_jax.preemption import PREEMPTED_EXIT_CODE

LRS, SEEDS = (3e-3, 1e-2, 3e-2), (0, 1, 2)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("pack_data")
    return write_corpus(root / "corpus"), root / "cache"


def _trial(corpus, lr, seed, **extra):
    corpus_glob, cache = corpus
    return tiny_config(corpus_glob, cache, train__lr=lr, train__seed=seed, **extra)


def _assert_close_rows(got, expected, rtol=1e-5):
    assert [r["step"] for r in got] == [r["step"] for r in expected]
    for g, e in zip(got, expected, strict=True):
        assert g.keys() == e.keys()
        for key, value in e.items():
            assert g[key] == pytest.approx(value, rel=rtol), (g["step"], key)


def _batches(k, steps, vocab=64, batch_size=8, seq_len=16):
    rng = np.random.default_rng(100 + k)  # each model its own data
    tokens = rng.integers(0, vocab, (steps, batch_size, seq_len + 1)).astype(np.int32)
    return [{"inputs": t[:, :-1], "targets": t[:, 1:]} for t in tokens]


# 8 compiles (3 alone, 3 inits, vmap and map): 33 s at load 4. Bit for bit as users' runs
# compile (XLA:CPU's older emitters, the session's cheap codegen, round param_norm 1 ulp apart).
@pytest.mark.slow
def test_packed_step_equals_each_model_alone(optimized_xla):
    steps = 4
    configs = [
        tiny_train_config(lr=lr, seed=seed, steps=20, warmup_steps=2, schedule="cosine")
        for lr, seed in zip(LRS, SEEDS, strict=True)
    ]
    mesh = sharding_lib.make_mesh(configs[0].mesh, jax.devices()[:1])
    alone, initial = [], []
    for k, config in enumerate(configs):
        setup = train_lib.make_train(config, mesh)
        with setup.context():
            state = setup.init_state(config.train.seed)
            initial.append(jax.device_get(state))  # the step donates its input
            losses = []
            for batch in _batches(k, steps):
                state, metrics = setup.train_step(state, batch, setup.schedule_args)
                losses.append(jax.device_get(metrics))
        alone.append(losses)
    setup = train_lib.make_train(configs[0], mesh)  # the pack's shape; its lr is unused
    per_model = [_batches(k, steps) for k in range(3)]
    with setup.context():
        for vectorized in (True, False):  # vmap (accelerators) and lax.map (CPU)
            step = pack.make_packed_step(setup, vectorized)
            state = pack.stack_states(setup, initial)
            hparams = pack.hyperparameters(configs, setup.total_steps)
            for i in range(steps):
                batch = {n: np.stack([m[i][n] for m in per_model]) for n in ("inputs", "targets")}
                state, metrics = step(state, batch, hparams)
                metrics = jax.device_get(metrics)
                for k in range(3):
                    for name, value in alone[k][i].items():
                        got = metrics[name][k]
                        if vectorized:  # batched matmuls may round otherwise
                            assert got == pytest.approx(value, rel=1e-5), (k, i, name)
                        else:  # the same programs, the schedule's numbers as inputs
                            assert got == value, (k, i, name)
    assert len({float(alone[k][-1]["train/loss"]) for k in range(3)}) == 3


@pytest.mark.slow  # two trainers with data, evaluation and checkpoints: ~2 min at load 20
def test_packed_workdirs_equal_a_trial_run_alone(corpus, tmp_path):
    configs = [_trial(corpus, lr, seed) for lr, seed in zip(LRS, SEEDS, strict=True)]
    packed_dirs = [str(tmp_path / f"packed{k}") for k in range(3)]
    result = pack.train_packed(configs, packed_dirs)
    assert not result["preempted"] and not result["failed"]
    alone_dir = str(tmp_path / "alone")
    trainer.train_and_evaluate(configs[1], alone_dir)  # the middle trial: seed 1, lr 1e-2
    expected, got = metric_rows(alone_dir), metric_rows(packed_dirs[1])
    assert expected[-1]["step"] == 6 and "val/loss" in expected[-1]
    _assert_close_rows(got, expected)
    for workdir in packed_dirs:
        assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["3", "6"]
        assert {"config.json", "metrics.jsonl"} <= set(os.listdir(workdir))
    assert len({metric_rows(d)[0]["train/loss"] for d in packed_dirs}) == 3


def _pack_command(workdirs, corpus, **extra):
    corpus_glob, cache = corpus
    shared = [f"--config.{k}={v}" for k, v in tiny_overrides(corpus_glob, cache, **extra).items()]
    command = [sys.executable, "-m", "llm_jax.cli", "train-pack", f"--config={BASE_CONFIG}"]
    command += shared
    for workdir, lr, seed in zip(workdirs, LRS, SEEDS, strict=False):
        command += [
            "--trial",
            str(workdir),
            f"--config.train.lr={lr}",
            f"--config.train.seed={seed}",
        ]
    return command


@pytest.mark.slow
def test_packed_group_resumes_exactly_after_sigterm(corpus, tmp_path):
    k = 6
    # Evaluating every step makes steps slow enough to signal between steps k and 2k.
    extra = dict(
        train__steps=2 * k,
        checkpoint__every=k,
        train__log_every=1,
        train__eval_every=1,
        checkpoint__async_save=False,
    )
    env = subprocess_env(1)
    reference_dirs = [tmp_path / f"reference{i}" for i in range(2)]
    resumed_dirs = [tmp_path / f"resumed{i}" for i in range(2)]
    reference = subprocess.Popen(
        _pack_command(reference_dirs, corpus, **extra),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    command = _pack_command(resumed_dirs, corpus, **extra)
    interrupted = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    err = sigterm_after_checkpoint(interrupted, resumed_dirs, k, timeout_s=300)
    assert interrupted.returncode == PREEMPTED_EXIT_CODE, err.decode()[-2000:]
    assert "[resumed1] stopped by SIGTERM" in err.decode()
    stopped = [
        max(int(s) for s in os.listdir(d / "checkpoints") if s.isdigit()) for d in resumed_dirs
    ]
    assert stopped[0] == stopped[1] and k <= stopped[0] < 2 * k
    restarted = subprocess.run(command, env=env, capture_output=True, timeout=300)
    assert restarted.returncode == 0, restarted.stderr.decode()[-2000:]
    _, err = reference.communicate(timeout=300)
    assert reference.returncode == 0, err.decode()[-2000:]
    for ref, res in zip(reference_dirs, resumed_dirs, strict=True):
        expected, got = metric_rows(ref), metric_rows(res)
        assert got == expected  # bit for bit, through the restart
        assert expected[-1]["step"] == 2 * k and "val/loss" in expected[-1]


def test_trials_of_different_shapes_are_refused(corpus, tmp_path):
    configs = [_trial(corpus, 1e-3, 0), _trial(corpus, 1e-3, 1, model__d_model=64)]
    with pytest.raises(ConfigError, match="model.d_model"):
        pack.train_packed(configs, [str(tmp_path / "a"), str(tmp_path / "b")])
