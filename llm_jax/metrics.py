"""Metric writers: workdir/metrics.jsonl, TensorBoard event files, the console line.

`metrics.jsonl` is the source of truth: one JSON object per logged step, e.g.

  {"step": 100, "tokens": 204800, "flops": 1.2e13, "epochs": 0.04, "train/loss": 3.21,
   "lr": 0.003, "grad_norm": 0.8, "param_norm": 41.0, "tokens_per_s": 51000.0, "mfu": null}
  {"step": 100, "tokens": 204800, "flops": 1.2e13, "epochs": 0.04, "val/loss": 3.3,
   "val/bpb": 1.41}

On a gs:// workdir both files are rewritten whole at each write: objects cannot be
appended to (one writer per workdir: the lease holder).

TensorBoard files are written without TensorFlow: a tfevents file is a sequence of
records (uint64 length, masked crc32c of the length, an `Event` protocol buffer,
masked crc32c of the data); the few protobuf fields needed are encoded by hand.
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


def encode_event(
    wall_time: float, step: int = 0, file_version: str = "", scalars: dict[str, float] | None = None
) -> bytes:
    """An `Event` proto: wall_time=1 (double), step=2, file_version=3, summary=5.

    Summary.value=1 is repeated Value{tag=1 (string), simple_value=2 (float)}.
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
    """The records of a TFRecord file, checksums verified (ValueError on corruption)."""
    records = []
    with open(path, "rb") as f:
        while header := f.read(8):
            (length,) = struct.unpack("<Q", header)
            (length_crc,) = struct.unpack("<I", f.read(4))
            data = f.read(length)
            (data_crc,) = struct.unpack("<I", f.read(4))
            if length_crc != masked_crc32c(header) or data_crc != masked_crc32c(data):
                raise ValueError(f"{path}: corrupt record {len(records)}")
            records.append(data)
    return records


class TensorBoardWriter:
    """Appends scalar summaries to a new events.out.tfevents.* file in `logdir`.

    The file is created with the first scalars, so a run that logs nothing (a rerun of a
    finished run) leaves no empty event file behind.
    """

    def __init__(self, logdir: str):
        self.logdir = logdir
        name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}"
        self.path = storage.join(logdir, name)
        self._file: IO[bytes] | None = None
        self._written = b""  # gs:// objects cannot be appended to: the file so far, rewritten

    def _write(self, record: bytes) -> None:
        if self._file is None and not self._written:
            header = encode_record(encode_event(time.time(), file_version="brain.Event:2"))
            if storage.is_gcs(self.path):
                self._written = header
            else:
                os.makedirs(self.logdir, exist_ok=True)
                self._file = open(self.path, "ab")
                self._file.write(header)
        if self._file is None:
            self._written += record
            storage.write_bytes(self.path, self._written)
        else:
            self._file.write(record)
            self._file.flush()

    def scalars(self, step: int, values: dict[str, float]) -> None:
        """Write the finite numeric entries of `values` at `step`."""
        finite = {
            k: float(v)
            for k, v in values.items()
            if isinstance(v, int | float) and math.isfinite(v)
        }
        if finite:
            self._write(encode_record(encode_event(time.time(), step, scalars=finite)))

    def close(self) -> None:
        """Close the file (if one was written)."""
        if self._file is not None:
            self._file.close()


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
    """Writes `workdir/metrics.jsonl` and TensorBoard files (on the primary host only).

    `truncate_after(step)` drops rows past a restored checkpoint, so a resumed run
    rewrites them instead of duplicating them.
    """

    def __init__(self, workdir: str, enabled: bool = True):
        self.enabled = enabled
        self.path = storage.join(workdir, "metrics.jsonl")
        self._tb = TensorBoardWriter(storage.join(workdir, "tensorboard")) if enabled else None
        self.rows_written = 0

    def truncate_after(self, step: int) -> None:
        """Keep only rows with `step <= step` (atomically replaces the file)."""
        if not self.enabled or not storage.exists(self.path):
            return
        rows = [r for r in read_metrics(self.path) if r["step"] <= step]
        storage.write_text(self.path, "".join(json.dumps(r) + "\n" for r in rows))

    def write(self, row: dict[str, Any]) -> None:
        """Append one row (must hold `step`); scalars also go to TensorBoard."""
        if not self.enabled:
            return
        row = {k: _clean(v) for k, v in row.items()}
        storage.append_text(self.path, json.dumps(row) + "\n")
        self.rows_written += 1
        self._tb.scalars(
            row["step"], {k: v for k, v in row.items() if k != "step" and v is not None}
        )

    def close(self) -> None:
        """Close the TensorBoard file."""
        if self._tb is not None:
            self._tb.close()


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
