"""Faults an adversarial user finds: busy workdirs, early signals, damaged caches, bad losses.

Each test reproduces one failure of issue 11 on the tiny model (in process where it can,
as an `llm-jax train` subprocess where the process boundary is the point).
"""

import dataclasses
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest
from tiny_run import free_port, metric_rows, subprocess_env, tiny_command, tiny_config, write_corpus

from llm_jax import data as data_lib
from llm_jax import lease as lease_lib
from llm_jax import metrics as metrics_lib
from llm_jax import train as train_lib
from llm_jax import trainer
from llm_jax.cli.train import PREEMPTED_EXIT_CODE


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("fault_data")
    return write_corpus(root / "corpus"), root / "cache"


# --- leases ---------------------------------------------------------------------------------


def test_a_live_lease_refuses_a_second_owner_and_names_it(tmp_path):
    with lease_lib.Lease(str(tmp_path), heartbeat_s=0.05):
        with pytest.raises(lease_lib.LeaseHeld, match=rf"in use by pid {os.getpid()} on host"):
            lease_lib.Lease(str(tmp_path)).acquire()
        time.sleep(0.2)  # heartbeats replace the file; it stays this process's
        assert lease_lib.read_holder(str(tmp_path))["pid"] == os.getpid()
    assert not (tmp_path / lease_lib.LEASE_FILE).exists()  # released


def test_a_heartbeat_never_leaves_the_lease_absent(tmp_path):
    # Each heartbeat replaces the file: a reader, or a second process taking the lease,
    # must find the holder's whole record at every moment (the replace once renamed the
    # old file aside before linking the new one: a second owner could slip in between).
    with lease_lib.Lease(str(tmp_path), heartbeat_s=0.0005) as held:
        deadline, reads = time.time() + 0.5, 0
        while time.time() < deadline:
            assert lease_lib.read_holder(str(tmp_path))["pid"] == os.getpid()
            with pytest.raises(lease_lib.LeaseHeld):
                lease_lib.Lease(str(tmp_path)).acquire()
            reads += 1
        assert not held.lost and reads > 100
    assert not (tmp_path / lease_lib.LEASE_FILE).exists()
    assert not list(tmp_path.iterdir())  # no temporary file left behind
    # A directory deleted under a live lease: the heartbeat and the release give up quietly.
    gone = tmp_path / "gone"
    held = lease_lib.Lease(str(gone)).acquire()
    generation = held.store.read(held.path)[1]
    shutil.rmtree(gone)
    assert held.store.replace(held.path, b"{}", generation) is False
    held.release()


def _write_holder(directory, **fields):
    holder = dict(host=socket.gethostname(), pid=os.getpid(), start=time.time(), token="x")
    holder["heartbeat"] = time.time()
    holder.update(fields)
    (directory / lease_lib.LEASE_FILE).write_text(json.dumps(holder))


def test_a_dead_holder_is_taken_over_with_a_warning(tmp_path, caplog):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    _write_holder(tmp_path, pid=gone.pid)  # same host, pid gone
    with caplog.at_level("WARNING", logger="llm_jax.lease"):
        with lease_lib.Lease(str(tmp_path)):
            assert lease_lib.read_holder(str(tmp_path))["pid"] == os.getpid()
    assert f"pid {gone.pid} is gone" in caplog.text
    _write_holder(tmp_path, host="elsewhere", heartbeat=time.time() - 3600)  # stale heartbeat
    with caplog.at_level("WARNING", logger="llm_jax.lease"):
        lease_lib.Lease(str(tmp_path), timeout_s=60).acquire().release()
    assert "heartbeat is 3600 s old" in caplog.text
    _write_holder(tmp_path, host="elsewhere")  # another host, fresh: live
    with pytest.raises(lease_lib.LeaseHeld, match="on host elsewhere"):
        lease_lib.Lease(str(tmp_path)).acquire()


def test_a_lease_taken_over_is_noticed_as_lost(tmp_path):
    lease = lease_lib.Lease(str(tmp_path), heartbeat_s=0.05).acquire()
    _write_holder(tmp_path, token="someone else")
    deadline = time.time() + 10
    while not lease.lost and time.time() < deadline:
        time.sleep(0.05)
    lease.release()
    assert lease.lost and (tmp_path / lease_lib.LEASE_FILE).exists()  # theirs stays


def test_train_refuses_a_workdir_in_use(corpus, tmp_path):
    corpus_glob, cache = corpus
    workdir = tmp_path / "run"
    with lease_lib.Lease(str(workdir)):
        result = subprocess.run(
            tiny_command(workdir, corpus_glob, cache),
            env=subprocess_env(1),
            capture_output=True,
            text=True,
            timeout=300,
        )
    assert result.returncode == 2, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert lines == [lines[-1]] and f"is in use by pid {os.getpid()}" in lines[-1]
    assert os.listdir(workdir) == []  # nothing written (the lease went with its holder)


# --- signals --------------------------------------------------------------------------------


def test_sigterm_before_the_first_step_exits_75_and_a_rerun_starts_cleanly(corpus, tmp_path):
    corpus_glob, cache = corpus
    workdir = tmp_path / "run"
    command = tiny_command(workdir, corpus_glob, cache, train__steps=4)
    env = subprocess_env(1)
    proc = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    time.sleep(1.0)  # still importing JAX or preparing data
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == PREEMPTED_EXIT_CODE, err[-2000:]
    assert "stopped by SIGTERM before the first step" in err
    assert not (workdir / "checkpoints").exists() or not os.listdir(workdir / "checkpoints")
    rerun = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "resumed from" not in rerun.stderr
    # Off a terminal: one plain line per logged step, and the closing summary.
    assert "step 2/4 | loss " in rerun.stderr and "step 4/4 | loss " in rerun.stderr
    # The closing summary, then the phases' times (the trainer's close) last.
    *_, summary, phases = rerun.stderr.strip().splitlines()
    assert phases.startswith("phases (wall/CPU s): startup ")
    assert summary.startswith("finished step 4 of 4: train/loss ") and "val/bpb" not in summary
    assert "(bpb " in summary and "tokens, wall time" in summary and str(workdir) in summary


class _StopAfter:
    """A guard that "gets SIGTERM" at poll `polls`: one poll before the loop, one per step."""

    def __init__(self, polls):
        self.polls, self.left = polls, polls

    @property
    def requested(self):
        self.left -= 1
        return "SIGTERM" if self.left <= 0 else None


def test_a_stop_between_logged_steps_loses_no_metrics(corpus, tmp_path, capsys):
    corpus_glob, cache = corpus
    config = tiny_config(
        corpus_glob,
        cache,
        train__steps=8,
        train__log_every=4,
        train__eval_every=8,
        checkpoint__every=100,
        checkpoint__async_save=False,
    )
    trainer.train_and_evaluate(config, str(tmp_path / "reference"))
    resumed = str(tmp_path / "resumed")
    stopped = trainer.train_and_evaluate(config, resumed, _StopAfter(1 + 6))
    assert stopped["preempted"] and stopped["step"] == 6
    assert [r["step"] for r in metric_rows(resumed)] == [4]  # steps 5 and 6 are in the checkpoint
    capsys.readouterr()
    trainer.train_and_evaluate(config, resumed)
    assert "resumed from step 6 of 8 (checkpoint " in capsys.readouterr().err
    assert metric_rows(resumed) == metric_rows(
        tmp_path / "reference"
    )  # the step-8 row: mean of 5..8

    # A rerun of the finished run has nothing to do and leaves no empty event file.
    events = os.listdir(os.path.join(resumed, "tensorboard"))
    trainer.train_and_evaluate(config, resumed)
    assert os.listdir(os.path.join(resumed, "tensorboard")) == events


def test_a_nan_validation_loss_is_an_error(corpus, tmp_path, monkeypatch):
    corpus_glob, cache = corpus
    config = tiny_config(corpus_glob, cache, train__steps=2, train__eval_every=2)
    make_train = train_lib.make_train

    def make_train_with_nan_eval(config, mesh):
        setup = make_train(config, mesh)

        def nan_eval(params, batch):
            loss_sum, weight = setup.eval_step(params, batch)
            return loss_sum * float("nan"), weight

        return dataclasses.replace(setup, eval_step=nan_eval)

    monkeypatch.setattr(train_lib, "make_train", make_train_with_nan_eval)
    with pytest.raises(trainer.TrainError, match="val/loss is nan at step 2"):
        trainer.train_and_evaluate(config, str(tmp_path / "run"))
    rows = metrics_lib.read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert rows and not any("val/loss" in r for r in rows)  # never logged as a value


# --- caches ---------------------------------------------------------------------------------


def _flip(path, offset=100):
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def test_damaged_token_caches_and_tokenizers_are_rebuilt(corpus, tmp_path, caplog):
    corpus_glob, _ = corpus
    config = tiny_config(corpus_glob, tmp_path / "cache")
    prepared = data_lib.prepare(config)
    train_bin, val_bin = prepared.train_path / "00000.bin", prepared.val_path / "00000.bin"
    good = train_bin.read_bytes(), val_bin.read_bytes()
    _flip(train_bin)  # flipped bytes: same size, would train silently
    val_bin.write_bytes(os.urandom(val_bin.stat().st_size))  # garbage val split
    with caplog.at_level("WARNING", logger="llm_jax.data"):
        data_lib.prepare(config, verify=True)  # plain opening checks sizes only
    assert "train/00000.bin fails its checksum); rebuilding it" in caplog.text
    assert (train_bin.read_bytes(), val_bin.read_bytes()) == good
    tokenizer_file = next((tmp_path / "cache" / "tokenizers").glob("*.model"))
    tokenizer_file.write_bytes(b"\0" * 64)  # a corrupt cached tokenizer
    caplog.clear()
    with caplog.at_level("WARNING", logger="llm_jax.data"):
        rebuilt = data_lib.prepare(config)
    assert "cached tokenizer" in caplog.text and "rebuilding it" in caplog.text
    assert rebuilt.tokenizer.sha256 == prepared.tokenizer.sha256


def test_jsonl_rows_without_text_are_reported_and_non_text_refused(tmp_path, caplog):
    from llm_jax.corpus import Corpus

    good = tmp_path / "good.jsonl"
    rows = [{"text": f"document {i} " * 20} for i in range(6)] + [{"title": "no text"}] * 2
    good.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = tiny_config(str(good), tmp_path / "cache")
    with caplog.at_level("WARNING", logger="llm_jax.corpus"):
        docs = list(Corpus(config.data, tmp_path / "hf").documents("train"))
    assert len(docs) == 5 and "2 of 8 rows have no 'text'; skipped" in caplog.text
    numbers = tmp_path / "numbers.jsonl"
    numbers.write_text("".join(json.dumps({"text": i}) + "\n" for i in range(4)))
    config = tiny_config(str(numbers), tmp_path / "cache")
    with pytest.raises(
        data_lib.DataError, match=r"4 rows have a 'text' that is not text \(row 1: 0\)"
    ):
        list(Corpus(config.data, tmp_path / "hf").documents("train"))


@pytest.mark.slow  # a distributed run of two trainer processes, then SIGTERM: 70 s at load 10
def test_sigterm_to_one_host_stops_every_host_at_the_same_step(corpus, tmp_path):
    corpus_glob, cache = corpus
    workdir = tmp_path / "two"
    address = f"127.0.0.1:{free_port()}"
    extra = dict(
        mesh__data=2,
        train__steps=100_000,
        train__log_every=50,
        train__eval_every=100_000,
        checkpoint__every=100_000,
        checkpoint__async_save=False,
        mesh__distributed="on",
        mesh__coordinator_address=address,
        mesh__num_processes=2,
    )
    hosts = [
        subprocess.Popen(
            tiny_command(workdir, corpus_glob, cache, **extra, mesh__process_id=i),
            env=subprocess_env(1),
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
        )
        for i in range(2)
    ]
    try:
        metrics = workdir / "metrics.jsonl"
        deadline = time.time() + 300
        while not (metrics.exists() and metrics.read_text().strip()):
            assert all(h.poll() is None for h in hosts), hosts[0].stderr.read()[-2000:]
            assert time.time() < deadline
            time.sleep(0.2)
        hosts[1].send_signal(signal.SIGTERM)  # the non-primary host alone is preempted
        errors = [h.communicate(timeout=300)[1] for h in hosts]
    finally:
        for h in hosts:
            if h.poll() is None:
                h.kill()
    assert [h.returncode for h in hosts] == [PREEMPTED_EXIT_CODE] * 2, errors[0][-2000:]
    saved = [int(p) for p in os.listdir(workdir / "checkpoints") if p.isdigit()]
    assert len(saved) == 1 and 50 <= saved[0] < 100_000
    assert f"at step {saved[0]}; checkpoint saved" in errors[0]


def test_a_batch_not_divisible_by_the_data_parallel_size_is_refused(corpus, tmp_path):
    corpus_glob, cache = corpus
    config = tiny_config(corpus_glob, cache, train__batch_size=6, mesh__fsdp=4)
    with pytest.raises(trainer.ConfigError, match=r"train.batch_size=6 is not divisible by the"):
        trainer.train_and_evaluate(config, str(tmp_path / "run"))
    config = tiny_config(corpus_glob, cache, data__val_batch_size=6, mesh__fsdp=4)
    with pytest.raises(trainer.ConfigError, match=r"data.val_batch_size=6 .* multiple of 8"):
        trainer.train_and_evaluate(config, str(tmp_path / "run"))


def test_a_trainer_whose_lease_was_taken_over_stops(corpus, tmp_path, monkeypatch):
    corpus_glob, cache = corpus
    acquire = lease_lib.Lease.acquire

    def acquire_then_lose(self):
        held = acquire(self)
        held.lost = True  # as the heartbeat thread sets it when another process took over
        return held

    monkeypatch.setattr(lease_lib.Lease, "acquire", acquire_then_lose)
    config = tiny_config(corpus_glob, cache, train__steps=4)
    with pytest.raises(trainer.TrainError, match="another process took over the lease"):
        trainer.train_and_evaluate(config, str(tmp_path / "run"))
    assert not os.path.exists(tmp_path / "run" / "checkpoints" / "1")
