"""Metric writers: workdir/metrics.jsonl, TensorBoard event files, W&B, the console line.

`metrics.jsonl` is the source of truth: one JSON object per logged step, e.g.

  {"step": 100, "tokens": 204800, "flops": 1.2e13, "epochs": 0.04, "train/loss": 3.21,
   "lr": 0.003, "grad_norm": 0.8, "param_norm": 41.0, "tokens_per_s": 51000.0, "mfu": null}
  {"step": 100, "tokens": 204800, "flops": 1.2e13, "epochs": 0.04, "val/loss": 3.3,
   "val/bpb": 1.41}

Locally each row is appended and flushed at once. A gs:// object cannot be appended to, so
there both files are kept in memory and uploaded whole by `flush()` (the trainer calls it at
every checkpoint, so a stop loses nothing a resume would not recompute), at most every
`FLUSH_SECS` on their own, and at `close()`: one writer per workdir, the lease holder.

TensorBoard files are written without TensorFlow (tensorboardX was measured: 1.8-2.6 s to
import where torch is installed, against 0.06 s, and 14x the time per logged step): a
tfevents file is a sequence of records (uint64 length, masked crc32c of the length, an
`Event` protocol buffer, masked crc32c of the data); the few protobuf fields needed are
encoded by hand. A resumed run's file starts with TensorBoard's purge marker (a
`SessionLog.START` at the first step it will log), so the steps an earlier attempt logged
after its last checkpoint are dropped by TensorBoard, not shown twice.
`mfu` is model FLOPs per second over the peak of the devices in `chips.PEAK_FLOPS`
(dense bf16), null when the device is not in the table (e.g. CPU).
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import struct
import sys
import time
from typing import IO, Any

from llm_jax import storage

log = logging.getLogger(__name__)

FLUSH_SECS = 30.0  # gs://: the longest a logged row waits for its upload (bar a checkpoint)

# --- TensorBoard event files ---------------------------------------------------------------


def _crc32c_table() -> list[int]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
        table.append(crc)
    return table


_CRC_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), the checksum of TFRecord files."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    """The TFRecord masked checksum: rotate right 15 bits, add a constant."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        bits = value & 0x7F
        value >>= 7
        if value:
            out.append(bits | 0x80)
        else:
            out.append(bits)
            return bytes(out)


def _field(number: int, wire_type: int, payload: bytes) -> bytes:
    key = _varint(number << 3 | wire_type)
    if wire_type == 2:  # length-delimited
        return key + _varint(len(payload)) + payload
    return key + payload


_SESSION_START = 1  # SessionLog.SessionStatus.START


def encode_event(
    wall_time: float,
    step: int = 0,
    file_version: str = "",
    scalars: dict[str, float] | None = None,
    session_start: bool = False,
) -> bytes:
    """An `Event` proto: wall_time=1 (double), step=2, file_version=3, summary=5,
    session_log=7.

    Summary.value=1 is repeated Value{tag=1 (string), simple_value=2 (float)};
    SessionLog.status=1 is an enum. A START session log tells TensorBoard to purge the
    events at or after its step from earlier files (a restart).
    """
    out = _field(1, 1, struct.pack("<d", wall_time))
    if step:
        out += _field(2, 0, _varint(step))
    if file_version:
        out += _field(3, 2, file_version.encode())
    if scalars:
        values = b"".join(
            _field(1, 2, _field(1, 2, tag.encode()) + _field(2, 5, struct.pack("<f", value)))
            for tag, value in scalars.items()
        )
        out += _field(5, 2, values)
    if session_start:
        out += _field(7, 2, _field(1, 0, _varint(_SESSION_START)))
    return out


def encode_record(data: bytes) -> bytes:
    """One TFRecord: length, its masked crc, the data, its masked crc."""
    header = struct.pack("<Q", len(data))
    return (
        header
        + struct.pack("<I", masked_crc32c(header))
        + data
        + struct.pack("<I", masked_crc32c(data))
    )


def read_records(path: str) -> list[bytes]:
    """The records of a TFRecord file (local or gs://), checksums verified (ValueError on
    corruption)."""
    data, records, at = storage.read_bytes(path), [], 0
    while at < len(data):
        header = data[at : at + 8]
        (length,) = struct.unpack("<Q", header)
        (length_crc,) = struct.unpack("<I", data[at + 8 : at + 12])
        body = data[at + 12 : at + 12 + length]
        (body_crc,) = struct.unpack("<I", data[at + 12 + length : at + 16 + length])
        if length_crc != masked_crc32c(header) or body_crc != masked_crc32c(body):
            raise ValueError(f"{path}: corrupt record {len(records)}")
        records.append(body)
        at += 16 + length
    return records


class _Appender:
    """Appends bytes to one file: locally written and flushed at once; on gs:// held in
    memory and uploaded whole by `flush()`, or by `append` once `flush_secs` have passed."""

    def __init__(self, path: str, flush_secs: float = FLUSH_SECS):
        self.path, self.flush_secs = path, flush_secs
        self.uploads = 0  # gs:// uploads of the object so far
        self._file: IO[bytes] | None = None
        self._content: bytearray | None = None  # gs://: the object, once read
        self._dirty = False
        self._last_upload = time.monotonic()

    def replace(self, data: bytes) -> None:
        """Replace the file with `data` now (atomically)."""
        if self._file is not None:
            self._file.close()
            self._file = None
        storage.write_bytes(self.path, data)
        if storage.is_gcs(self.path):
            self._content, self._dirty = bytearray(data), False

    def append(self, data: bytes) -> None:
        """Add `data` at the end (created with the parent folder if missing)."""
        if not storage.is_gcs(self.path):
            if self._file is None:
                local = os.path.expanduser(self.path)
                os.makedirs(os.path.dirname(local) or ".", exist_ok=True)
                self._file = open(local, "ab")
            self._file.write(data)
            self._file.flush()
            return
        if self._content is None:
            exists = storage.exists(self.path)
            self._content = bytearray(storage.read_bytes(self.path) if exists else b"")
        self._content += data
        self._dirty = True
        if time.monotonic() - self._last_upload >= self.flush_secs:
            self.flush()

    def flush(self) -> None:
        """gs://: upload what was appended since the last upload (nothing if nothing was)."""
        if self._dirty:
            storage.write_bytes(self.path, bytes(self._content))
            self._dirty, self._last_upload = False, time.monotonic()
            self.uploads += 1

    def close(self) -> None:
        """Flush, and close the local file."""
        self.flush()
        if self._file is not None:
            self._file.close()
            self._file = None


class TensorBoardWriter:
    """Appends scalar summaries to a new events.out.tfevents.* file in `logdir`.

    The file is created with the first scalars, so a run that logs nothing (a rerun of a
    finished run) leaves no empty event file behind. `purge_step`: the first step this
    writer will log; TensorBoard drops the events of earlier files from that step on.
    """

    def __init__(self, logdir: str, purge_step: int | None = None):
        self.logdir, self.purge_step = logdir, purge_step
        name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}"
        self.path = storage.join(logdir, name)
        self._out = _Appender(self.path)
        self._started = False

    def scalars(self, step: int, values: dict[str, float]) -> None:
        """Write the finite numeric entries of `values` at `step`."""
        finite = {
            k: float(v)
            for k, v in values.items()
            if isinstance(v, int | float) and math.isfinite(v)
        }
        if not finite:
            return
        if not self._started:
            now = time.time()
            header = encode_record(encode_event(now, file_version="brain.Event:2"))
            if self.purge_step is not None:
                header += encode_record(encode_event(now, self.purge_step, session_start=True))
            self._out.append(header)
            self._started = True
        self._out.append(encode_record(encode_event(time.time(), step, scalars=finite)))

    def flush(self) -> None:
        """gs://: upload the events written since the last upload."""
        self._out.flush()

    def close(self) -> None:
        """Flush and close the file (if one was written)."""
        self._out.close()


# --- metrics.jsonl ------------------------------------------------------------------------


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """All rows of a metrics.jsonl file (an empty list when it does not exist).

    A line that is not a JSON object with an integer `step` (the torn last line of a run
    killed mid-write, a hand-edited row, bytes that are not UTF-8) is skipped, so
    resuming such a run, or collecting its sweep, still works; skipped lines other than
    a torn last line are reported in one warning.
    """
    if not storage.exists(path):
        return []
    rows, bad = [], []
    lines = storage.read_bytes(path).split(b"\n")
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        row = _parse_row(line)
        if row is None:
            bad.append(number)
        else:
            rows.append(row)
    if bad and bad != [len(lines)]:  # the last line alone is a torn write: expected
        log.warning(
            "warning: %s: skipped %d unreadable line(s) (not a JSON row with a step): %s",
            path,
            len(bad),
            ", ".join(map(str, bad[:10])),
        )
    return rows


def _parse_row(line: bytes) -> dict[str, Any] | None:
    try:
        row = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(row, dict) or not isinstance(row.get("step"), int):
        return None
    return row


def _clean(value: Any) -> Any:
    """JSON has no NaN: non-finite floats become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class MetricsWriter:
    """Writes `workdir/metrics.jsonl`, TensorBoard files and (when configured) W&B, on the
    primary host only.

    `start_step`: the step the run resumes from. Rows past it (logged by an earlier attempt
    after its last checkpoint) are dropped, so the resumed run rewrites them instead of
    duplicating them, and TensorBoard purges its events past it. `tracking`: the config's
    tracking section (llm_jax/tracking.py), with the whole config as the run's W&B config.
    """

    def __init__(
        self,
        workdir: str,
        enabled: bool = True,
        start_step: int = 0,
        config: Any = None,
    ):
        self.enabled = enabled
        self.path = storage.join(workdir, "metrics.jsonl")
        self.rows_written = 0
        self._out = _Appender(self.path)
        self._tb = self._wandb = None
        if not enabled:
            return
        self._truncate_after(start_step)
        self._tb = TensorBoardWriter(storage.join(workdir, "tensorboard"), start_step + 1)
        if config is not None and config.tracking.wandb_project:
            from llm_jax import tracking  # wandb: only runs that ask for it import it

            self._wandb = tracking.WandbWriter(config, workdir)

    def _truncate_after(self, step: int) -> None:
        """Keep only rows with `step <= step` (atomically replaces the file)."""
        if not storage.exists(self.path):
            return
        rows = [r for r in read_metrics(self.path) if r["step"] <= step]
        self._out.replace("".join(json.dumps(r) + "\n" for r in rows).encode("utf-8"))

    def write(self, row: dict[str, Any]) -> None:
        """Append one row (must hold `step`); scalars also go to TensorBoard and W&B."""
        if not self.enabled:
            return
        row = {k: _clean(v) for k, v in row.items()}
        self._out.append((json.dumps(row) + "\n").encode("utf-8"))
        self.rows_written += 1
        scalars = {k: v for k, v in row.items() if k != "step" and v is not None}
        self._tb.scalars(row["step"], scalars)
        if self._wandb is not None:
            self._wandb.log(row["step"], scalars)

    def flush(self) -> None:
        """Make every row written so far durable (gs://: upload both files if they grew)."""
        if self.enabled:
            self._out.flush()
            self._tb.flush()

    def close(self) -> None:
        """Flush and close the files; finish the W&B run."""
        if not self.enabled:
            return
        self._out.close()
        self._tb.close()
        if self._wandb is not None:
            self._wandb.close()


# --- console ------------------------------------------------------------------------------


def duration(seconds: float) -> str:
    """A time span as people read it: '120 ms', '7.5 s', '0:02:05' (h:mm:ss from a minute)."""
    if seconds < 1:
        return f"{seconds * 1e3:.3g} ms"
    if seconds < 60:
        return f"{seconds:.3g} s"
    h, rem = divmod(int(round(seconds)), 3600)
    return f"{h}:{rem // 60:02d}:{rem % 60:02d}"


class ProgressBar:
    """Step, loss, tokens/s and ETA on the console.

    On a terminal: one self-overwriting line. Elsewhere (SLURM logs, nohup, a pipe): one
    plain line per update, i.e. per logged step.
    """

    def __init__(
        self,
        total_steps: int,
        stream: IO[str] | None = None,
        enabled: bool = True,
        tokens_per_step: int = 0,
    ):
        self.total, self.tokens_per_step = total_steps, tokens_per_step
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.terminal = enabled and self.stream.isatty()
        self._start = time.time()
        self._start_step: int | None = None

    def update(self, step: int, loss: float | None, tokens_per_s: float | None) -> None:
        """Show `step` (1-based count of completed steps): redraw, or print a line."""
        if not self.enabled:
            return
        if self._start_step is None:
            self._start_step, self._start = step, time.time()
        done = step - self._start_step
        rate = done / max(1e-9, time.time() - self._start)
        if not rate and tokens_per_s and self.tokens_per_step:  # the first update
            rate = tokens_per_s / self.tokens_per_step
        eta = duration((self.total - step) / rate) if rate > 0 else "?"
        parts = [f"step {step}/{self.total}"]
        if self.terminal:
            width = 24
            filled = int(width * step / max(1, self.total))
            parts = [f"[{'#' * filled}{'.' * (width - filled)}] {step}/{self.total}"]
        if loss is not None:
            parts.append(f"loss {loss:.4f}")
        if tokens_per_s:
            parts.append(f"{tokens_per_s:,.0f} tok/s")
        parts.append(f"ETA {eta}")
        if self.terminal:
            self.stream.write("\r" + " | ".join(parts) + "\033[K")
            self.stream.flush()
        else:
            print(" | ".join(parts), file=self.stream, flush=True)

    def message(self, text: str) -> None:
        """Print a line above the bar (eval results, checkpoints); always shown."""
        if self.terminal:
            self.stream.write("\r\033[K")
        print(text, file=self.stream, flush=True)

    def close(self) -> None:
        """End the bar's line."""
        if self.terminal:
            self.stream.write("\n")
            self.stream.flush()
