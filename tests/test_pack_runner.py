"""The sweep runner's packs (`llm-jax sweep --pack K`): which trials share a program, and
a packed sweep whose trial directories read as an unpacked sweep's."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from llm_jax import metrics as metrics_lib
from llm_jax.scaling import runner
from llm_jax.scaling import sweep as sweep_lib

SWEEP = """
from llm_jax.config import default_config
from llm_jax.scaling.sweep import Trial


def get_config():
    config = default_config()
    config.model.update(d_model=16, n_layers=1, n_heads=1, d_ff=32, vocab_size=512,
                        max_seq_len=32)
    config.data.update(seq_len=32, num_val_batches=1)
    config.train.update(steps=6, batch_size=4, warmup_steps=2, log_every=2, eval_every=6)
    config.checkpoint.update(every=6, async_save=False)
    return config


def get_sweep():
    return [
        Trial("lr-a", {"train.lr": 3e-3}),
        Trial("lr-b", {"train.lr": 1e-2, "train.seed": 1}),
        Trial("lr-c", {"train.lr": 3e-2, "model.init_std": 0.03}),
        Trial("wide", {"train.lr": 3e-3, "model.d_model": 32}),
        Trial("branch", {"init.step": 3}, parent="lr-a"),
    ]
"""


def _sweep(tmp_path: Path) -> str:
    path = tmp_path / "sweep.py"
    path.write_text(SWEEP)
    return str(path)


def _names(groups) -> list[list[str]]:
    return [[t.name for t, _ in group] for group in groups]


def test_only_compatible_trials_at_one_step_share_a_program(tmp_path):
    loaded = sweep_lib.load_sweep(_sweep(tmp_path))
    todo = [(t, {}) for t in loaded.trials]
    work = tmp_path / "runs"
    groups = runner.pack_groups(loaded, todo, 16, str(work))
    assert _names(groups) == [["lr-a", "lr-b", "lr-c"], ["wide"], ["branch"]]
    assert _names(runner.pack_groups(loaded, todo, 2, str(work)))[:2] == [
        ["lr-a", "lr-b"],
        ["lr-c"],
    ]
    assert len(runner.pack_groups(loaded, todo, 1, str(work))) == 5
    # Two parallel slots: the three compatible trials go into two programs, not one.
    assert _names(runner.pack_groups(loaded, todo, 16, str(work), parallel=2))[:2] == [
        ["lr-a", "lr-b"],
        ["lr-c"],
    ]
    # A trial checkpointed at another step than its mates resumes alone.
    (work / "lr-b" / "checkpoints" / "3").mkdir(parents=True)
    groups = runner.pack_groups(loaded, todo, 16, str(work))
    assert ["lr-b"] in _names(groups) and ["lr-a", "lr-c"] in _names(groups)


def test_pack_command_gives_each_trial_its_own_flags(tmp_path):
    loaded = sweep_lib.load_sweep(_sweep(tmp_path))
    a, b = loaded.trials[:2]
    command = runner.pack_command("s.py", "runs", [a, b], ("llm-jax",))
    assert command[:4] == ["llm-jax", "train-pack", "--config", "s.py"]
    at = command.index("--trial", 5)
    assert command[4:6] == ["--trial", os.path.join("runs", "lr-a")]
    assert "--config.train.lr=0.003" in command[4:at]
    assert command[at + 1] == os.path.join("runs", "lr-b")
    assert "--config.train.seed=1" in command[at:]
    assert runner.pack_command("s.py", "runs", [a], ("llm-jax",)) == runner.train_command(
        "s.py", "runs", a, ("llm-jax",)
    )


def _losses(trial_dir: Path) -> list[float]:
    rows = metrics_lib.read_metrics(str(trial_dir / "metrics.jsonl"))
    return [r["train/loss"] for r in rows if "train/loss" in r]


@pytest.mark.slow
def test_packed_sweep_reads_as_the_unpacked_sweep(tmp_path):
    sweep = _sweep(tmp_path)
    packed, alone = tmp_path / "packed", tmp_path / "alone"
    only = "lr-*,wide"
    # Packed by `llm-jax sweep` (its trials in a worker process), alone by subprocesses.
    command = [sys.executable, "-m", "llm_jax.cli", "sweep", sweep, "--workdir", str(packed)]
    flags = ["--parallel", "1", "--only", only, "--pack", "4"]
    out = subprocess.run([*command, *flags], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "packed 3 per program" in out.stdout
    assert runner.run_sweep(sweep, str(alone), parallel=2, only=only, n_boot=0, pack=1) == 0
    for name in ("lr-a", "lr-b", "lr-c", "wide"):
        assert (packed / name / "done.json").exists()
        assert _losses(packed / name) == pytest.approx(_losses(alone / name), rel=1e-5)
        log = (packed / name / "train.log").read_text()
        assert ("train-pack" in log) == (name != "wide")
        assert "train-pack" not in (alone / name / "train.log").read_text()
        status = json.loads((packed / name / "status.json").read_text())
        assert status["status"] == "done" and len(status["attempts"]) == 1
    # Each trial's log holds its own lines, not its mates'.
    log_b = (packed / "lr-b" / "train.log").read_text()
    assert "[lr-b] finished step 6" in log_b and "[lr-a]" not in log_b
    with open(packed / "results.csv") as f:
        rows = {r["name"]: r for r in csv.DictReader(f)}
    assert {r["status"] for r in rows.values()} == {"done"} and len(rows) == 4
    assert rows["lr-b"]["train.seed"] == "1" and float(rows["lr-c"]["loss"]) > 0
