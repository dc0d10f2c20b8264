"""Downstream scaling: a fine-tune after each pre-training trial (`sweep.finetune_each`).

Expansion and configs, the results columns and the plot on a hand-made sweep directory,
and (slow) the runner with real `llm-jax train` processes: stage 2 after stage 1, a
finished stage skipped, a killed stage 2 resumed without rerunning stage 1.
"""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llm_jax import lease
from llm_jax.scaling import collect, plot, results, runner, sweep

REPO = Path(__file__).resolve().parent.parent
GENRE = str(REPO / "experiments" / "configs" / "genre_classify.py")


def _write_sweep(path: Path, body: str) -> str:
    path.write_text(
        "from llm_jax.config import default_config\n"
        "from llm_jax.scaling import sweep\n"
        "from llm_jax.scaling.sweep import Trial\n"
        f"GENRE = {GENRE!r}\n" + body
    )
    return str(path)


def test_finetune_each_adds_one_dependent_stage_per_trial(tmp_path):
    path = _write_sweep(
        tmp_path / "sweep.py",
        "def get_config():\n"
        "    config = default_config()\n"
        "    config.model.update(vocab_size=512, max_seq_len=64, d_model=32, n_heads=2)\n"
        "    config.data.seq_len = 64\n"
        "    return config\n"
        "def get_sweep():\n"
        "    pre = [Trial('a', {'model.d_model': 16, 'model.n_heads': 1}), Trial('b', {})]\n"
        "    trials = sweep.finetune_each(pre, GENRE, name='genre',\n"
        "                                 overrides={'data.seq_len': 64, 'train.steps': 7})\n"
        "    return sweep.finetune_each(trials, GENRE, name='again',\n"
        "                               overrides={'data.seq_len': 32})\n",
    )
    loaded = sweep.load_sweep(path)
    names = [t.name for t in loaded.trials]
    assert names == [
        "a",
        "b",
        "a/finetune/genre",
        "b/finetune/genre",
        "a/finetune/again",
        "b/finetune/again",
    ]  # fine-tunes are not fine-tuned again
    stage = loaded.trials[2]
    assert stage.parent == "a" and stage.config == GENRE and stage.tags == {"stage": "finetune"}
    assert sweep.is_finetune(stage) and not sweep.is_finetune(loaded.trials[0])
    config = sweep.trial_config(loaded, stage)
    # The task's config, its overrides, and the parent's shape (keys left at default).
    assert config.task.name == "classify" and config.train.steps == 7
    assert config.model.d_model == 16 and config.model.vocab_size == 512
    assert config.init.workdir == "a"
    assert sweep.trial_config(loaded, loaded.trials[4]).data.seq_len == 32
    cmd = runner.train_command(path, "/sweeps/x", stage)
    assert cmd[cmd.index("--config") + 1] == GENRE
    assert cmd[cmd.index("--workdir") + 1] == "/sweeps/x/a/finetune/genre"
    assert "--config.init.workdir=/sweeps/x/a" in cmd


def test_a_finetune_that_cannot_run_on_its_parent_is_refused_at_load(tmp_path):
    path = _write_sweep(
        tmp_path / "sweep.py",
        "def get_config():\n"
        "    config = default_config()\n"
        "    config.model.update(vocab_size=512, max_seq_len=64)\n"
        "    config.data.seq_len = 64\n"
        "    return config\n"
        "def get_sweep():\n"
        "    return sweep.finetune_each([Trial('a', {})], GENRE)\n",  # 128-token passages
    )
    with pytest.raises(sweep.SweepError, match=r"a/finetune/ft: .*seq_len=128 exceeds"):
        sweep.load_sweep(path)


def test_wsd_parents_get_no_finetune_their_branches_do():
    wsd = [
        sweep.Trial("p", {}, {"wsd_role": "parent"}),
        sweep.Trial("p-D1", {"init.step": 8}, {"wsd_role": "branch"}, parent="p"),
    ]
    stages = [t for t in sweep.finetune_each(wsd, GENRE) if sweep.is_finetune(t)]
    assert [(t.name, t.parent) for t in stages] == [("p-D1/finetune/ft", "p-D1")]


def test_a_loop_of_parents_is_refused(tmp_path):
    path = _write_sweep(
        tmp_path / "sweep.py",
        "def get_config():\n    return default_config()\n"
        "def get_sweep():\n"
        "    return [Trial('a', {}, parent='b'), Trial('b', {}, parent='a')]\n",
    )
    with pytest.raises(sweep.SweepError, match="is not another trial"):
        sweep.load_sweep(path)


def test_stage_two_waits_for_a_done_parent(tmp_path):
    (stage,) = [t for t in sweep.finetune_each([sweep.Trial("p", {})], GENRE) if t.parent]
    (tmp_path / "p").mkdir()
    assert not runner.branch_ready(stage, str(tmp_path))
    (tmp_path / "p" / "done.json").write_text("{}")
    assert runner.branch_ready(stage, str(tmp_path))


def test_downstream_sweep_file_has_a_genre_stage_per_isoflop_trial():
    loaded = sweep.load_sweep(REPO / "experiments" / "sweeps" / "shakespeare_downstream.py")
    pre = [t for t in loaded.trials if not sweep.is_finetune(t)]
    stages = {t.parent: t for t in loaded.trials if sweep.is_finetune(t)}
    assert len(pre) == 15 and all(t.tags.get("budget") for t in pre)
    assert set(stages) == {t.name for t in pre}
    for t in pre:
        config = sweep.trial_config(loaded, stages[t.name])
        assert config.model.d_model == t.overrides["model.d_model"]
        assert config.task.name == "classify" and config.data.seq_len == 64


def _fake_trial(root: Path, name: str, n_model: int, budget: float, loss: float, acc: float):
    """A finished trial directory (and its finished genre fine-tune) as the runner leaves it."""
    trial = root / name
    stage = trial / results.FINETUNE_DIR / "genre"
    stage.mkdir(parents=True)
    overrides = {"model.d_model": n_model, "model.n_heads": 1, "model.vocab_size": 512}
    tokens = budget / (6 * 1e4)
    results.write_json(
        trial / "trial.json",
        {
            "name": name,
            "overrides": overrides,
            "tags": {"budget": budget},
            "plan": {"steps": 10, "N": 1e3 * n_model},
        },
    )
    rows = [
        {"step": 5, "tokens": tokens / 2, "flops": budget / 2, "train/loss": loss + 0.5},
        {"step": 10, "tokens": tokens, "flops": budget, "train/loss": loss, "val/loss": loss},
    ]
    (trial / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (trial / "done.json").write_text("{}")
    results.write_json(stage / "trial.json", {"name": f"{name}/finetune/genre", "plan": {}})
    scores = {"val/accuracy": acc, "val/macro_f1": acc - 0.1, "val/majority_accuracy": 0.32}
    (stage / "metrics.jsonl").write_text(json.dumps({"step": 10, **scores}) + "\n")
    (stage / "done.json").write_text("{}")


def test_results_get_downstream_columns_and_plot_draws_them(tmp_path):
    for i, (d, budget) in enumerate([(16, 1e11), (32, 1e11), (16, 1e12), (32, 1e12)]):
        _fake_trial(tmp_path, f"C{budget:.0e}-d{d}", d, budget, 4.0 - 0.2 * i, 0.35 + 0.02 * i)
    rows, columns = collect.collect_rows(tmp_path)
    assert [r["name"] for r in rows] == ["C1e+11-d16", "C1e+11-d32", "C1e+12-d16", "C1e+12-d32"]
    assert columns[-4:] == [  # after the measured columns
        "ft/genre/val/accuracy",
        "ft/genre/val/macro_f1",
        "ft/genre/val/majority_accuracy",
        "ft/genre/status",
    ]
    assert "ft/genre/val/accuracy" not in results.swept_columns(rows)
    results.write_results(tmp_path / results.RESULTS_CSV, rows, columns)
    with open(tmp_path / results.RESULTS_CSV) as f:
        table = {r["name"]: r for r in csv.DictReader(f)}
    assert float(table["C1e+12-d32"]["ft/genre/val/accuracy"]) == pytest.approx(0.41)
    assert table["C1e+11-d16"]["ft/genre/status"] == "done"
    assert plot.downstream_metrics(rows) == [
        ("ft/genre/val/accuracy", "ft/genre/val/majority_accuracy")
    ]
    paths = plot.plot_sweep(tmp_path)
    downstream = tmp_path / results.PLOTS_DIR / "downstream.png"
    assert downstream in paths and downstream.stat().st_size > 10_000


# --- the runner, with real processes -------------------------------------------------------

PRETRAIN = """
def get_config():
    config = default_config()
    config.model.update(d_model=16, n_layers=1, n_heads=1, d_ff=32, vocab_size=512,
                        max_seq_len=32)
    config.data.update(seq_len=32, num_val_batches=1)
    config.train.update(steps=10, batch_size=4, warmup_steps=2, log_every=5, eval_every=10)
    config.checkpoint.update(every=10, async_save=False)
    return config
"""


def _stage_sweep(tmp_path: Path, stage_steps: int | None) -> str:
    """The one-trial pre-training sweep, with (stage_steps) or without its genre fine-tune."""
    stages = (
        "    return sweep.finetune_each(pre, GENRE, name='genre', overrides={\n"
        f"        'train.steps': {stage_steps}, 'train.eval_every': {stage_steps},\n"
        "        'train.batch_size': 4, 'train.log_every': 50, 'checkpoint.every': 50,\n"
        "        'checkpoint.async_save': False, 'data.seq_len': 32,\n"
        "        'data.val_batch_size': 8, 'data.num_val_batches': 1})\n"
        if stage_steps
        else "    return pre\n"
    )
    body = PRETRAIN + "def get_sweep():\n    pre = [Trial('pre', {'train.lr': 3e-3})]\n" + stages
    return _write_sweep(tmp_path / f"sweep_{stage_steps}.py", body)


def _attempts(trial_dir: Path) -> list:
    return json.loads((trial_dir / "status.json").read_text())["attempts"]


def _wait_for(predicate, timeout, what):
    deadline = time.time() + timeout
    while not predicate():
        assert time.time() < deadline, what
        time.sleep(0.2)


@pytest.mark.slow
def test_runner_runs_stage_two_after_stage_one_and_resumes_a_killed_one(tmp_path, capsys):
    work = tmp_path / "runs"
    # Stage 1 alone; then the same trial with a fine-tune: only the fine-tune runs.
    assert runner.run_sweep(_stage_sweep(tmp_path, None), str(work), n_boot=0) == 0
    pre_done = (work / "pre" / "done.json").stat().st_mtime_ns
    sweep_path = _stage_sweep(tmp_path, 1000)
    cmd = [sys.executable, "-m", "llm_jax.cli", "sweep", sweep_path, "--workdir", str(work)]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    stage = work / "pre" / "finetune" / "genre"
    checkpoints = stage / "checkpoints"
    _wait_for(
        lambda: any(p.name.isdigit() for p in checkpoints.iterdir()) if checkpoints.exists() else 0,
        240,
        "no fine-tune checkpoint",
    )
    os.kill(proc.pid, signal.SIGKILL)  # the runner: its trial gets SIGTERM, saves and exits
    proc.wait()
    _wait_for(lambda: lease.read_holder(str(stage)) is None, 120, "the fine-tune lives on")
    saved = max(int(p.name) for p in checkpoints.iterdir() if p.name.isdigit())
    assert 50 <= saved < 1000 and not (stage / "done.json").exists()
    # The fine-tune started from the finished pre-training run, after it.
    assert _attempts(stage)[0]["start"] * 1e9 > pre_done

    assert runner.run_sweep(sweep_path, str(work), n_boot=0) == 0
    out = capsys.readouterr().out
    assert "1 already done, 1 to run" in out
    assert (work / "pre" / "done.json").stat().st_mtime_ns == pre_done  # stage 1 not rerun
    assert len(_attempts(work / "pre")) == 1 and len(_attempts(stage)) == 2
    last_attempt = (stage / "train.log").read_text().split("=== attempt")[-1]
    assert f"resumed from step {saved} of 1000" in last_attempt
    assert results.trial_status(stage) == "done"
    with open(work / results.RESULTS_CSV) as f:
        (row,) = list(csv.DictReader(f))
    assert row["name"] == "pre" and row["ft/genre/status"] == "done"
    assert 0.0 <= float(row["ft/genre/val/accuracy"]) <= 1.0
    assert 0.0 < float(row["ft/genre/val/majority_accuracy"]) < 1.0
    assert (work / results.PLOTS_DIR / "downstream.png").exists()
