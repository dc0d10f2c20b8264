"""Where a run's time goes (phases.json, tools/profile_sweep.py) and trials forked from the
sweep runner (isolated like processes of their own)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tiny_run import tiny_config, write_corpus

from llm_jax import cli, lease, trainer
from llm_jax.scaling import results, runner
from llm_jax.scaling.sweep import Trial

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))  # not a package
import profile_sweep


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("phase_data")
    return write_corpus(root / "corpus"), root / "cache"


@pytest.mark.slow  # a tokenizer, two compiles: ~13 s of CPU
def test_a_run_records_its_phases_per_attempt(corpus, tmp_path):
    workdir = str(tmp_path / "run")
    start = time.perf_counter()
    trainer.train_and_evaluate(tiny_config(*corpus), workdir)
    wall = time.perf_counter() - start
    (attempt,) = json.loads((tmp_path / "run" / trainer.PHASES_FILE).read_text())
    for phase in ("startup", "setup", "data", "init", "compile", "steps", "eval_compile"):
        assert phase in attempt
    assert {"eval", "checkpoint", "log", "finish"} <= attempt.keys()
    assert all(t["wall"] >= 0 and t["cpu"] >= 0 for t in attempt.values())
    # The laps cover the trainer's whole time, once: no phase counted twice, none lost.
    inside = sum(t["wall"] for name, t in attempt.items() if name != "startup")
    assert 0.5 * wall < inside <= wall
    trainer.PhaseClock().save(workdir)  # a second attempt is appended
    attempts = json.loads((tmp_path / "run" / trainer.PHASES_FILE).read_text())
    assert len(attempts) == 2 and attempts[0] == attempt and list(attempts[1]) == ["startup"]


def _trial(root: Path, name: str, span: tuple[float, float], phases: dict) -> None:
    folder = root / name
    folder.mkdir(parents=True)
    attempt = {"start": span[0], "end": span[1], "rc": 0}
    (folder / "status.json").write_text(json.dumps({"attempts": [attempt]}))
    rows = {k: {"wall": w, "cpu": c} for k, (w, c) in phases.items()}
    (folder / "phases.json").write_text(json.dumps([rows]))


def test_a_workers_next_run_starts_its_clock_afresh():
    # A sweep worker idles between trials: that wait is no trial's start-up.
    trainer.PhaseClock().lap("steps")
    time.sleep(0.3)
    trainer.PhaseClock.start_run()
    assert trainer.PhaseClock().totals["startup"][0] < 0.2
    time.sleep(0.3)  # without start_run, the previous lap's run would pay for it
    assert trainer.PhaseClock().totals["startup"][0] >= 0.3


def test_an_unreadable_phases_file_is_kept_aside_not_a_crash(tmp_path):
    (tmp_path / trainer.PHASES_FILE).write_text("{not json")
    clock = trainer.PhaseClock()
    clock.lap("steps")
    clock.save(str(tmp_path))
    assert (tmp_path / (trainer.PHASES_FILE + ".unreadable")).read_text() == "{not json"
    attempts = json.loads((tmp_path / trainer.PHASES_FILE).read_text())
    assert len(attempts) == 1 and "steps" in attempts[0]


def test_profile_sums_phases_over_trials_and_counts_unfilled_slots(tmp_path):
    # Two slots: a from 0 to 10, b from 0 to 4, c (waited for a's checkpoint) from 6 to 8.
    _trial(tmp_path, "a", (100.0, 110.0), {"startup": (1.0, 0.5), "steps": (8.0, 7.0)})
    _trial(tmp_path, "b", (100.0, 104.0), {"startup": (1.0, 0.5), "steps": (2.0, 2.0)})
    _trial(tmp_path, "c", (106.0, 108.0), {"startup": (0.5, 0.5), "compile": (1.0, 1.0)})
    (tmp_path / "old").mkdir()  # trained before phases were recorded: left out
    (tmp_path / "old" / "status.json").write_text(json.dumps({"attempts": []}))
    table = profile_sweep.profile(tmp_path, parallel=2)
    rows = {line.split()[0]: line.split() for line in table.splitlines() if line.strip()}
    assert rows["startup"][1] == "2.5" and rows["startup"][3] == "1.5"
    assert rows["steps"][1] == "10.0" and rows["compile"][1] == "1.0"
    assert rows["exit"][1] == "2.5"  # a: 1, b: 1, c: 0.5 of their spans outside the phases
    assert rows["trials"][1] == "16.0"
    # Slot-seconds before c's start (at 6): 12, of which a and b filled 6 + 4.
    assert "3 attempts over 10.0 s wall" in table and "2.0 idle" in table
    # After it: 8 slot-seconds, a filled 4 and c 2.
    assert "2.0 tail" in table
    assert profile_sweep.timed_trials(tmp_path) == ["a", "b", "c"]
    only_a = profile_sweep.profile(tmp_path, parallel=2, only={"a"})
    assert "1 attempts over 10.0 s wall" in only_a and "steps" in only_a


def planned(name, cost, parent=""):
    return (Trial(name, {}, parent=parent), {"C_detailed": cost})


def test_trials_that_others_wait_for_start_first_then_costliest_first():
    todo = [
        planned("big-branch", 16.0, parent="small-parent"),
        planned("alone", 8.0),
        planned("small-parent", 2.0),
        planned("big-parent", 12.0),
        planned("branch", 4.0, parent="big-parent"),
    ]
    order = [t.name for t, _ in runner.start_order(todo)]
    assert order == ["big-parent", "small-parent", "big-branch", "alone", "branch"]


# This test process runs JAX (the runner's own workers are forked before it ever does);
# the workers here run no JAX either.
@pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning")
def test_a_worker_runs_trials_with_their_own_output_exit_code_and_signals(tmp_path, monkeypatch):
    env = dict(os.environ, MARKER="from-the-runner")
    log = tmp_path / "trial.log"
    worker = runner._Worker()
    unknown = worker.run(["no-such-command"], log, env)
    assert unknown.wait(timeout=60) == 2 == unknown.poll()
    assert "unknown command 'no-such-command'" in log.read_text()
    assert not _alive_soon(worker)  # a trial that did not exit 0: the worker retires

    def ok(argv):
        print("pid", os.getpid(), "env", os.environ["MARKER"], "argv", argv)
        return 0

    monkeypatch.setattr(cli, "run", ok)  # the fork inherits the patched module
    worker = runner._Worker()
    first, second = tmp_path / "first.log", tmp_path / "second.log"
    assert worker.run(["train", "a"], first, env).wait(timeout=60) == 0
    assert worker.run(["train", "b"], second, dict(env, MARKER="changed")).wait(timeout=60) == 0
    assert first.read_text() == f"pid {worker.pid} env from-the-runner argv ['train', 'a']\n"
    assert second.read_text() == f"pid {worker.pid} env changed argv ['train', 'b']\n"
    # A younger worker holds no end of an older one's pipe: when the runner's end closes
    # (here without its goodbye, as when the runner dies), the older one leaves at once.
    younger = runner._Worker()
    worker.conn.close()
    assert not _alive_soon(worker) and worker.returncode == 0
    younger.close()
    assert younger.returncode == 0  # it left when asked, not killed

    def broken(argv):
        raise RuntimeError("a bug in the trial")

    monkeypatch.setattr(cli, "run", broken)
    worker = runner._Worker()
    assert worker.run(["train"], log, env).wait(timeout=60) == 1
    assert "RuntimeError: a bug in the trial" in log.read_text()  # as a process prints it
    assert not _alive_soon(worker)

    def sleep(argv):
        print("asleep", flush=True)  # after the fork's setsid and default handlers
        time.sleep(60)

    monkeypatch.setattr(cli, "run", sleep)
    worker = runner._Worker()
    sleeper = worker.run(["train"], log, env)
    deadline = time.time() + 60  # on a loaded machine the fork may not have started yet
    while "asleep" not in log.read_text():
        assert sleeper.poll() is None and time.time() < deadline
        time.sleep(0.01)
    with pytest.raises(subprocess.TimeoutExpired):
        sleeper.wait(timeout=0.2)
    assert os.getpgid(sleeper.pid) == sleeper.pid  # its own session and process group
    sleeper.send_signal(signal.SIGTERM)  # the runner's handlers are not the trial's
    assert sleeper.wait(timeout=60) == -signal.SIGTERM
    # A worker that died while idle fails the next trial with its exit code.
    assert worker.run(["train"], log, env).wait(timeout=60) == -signal.SIGTERM


def _alive_soon(worker, timeout: float = 30.0) -> bool:
    deadline = time.time() + timeout
    while worker.alive() and time.time() < deadline:
        time.sleep(0.01)
    return worker.alive()


def test_a_free_slot_prefers_trials_whose_program_its_worker_holds():
    todo = [
        planned("p1", 10.0),
        planned("p2", 9.0),
        planned("p1-a", 5.0, parent="p1"),
        planned("p2-a", 4.0, parent="p2"),
        planned("p2-b", 3.0, parent="p2"),
    ]
    queue = runner.start_order(todo)
    waited_on = {"p1", "p2"}
    everything = list(range(len(queue)))
    # Trials others wait for go first, whatever the worker holds.
    assert queue[runner._pick(queue, everything, {"p2"}, waited_on)][0].name == "p1"
    branches = everything[2:]
    assert queue[runner._pick(queue, branches, {"p2"}, waited_on)][0].name == "p2-a"
    assert queue[runner._pick(queue, branches, set(), waited_on)][0].name == "p1-a"
    assert queue[runner._pick(queue, branches[1:], {"p1"}, waited_on)][0].name == "p2-a"


SWEEP = """
from llm_jax.config import default_config
from llm_jax.scaling.sweep import Trial


def get_config():
    config = default_config()
    config.model.update(d_model=16, n_layers=1, n_heads=1, d_ff=32, vocab_size=320,
                        vocab_multiple=64, max_seq_len=16)
    config.data.update(source="files", path={corpus!r}, cache_dir={cache!r}, seq_len=16,
                       val_fraction=0.25, num_val_batches=1)
    config.train.update(steps=4000, batch_size=4, warmup_steps=2, log_every=50,
                        eval_every=4000)
    config.checkpoint.update(every=50, async_save=False)
    return config


def get_sweep():
    return [Trial("killed", {{"train.seed": 1}}), Trial("short", {{"train.steps": 20}})]
"""


@pytest.mark.slow
def test_sweep_forks_trials_and_one_killed_does_not_stop_the_others(corpus, tmp_path):
    sweep = tmp_path / "sweep.py"
    sweep.write_text(SWEEP.format(corpus=corpus[0], cache=str(corpus[1])))
    work = tmp_path / "runs"
    cmd = [sys.executable, "-m", "llm_jax.cli", "sweep", str(sweep), "--workdir", str(work)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, start_new_session=True)
    checkpoints = work / "killed" / "checkpoints"
    deadline = time.time() + 180
    while not (checkpoints / "50").is_dir():
        assert time.time() < deadline and proc.poll() is None, "no checkpoint at step 50"
        time.sleep(0.05)
    pid = lease.read_holder(str(work / "killed"))["pid"]
    # A fork of the runner (its command line), not a new interpreter running `train`.
    assert b"sweep" in Path(f"/proc/{pid}/cmdline").read_bytes()
    assert int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]) == proc.pid
    os.kill(pid, signal.SIGKILL)  # a hard crash: no Python cleanup at all
    out = proc.communicate(timeout=300)[0]
    assert proc.returncode == 1
    assert "FAILED killed (exit -9)" in out and "done  short" in out
    assert results.trial_status(work / "short") == "done"
    assert "phases (wall/CPU s): startup" in (work / "short" / "train.log").read_text()

    assert runner.run_sweep(str(sweep), str(work), n_boot=0, pack=1) == 0  # unforked here
    log = (work / "killed" / "train.log").read_text().split("=== attempt")[-1]
    assert "resumed from step" in log and results.trial_status(work / "killed") == "done"


@pytest.mark.filterwarnings("ignore:os.fork:RuntimeWarning")
def test_a_worker_runs_only_trials_that_want_its_heaps(tmp_path, monkeypatch):
    # A worker's threads keep the heaps its first trial chose (xla_cpu.one_arena_for_step):
    # a trial that wants the other choice gets a new worker; one that wants the same, this one.
    def ok(argv):
        print("pid", os.getpid())
        return 0

    monkeypatch.setattr(cli, "run", ok)  # the forks inherit the patched module
    monkeypatch.setattr(runner, "fork_ready", lambda: True)  # as `llm-jax sweep` is
    names = ("big", "big2", "small")  # started in this order (by C, descending)
    plans = [{"N": 1e5, "steps": 1, "C_detailed": 3.0 - i} for i in range(3)]
    todo = [(Trial(n, {}), p) for n, p in zip(names, plans, strict=True)]
    one_heap = {"big": True, "big2": True, "small": False}
    runner.run_local("sweep.py", str(tmp_path), todo, 1, 3, 0, fork=True, one_heap=one_heap)
    pid = {n: (tmp_path / n / "train.log").read_text().split("pid ")[1].split()[0] for n in names}
    assert pid["big"] == pid["big2"] != pid["small"]
