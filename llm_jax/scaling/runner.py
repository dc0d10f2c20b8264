"""The sweep runner: run, resume or launch a sweep's trials; collect, fit and plot.

    llm-jax sweep SWEEP.py --workdir DIR [--parallel K] [--only PATTERN] [--dry-run]
                  [--launcher local|slurm|tpu]
    llm-jax sweep --collect DIR

Local: each trial is one subprocess, exactly the command a user would type,

    python -m llm_jax.cli train --config SWEEP.py --workdir DIR/<trial> --config.k=v ...

with its output in DIR/<trial>/train.log (for a gs:// DIR, a local file appended there
when the attempt ends). `llm-jax sweep` runs that command in a worker, a fork of itself
(which imported JAX and the trainer once) that runs its slot's trials one after another,
rather than a new interpreter: the same process boundary (session, signals, exit code,
output) without the imports, and a WSD branch after its parent reuses its compiled step;
`ps` shows a worker with the runner's command line. A trial is finished once it exited 0
with its final evaluation in metrics.jsonl; the runner then writes DIR/<trial>/done.json.
Rerunning the command skips finished trials and reruns the others, which resume from
their checkpoints (the trainer restores them). A crash is recorded in status.json and the
other trials go on. Ctrl-C (or SIGTERM) stops the trials, which save a checkpoint first.

Ownership: the runner holds the sweep directory's lease (`llm_jax.lease`), so a second
runner on it fails at once; each trainer holds its trial's. Trials run in their own
process group and get SIGTERM when the runner dies (a Linux parent-death signal set by
`llm-jax train`), so no orphan trains on; a trial whose lease is live is never started.
status.json keeps every attempt (start, end, exit code; a running attempt's end is
refreshed, so a killed runner loses at most a heartbeat of wall time).

Output: on a terminal one status line redrawn in place; elsewhere a line per event
(start, finish) and a status line every `QUIET_REPORT_S`. The ETA divides the FLOPs left
(queued trials plus the unfinished part of running ones) by the FLOP/s that finished
trials achieved, times the parallel slots.

`--launcher slurm|tpu` writes scripts running the same `llm-jax train` commands instead
(DIR/sweep.sbatch: a job array; DIR/launch_tpu.sh: one `gcloud ... ssh --worker=all` per
trial), so results land in the same layout. Such trials have no done.json; collecting
counts a trial finished when its metrics reach the planned last step with an evaluation.

A trial with a `parent` (a WSD cooldown branch, `sweep.wsd_branches`) starts once its
parent's checkpoint at its `init.step` exists, with `init.workdir` set to the parent's
directory; a branch whose parent did not finish without that checkpoint is reported
blocked and not started. Resume and skip work as for any trial (a branch resumes from
its own checkpoints). SLURM arrays start tasks in any order: a branch and its parent are
refused in one script (launch the parents first, `--only`); the TPU script runs trials
in order, parents first. A fine-tune (`sweep.finetune_each`, no init.step) is the same
dependency on the whole parent: it starts once the parent is done, runs its own config
file in DIR/<parent>/finetune/<name>, and resumes, skips and records its status as any
trial; a finished parent is never rerun for it.

At the end, and with --collect, DIR/results.csv gets one row per trial, the laws the
results support are fitted into DIR/fit.json, and the plots are drawn into DIR/plots/.
"""

from __future__ import annotations

import fnmatch
import gc
import multiprocessing
import multiprocessing.connection
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from llm_jax import atomic, storage, xla_cpu
from llm_jax import lease as lease_lib
from llm_jax import metrics as metrics_lib
from llm_jax.preemption import PREEMPTED_EXIT_CODE
from llm_jax.scaling import collect as collect_lib
from llm_jax.scaling import results as results_io
from llm_jax.scaling import sweep as sweep_lib

PARENT_ENV = "LLM_JAX_DIE_WITH_PARENT"  # read by `llm-jax train` (llm_jax.cli.train)
LAUNCHER = (sys.executable, "-m", "llm_jax.cli")  # a local trial's command starts so
FORK_ENV = "LLM_JAX_SWEEP_FORK"  # 0: start each trial as a new interpreter (see fork_ready)
HEARTBEAT_S = 30.0  # refresh of a running attempt's end time in status.json
QUIET_REPORT_S = 300.0  # off a terminal: a status line at least this often
# Trials per program (`--pack`) by default; see `default_pack` and README "Packed trials".
ACCELERATOR_PACK = 16
CPU_PACK = 16  # a reduced qk-norm LR grid on 2 cores: 143 s packed vs 271 s alone


# --- trial state on disk ------------------------------------------------------------------


def train_command(
    sweep_path: str, workdir: str, trial: sweep_lib.Trial, launcher: Sequence[str] = ("llm-jax",)
) -> list[str]:
    """The `llm-jax train` command line of a trial."""
    return [
        *launcher,
        "train",
        "--config",
        trial.config or str(sweep_path),
        "--workdir",
        storage.join(workdir, trial.name),
        *sweep_lib.override_args(trial.overrides),
        *([f"--config.init.workdir={storage.join(workdir, trial.parent)}"] if trial.parent else []),
        # W&B (when the config names a project) groups the trials under the sweep's name.
        f"--config.tracking.wandb_group={os.path.basename(workdir.rstrip('/'))}",
    ]


def pack_command(
    sweep_path: str, workdir: str, trials: Sequence[sweep_lib.Trial], launcher: Sequence[str]
) -> list[str]:
    """The command of trials trained as one program: `llm-jax train-pack --config FILE
    --trial DIR <its flags> ...` (each trial's flags as `train_command` has them); the
    plain `train_command` for one trial."""
    if len(trials) == 1:
        return train_command(sweep_path, workdir, trials[0], launcher)
    command = [*launcher, "train-pack", "--config", trials[0].config or str(sweep_path)]
    for trial in trials:
        alone = train_command(sweep_path, workdir, trial, launcher=())
        at = alone.index("--workdir")
        command += ["--trial", *alone[at + 1 :]]
    return command


def _latest_step(trial_dir: Path) -> int:
    """The step of the trial's newest checkpoint (0 for none): where it would resume."""
    checkpoints = trial_dir / "checkpoints"
    if not checkpoints.is_dir():
        return 0
    return max((int(p.name) for p in checkpoints.iterdir() if p.name.isdigit()), default=0)


def pack_groups(
    loaded: sweep_lib.LoadedSweep, todo: list, size: int, workdir: str, parallel: int = 1
) -> list:
    """`todo` [(trial, plan)] as groups that each train as one program: at most `size`
    trials whose configs differ only in `pack.PACKABLE` fields (lr, min_lr_ratio, seed,
    init_std) and whose workdirs resume from the same step (fresh, or checkpointed
    together). Trials with a parent or with their own config file train alone. A set of
    compatible trials is split evenly into at least `parallel` programs (when it has as
    many trials), so that packing never leaves a parallel slot idle."""
    from llm_jax import pack as pack_lib  # imports JAX

    groups: dict[tuple, list] = {}
    root = storage.path(workdir)
    for trial, plan in todo:
        key: tuple = (trial.name,)
        if size > 1 and not trial.parent and not trial.config:
            config = sweep_lib.trial_config(loaded, trial)
            key = (pack_lib.pack_key(config), _latest_step(root / trial.name))
        groups.setdefault(key, []).append((trial, plan))
    packs = []
    for group in groups.values():
        programs = max(-(-len(group) // size), min(len(group), parallel))
        per_program = -(-len(group) // programs)
        packs += [group[i : i + per_program] for i in range(0, len(group), per_program)]
    return packs


def default_pack() -> int:
    """Trials per program when --pack is not given: `ACCELERATOR_PACK` where JAX finds an
    accelerator, else `CPU_PACK`. Asked in a child process, so that this one never takes
    the accelerator's memory from the trials."""
    if os.environ.get("JAX_PLATFORMS", "").strip() == "cpu":
        return CPU_PACK
    probe = subprocess.run(
        [sys.executable, "-c", "import jax; print(jax.default_backend())"],
        capture_output=True,
        text=True,
    )
    backend = probe.stdout.strip() or "cpu"
    return CPU_PACK if backend == "cpu" else ACCELERATOR_PACK


def branch_ready(trial: sweep_lib.Trial, workdir: str) -> bool:
    """Whether a trial can start: no parent; or the parent's checkpoint at the trial's
    init.step is written (Orbax renames a finished checkpoint to its step); or, with no
    init.step (a fine-tune of the parent's final params), the parent is done."""
    if not trial.parent:
        return True
    step = trial.overrides.get("init.step", -1)
    parent_dir = storage.path(workdir) / trial.parent
    if step < 0:
        return results_io.trial_status(parent_dir) == "done"
    return (parent_dir / "checkpoints" / str(step)).is_dir()


def _write_status(trial_dir: Path, status: str, **fields) -> dict:
    """Update status.json; a running or done trial carries no error or rc of the past."""
    state = results_io.read_json(trial_dir / "status.json") or {"attempts": []}
    if status in ("running", "done"):
        state.pop("error", None)
        state.pop("rc", None)
    state.update(status=status, **fields)
    state["wall_s"] = sum(a["end"] - a["start"] for a in state["attempts"])
    results_io.write_json(trial_dir / "status.json", state)
    return state


def _tail(path: Path, lines: int = 5) -> str:
    if not path.exists():
        return ""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


# --- running locally ----------------------------------------------------------------------


def fork_ready() -> bool:
    """Whether local trials can start as forks of this process, which imported JAX and the
    trainer once (a new interpreter per trial spends ~1 s of CPU on imports alone): on
    Linux, unless LLM_JAX_SWEEP_FORK=0, and only while this process has no JAX backend
    (forking a running XLA runtime is unsafe; the runner never starts one)."""
    if not sys.platform.startswith("linux") or os.environ.get(FORK_ENV, "1") == "0":
        return False
    return not xla_cpu.backend_started()


_WORKER_ENDS: list = []  # the runner's ends of its live workers' pipes (a fork closes them)


class _Worker:
    """A fork of the runner that runs trials one after another, each as `llm_jax.cli.run(argv)`
    with the trial's environment and its output in the trial's log: a process boundary as
    a new interpreter gives (session, signals, exit code, output), without its imports.

    Successive trials keep the process's JAX state: a trial whose program an earlier one
    here compiled (a WSD parent, then its cooldowns: `train.program_key`) neither traces
    nor compiles it again. A worker retires after a trial that did not exit 0, so nothing
    a failed or stopped trial left behind reaches the next; one that dies (killed, or a
    crash below Python) is its trial's exit code, as for a process."""

    def __init__(self, one_heap: bool = False):
        self.families: set[str] = set()  # the trials' parents or names: programs held here
        self.one_heap = one_heap  # its first trial's choice, kept by its threads (xla_cpu.py)
        self.conn, child = multiprocessing.Pipe()
        for stream in (sys.stdout, sys.stderr):  # or the child would write them again
            stream.flush()
        # Held until the child has its own handlers: a SIGTERM in between would run the
        # runner's handler inside the worker.
        signals = {signal.SIGINT, signal.SIGTERM}
        signal.pthread_sigmask(signal.SIG_BLOCK, signals)
        try:
            self.pid = os.fork()
            if self.pid == 0:
                # Or an older worker would never see its pipe close when the runner ends.
                for end in (*_WORKER_ENDS, self.conn):
                    end.close()
                _serve(child, signals)
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, signals)
        child.close()
        _WORKER_ENDS.append(self.conn)
        self.returncode: int | None = None  # the process's, once it has ended

    def suits(self, one_heap: bool) -> bool:
        """Whether a trial wanting `one_heap` may run here: alive, with the same heaps."""
        return self.alive() and self.one_heap == one_heap

    def alive(self) -> bool:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode is None

    def run(self, argv: Sequence[str], log_path: str, env: dict[str, str]) -> _Job:
        """Start `argv` here; its output is appended to `log_path`."""
        job = _Job(self)
        try:
            self.conn.send((list(argv), str(log_path), dict(env)))
        except OSError:  # the worker died while idle: the trial fails with its exit code
            job.returncode = self.returncode if not self.alive() else -signal.SIGKILL
        return job

    def close(self, timeout: float = 30.0) -> None:
        """Let the worker exit (it is idle), or kill it after `timeout` seconds."""
        try:
            self.conn.send(None)
        except OSError:  # it is gone already
            pass
        self.conn.close()
        if self.conn in _WORKER_ENDS:
            _WORKER_ENDS.remove(self.conn)
        deadline = time.time() + timeout
        while self.alive() and time.time() < deadline:
            time.sleep(0.02)
        if self.alive():
            os.kill(self.pid, signal.SIGKILL)
            os.waitpid(self.pid, 0)


class _Job:
    """A trial running in a `_Worker`, with the subset of `subprocess.Popen` the runner
    uses (pid, returncode, poll, wait, send_signal, kill)."""

    def __init__(self, worker: _Worker):
        self.worker, self.pid = worker, worker.pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            w = self.worker
            try:
                if w.conn.poll():
                    self.returncode = w.conn.recv()
            except (EOFError, OSError):  # died while answering
                pass
            if self.returncode is None and not w.alive():
                self.returncode = w.returncode
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.time() + timeout
        while self.poll() is None:
            if deadline is not None and time.time() > deadline:
                raise subprocess.TimeoutExpired(f"trial pid {self.pid}", timeout)
            time.sleep(0.02)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:  # None: the worker is alive and has not answered
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def _serve(conn, held: set) -> None:
    """In the worker: run each trial the runner sends until it closes the pipe, then exit
    without the runner's cleanup (its lease, its files)."""
    code = 0
    try:
        os.setsid()  # its own process group: the terminal's Ctrl-C is the runner's
        _default_signals()
        signal.pthread_sigmask(signal.SIG_UNBLOCK, held)  # the fork inherited them held
        sys.stdout = open(1, "w", buffering=1, closefd=False)  # the runner's may be captured
        sys.stderr = open(2, "w", buffering=1, closefd=False)
        while code == 0:
            try:
                job = conn.recv()
            except EOFError:  # the runner ended
                break
            if job is None:  # the runner is done with this worker
                break
            code = _run_trial(*job)
            conn.send(code)
    finally:
        os._exit(0)


def _default_signals() -> None:
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)


def _run_trial(argv: list[str], log_path: str, env: dict[str, str]) -> int:
    """One trial in the worker: its output into its log, its environment; its exit code."""
    from llm_jax import cli
    from llm_jax.trainer import PhaseClock

    code = 1
    try:
        with open(log_path, "a") as log:
            os.dup2(log.fileno(), 1)
            os.dup2(log.fileno(), 2)
        os.environ.clear()
        os.environ.update(env)  # XLA reads XLA_FLAGS when the first trial starts its backend
        sys.argv = ["llm-jax", *argv]
        PhaseClock.start_run()
        code = cli.run(argv)
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException:  # noqa: BLE001 (a bug: its traceback goes to the trial's log)
        import traceback

        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        _default_signals()
        # The trial's arrays held in reference cycles are freed before the next trial; what
        # survives (modules, compiled programs) is frozen out of later collections, which
        # then take ~1 ms instead of 0.1-0.25 s (growing with every trial).
        gc.collect()
        gc.freeze()
    return code


class _Running:
    """A trial subprocess and its bookkeeping. The trials of a pack (`pack_size` > 1)
    share one process, started by the first (the others get `leader`)."""

    def __init__(
        self, trial, plan, command, trial_dir: Path, env, pack_size=1, leader=None, worker=None
    ):
        self.trial, self.plan, self.dir = trial, plan, trial_dir
        self.pack_size = pack_size
        self.cpus = env.get(xla_cpu.CPUS_ENV)  # the CPUs it is pinned to (`_thread_env`)
        self.start = self.beat = time.time()
        state = results_io.read_json(trial_dir / "status.json") or {"attempts": []}
        self.attempt = len(state["attempts"]) + 1
        self._record(None, status="running")
        self.header = f"\n=== attempt {self.attempt}: {shlex.join(command)}\n"
        if leader is not None:
            self.log, self.log_path, self.proc = leader.log, leader.log_path, leader.proc
            return
        # A gs:// object cannot be appended to, and a pack's trials share one output: the
        # attempt's output goes to a local file, appended to DIR/<trial>/train.log when it
        # ends (a pack's trial gets the lines `llm-jax train-pack` prefixed with its name).
        if storage.is_gcs(trial_dir) or pack_size > 1:
            self.log = tempfile.NamedTemporaryFile("a", suffix=".log", delete=False)
        else:
            self.log = open(trial_dir / "train.log", "a")  # closed in finish()
        self.log_path = Path(self.log.name)
        if pack_size == 1:  # a pack's trials each get their header in `_own_output`
            self.log.write(self.header)
            self.log.flush()
        env = dict(env, **{PARENT_ENV: str(os.getpid())})
        if worker is not None:
            self.proc = worker.run(command[len(LAUNCHER) :], self.log_path, env)
        else:
            self.proc = subprocess.Popen(
                command,
                stdout=self.log,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,  # its own process group: the terminal's Ctrl-C is ours
            )

    def _record(self, exit_code: int | None, status: str, **fields) -> dict:
        """This attempt (start, end = now, rc, the pid that ran it) as the last entry of
        status.json."""
        state = results_io.read_json(self.dir / "status.json") or {"attempts": []}
        attempts = state["attempts"][: self.attempt - 1]
        attempt = {"start": self.start, "end": time.time(), "rc": exit_code}
        if hasattr(self, "proc"):
            attempt["pid"] = self.proc.pid
        attempts.append(attempt)
        return _write_status(self.dir, status, attempts=attempts, **fields)

    def heartbeat(self) -> None:
        """Refresh the attempt's end time, so a killed runner loses little wall time."""
        if time.time() - self.beat > HEARTBEAT_S:
            self.beat = time.time()
            self._record(None, status="running")

    def progress(self) -> float:
        row = results_io.last_row(self.dir, "step")
        return min(1.0, row["step"] / max(1, self.plan["steps"])) if row else 0.0

    def _own_output(self) -> str:
        """This attempt's output for DIR/<trial>/train.log: a pack's trial keeps its own
        lines and the unprefixed ones (warnings, errors of the whole process)."""
        text = self.log_path.read_text(errors="replace")
        if self.pack_size == 1:
            return text
        prefix = f"[{self.trial.name}] "
        lines = text.splitlines(keepends=True)
        return self.header + "".join(x for x in lines if x.startswith(prefix) or x[:1] != "[")

    def finish(self, rc: int) -> str:
        """Record the attempt; returns the trial's status. A pack exits 2 when some of its
        trials diverged: the others are done all the same."""
        self.log.close()
        if storage.is_gcs(self.dir) or self.pack_size > 1:
            storage.append_text(self.dir / "train.log", self._own_output())
            if not storage.is_gcs(self.dir):
                self.log_path = self.dir / "train.log"  # the error tail: this trial's lines
        ok_rc = (0, 2) if self.pack_size > 1 else (0,)
        if rc in ok_rc and results_io.is_complete(self.dir, self.plan["steps"]):
            state = self._record(rc, "done")
            results_io.write_json(
                self.dir / "done.json", {"wall_s": state["wall_s"], "finished": time.time()}
            )
            return "done"
        status = (
            "stopped" if rc in (PREEMPTED_EXIT_CODE, -signal.SIGTERM, -signal.SIGINT) else "failed"
        )
        error = _tail(self.log_path) or f"exit code {rc}"
        if rc == 0:
            error = "exited 0 without a final evaluation in metrics.jsonl"
        self._record(rc, status, error=error, rc=rc)
        return status


class _Eta:
    """Seconds left: FLOPs left over the FLOP/s that finished trials achieved."""

    def __init__(self, parallel: int):
        self.parallel = parallel
        self.flops = self.seconds = 0.0

    def add(self, cost: float, seconds: float) -> None:
        """A trial of `cost` FLOPs finished in `seconds` (one slot)."""
        self.flops += cost
        self.seconds += seconds

    def left(self, queued: list, running: list) -> float | None:
        """Seconds until `queued` plans and `running` trials are done, or None (no data)."""
        if not self.flops:
            return None
        cost = sum(p["C_detailed"] for _, p in queued)
        cost += sum(r.plan["C_detailed"] * (1 - r.progress()) for r in running)
        slots = max(1, min(self.parallel, len(queued) + len(running)))
        return cost / (self.flops / self.seconds) / slots


class _Reporter:
    """Status output: one redrawn line on a terminal; elsewhere only changes, or rarely."""

    def __init__(self, stream=None):
        self.stream = stream or sys.stdout
        self.terminal = self.stream.isatty()
        self.last_line, self.last_time = "", 0.0

    def event(self, text: str) -> None:
        """A line that stays (a trial started, finished or failed)."""
        if self.terminal:
            self.stream.write("\r\033[K")
        print(text, file=self.stream, flush=True)
        if self.terminal and self.last_line:
            self.stream.write(self.last_line)
            self.stream.flush()

    def status(self, line: str, changed: bool) -> None:
        """The current state: redrawn on a terminal; off it, when `changed` or due."""
        if self.terminal:
            self.stream.write("\r" + line + "\033[K")
            self.stream.flush()
        elif changed or time.time() - self.last_time > QUIET_REPORT_S:
            print(line, file=self.stream, flush=True)
            self.last_time = time.time()
        self.last_line = line

    def close(self) -> None:
        """End the redrawn line."""
        if self.terminal and self.last_line:
            self.stream.write("\n")
            self.stream.flush()


def _thread_env(parallel: int, running: list) -> dict[str, str]:
    """Environment for a new trial process: with `parallel` CPU trials at a time, pinned
    (llm_jax/xla_cpu.py) to a share of the CPUs no running trial holds, so each runs the
    threads it is given and no more (XLA sizes its pool from the CPUs it may use)."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    slots = xla_cpu.cpu_slots(parallel) if parallel > 1 else []
    # This process's CPUs are the user's LLM_JAX_CPUS if set (`llm-jax` pinned it first).
    if slots and env.get("JAX_PLATFORMS", "cpu") == "cpu":
        held = {r.cpus for r in running}
        free = [cpus for cpus in map(xla_cpu.format_cpus, slots) if cpus not in held]
        if free:
            env[xla_cpu.CPUS_ENV] = free[0]
    return env


def _status_line(outcome: dict, running: list, queue: list, eta: _Eta, total: int, before: int):
    done = before + sum(s == "done" for s in outcome.values())
    failed = sum(s == "failed" for s in outcome.values())
    parts = [f"[sweep] {done}/{total} done" + (f", {failed} failed" if failed else "")]
    if running:
        parts.append(
            "running: " + ", ".join(f"{r.trial.name} ({100 * r.progress():.0f}%)" for r in running)
        )
    left = eta.left(queue, running)
    if left is not None:
        parts.append(f"ETA {metrics_lib.duration(left)}")
    return " | ".join(parts)


def _start(group: list, sweep_path, workdir, env, out: _Reporter, worker) -> list[_Running]:
    """Start a trial, or a pack of them as one process (in `worker` unless None); a trial
    whose workdir a live process holds is skipped (reported, not returned)."""
    free = []
    for trial, plan in group:
        holder = lease_lib.read_holder(str(storage.path(workdir) / trial.name))
        if holder:
            out.event(
                f"[sweep] skip  {trial.name}: its workdir is in use by {lease_lib.describe(holder)}"
            )
        else:
            free.append((trial, plan))
    if not free:
        return []
    command = pack_command(sweep_path, workdir, [t for t, _ in free], LAUNCHER)
    started: list[_Running] = []
    for trial, plan in free:
        packed = f", packed with {free[0][0].name}" if started else ""
        out.event(
            f"[sweep] start {trial.name} (N={plan['N']:.3g}, "
            f"{plan['steps']} steps, C={plan['C_detailed']:.2g} FLOPs{packed})"
        )
        trial_dir = storage.path(workdir) / trial.name
        leader = started[0] if started else None
        started.append(_Running(trial, plan, command, trial_dir, env, len(free), leader, worker))
    return started


def _pop_group(queue: list, index: int, pack_of: dict[str, int]) -> list:
    """Take queue[index] and the queued trials of its pack out of the queue."""
    trial, plan = queue.pop(index)
    pack = pack_of.get(trial.name)
    mates = [
        i for i, (t, _) in enumerate(queue) if pack is not None and pack_of.get(t.name) == pack
    ]
    return [(trial, plan)] + [queue.pop(i) for i in reversed(mates)][::-1]


def _finished(r: _Running, eta: _Eta, out: _Reporter) -> str:
    status = r.finish(r.proc.returncode)
    seconds = time.time() - r.start
    if status == "done":
        eta.add(r.plan["C_detailed"], seconds / r.pack_size)  # a pack shares its slot
        out.event(f"[sweep] done  {r.trial.name} in {metrics_lib.duration(seconds)}")
    else:
        tail = _tail(r.log_path, 1)
        out.event(
            f"[sweep] {status.upper()} {r.trial.name} (exit {r.proc.returncode}): "
            f"{tail}\n        log: {r.dir / 'train.log'}"
        )
    return status


def _block(queue: list, outcome: dict, out: _Reporter) -> None:
    """Report the queued branches that can never start (nothing runs to write their
    parents' checkpoints) and drop them."""
    for trial, _ in queue:
        outcome[trial.name] = "blocked"
        step = trial.overrides.get("init.step", -1)
        missing = "is not done" if step < 0 else f"has no checkpoint at step {step}"
        out.event(
            f"[sweep] BLOCKED {trial.name}: its parent {trial.parent} {missing} (did it fail?)"
        )
    queue.clear()


def _stop_all(running: list, outcome: dict) -> None:
    """SIGTERM the running trials (each saves a checkpoint) and record them."""
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


def start_order(todo: list) -> list:
    """`todo` [(trial, plan)] in the order to start them: trials that others wait for (WSD
    parents, fine-tuned trials) first, then the rest; costliest first within each. A
    parent started late leaves one slot working alone at the end (the demo's smallest
    size: the least FLOPs but the most steps, and then its branches)."""
    parents = {t.parent for t, _ in todo if t.parent}
    return sorted(todo, key=lambda tp: (tp[0].name not in parents, -tp[1]["C_detailed"]))


def _family(trial: sweep_lib.Trial) -> str:
    """Trials of one family share a program: a WSD parent and its cooldown branches."""
    return trial.parent or trial.name


def _pick(queue: list, ready: list[int], held: set[str], waited_on: set[str]) -> int:
    """The queue index of the next trial for a worker holding `held` families' programs:
    the first ready one (`start_order`) if others wait for it, else the first ready one of
    a family held there (nothing to trace or compile), else the first ready one."""
    if queue[ready[0]][0].name in waited_on:
        return ready[0]
    return next((i for i in ready if _family(queue[i][0]) in held), ready[0])


def run_local(
    sweep_path: str,
    workdir: str,
    todo: list,
    parallel: int,
    total: int,
    done_before: int,
    stream=None,
    groups: list | None = None,
    fork: bool = False,
    one_heap: dict[str, bool] | None = None,
) -> dict[str, str]:
    """Run `todo` [(trial, plan)] with `parallel` processes at a time; returns name -> final
    status. `groups` (`pack_groups`): trials that train together in one process. `fork`:
    run trials in `_Worker` forks of this process where `fork_ready` (only a process whose
    JAX config is a fresh one's, as `llm-jax sweep`'s is, may: a fork inherits it), one
    worker per parallel slot. `one_heap`: trial name -> `xla_cpu.wants_one_arena` of its
    config; a worker runs only trials that want what its first one did."""
    pack_of = {t.name: i for i, group in enumerate(groups or []) for t, _ in group}
    fork = fork and fork_ready()
    if fork:  # imported once here, not once per trial
        import llm_jax.cli.train
        import llm_jax.pack  # noqa: F401
    queue = start_order(todo)
    waited_on = {t.parent for t, _ in todo if t.parent}
    workers: dict[str, _Worker] = {}  # by the CPUs of their slot ('' unpinned)
    running, outcome, eta, out = [], {}, _Eta(parallel), _Reporter(stream)
    last_status = 0.0
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        while queue or running:
            changed = False
            while len({id(r.proc) for r in running}) < parallel:
                ready = [i for i, (t, _) in enumerate(queue) if branch_ready(t, workdir)]
                if not ready:
                    break
                env = _thread_env(parallel, running)
                slot = env.get(xla_cpu.CPUS_ENV, "")
                held = workers[slot].families if slot in workers else set()
                group = _pop_group(queue, _pick(queue, ready, held, waited_on), pack_of)
                heap = (one_heap or {}).get(group[0][0].name, False)
                if fork and not (slot in workers and workers[slot].suits(heap)):
                    if slot in workers:
                        workers.pop(slot).close()
                    workers[slot] = _Worker(heap)
                worker = workers.get(slot)
                started = _start(group, sweep_path, workdir, env, out, worker)
                names = {r.trial.name for r in started}
                outcome.update({t.name: "busy" for t, _ in group if t.name not in names})
                running += started
                changed = True
            _wait(running)
            for r in [r for r in running if r.proc.poll() is not None]:
                running.remove(r)
                outcome[r.trial.name] = _finished(r, eta, out)
                _retire(r, workers)
                changed = True
            for r in running:
                r.heartbeat()
            if queue and not running and not any(branch_ready(t, workdir) for t, _ in queue):
                _block(queue, outcome, out)
                changed = True
            if changed or time.time() - last_status > 1.0:
                last_status = time.time()
                out.status(_status_line(outcome, running, queue, eta, total, done_before), changed)
    except KeyboardInterrupt:
        out.event(
            "[sweep] interrupted: stopping the running trials (each saves a checkpoint); "
            "rerun the same command to resume"
        )
        _stop_all(running, outcome)
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
        for worker in workers.values():
            worker.close()
        out.close()
    return outcome


def _wait(running: list, timeout: float = 0.2) -> None:
    """Until a running trial may have ended, at most `timeout` seconds (a worker's answer
    wakes the runner at once; subprocesses are polled)."""
    procs = list({id(r.proc): r.proc for r in running}.values())  # a pack's trials share one
    ends = [p.worker.conn for p in procs if isinstance(p, _Job)]
    if ends and len(ends) == len(procs):
        multiprocessing.connection.wait(ends, timeout)
    else:
        time.sleep(0.05)


def _retire(r: _Running, workers: dict) -> None:
    """After `r`'s process ended: its worker keeps its family's program, or, if the trial
    did not exit 0 (the worker then exits), leaves the pool."""
    if not isinstance(r.proc, _Job):
        return
    worker = r.proc.worker
    if r.proc.returncode == 0:
        worker.families.add(_family(r.trial))
        return
    for slot, w in list(workers.items()):
        if w is worker:
            del workers[slot]
            worker.close()


# --- cluster scripts ------------------------------------------------------------------------


def _check_script_path(path: str) -> None:
    """Refuse paths that quoting cannot make safe in a script (line breaks, control bytes)."""
    if any(ord(c) < 32 or ord(c) == 127 for c in str(path)):
        raise sweep_lib.SweepError(
            f"{str(path)!r} holds a line break or control character, which would break "
            "the launch script; use a plain path"
        )


def _script_dir(workdir: str) -> Path:
    """Where launch scripts (and SLURM logs) go: the sweep directory, or the current one
    for a gs:// sweep (scripts run from a local disk; the trials still write to the bucket)."""
    return Path.cwd() if storage.is_gcs(workdir) else Path(workdir)


def write_slurm(sweep_path: str, workdir: str, todo: list, parallel: int) -> Path:
    """DIR/sweep.sbatch: a job array, one task per trial running its `llm-jax train`.

    SLURM sends SIGTERM 120 s before the time limit (or on preemption); the trainer saves
    and exits 75, and the script requeues the task, which resumes from its checkpoint.
    """
    for path in (sweep_path, workdir, os.getcwd()):
        _check_script_path(path)
    names = {t.name for t, _ in todo}
    if any(t.parent in names for t, _ in todo):
        raise sweep_lib.SweepError(
            "a SLURM array starts tasks in any order, and this one holds trials with their "
            "parents (WSD branches or fine-tunes); launch the parents first (--only), then "
            "the others"
        )
    q = shlex.quote
    cases = "\n".join(
        f"  {i}) {shlex.join(train_command(sweep_path, workdir, t))} ;;"
        for i, (t, _) in enumerate(todo)
    )
    script_path = _script_dir(workdir) / "sweep.sbatch"
    script = f"""#!/bin/bash
# The sweep {q(str(sweep_path))} as a SLURM job array: task i runs trial i. Edit the
# resources, then:   sbatch {q(str(script_path))}
# A task stopped by its time limit or by preemption saves a checkpoint and is requeued;
# resubmitting also resumes unfinished trials (finished ones exit at once). Afterwards:
#   llm-jax sweep --collect {q(str(workdir))}
#SBATCH --job-name={q(Path(sweep_path).stem)}
#SBATCH --array=0-{len(todo) - 1}%{parallel}
#SBATCH --output={q(str(_script_dir(workdir) / "slurm-%A_%a.out"))}
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=1
#SBATCH --time=24:00:00
#SBATCH --signal=B:TERM@120
#SBATCH --requeue
set -uo pipefail
cd {q(os.getcwd())}
# The batch shell gets the signal: pass it on to the trainer, which saves and exits 75.
trap 'kill -TERM "$child" 2>/dev/null' TERM
case "$SLURM_ARRAY_TASK_ID" in
{cases.replace(" ;;", " & ;;")}
  *) echo "no trial for task $SLURM_ARRAY_TASK_ID" >&2; exit 2 ;;
esac
child=$!
wait "$child"; rc=$?
while kill -0 "$child" 2>/dev/null; do wait "$child"; rc=$?; done
if [ "$rc" -eq 75 ]; then
  scontrol requeue "$SLURM_JOB_ID"
fi
exit "$rc"
"""
    atomic.write_text(script_path, script)
    return script_path


def write_tpu(sweep_path: str, workdir: str, todo: list) -> Path:
    """DIR/launch_tpu.sh: per trial, every host of a TPU VM slice runs the same command.

    A trial that exits 75 (preempted, checkpoint saved) or loses a host (ssh exits 255)
    is retried until it is done; any other failure stops the script.
    """
    for path in (sweep_path, workdir):
        _check_script_path(path)
    q = shlex.quote
    lines = "\n".join(
        f"run {q(shlex.join(train_command(sweep_path, workdir, t)))}" for t, _ in todo
    )
    script_path = _script_dir(workdir) / "launch_tpu.sh"
    script = f"""#!/bin/bash
# The sweep {q(str(sweep_path))} on a Cloud TPU VM slice, one trial after another; all
# hosts run the same `llm-jax train` (JAX finds its peers). The repo and its install must
# be at $REPO_DIR on every host, and the workdir on storage every host can write (a gs://
# bucket or NFS). Usage:
#   TPU_NAME=my-v5p-32 ZONE=us-east5-a REPO_DIR='~/llm_jax' bash {q(str(script_path))}
# Rerunning resumes unfinished trials from their checkpoints; afterwards, where the
# workdir is readable:   llm-jax sweep --collect {q(str(workdir))}
set -uo pipefail
: "${{TPU_NAME:?set TPU_NAME}}" "${{ZONE:?set ZONE}}" "${{REPO_DIR:?set REPO_DIR}}"
RETRY_WAIT_S="${{RETRY_WAIT_S:-60}}"
run() {{
  while true; do
    gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker=all \\
      --command="cd $REPO_DIR && $1"
    rc=$?
    case "$rc" in
      0) return 0 ;;
      75|255) echo "trial exited $rc (preempted or a host lost); retrying in $RETRY_WAIT_S s" >&2
              sleep "$RETRY_WAIT_S" ;;
      *) echo "trial failed with exit code $rc: $1" >&2; exit "$rc" ;;
    esac
  done
}}
{lines}
"""
    atomic.write_text(script_path, script)
    script_path.chmod(0o755)
    return script_path


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
    pack: int | None = None,
    fork: bool = False,
) -> int:
    """Run (or plan, or write launch scripts for) a sweep; returns an exit code.

    `parallel`: processes at once; None takes the sweep file's PARALLEL (default 1).
    `pack`: at most this many compatible trials train as one program (local runs);
    None: `default_pack()`. `fork`: see `run_local`.
    """
    loaded = sweep_lib.load_sweep(sweep_path)
    parallel = parallel or loaded.parallel
    trials = _select(loaded.trials, only)
    if not trials:
        raise sweep_lib.SweepError(f"--only {only!r} matches no trial of {sweep_path}")
    configs = {t.name: sweep_lib.trial_config(loaded, t) for t in trials}
    planned = [(t, sweep_lib.plan(configs[t.name])) for t in trials]
    one_heap = {name: xla_cpu.wants_one_arena(c) for name, c in configs.items()}
    root = storage.path(workdir)
    status = {t.name: results_io.trial_status(root / t.name, p["steps"]) for t, p in planned}
    todo = [(t, p) for t, p in planned if status[t.name] != "done"]
    size = pack or (default_pack() if launcher == "local" and todo else 1)
    local_packs = size > 1 and launcher == "local"
    groups = pack_groups(loaded, todo, size, workdir, parallel) if local_packs else None
    if dry_run:
        print(f"{'trial':32s}{'N':>10s}{'steps':>8s}{'tokens':>11s}{'C (FLOPs)':>11s}  status")
        for t, p in planned:
            print(
                f"{t.name:32s}{p['N']:10.3g}{p['steps']:8d}{p['tokens']:11.3g}"
                f"{p['C_detailed']:11.3g}  {status[t.name]}"
            )
        programs = f" in {len(groups)} programs (--pack {size})" if groups else ""
        print(f"\n{len(todo)} of {len(planned)} trials to run{programs}, e.g.:")
        first = [t for t, _ in groups[0]] if groups else [(todo or planned)[0][0]]
        print("  " + shlex.join(pack_command(sweep_path, workdir, first, ("llm-jax",))))
        return 0
    with lease_lib.Lease(workdir, "sweep directory"):  # before anything is written
        return _run_owned(
            sweep_path, workdir, planned, todo, parallel, launcher, n_boot, groups, fork, one_heap
        )


def _run_owned(
    sweep_path: str,
    workdir: str,
    planned: list,
    todo: list,
    parallel: int,
    launcher: str,
    n_boot: int,
    groups: list | None = None,
    fork: bool = False,
    one_heap: dict[str, bool] | None = None,
) -> int:
    """`run_sweep` once the sweep directory's lease is held."""
    root = storage.path(workdir)
    done = {t.name for t, _ in planned} - {t.name for t, _ in todo}
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
            if t.name in done:
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
        + (f", packed {max(len(g) for g in groups)} per program" if groups else "")
    )
    fits = results_io.read_json(root / results_io.FIT_JSON)
    if not todo and fits is not None and (root / results_io.RESULTS_CSV).exists():
        # Nothing new: show the stored results instead of refitting (`--collect` refits).
        plots = sorted((root / results_io.PLOTS_DIR).glob("*.png"))
        collect_lib.summarize(root, results_io.read_results(root), fits, plots)
        return 0
    outcome = (
        run_local(
            sweep_path,
            workdir,
            todo,
            parallel,
            len(planned),
            len(planned) - len(todo),
            groups=groups,
            fork=fork,
            one_heap=one_heap,
        )
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
