"""The train step and loop: sharding, accumulation, learning, resume, hosts, divergence."""

import json
import os
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from tiny_run import (
    free_port,
    metric_rows,
    sigterm_after_checkpoint,
    subprocess_env,
    tiny_command,
    tiny_config,
    tiny_train_config,
    write_corpus,
)

from llm_jax import checkpoint as ckpt_lib
from llm_jax import config as config_lib
from llm_jax import sharding as sharding_lib
from llm_jax import train as train_lib
from llm_jax import trainer
from llm_jax import workdir as workdir_lib
from llm_jax.cli.train import PREEMPTED_EXIT_CODE

VOCAB = 64


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("train_data")
    return write_corpus(root / "corpus"), root / "cache"


def _config(**train):
    return tiny_train_config(**{**dict(steps=50, warmup_steps=0, schedule="constant"), **train})


def _batch(batch_size=8, seq_len=16, seed=0):
    tokens = np.random.default_rng(seed).integers(0, VOCAB, (batch_size, seq_len + 1))
    return {"inputs": tokens[:, :-1].astype(np.int32), "targets": tokens[:, 1:].astype(np.int32)}


def _mesh(data=1, fsdp=1, tensor=1):
    cfg = _config().mesh
    cfg.update(data=data, fsdp=fsdp, tensor=tensor)
    return sharding_lib.make_mesh(cfg, jax.devices()[: data * fsdp * tensor])


def _run_steps(config, mesh, batches):
    setup = train_lib.make_train(config, mesh)
    with setup.context():
        state = setup.init_state(config.train.seed)
        history = []
        for batch in batches:
            state, step_metrics = setup.train_step(
                state, jax.device_put(batch, setup.batch_sharding), setup.schedule_args
            )
            history.append(jax.device_get(step_metrics))
        return jax.device_get(state), history


def test_optimizer_state_takes_its_parameters_shardings():
    """Adam's moments are read off the params' logical axes, not guessed: on a
    (data, fsdp, tensor) mesh each moment has its parameter's sharding, grad-clip or not."""
    for clip in (0.0, 1.0):
        setup = train_lib.make_train(_config(grad_clip=clip), _mesh(data=2, fsdp=2, tensor=2))
        params = jax.tree_util.tree_leaves_with_path(setup.state_shardings["params"])
        moments = [
            m
            for m in jax.tree.leaves(
                setup.state_shardings["opt_state"], is_leaf=lambda x: isinstance(x, dict)
            )
            if isinstance(m, dict) and set(m) == set(setup.abstract_state["params"])
        ]
        assert len(moments) == 2  # mu and nu
        for moment in moments:
            for (path, sharding), (_, same) in zip(
                params, jax.tree_util.tree_leaves_with_path(moment), strict=True
            ):
                assert same.spec == sharding.spec, path
        sharded = [s for _, s in params if any(a is not None for a in s.spec)]
        assert len(sharded) >= 8  # the test means something: most params are split


def _lowered(config) -> str:
    """The step's program for `config`, traced afresh (no program shared from earlier)."""
    train_lib._PROGRAMS.clear()
    setup = train_lib.make_train(config, _mesh())
    with setup.context():
        args = (setup.abstract_state, setup.abstract_batch, setup.schedule_args)
        return setup.train_step.lower(*args).as_text()


def test_runs_differing_only_in_schedule_numbers_share_one_program():
    # A WSD parent (constant rate) and its cooldown branches: other lengths, decay
    # fractions, rates and warmups lower to the same program, so one compile (and the
    # persistent cache) serves them all; another formula (cosine) lowers to another.
    def lowered(**train):
        return _lowered(_config(**train))

    parent = lowered(schedule="constant", steps=80, lr=1e-2, warmup_steps=5)
    branches = [
        lowered(schedule="wsd", steps=24, decay_fraction=1 / 6, lr=1e-2, warmup_steps=5),
        lowered(schedule="wsd", steps=96, decay_fraction=0.25, lr=3e-3, warmup_steps=0),
    ]
    assert all(branch == parent for branch in branches)
    assert lowered(schedule="cosine", steps=80, lr=1e-2) != parent


# A change of each kind of field `make_train` leaves out of its programs' key.
_OUTSIDE_THE_PROGRAM = {
    "schedule numbers": {
        "train": dict(schedule="wsd", lr=3e-3, min_lr_ratio=0.0, warmup_steps=3, decay_fraction=0.3)
    },
    "seed, length, logging": {"train": dict(seed=7, steps=20, eval_every=5, log_every=2)},
    "bookkeeping": {
        "checkpoint": dict(every=3, keep=5, async_save=False),
        "tracking": dict(wandb_project="p"),
        "init": dict(workdir="/elsewhere", step=4, state=True),
        "data": dict(tokenizer_path="/elsewhere/tokenizer.model"),
    },
}


def test_configs_differing_outside_the_program_share_its_functions():
    # A sweep worker runs a WSD parent and then its cooldowns in one process: they get the
    # parent's jitted functions (no trace, no compile). Sound only if each field left out
    # of the key really leaves the program as it is: traced afresh, it lowers the same.
    base = _config(steps=50)
    reference = _lowered(base)
    for name, changes in _OUTSIDE_THE_PROGRAM.items():
        shared = train_lib.make_train(base, _mesh())
        config = _config(steps=50)
        for section, values in changes.items():
            config[section].update(values)
        again = train_lib.make_train(config, _mesh())
        assert again.train_step is shared.train_step, name
        assert again.eval_step is shared.eval_step and again.init_state is shared.init_state
        assert _lowered(config) == reference, name
    # A change inside the program gets its own functions.
    shared = train_lib.make_train(base, _mesh())
    other = train_lib.make_train(_config(steps=50, z_loss=1e-4), _mesh())
    assert other.train_step is not shared.train_step


def test_cpu_init_at_the_faster_compile_level_gives_the_same_state(optimized_xla):
    config = config_lib.apply_preset(_config(), "llama-tiny")
    config.model.update(d_model=32, n_layers=2, n_heads=2, n_kv_heads=0, vocab_size=VOCAB)
    # Every initializer in one program: GPT-2's learned positions, LayerNorm and biases too.
    config.model.update(positions="learned", norm="layernorm", norm_bias=True)
    config.model.update(attn_bias=True, mlp_bias=True)
    setup = train_lib.make_train(config, _mesh())
    with setup.context():
        fast = jax.device_get(setup.init_state(3))
        default_level = jax.jit(
            setup.init_state.__wrapped__, static_argnums=0, out_shardings=setup.state_shardings
        )
        state = jax.device_get(default_level(3))
    for a, b in zip(jax.tree.leaves(fast), jax.tree.leaves(state), strict=True):
        np.testing.assert_array_equal(a, b)


def test_sharded_steps_match_one_device():
    config = _config(lr=1e-2)
    batches = [_batch()] * 5  # repeated, so the loss must fall
    _, single = _run_steps(config, _mesh(), batches)
    losses = [h["train/loss"] for h in single]
    assert losses[-1] < losses[0]
    for shape in ({"data": 8}, {"data": 2, "fsdp": 2, "tensor": 2}):
        mesh = _mesh(**shape)
        setup = train_lib.make_train(config, mesh)
        kernel = setup.abstract_state["params"]["layers"]["mlp"]["up"]
        if "fsdp" in shape:  # really sharded: d_model rows over fsdp, d_ff over tensor
            assert kernel.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor")
        _, sharded = _run_steps(config, mesh, batches)
        np.testing.assert_allclose([h["train/loss"] for h in sharded], losses, rtol=2e-5)
        np.testing.assert_allclose(
            [h["grad_norm"] for h in sharded], [h["grad_norm"] for h in single], rtol=1e-4
        )


def test_gradient_accumulation_equals_full_batch():
    # A large Adam eps makes the update smooth in the gradient, so float noise stays small.
    full_config = _config(eps=1e-3, weight_decay=0.0)
    micro_config = _config(eps=1e-3, weight_decay=0.0, microbatches=4)
    batch = [_batch()]
    full_state, full = _run_steps(full_config, _mesh(data=2), batch)
    micro_state, micro = _run_steps(micro_config, _mesh(data=2), batch)
    assert micro[0]["train/loss"] == pytest.approx(full[0]["train/loss"], rel=1e-5)
    assert micro[0]["grad_norm"] == pytest.approx(full[0]["grad_norm"], rel=1e-5)
    # Updates are ~lr = 3e-3 per weight; both runs moved them the same way.
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6),
        micro_state["params"],
        full_state["params"],
    )


def test_tiny_model_overfits_one_batch():
    # The program of test_sharded_steps_match_one_device's single device: no compile here.
    config = _config(lr=1e-2, steps=150)
    _, history = _run_steps(config, _mesh(), [_batch()] * 150)
    assert history[0]["train/loss"] > 3.5  # ~ln(64) at init
    assert history[-1]["train/loss"] < 0.05


def test_divergence_stops_and_keeps_the_last_checkpoint(corpus, tmp_path):
    corpus_glob, cache = corpus
    workdir = str(tmp_path / "run")
    good = tiny_config(corpus_glob, cache, train__steps=4, checkpoint__every=2)
    trainer.train_and_evaluate(good, workdir)
    # Continue to 8 steps with an absurd learning rate: the weights overflow at once.
    bad = tiny_config(
        corpus_glob,
        cache,
        train__steps=8,
        checkpoint__every=2,
        train__log_every=4,
        train__lr=1e30,
        train__schedule="constant",
    )
    with pytest.raises(trainer.TrainError, match="diverged"):
        trainer.train_and_evaluate(bad, workdir)
    checkpointer = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"), read_only=True)
    assert checkpointer.latest_step() == 4  # nothing saved after the divergence
    checkpointer.close()
    config, params = workdir_lib.restore_params(workdir)
    assert config.train.lr == 1e30  # config.json is the latest run's
    assert all(np.isfinite(np.asarray(p)).all() for p in jax.tree.leaves(params))


def test_resume_after_sigterm_is_exact(corpus, tmp_path):
    corpus_glob, cache = corpus
    k = 8
    # Evaluating every step makes steps slow enough to signal between steps k and 2k.
    extra = dict(
        train__steps=2 * k,
        checkpoint__every=k,
        train__log_every=1,
        train__eval_every=1,
        checkpoint__async_save=False,
    )
    env = subprocess_env(1)
    reference_dir, resumed_dir = tmp_path / "reference", tmp_path / "resumed"
    reference = subprocess.Popen(
        tiny_command(reference_dir, corpus_glob, cache, **extra),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    command = tiny_command(resumed_dir, corpus_glob, cache, **extra)
    interrupted = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    err = sigterm_after_checkpoint(interrupted, [resumed_dir], k, timeout_s=240)
    assert interrupted.returncode == PREEMPTED_EXIT_CODE, err.decode()[-2000:]
    assert "Rerun the same command to resume" in err.decode()
    stopped_at = max(int(s) for s in os.listdir(resumed_dir / "checkpoints") if s.isdigit())
    assert k <= stopped_at < 2 * k
    restarted = subprocess.run(command, env=env, capture_output=True, timeout=240)
    assert restarted.returncode == 0, restarted.stderr.decode()[-2000:]
    _, err = reference.communicate(timeout=240)
    assert reference.returncode == 0, err.decode()[-2000:]
    expected, got = metric_rows(reference_dir), metric_rows(resumed_dir)
    assert [r["step"] for r in got] == [r["step"] for r in expected]
    assert got == expected  # bit for bit, through the restart
    assert expected[-1]["step"] == 2 * k and "val/loss" in expected[-1]


@pytest.mark.slow  # three trainer processes, two of them one distributed run: 130 s at load 10
def test_two_processes_match_one(corpus, tmp_path):
    corpus_glob, cache = corpus
    extra = dict(
        mesh__data=2,
        mesh__fsdp=2,
        train__steps=4,
        train__log_every=2,
        train__eval_every=4,
        checkpoint__every=4,
    )
    single = subprocess.Popen(
        tiny_command(tmp_path / "one", corpus_glob, cache, **extra),
        env=subprocess_env(4),
        stderr=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
    )
    address = f"127.0.0.1:{free_port()}"
    hosts = [
        subprocess.Popen(
            tiny_command(
                tmp_path / "two",
                corpus_glob,
                cache,
                **extra,
                mesh__distributed="on",
                mesh__coordinator_address=address,
                mesh__num_processes=2,
                mesh__process_id=i,
            ),
            env=subprocess_env(2),
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
        )
        for i in range(2)
    ]
    try:
        for proc in [single, *hosts]:
            _, err = proc.communicate(timeout=300)
            assert proc.returncode == 0, err.decode()[-3000:]
    finally:
        for proc in [single, *hosts]:
            if proc.poll() is None:
                proc.kill()
    one, two = metric_rows(tmp_path / "one"), metric_rows(tmp_path / "two")
    assert [r["step"] for r in two] == [r["step"] for r in one] == [2, 4, 4]
    for a, b in zip(one, two, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            assert b[key] == pytest.approx(a[key], rel=1e-5), key
    saved = [
        json.load(open(tmp_path / run / "checkpoints" / "4" / "meta" / "metadata"))["data"]
        for run in ("one", "two")
    ]
    assert saved[0] == saved[1] and saved[0]["position"] == 32  # one global position


def test_process_age_counts_from_the_process_start():
    # The phase clock's `startup` is the process's age when the trainer starts; /proc's
    # btime (whole seconds) once added up to a second to every trial's startup.
    code = "import time; from llm_jax.trainer import _process_age; print(_process_age())"
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    elapsed = time.perf_counter() - start
    assert 0.0 < float(out.stdout) <= elapsed + 0.02
