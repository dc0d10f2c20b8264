"""metrics.jsonl, TensorBoard records parsed back by protobuf, MFU peaks, the console line."""

import io
import json
import struct

import pytest
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

from llm_jax import chips, metrics


def _event_class():
    """tensorflow.Event / Summary built from a descriptor: an independent decoder."""
    f = descriptor_pb2.FileDescriptorProto(name="event_test.proto", package="tb")
    t = descriptor_pb2.FieldDescriptorProto
    value = f.message_type.add(name="Value")
    value.field.add(name="tag", number=1, type=t.TYPE_STRING, label=t.LABEL_OPTIONAL)
    value.field.add(name="simple_value", number=2, type=t.TYPE_FLOAT, label=t.LABEL_OPTIONAL)
    summary = f.message_type.add(name="Summary")
    summary.field.add(
        name="value", number=1, type=t.TYPE_MESSAGE, type_name=".tb.Value", label=t.LABEL_REPEATED
    )
    event = f.message_type.add(name="Event")
    event.field.add(name="wall_time", number=1, type=t.TYPE_DOUBLE, label=t.LABEL_OPTIONAL)
    event.field.add(name="step", number=2, type=t.TYPE_INT64, label=t.LABEL_OPTIONAL)
    event.field.add(name="file_version", number=3, type=t.TYPE_STRING, label=t.LABEL_OPTIONAL)
    event.field.add(
        name="summary",
        number=5,
        type=t.TYPE_MESSAGE,
        type_name=".tb.Summary",
        label=t.LABEL_OPTIONAL,
    )
    session_log = f.message_type.add(name="SessionLog")
    session_log.field.add(name="status", number=1, type=t.TYPE_INT32, label=t.LABEL_OPTIONAL)
    event.field.add(
        name="session_log",
        number=7,
        type=t.TYPE_MESSAGE,
        type_name=".tb.SessionLog",
        label=t.LABEL_OPTIONAL,
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(f)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("tb.Event"))


def test_crc32c_known_values():
    assert metrics.crc32c(b"123456789") == 0xE3069283  # the standard check value
    assert metrics.crc32c(b"") == 0


def test_tensorboard_file_parses_back(tmp_path):
    writer = metrics.TensorBoardWriter(str(tmp_path), purge_step=7)
    writer.scalars(10, {"train/loss": 2.5, "lr": 1e-3, "mfu": float("nan")})
    writer.scalars(300, {"val/bpb": 1.25})
    writer.close()
    records = metrics.read_records(writer.path)
    Event = _event_class()
    events = [Event.FromString(r) for r in records]
    assert events[0].file_version == "brain.Event:2"
    assert events[1].step == 7 and events[1].session_log.status == 1  # START: the purge
    assert events[2].step == 10 and events[3].step == 300
    first = {v.tag: v.simple_value for v in events[2].summary.value}
    assert first == {"train/loss": 2.5, "lr": pytest.approx(1e-3)}  # NaN dropped
    assert events[3].summary.value[0].tag == "val/bpb"
    # A flipped byte is caught by the checksums.
    data = bytearray(open(writer.path, "rb").read())
    data[-6] ^= 0xFF
    open(writer.path, "wb").write(bytes(data))
    with pytest.raises(ValueError, match="corrupt"):
        metrics.read_records(writer.path)


def test_record_framing():
    record = metrics.encode_record(b"abc")
    assert struct.unpack("<Q", record[:8])[0] == 3 and record[12:15] == b"abc"
    assert len(record) == 8 + 4 + 3 + 4


def test_jsonl_rows_nan_and_truncate(tmp_path):
    writer = metrics.MetricsWriter(str(tmp_path))
    for step in (10, 20, 30):
        writer.write({"step": step, "train/loss": 1.0 / step, "mfu": None})
    writer.write({"step": 30, "val/loss": float("inf")})
    rows = metrics.read_metrics(writer.path)
    assert [r["step"] for r in rows] == [10, 20, 30, 30]
    assert rows[3]["val/loss"] is None  # JSON has no inf
    json.loads(open(writer.path).readline())  # plain JSON lines
    with open(writer.path, "a") as f:
        f.write('{"step": 40, "train/lo')  # the torn last line of a killed run
    assert [r["step"] for r in metrics.read_metrics(writer.path)] == [10, 20, 30, 30]
    writer.close()
    metrics.MetricsWriter(str(tmp_path), start_step=20).close()  # a resume: torn line too
    assert [r["step"] for r in metrics.read_metrics(writer.path)] == [10, 20]
    assert metrics.MetricsWriter(str(tmp_path / "off"), enabled=False).path.endswith(".jsonl")
    assert not (tmp_path / "off").exists()


@pytest.mark.parametrize(
    "kind, peak",
    [
        ("NVIDIA H100 80GB HBM3", 989e12),
        ("NVIDIA H200", 989e12),
        ("NVIDIA A100-SXM4-80GB", 312e12),
        ("TPU v4", 275e12),
        ("TPU v5 lite", 197e12),
        ("TPU v5p", 459e12),
        ("TPU v6 lite", 918e12),
        ("cpu", None),
    ],
)
def test_peak_flops_table(kind, peak):
    assert chips.peak_flops(kind) == peak


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_bar_redraws_on_a_terminal_and_prints_lines_elsewhere():
    plain = io.StringIO()  # a SLURM log, nohup, a pipe
    bar = metrics.ProgressBar(100, stream=plain, tokens_per_step=100)
    bar.update(10, 2.0, 1000.0)  # 10 steps/s: 90 left take 9 s
    bar.update(20, 1.5, 2000.0)
    bar.close()
    lines = plain.getvalue().splitlines()
    assert len(lines) == 2 and "\r" not in plain.getvalue() and "\033" not in plain.getvalue()
    assert lines[0] == "step 10/100 | loss 2.0000 | 1,000 tok/s | ETA 9 s"
    assert lines[1].startswith("step 20/100 | loss 1.5000 | 2,000 tok/s | ETA ")
    tty = _Terminal()
    bar = metrics.ProgressBar(100, stream=tty)
    bar.update(10, 2.0, 1000.0)
    bar.update(20, 1.5, 2000.0)
    bar.message("step 20: val/loss 1.4")
    line = tty.getvalue()
    assert "\r[" in line and "20/100" in line and "loss 1.5000" in line
    assert "2,000 tok/s" in line and "ETA" in line and "step 20: val/loss 1.4\n" in line
    silent = io.StringIO()
    metrics.ProgressBar(100, stream=silent, enabled=False).update(10, 2.0, None)
    assert silent.getvalue() == ""  # other hosts than the primary


def test_no_tensorboard_file_without_scalars(tmp_path):
    writer = metrics.MetricsWriter(str(tmp_path))  # a rerun of a finished run logs nothing
    writer.close()
    assert not (tmp_path / "tensorboard").exists()


def test_rows_without_step_and_non_utf8_lines_are_skipped_and_reported(tmp_path, caplog):
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(
        b'{"step": 1, "train/loss": 2.0}\n'
        b'{"train/loss": 1.0}\n'  # no step
        b"\xff\xfe garbage\n"  # not UTF-8
        b'["a list"]\n'
        b'{"step": 2, "train/loss": 1.5}\n'
    )
    with caplog.at_level("WARNING", logger="llm_jax.metrics"):
        rows = metrics.read_metrics(path)
    assert [r["step"] for r in rows] == [1, 2]
    assert "skipped 3 unreadable line(s)" in caplog.text and "2, 3, 4" in caplog.text
    writer = metrics.MetricsWriter(str(tmp_path), start_step=1)  # a resume: no traceback
    writer.close()
    assert [r["step"] for r in metrics.read_metrics(path)] == [1]
