"""WSD branches: the design's trials and dependencies, and a branch that restores exactly."""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from tiny_run import tiny_config, write_corpus

from llm_jax import config as config_lib
from llm_jax import metrics as metrics_lib
from llm_jax import optim, trainer
from llm_jax import workdir as workdir_lib
from llm_jax.scaling import collect, runner, sweep
from llm_jax.scaling import results as results_io


def _base():
    base = config_lib.default_config()
    base.model.update(vocab_size=512, max_seq_len=64)
    base.data.seq_len = 64
    return base


def test_wsd_branches_expand_to_parents_and_cooldown_branches():
    trials = sweep.wsd_branches(
        _base(), [3e4, 8e4], [1e5, 2e5, 4e5], cooldown_fraction=0.25, aspect=32, head_dim=16
    )
    parents = [t for t in trials if not t.parent]
    assert len(parents) == 2 and len(trials) == 8
    for parent in parents:
        branches = [t for t in trials if t.parent == parent.name]
        assert [t.tags["wsd_role"] for t in branches] == ["branch"] * 3
        p = parent.overrides
        assert p["train.schedule"] == "constant"
        tokens_per_step = p["train.batch_size"] * 64
        steps = [b.overrides["init.step"] for b in branches]
        # Each branch point is a kept checkpoint of the parent, the last its final step.
        assert all(s % p["checkpoint.keep_every"] == 0 for s in steps)
        assert steps[-1] * tokens_per_step == p["train.tokens"]
        for b, step, target in zip(branches, steps, (1e5, 2e5, 4e5), strict=True):
            o = b.overrides
            assert step * tokens_per_step == pytest.approx(target, rel=0.1)
            assert o["init.state"] and o["train.schedule"] == "wsd"
            total = o["train.tokens"] // tokens_per_step
            assert total - step == round(0.25 * step)  # the cooldown: a quarter of the steps
            assert round(o["train.decay_fraction"] * total) == total - step
            assert o["train.min_lr_ratio"] == 0.0
            assert b.tags["branch_tokens"] == step * tokens_per_step
            # Same model, batch, peak rate and warmup as the parent: only the tail differs.
            shared = ("train.lr", "train.warmup_steps", "train.batch_size", "model.d_model")
            assert all(o[k] == p[k] for k in shared)


def test_a_branch_without_its_parent_is_refused(tmp_path):
    path = tmp_path / "bad_sweep.py"
    path.write_text(
        "from llm_jax.config import default_config\n"
        "from llm_jax.scaling.sweep import Trial\n"
        "def get_config():\n    return default_config()\n"
        "def get_sweep():\n"
        "    return [Trial('b', {'init.step': 4, 'init.state': True}, parent='gone')]\n"
    )
    with pytest.raises(sweep.SweepError, match="parent 'gone' is not another trial"):
        sweep.load_sweep(path)


def _params(workdir, step):
    _, params = workdir_lib.restore_params(str(workdir), step=step)
    return jax.tree.leaves(jax.device_get(params))


def test_branch_first_step_is_bit_equal_to_continuing_the_parent(tmp_path):
    corpus, cache = write_corpus(tmp_path / "corpus"), tmp_path / "cache"
    common = dict(train__schedule="constant", checkpoint__every=1, checkpoint__keep=10)
    common.update(checkpoint__async_save=False, train__warmup_steps=2)
    parent = tmp_path / "parent"
    trainer.train_and_evaluate(tiny_config(corpus, cache, train__steps=5, **common), parent)
    # The cooldown branch from step 4: its first step (the 5th) still runs at the peak
    # rate, as the parent's did, and reads the parent's next batch.
    branch = tmp_path / "branch"
    config = tiny_config(
        corpus,
        cache,
        **{**common, "train__schedule": "wsd"},
        train__steps=6,
        train__decay_fraction=2 / 6,
        train__min_lr_ratio=0.0,
        init__workdir=str(parent),
        init__step=4,
        init__state=True,
    )
    trainer.train_and_evaluate(config, branch)
    for a, b in zip(_params(parent, 5), _params(branch, 5), strict=True):
        np.testing.assert_array_equal(a, b)
    # Its second step decays: the two runs part.
    assert any(
        not np.array_equal(a, b)
        for a, b in zip(_params(parent, 5), _params(branch, 6), strict=True)
    )
    # Restarted (killed, or extended), a branch resumes from its own checkpoints.
    with trainer.Trainer(config_lib.validate(config), str(branch)) as resumed:
        assert resumed.step_count == 6
        assert resumed.restored_from == str(branch / "checkpoints" / "6")


def test_fits_use_the_cooldown_ends_and_leave_the_parents_out(tmp_path):
    true = dict(E=1.7, A=400.0, B=410.0, alpha=0.34, beta=0.28)

    def law(n, d):
        return true["E"] + true["A"] / n ** true["alpha"] + true["B"] / d ** true["beta"]

    rows = []
    for n in np.logspace(6, 8, 5):
        for d in np.logspace(8, 11, 7):
            rows.append(dict(N=n, D=d, C=6 * n * d, C_detailed=6 * n * d, loss=law(n, d)))
            rows[-1].update(status="done", wsd_role="branch")
        # A constant-LR parent sits above its cooled-down branches.
        rows.append(dict(rows[-1], wsd_role="parent", loss=law(n, d) + 0.3))
    fits = collect.fit_sweep(tmp_path, rows, n_boot=10)
    assert fits["chinchilla"]["n_points"] == 35  # branches only
    assert fits["chinchilla"]["alpha"] == pytest.approx(true["alpha"], rel=0.02)
    assert any("WSD parents left out" in note for note in fits["notes"])
    # Approach 1 reads the branches' final losses (this directory has no metrics files).
    for p in fits["envelope"]["envelope"]:
        assert p["loss"] == pytest.approx(law(p["N"], p["D"]), rel=0.03)
    assert fits["envelope"]["a"] == pytest.approx(true["beta"] / 0.62, abs=0.1)


def test_one_minus_sqrt_cooldown():
    t = config_lib.default_config().train
    t.update(lr=1.0, warmup_steps=0, schedule="wsd", decay_fraction=0.5, min_lr_ratio=0.0)
    t.decay_shape = "1-sqrt"
    schedule = optim.make_schedule(t, total_steps=100)
    assert float(schedule(49)) == 1.0
    assert float(schedule(75)) == pytest.approx(1 - 0.5**0.5, rel=1e-6)
    assert float(schedule(100)) == 0.0


# An 8-step constant-rate parent with checkpoints every 4 steps; each sweep adds get_sweep.
BRANCH_CONFIG = """
from llm_jax.config import default_config
from llm_jax.scaling.sweep import Trial


def get_config():
    config = default_config()
    config.model.update(d_model=16, n_layers=1, n_heads=1, d_ff=32, vocab_size=512,
                        max_seq_len=32)
    config.data.update(seq_len=32, num_val_batches=1)
    config.train.update(steps=8, batch_size=4, warmup_steps=2, log_every=2, eval_every=8,
                        schedule="constant")
    config.checkpoint.update(every=4, keep_every=4, async_save=False)
    return config
"""

RUNNER_SWEEP = (
    BRANCH_CONFIG
    + """

def get_sweep():
    branch = {"train.steps": 6, "train.schedule": "wsd", "train.decay_fraction": 2 / 6,
              "train.min_lr_ratio": 0.0, "train.eval_every": 6, "init.step": 4,
              "init.state": True}
    return [
        Trial("parent", {}),
        Trial("parent-branch", branch, parent="parent"),
        Trial("broken", {"data.source": "files", "data.path": "/nonexistent/corpus.txt"}),
        Trial("orphan", branch, parent="broken"),
    ]
"""
)


def test_runner_starts_a_branch_once_its_checkpoint_exists(tmp_path, capsys):
    (tmp_path / "sweep.py").write_text(RUNNER_SWEEP)
    work = tmp_path / "runs"
    assert runner.run_sweep(str(tmp_path / "sweep.py"), str(work), parallel=2, n_boot=0) == 1
    out = capsys.readouterr().out
    # Started at once, the branch would have failed: the parent had no step-4 checkpoint.
    assert results_io.trial_status(work / "parent-branch") == "done"
    steps = [r["step"] for r in metrics_lib.read_metrics(work / "parent-branch" / "metrics.jsonl")]
    assert min(steps) > 4 and max(steps) == 6  # it continued the parent from step 4
    # A branch whose parent failed is never started.
    assert "BLOCKED orphan" in out and not (work / "orphan" / "train.log").exists()
    with pytest.raises(sweep.SweepError, match="launch the parents first"):
        runner.run_sweep(str(tmp_path / "sweep.py"), str(work), launcher="slurm")


WORKER_SWEEP = (
    BRANCH_CONFIG
    + """

def get_sweep():
    def branch(step, steps):
        return {"train.steps": steps, "train.schedule": "wsd", "train.min_lr_ratio": 0.0,
                "train.decay_fraction": 2 / steps, "train.eval_every": steps,
                "init.step": step, "init.state": True}

    return [Trial("parent", {}), Trial("early", branch(4, 6), parent="parent"),
            Trial("late", branch(8, 10), parent="parent")]
"""
)


@pytest.mark.slow
def test_one_worker_runs_a_parent_and_its_branches_as_new_processes_would(tmp_path):
    # `llm-jax sweep` runs trials in workers, forks that keep their compiled programs: the
    # branches reuse the parent's. Their metrics must be those of a new interpreter per
    # trial (LLM_JAX_SWEEP_FORK=0), bit for bit.
    (tmp_path / "sweep.py").write_text(WORKER_SWEEP)
    runs = {}
    for mode, fork in (("worker", "1"), ("processes", "0")):
        work = tmp_path / mode
        command = [sys.executable, "-m", "llm_jax.cli", "sweep", str(tmp_path / "sweep.py")]
        env = dict(os.environ, LLM_JAX_SWEEP_FORK=fork)
        subprocess.run(
            [*command, "--workdir", str(work), "--parallel", "1"], env=env, timeout=600, check=True
        )
        runs[mode] = {
            name: (
                results_io.read_json(work / name / "status.json")["attempts"][-1]["pid"],
                metrics_lib.read_metrics(work / name / "metrics.jsonl"),
            )
            for name in ("parent", "early", "late")
        }
    assert len({pid for pid, _ in runs["worker"].values()}) == 1
    assert len({pid for pid, _ in runs["processes"].values()}) == 3
    for name in ("parent", "early", "late"):
        worker, alone = runs["worker"][name][1], runs["processes"][name][1]
        keys = ("step", "train/loss", "val/loss", "lr", "grad_norm")
        assert [[r.get(k) for k in keys] for r in worker] == [
            [r.get(k) for k in keys] for r in alone
        ], name
    assert min(r["step"] for r in runs["worker"]["late"][1]) > 8  # it continued from step 8
