"""Trackers across resumes: TensorBoard (read back by TensorBoard's own reader) shows each
step once, W&B (offline, its .wandb history decoded) keeps one run id; end to end through
a crash, a SIGTERM and two resumes of a tiny training (slow)."""

import glob
import struct
import time

import pytest
from tiny_run import tiny_config, write_corpus

from llm_jax import config as config_lib
from llm_jax import metrics as metrics_lib
from llm_jax import tracking, trainer
from llm_jax.scaling import runner, sweep


class _Guard:
    """A preemption guard scripted by poll (one poll before the loop, one per step):
    poll `crash_at` raises (a killed process: nothing saved), from poll `stop_at` on it
    answers SIGTERM (a clean stop: a checkpoint at that step)."""

    def __init__(self, crash_at=None, stop_at=None):
        self.polls, self.crash_at, self.stop_at = 0, crash_at, stop_at

    @property
    def requested(self):
        self.polls += 1
        if self.polls == self.crash_at:
            raise RuntimeError("crash")
        return "SIGTERM" if self.stop_at and self.polls >= self.stop_at else None


def _event_accumulator():
    """TensorBoard's reader module, imported when a test reads events (0.25 s)."""
    from tensorboard.backend.event_processing import event_accumulator

    return event_accumulator


def _wandb_records(path):
    """The Record protos of a .wandb file: a 7-byte header (':W&B', magic, version), then
    LevelDB log blocks of 32 KiB holding records (crc32c, uint16 length, type, data)."""
    from wandb.proto.wandb_internal_pb2 import Record  # 0.5 s: when a test needs it

    data, records, chunks = open(path, "rb").read(), [], b""
    assert data[:4] == b":W&B"
    at, block = 7, 32768
    while at + 7 <= len(data):
        if block - at % block < 7:  # a block's tail too short for a header: padding
            at += block - at % block
            continue
        length, kind = struct.unpack("<HB", data[at + 4 : at + 7])
        if kind == 0 or at + 7 + length > len(data):  # padding, or a record being written
            break
        chunks += data[at + 7 : at + 7 + length]
        at += 7 + length
        if kind in (1, 4):  # FULL or LAST
            records.append(Record.FromString(chunks))
            chunks = b""
    return records


def _history(path, steps, timeout_s=20.0):
    """{step: {key: value}} of the history records in a .wandb file, once `steps` are in it.

    W&B's service process writes an offline run's file after `finish()` returns."""
    deadline = time.monotonic() + timeout_s
    while True:
        rows = {}
        for r in _wandb_records(path):
            if r.WhichOneof("record_type") == "history":
                items = {i.key or "/".join(i.nested_key): i.value_json for i in r.history.item}
                rows.setdefault(int(items["_step"]), {}).update(items)
        if set(steps) <= set(rows) or time.monotonic() > deadline:
            return rows
        time.sleep(0.1)


@pytest.fixture
def offline_wandb(tmp_path, monkeypatch):
    """W&B without network, its settings and caches in tmp_path, its console left alone."""
    for var, value in dict(
        WANDB_MODE="offline",
        WANDB_SILENT="true",
        WANDB_CONSOLE="off",
        WANDB_CONFIG_DIR=str(tmp_path / "wandb_config"),
        WANDB_CACHE_DIR=str(tmp_path / "wandb_cache"),
        WANDB_DATA_DIR=str(tmp_path / "wandb_data"),
    ).items():
        monkeypatch.setenv(var, value)


def _tiny_tracking_config():
    """The default config with W&B on, offline."""
    config = config_lib.default_config()
    config.tracking.update(wandb_project="llm-jax-test", wandb_mode="offline")
    return config


def test_a_resumed_writer_shows_each_step_once_in_tensorboard_and_wandb(tmp_path, offline_wandb):
    workdir, config = str(tmp_path / "run"), _tiny_tracking_config()
    first = metrics_lib.MetricsWriter(workdir, config=config)
    for step in (2, 4, 6):  # the checkpoint is at 4: step 6 is lost with the process
        first.write({"step": step, "train/loss": 10.0 + step})
    first.close()
    resumed = metrics_lib.MetricsWriter(workdir, start_step=4, config=config)
    for step in (6, 8):
        resumed.write({"step": step, "train/loss": float(step)})
    resumed.close()
    events = _event_accumulator().EventAccumulator(f"{workdir}/tensorboard")
    events.Reload()
    shown = [(e.step, e.value) for e in events.Scalars("train/loss")]
    assert shown == [(2, 12.0), (4, 14.0), (6, 6.0), (8, 8.0)]
    run_id = open(f"{workdir}/{tracking.ID_FILE}").read().strip()
    # offline-run-<time>-<id>, '-1' appended to a run started in the same second as another
    runs = sorted(glob.glob(f"{workdir}/wandb/offline-run-*"))
    assert len(runs) == 2 and all(f"-{run_id}" in r for r in runs)
    history = _history(f"{runs[-1]}/run-{run_id}.wandb", [6, 8])
    assert {s: float(r["train/loss"]) for s, r in history.items()} == {6: 6.0, 8: 8.0}


def test_a_wandb_project_without_wandb_is_a_config_error(monkeypatch):
    config = _tiny_tracking_config()
    monkeypatch.setattr(config_lib.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(config_lib.ConfigError, match=r"pip install -e '.\[wandb\]'"):
        config_lib.validate(config)


def test_wandb_online_without_a_login_is_one_line(tmp_path, offline_wandb, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "netrc"))  # no stored key either
    config = _tiny_tracking_config()
    config.tracking.wandb_mode = "online"
    with pytest.raises(tracking.TrackingError) as error:
        tracking.WandbWriter(config, str(tmp_path / "run"))
    assert "\n" not in str(error.value) and "wandb login" in str(error.value)


@pytest.mark.slow  # three tiny trainings: ~20 s of CPU
def test_crash_stop_and_resume_log_each_step_once(tmp_path, offline_wandb):
    config = tiny_config(
        write_corpus(tmp_path / "corpus"),
        tmp_path / "cache",
        train__steps=8,
        train__log_every=2,
        train__eval_every=3,
        checkpoint__every=4,
        checkpoint__async_save=False,
        tracking__wandb_project="llm-jax-test",
        tracking__wandb_mode="offline",
    )
    workdir = str(tmp_path / "run")
    # A crash at step 7: steps 5-6 were logged after the step-4 checkpoint.
    with pytest.raises(RuntimeError, match="crash"):
        trainer.train_and_evaluate(config, workdir, _Guard(crash_at=1 + 7))
    assert [r["step"] for r in metrics_lib.read_metrics(f"{workdir}/metrics.jsonl")][-1] == 6
    run_id = open(f"{workdir}/{tracking.ID_FILE}").read().strip()
    stopped = trainer.train_and_evaluate(config, workdir, _Guard(stop_at=1 + 3))  # at step 7
    assert stopped["preempted"] and stopped["step"] == 7
    trainer.train_and_evaluate(config, workdir)
    rows = metrics_lib.read_metrics(f"{workdir}/metrics.jsonl")
    assert [r["step"] for r in rows] == [2, 3, 4, 6, 6, 8, 8]  # train and val rows, once each

    # TensorBoard's reader sees each step once, with the values of the resumed run.
    events = _event_accumulator().EventAccumulator(f"{workdir}/tensorboard")
    events.Reload()
    assert len(glob.glob(f"{workdir}/tensorboard/events.out.tfevents.*")) >= 1
    for key in ("train/loss", "val/loss"):
        logged = {r["step"]: r[key] for r in rows if key in r}
        shown = [(e.step, e.value) for e in events.Scalars(key)]
        assert [s for s, _ in shown] == sorted(logged)
        assert shown == [(s, pytest.approx(v, rel=1e-6)) for s, v in sorted(logged.items())]

    # W&B: three offline runs of one id; the last holds the resumed steps as logged.
    # offline-run-<time>-<id>, '-1' appended to a run started in the same second as another
    runs = sorted(glob.glob(f"{workdir}/wandb/offline-run-*"))
    assert len(runs) == 3 and all(f"-{run_id}" in r for r in runs)
    assert open(f"{workdir}/{tracking.ID_FILE}").read().strip() == run_id
    history = _history(f"{runs[-1]}/run-{run_id}.wandb", [8])
    assert sorted(history) == [8]
    assert float(history[8]["train/loss"]) == pytest.approx(rows[-2]["train/loss"], rel=1e-6)
    assert float(history[8]["val/loss"]) == pytest.approx(rows[-1]["val/loss"], rel=1e-6)
    assert sorted(_history(f"{runs[0]}/run-{run_id}.wandb", [2, 3, 4, 6])) == [2, 3, 4, 6]


def test_sweep_trials_share_a_wandb_group_named_after_the_sweep():
    trial = sweep.Trial("lr-a", {"train.lr": 3e-3})
    command = runner.train_command("s.py", "runs/isoflop/", trial)
    assert command[-1] == "--config.tracking.wandb_group=isoflop"
