"""The sweep runner with real `llm-jax train` subprocesses on the tiniest models.

Trials share the default data cache (the Shakespeare tokenizer and tokens are built once).
"""

import csv
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from llm_jax.scaling import results, runner

SWEEP = """
from llm_jax.config import default_config
from llm_jax.scaling.sweep import Trial


def get_config():
    config = default_config()
    config.model.update(d_model=16, n_layers=1, n_heads=1, d_ff=32, vocab_size=512,
                        max_seq_len=32)
    config.data.update(seq_len=32, num_val_batches=1)
    config.train.update(steps={steps}, batch_size=4, warmup_steps=2, log_every=5,
                        eval_every={steps})
    config.checkpoint.update(every={every}, async_save=False)
    return config


def get_sweep():
    return {trials}
"""


def _write_sweep(path: Path, trials: str, steps: int = 10, every: int = 10) -> str:
    path.write_text(SWEEP.format(trials=trials, steps=steps, every=every))
    return str(path)


def _attempts(trial_dir: Path) -> int:
    return len(json.loads((trial_dir / "status.json").read_text())["attempts"])


def test_sweep_runs_records_a_crash_and_skips_finished_trials(tmp_path, capsys):
    sweep = _write_sweep(
        tmp_path / "sweep.py",
        """[
        Trial("lr-a", {"train.lr": 3e-3}),
        Trial("lr-b", {"train.lr": 1e-2}),
        # A missing data file: the trainer exits with an error after starting.
        Trial("broken", {"data.source": "files", "data.path": "/nonexistent/corpus.txt"}),
    ]""",
    )
    work = tmp_path / "runs"
    assert runner.run_sweep(sweep, str(work), parallel=2, n_boot=0) == 1
    out = capsys.readouterr().out
    assert "FAILED broken" in out and "3/3" not in out
    for name in ("lr-a", "lr-b"):
        assert (work / name / "done.json").exists()
        assert results.trial_status(work / name) == "done"
    assert results.trial_status(work / "broken") == "failed"
    error = json.loads((work / "broken" / "status.json").read_text())["error"]
    assert "nonexistent" in error
    with open(work / "results.csv") as f:
        rows = {r["name"]: r for r in csv.DictReader(f)}
    assert {r["status"] for r in rows.values()} == {"done", "failed"}
    assert rows["lr-a"]["train.lr"] == "0.003" and float(rows["lr-a"]["loss"]) > 0
    assert float(rows["lr-b"]["D"]) == 10 * 4 * 32
    assert int(rows["lr-a"]["N"]) > int(rows["lr-a"]["N_non_embedding"]) > 0
    assert rows["broken"]["loss"] == ""

    # Rerun: finished trials are skipped untouched; the failed one is retried.
    marker = (work / "lr-a" / "done.json").stat().st_mtime_ns
    assert runner.run_sweep(sweep, str(work), parallel=2, n_boot=0) == 1
    assert "1 to run" in capsys.readouterr().out
    assert (work / "lr-a" / "done.json").stat().st_mtime_ns == marker
    assert _attempts(work / "lr-a") == 1 and _attempts(work / "broken") == 2


def test_killed_sweep_resumes_from_the_checkpoint(tmp_path):
    sweep = _write_sweep(
        tmp_path / "sweep.py", '[Trial("long", {"train.lr": 3e-3})]', steps=1000, every=50
    )
    work = tmp_path / "runs"
    cmd = [sys.executable, "-m", "llm_jax.cli", "sweep", sweep, "--workdir", str(work)]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    checkpoints = work / "long" / "checkpoints"
    deadline = time.time() + 120
    while time.time() < deadline and not any(
        p.name.isdigit() and int(p.name) >= 50
        for p in (checkpoints.iterdir() if checkpoints.exists() else [])
    ):
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # no clean shutdown: runner and trainer die at once
    proc.wait()
    saved = max(int(p.name) for p in checkpoints.iterdir() if p.name.isdigit())
    assert 50 <= saved < 1000 and not (work / "long" / "done.json").exists()

    assert runner.run_sweep(sweep, str(work), n_boot=0) == 0
    assert results.trial_status(work / "long") == "done"
    last_attempt = (work / "long" / "train.log").read_text().split("=== attempt")[-1]
    saved_again = [int(s) for s in re.findall(r"checkpoint saved at step (\d+)", last_attempt)]
    assert saved_again and min(saved_again) > saved  # resumed, not restarted
    steps = [
        json.loads(line)["step"]
        for line in (work / "long" / "metrics.jsonl").read_text().splitlines()
    ]
    assert max(steps) == 1000

    # A third run has nothing to do and says so.
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and "1 already done, 0 to run" in result.stdout


def test_dry_run_and_cluster_scripts(tmp_path, capsys):
    sweep = _write_sweep(
        tmp_path / "sweep.py", '[Trial("a", {"train.lr": 1e-3}), Trial("b", {"train.lr": 2e-3})]'
    )
    work = tmp_path / "runs"
    assert runner.run_sweep(sweep, str(work), dry_run=True) == 0
    out = capsys.readouterr().out
    assert "2 of 2 trials to run" in out and "--config.train.lr=0.001" in out
    assert not work.exists()

    assert runner.run_sweep(sweep, str(work), launcher="slurm", parallel=2) == 0
    sbatch = (work / "sweep.sbatch").read_text()
    assert "#SBATCH --array=0-1%2" in sbatch
    assert f"llm-jax train --config {sweep} --workdir {work}/b --config.train.lr=0.002" in sbatch
    assert runner.run_sweep(sweep, str(work), launcher="tpu", only="a") == 0
    tpu = (work / "launch_tpu.sh").read_text()
    assert "--worker=all" in tpu and f"--workdir {work}/a" in tpu and "/b " not in tpu
    assert json.loads((work / "a" / "trial.json").read_text())["overrides"] == {"train.lr": 0.001}
