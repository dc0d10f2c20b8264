"""The sweep runner: run, resume or launch a sweep's trials; collect, fit and plot.

    llm-jax sweep SWEEP.py --workdir DIR [--parallel K] [--only PATTERN] [--dry-run]
                  [--launcher local|slurm|tpu]
    llm-jax sweep --collect DIR

Local: each trial is one subprocess, exactly the command a user would type,

    python -m llm_jax.cli train --config SWEEP.py --workdir DIR/<trial> --config.k=v ...

with its output in DIR/<trial>/train.log. A trial is finished once the process exited 0
with its final evaluation in metrics.jsonl; the runner then writes DIR/<trial>/done.json.
Rerunning the command skips finished trials and reruns the others, which resume from
their checkpoints (the trainer restores them). A crash is recorded in status.json and the
other trials go on. Ctrl-C (or SIGTERM) stops the trials, which save a checkpoint first.

`--launcher slurm|tpu` writes scripts running the same `llm-jax train` commands instead
(DIR/sweep.sbatch: a job array; DIR/launch_tpu.sh: one `gcloud ... ssh --worker=all` per
trial), so results land in the same layout. Such trials have no done.json; collecting
counts a trial finished when its metrics reach the planned last step with an evaluation.

At the end, and with --collect, DIR/results.csv gets one row per trial, the laws the
results support are fitted into DIR/fit.json, and the plots are drawn into DIR/plots/.
"""

from __future__ import annotations

import fnmatch
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from llm_jax import atomic
from llm_jax.scaling import collect as collect_lib
from llm_jax.scaling import results as results_io
from llm_jax.scaling import sweep as sweep_lib

PREEMPTED_EXIT_CODE = 75  # llm_jax.train's "checkpoint saved, rerun to resume" (not imported:
#                           importing train pulls in JAX, which the runner does not need)
HEARTBEAT_S = 30.0


# --- trial state on disk ------------------------------------------------------------------


def train_command(
    sweep_path: str, workdir: str, trial: sweep_lib.Trial, launcher: Sequence[str] = ("llm-jax",)
) -> list[str]:
    """The `llm-jax train` command line of a trial."""
    return [
        *launcher,
        "train",
        "--config",
        str(sweep_path),
        "--workdir",
        str(Path(workdir) / trial.name),
        *sweep_lib.override_args(trial.overrides),
    ]


def _write_status(trial_dir: Path, status: str, **fields) -> dict:
    state = results_io.read_json(trial_dir / "status.json") or {"attempts": []}
    state.update(status=status, **fields)
    results_io.write_json(trial_dir / "status.json", state)
    return state


def _tail(path: Path, lines: int = 5) -> str:
    if not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


# --- running locally ----------------------------------------------------------------------


class _Running:
    """A trial subprocess and its bookkeeping."""

    def __init__(self, trial, plan, command, trial_dir: Path, env):
        self.trial, self.plan, self.dir = trial, plan, trial_dir
        self.start = time.time()
        state = _write_status(trial_dir, "running")
        self.attempt = len(state["attempts"]) + 1
        self.log = open(trial_dir / "train.log", "a")  # closed in finish()
        self.log.write(f"\n=== attempt {self.attempt}: {shlex.join(command)}\n")
        self.log.flush()
        self.proc = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT, env=env)

    def progress(self) -> float:
        row = results_io.last_row(self.dir, "step")
        return min(1.0, row["step"] / max(1, self.plan["steps"])) if row else 0.0

    def finish(self, rc: int) -> str:
        """Record the attempt; returns the trial's status."""
        self.log.close()
        end = time.time()
        state = results_io.read_json(self.dir / "status.json") or {"attempts": []}
        attempts = state["attempts"] + [{"start": self.start, "end": end, "rc": rc}]
        wall = sum(a["end"] - a["start"] for a in attempts)
        if rc == 0 and results_io.is_complete(self.dir, self.plan["steps"]):
            _write_status(self.dir, "done", attempts=attempts, wall_s=wall)
            results_io.write_json(self.dir / "done.json", {"wall_s": wall, "finished": end})
            return "done"
        status = (
            "stopped"
            if rc in (PREEMPTED_EXIT_CODE, -signal.SIGTERM, -signal.SIGINT)
            else ("failed")
        )
        error = _tail(self.dir / "train.log") or f"exit code {rc}"
        if rc == 0:
            error = "exited 0 without a final evaluation in metrics.jsonl"
        _write_status(self.dir, status, attempts=attempts, wall_s=wall, error=error, rc=rc)
        return status


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return (
        f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
        if seconds >= 3600
        else (f"{seconds // 60}m{seconds % 60:02d}s")
    )


class _Eta:
    """Seconds per trial as overhead + rate x FLOPs, fitted to the trials finished so far."""

    def __init__(self):
        self.points: list[tuple[float, float]] = []  # (C, wall seconds)

    def add(self, cost: float, seconds: float) -> None:
        self.points.append((cost, seconds))

    def seconds(self, cost: float) -> float | None:
        if not self.points:
            return None
        c, s = np.array(self.points).T
        if len(set(c)) >= 2:
            rate, overhead = np.polyfit(c, s, 1)
            if rate > 0 and overhead >= 0:
                return overhead + rate * cost
        return float(np.sum(s) / np.sum(c) * cost)


def _thread_env(parallel: int) -> dict[str, str]:
    """Environment for trial processes: split the CPU cores between the parallel trials."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    cores = os.cpu_count() or 1
    if parallel > 1 and env.get("JAX_PLATFORMS", "cpu") == "cpu":
        threads = max(1, cores // parallel)
        env["XLA_FLAGS"] = (
            env.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen="
            f"{'true' if threads > 1 else 'false'} "
            f"intra_op_parallelism_threads={threads}"
        ).strip()
    return env


def run_local(
    sweep_path: str, workdir: str, todo: list, parallel: int, total: int, done_before: int
) -> dict[str, str]:
    """Run `todo` [(trial, plan)] with `parallel` at a time; returns name -> final status."""
    env = _thread_env(parallel)
    launcher = [sys.executable, "-m", "llm_jax.cli"]
    # Costliest first, so that the parallel slots finish at about the same time.
    queue = sorted(todo, key=lambda tp: -tp[1]["C_detailed"])
    running, outcome, eta = [], {}, _Eta()
    last_report = 0.0

    def report(event: str = "") -> None:
        nonlocal last_report
        last_report = time.time()
        done = done_before + sum(s == "done" for s in outcome.values())
        failed = sum(s == "failed" for s in outcome.values())
        now = time.time()
        parts = [f"[sweep] {done}/{total} done" + (f", {failed} failed" if failed else "")]
        if running:
            parts.append(
                "running: "
                + ", ".join(f"{r.trial.name} ({100 * r.progress():.0f}%)" for r in running)
            )
        left = [eta.seconds(p["C_detailed"]) for _, p in queue]
        left += [
            None
            if (s := eta.seconds(r.plan["C_detailed"])) is None
            else max(0.0, s - (now - r.start))
            for r in running
        ]
        if left and all(x is not None for x in left):
            parts.append(f"ETA {_duration(sum(left) / max(1, min(parallel, len(left))))}")
        print((event + "\n" if event else "") + " | ".join(parts), flush=True)

    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        while queue or running:
            while queue and len(running) < parallel:
                trial, plan = queue.pop(0)
                command = train_command(sweep_path, workdir, trial, launcher)
                running.append(_Running(trial, plan, command, Path(workdir) / trial.name, env))
                report(
                    f"[sweep] start {trial.name} (N={plan['N']:.3g}, "
                    f"{plan['steps']} steps, C={plan['C_detailed']:.2g} FLOPs)"
                )
            time.sleep(0.2)
            for r in [r for r in running if r.proc.poll() is not None]:
                running.remove(r)
                status = outcome[r.trial.name] = r.finish(r.proc.returncode)
                seconds = time.time() - r.start
                if status == "done":
                    eta.add(r.plan["C_detailed"], seconds)
                    msg = f"[sweep] done  {r.trial.name} in {_duration(seconds)}"
                else:
                    tail = _tail(r.dir / "train.log", 1)
                    msg = (
                        f"[sweep] {status.upper()} {r.trial.name} (exit {r.proc.returncode}): "
                        f"{tail}\n        log: {r.dir / 'train.log'}"
                    )
                report(msg)
            if running and time.time() - last_report > HEARTBEAT_S:
                report()
    except KeyboardInterrupt:
        print(
            "[sweep] interrupted: stopping the running trials (each saves a checkpoint); "
            "rerun the same command to resume",
            flush=True,
        )
        for r in running:
            if r.proc.poll() is None:
                r.proc.send_signal(signal.SIGTERM)
        for r in running:
            try:
                rc = r.proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                r.proc.kill()
                rc = r.proc.wait()
            outcome[r.trial.name] = r.finish(rc)
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
    return outcome


# --- cluster scripts ------------------------------------------------------------------------


def write_slurm(sweep_path: str, workdir: str, todo: list, parallel: int) -> Path:
    """DIR/sweep.sbatch: a job array, one task per trial running its `llm-jax train`."""
    cases = "\n".join(
        f"  {i}) {shlex.join(train_command(sweep_path, workdir, t))} ;;"
        for i, (t, _) in enumerate(todo)
    )
    script = f"""#!/bin/bash
# The sweep {sweep_path} as a SLURM job array: task i runs trial i. Edit the resources,
# then:   sbatch {workdir}/sweep.sbatch
# Resubmitting resumes unfinished trials from their checkpoints (finished ones exit at
# once); afterwards:   llm-jax sweep --collect {workdir}
#SBATCH --job-name={Path(sweep_path).stem}
#SBATCH --array=0-{len(todo) - 1}%{parallel}
#SBATCH --output={workdir}/slurm-%A_%a.out
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=1
#SBATCH --time=24:00:00
set -euo pipefail
cd {shlex.quote(os.getcwd())}
case "$SLURM_ARRAY_TASK_ID" in
{cases}
esac
"""
    path = Path(workdir) / "sweep.sbatch"
    atomic.write_text(path, script)
    return path


def write_tpu(sweep_path: str, workdir: str, todo: list) -> Path:
    """DIR/launch_tpu.sh: per trial, every host of a TPU VM slice runs the same command."""
    lines = "\n".join(
        f"run {shlex.quote(shlex.join(train_command(sweep_path, workdir, t)))}" for t, _ in todo
    )
    script = f"""#!/bin/bash
# The sweep {sweep_path} on a Cloud TPU VM slice, one trial after another; all hosts run
# the same `llm-jax train` (JAX finds its peers). The repo and its install must be at
# $REPO_DIR on every host, and the workdir on storage every host can write (a gs://
# bucket or NFS). Usage:
#   TPU_NAME=my-v5p-32 ZONE=us-east5-a REPO_DIR='~/llm_jax' bash {workdir}/launch_tpu.sh
# Rerunning resumes unfinished trials from their checkpoints; afterwards, where the
# workdir is readable:   llm-jax sweep --collect {workdir}
set -euo pipefail
: "${{TPU_NAME:?set TPU_NAME}}" "${{ZONE:?set ZONE}}" "${{REPO_DIR:?set REPO_DIR}}"
run() {{
  gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker=all \\
    --command="cd $REPO_DIR && $1"
}}
{lines}
"""
    path = Path(workdir) / "launch_tpu.sh"
    atomic.write_text(path, script)
    path.chmod(0o755)
    return path


# --- the command ------------------------------------------------------------------------------


def _select(trials: list, only: str | None) -> list:
    if not only:
        return trials
    patterns = only.split(",")
    return [t for t in trials if any(fnmatch.fnmatchcase(t.name, p) for p in patterns)]


def run_sweep(
    sweep_path: str,
    workdir: str,
    *,
    parallel: int | None = None,
    only: str | None = None,
    dry_run: bool = False,
    launcher: str = "local",
    n_boot: int = 100,
) -> int:
    """Run (or plan, or write launch scripts for) a sweep; returns an exit code.

    `parallel`: trials at once; None takes the sweep file's PARALLEL (default 1).
    """
    base, trials, default_parallel = sweep_lib.load_sweep(sweep_path)
    parallel = parallel or default_parallel
    trials = _select(trials, only)
    if not trials:
        raise sweep_lib.SweepError(f"--only {only!r} matches no trial of {sweep_path}")
    planned = [(t, sweep_lib.plan(sweep_lib.apply_overrides(base, t.overrides))) for t in trials]
    root = Path(workdir)
    status = {t.name: results_io.trial_status(root / t.name, p["steps"]) for t, p in planned}
    todo = [(t, p) for t, p in planned if status[t.name] != "done"]
    if dry_run:
        print(f"{'trial':32s}{'N':>10s}{'steps':>8s}{'tokens':>11s}{'C (FLOPs)':>11s}  status")
        for t, p in planned:
            print(
                f"{t.name:32s}{p['N']:10.3g}{p['steps']:8d}{p['tokens']:11.3g}"
                f"{p['C_detailed']:11.3g}  {status[t.name]}"
            )
        print(f"\n{len(todo)} of {len(planned)} trials to run, e.g.:")
        print("  " + shlex.join(train_command(sweep_path, workdir, (todo or planned)[0][0])))
        return 0
    for t, p in planned:
        (root / t.name).mkdir(parents=True, exist_ok=True)
        info = {
            "name": t.name,
            "overrides": t.overrides,
            "tags": t.tags,
            "plan": p,
            "command": shlex.join(train_command(sweep_path, workdir, t)),
        }
        if results_io.read_json(root / t.name / "trial.json") != results_io.jsonable(info):
            if status[t.name] == "done":
                print(
                    f"[sweep] warning: {t.name} finished with other settings; kept as is "
                    "(delete its directory to rerun it)"
                )
                continue
            results_io.write_json(root / t.name / "trial.json", info)
    if launcher != "local":
        if not todo:
            print(f"[sweep] all {len(planned)} trials are done")
            return 0
        path = (
            write_slurm(sweep_path, workdir, todo, parallel)
            if launcher == "slurm"
            else write_tpu(sweep_path, workdir, todo)
        )
        print(
            f"[sweep] wrote {path} for {len(todo)} trials; submit it, then run "
            f"`llm-jax sweep --collect {workdir}`"
        )
        return 0
    print(
        f"[sweep] {len(planned)} trials, {len(planned) - len(todo)} already done, "
        f"{len(todo)} to run, {parallel} at a time"
    )
    fits = results_io.read_json(root / results_io.FIT_JSON)
    if not todo and fits is not None and (root / results_io.RESULTS_CSV).exists():
        # Nothing new: show the stored results instead of refitting (`--collect` refits).
        plots = sorted((root / results_io.PLOTS_DIR).glob("*.png"))
        collect_lib.summarize(root, results_io.read_results(root), fits, plots)
        return 0
    outcome = (
        run_local(sweep_path, workdir, todo, parallel, len(planned), len(planned) - len(todo))
        if todo
        else {}
    )
    collect_lib.collect(root, n_boot)
    failed = [name for name, s in outcome.items() if s != "done"]
    if failed:
        print(
            f"[sweep] {len(failed)} trial(s) did not finish: {', '.join(failed)} "
            "(see their train.log and status.json; rerun the command to retry them)"
        )
    return 1 if failed else 0
