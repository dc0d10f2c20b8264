"""The sweep runner with real `llm-jax train` subprocesses on the tiniest models.

Trials share the default data cache (the Shakespeare tokenizer and tokens are built once).
"""

import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from llm_jax import cli, lease
from llm_jax.scaling import results, runner
from llm_jax.scaling.sweep import SweepError

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
        # A missing data file: the trainer exits with an error after starting.
        Trial("broken", {"data.source": "files", "data.path": "/nonexistent/corpus.txt"}),
    ]""",
    )
    work = tmp_path / "runs"
    assert runner.run_sweep(sweep, str(work), parallel=2, n_boot=0) == 1
    out = capsys.readouterr().out
    assert "FAILED broken" in out and "2/2" not in out
    assert (work / "lr-a" / "done.json").exists()
    assert results.trial_status(work / "lr-a") == "done"
    assert results.trial_status(work / "broken") == "failed"
    error = json.loads((work / "broken" / "status.json").read_text())["error"]
    assert "nonexistent" in error
    with open(work / "results.csv") as f:
        rows = {r["name"]: r for r in csv.DictReader(f)}
    assert {r["status"] for r in rows.values()} == {"done", "failed"}
    assert rows["lr-a"]["train.lr"] == "0.003" and float(rows["lr-a"]["loss"]) > 0
    assert float(rows["lr-a"]["D"]) == 10 * 4 * 32
    assert int(rows["lr-a"]["N"]) > int(rows["lr-a"]["N_non_embedding"]) > 0
    assert rows["broken"]["loss"] == ""

    # Rerun: finished trials are skipped untouched; the failed one is retried.
    marker = (work / "lr-a" / "done.json").stat().st_mtime_ns
    assert runner.run_sweep(sweep, str(work), parallel=2, n_boot=0) == 1
    assert "1 to run" in capsys.readouterr().out
    assert (work / "lr-a" / "done.json").stat().st_mtime_ns == marker
    assert _attempts(work / "lr-a") == 1 and _attempts(work / "broken") == 2


def _wait_for(predicate, timeout, what):
    deadline = time.time() + timeout
    while not predicate():
        assert time.time() < deadline, what
        time.sleep(0.2)


def test_killed_runner_stops_its_trial_and_a_rerun_resumes(tmp_path, capsys):
    sweep = _write_sweep(
        tmp_path / "sweep.py", '[Trial("long", {"train.lr": 3e-3})]', steps=600, every=100
    )
    work = tmp_path / "runs"
    cmd = [sys.executable, "-m", "llm_jax.cli", "sweep", sweep, "--workdir", str(work)]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    checkpoints = work / "long" / "checkpoints"
    _wait_for(
        lambda: any(
            p.name.isdigit() and int(p.name) >= 100
            for p in (checkpoints.iterdir() if checkpoints.exists() else [])
        ),
        180,
        "no checkpoint at step 100",
    )
    trainer_pid = lease.read_holder(str(work / "long"))["pid"]
    os.kill(proc.pid, signal.SIGKILL)  # the runner alone: no clean shutdown, no signal passed on
    proc.wait()
    # The trial gets SIGTERM from the kernel (parent death), saves and exits: no orphan.
    _wait_for(lambda: lease.read_holder(str(work / "long")) is None, 120, "the trial lives on")
    _wait_for(lambda: not os.path.exists(f"/proc/{trainer_pid}"), 30, "trainer still exists")
    saved = max(int(p.name) for p in checkpoints.iterdir() if p.name.isdigit())
    assert 100 <= saved < 600 and not (work / "long" / "done.json").exists()
    killed = json.loads((work / "long" / "status.json").read_text())["attempts"]
    assert len(killed) == 1 and killed[0]["rc"] is None and killed[0]["end"] > killed[0]["start"]

    assert runner.run_sweep(sweep, str(work), n_boot=0) == 0
    assert results.trial_status(work / "long") == "done"
    last_attempt = (work / "long" / "train.log").read_text().split("=== attempt")[-1]
    assert f"resumed from step {saved} of 600" in last_attempt  # resumed, not restarted
    steps = [
        json.loads(line)["step"]
        for line in (work / "long" / "metrics.jsonl").read_text().splitlines()
    ]
    assert max(steps) == 600
    state = json.loads((work / "long" / "status.json").read_text())
    assert len(state["attempts"]) == 2 and state["attempts"][0] == killed[0]
    assert state["wall_s"] == pytest.approx(sum(a["end"] - a["start"] for a in state["attempts"]))

    # A third run has nothing to do and says so.
    capsys.readouterr()
    assert cli.run(["sweep", sweep, "--workdir", str(work)]) == 0
    assert "1 already done, 0 to run" in capsys.readouterr().out


def test_sweep_directory_and_live_trials_are_not_shared(tmp_path, capsys):
    sweep = _write_sweep(tmp_path / "sweep.py", '[Trial("a", {}), Trial("b", {})]')
    work = tmp_path / "runs"
    with lease.Lease(str(work), "sweep directory"):
        with pytest.raises(lease.LeaseHeld, match=r"runs is in use by pid \d+ on host"):
            runner.run_sweep(sweep, str(work), n_boot=0)
    assert os.listdir(work) == []  # refused before writing anything
    with lease.Lease(str(work / "a")):  # a trainer (e.g. an orphan) still owns trial a
        assert runner.run_sweep(sweep, str(work), only="a", n_boot=0) == 1
    assert "skip  a: its workdir is in use by pid" in capsys.readouterr().out
    assert not (work / "a" / "train.log").exists()  # never started


def test_status_survives_a_failure_then_a_success(tmp_path):
    trial = tmp_path / "t"
    trial.mkdir()
    attempts = [{"start": 0.0, "end": 5.0, "rc": 1}]
    runner._write_status(trial, "failed", attempts=attempts, error="boom", rc=1)
    attempts = attempts + [{"start": 10.0, "end": 12.5, "rc": 0}]
    state = runner._write_status(trial, "done", attempts=attempts)
    assert "error" not in state and "rc" not in state and state["wall_s"] == 7.5
    assert json.loads((trial / "status.json").read_text()) == state


class _FakeRunning:
    def __init__(self, cost, progress):
        self.plan, self._progress = {"C_detailed": cost}, progress

    def progress(self):
        return self._progress


def test_eta_from_flops_left_and_measured_flops_per_second():
    eta = runner._Eta(parallel=2)
    assert eta.left([], []) is None  # nothing measured yet
    eta.add(4e12, 10.0)  # 4e11 FLOP/s per slot
    eta.add(4e12, 10.0)
    queued = [(None, {"C_detailed": 8e12})] * 3
    running = [_FakeRunning(8e12, 0.5)]
    # (3 x 8e12 + 4e12) FLOPs / 4e11 FLOP/s / 2 slots
    assert eta.left(queued, running) == pytest.approx(35.0)


def test_status_lines_off_a_terminal_only_when_something_changes(monkeypatch):
    out = io.StringIO()
    reporter = runner._Reporter(out)
    reporter.status("[sweep] 0/2 done | running: a (10%)", changed=True)
    for percent in range(11, 60):
        reporter.status(f"[sweep] 0/2 done | running: a ({percent}%)", changed=False)
    assert out.getvalue().count("\n") == 1
    monkeypatch.setattr(runner, "QUIET_REPORT_S", 0.0)  # ... or when a few minutes passed
    reporter.status("[sweep] 0/2 done | running: a (61%)", changed=False)
    assert out.getvalue().count("\n") == 2

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    tty = Terminal()
    reporter = runner._Reporter(tty)
    for percent in range(10):
        reporter.status(f"[sweep] 0/2 done | running: a ({percent}%)", changed=False)
    reporter.event("[sweep] done  a in 0m05s")
    reporter.close()
    assert tty.getvalue().count("\n") == 2 and tty.getvalue().count("\r") >= 10


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

    assert "#SBATCH --signal=B:TERM@120" in sbatch and "#SBATCH --requeue" in sbatch
    assert 'scontrol requeue "$SLURM_JOB_ID"' in sbatch
    assert subprocess.run(["bash", "-n", str(work / "sweep.sbatch")]).returncode == 0
    assert subprocess.run(["bash", "-n", str(work / "launch_tpu.sh")]).returncode == 0


def test_cluster_scripts_quote_paths_and_refuse_line_breaks(tmp_path):
    sweep = _write_sweep(tmp_path / "sweep.py", '[Trial("a", {})]')
    odd = tmp_path / "my runs; rm -rf x"
    assert runner.run_sweep(sweep, str(odd), launcher="slurm") == 0
    sbatch = (odd / "sweep.sbatch").read_text()
    assert f"'{odd}/a'" in sbatch and f"#SBATCH --output='{odd}/slurm-%A_%a.out'" in sbatch
    assert subprocess.run(["bash", "-n", str(odd / "sweep.sbatch")]).returncode == 0
    with pytest.raises(SweepError, match="line break"):
        runner.run_sweep(sweep, str(tmp_path / "evil\n#SBATCH --wrap=x"), launcher="slurm")


def test_tpu_script_retries_preempted_trials_until_done(tmp_path):
    sweep = _write_sweep(tmp_path / "sweep.py", '[Trial("a", {})]')
    work = tmp_path / "runs"
    assert runner.run_sweep(sweep, str(work), launcher="tpu") == 0
    bin_dir, calls = tmp_path / "bin", tmp_path / "calls"
    bin_dir.mkdir()
    # A fake gcloud: preempted (75), then a lost host (255), then done.
    (bin_dir / "gcloud").write_text(
        f"#!/bin/bash\necho x >> {calls}\nn=$(wc -l < {calls})\n"
        "case $n in 1) exit 75;; 2) exit 255;; *) exit 0;; esac\n"
    )
    (bin_dir / "gcloud").chmod(0o755)
    env = dict(
        os.environ,
        PATH=f"{bin_dir}:{os.environ['PATH']}",
        TPU_NAME="t",
        ZONE="z",
        REPO_DIR="/r",
        RETRY_WAIT_S="0",
    )
    result = subprocess.run(
        ["bash", str(work / "launch_tpu.sh")], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert calls.read_text().count("x") == 3 and "retrying" in result.stderr
