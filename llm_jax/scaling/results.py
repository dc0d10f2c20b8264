"""The sweep directory on disk: trial metrics in, the results table out.

Shared by the runner (which writes the table), the fitter and the plotter
(which read it), so the layout is defined once:

    DIR/<trial>/metrics.jsonl   written by `llm-jax train`
    DIR/<trial>/trial.json      the trial's name, overrides and plan (runner)
    DIR/<trial>/done.json       completion marker (runner, after exit 0 + final metrics)
    DIR/<trial>/finetune/<name>/  a second stage (`sweep.finetune_each`): the same files
    DIR/results.csv             one row per trial
    DIR/fit.json                the fitted laws, keyed by law
    DIR/plots/*.png

Nothing here imports JAX.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from typing import Any

from etils import epath

from llm_jax import eval_results, storage
from llm_jax.errors import UserError
from llm_jax.metrics import read_metrics

RESULTS_CSV = "results.csv"
FIT_JSON = "fit.json"
PLOTS_DIR = "plots"
FINETUNE_DIR = "finetune"
# Columns of a trial's fine-tunes: `ft/<name>/val/accuracy`, ..., `ft/<name>/status`.
DOWNSTREAM_PREFIX = "ft/"


# The results table: `name`, then the swept values (one column per overridden config key that
# varies, e.g. `train.lr`, and `budget` for IsoFLOP trials), then these, then the
# end-of-training evaluations (`eval/...`) and the fine-tunes' metrics (`ft/...`).
MEASURED_COLUMNS = [
    "N",
    "N_non_embedding",
    "D",
    "C",
    "C_detailed",
    "steps",
    "epochs",
    "loss",
    "best_loss",
    "bpb",
    "train_loss",
    "wall_s",
    "status",
]


def swept_columns(rows: list[dict]) -> list[str]:
    """The swept-value columns of a results table (everything but name and the measured)."""
    if not rows:
        return []
    return [
        k
        for k in rows[0]
        if k != "name"
        and k not in MEASURED_COLUMNS
        and not k.startswith((eval_results.COLUMN_PREFIX, DOWNSTREAM_PREFIX))
    ]


class ResultsError(UserError, ValueError):
    """A results table or sweep directory a user pointed at is unusable; the message says why."""


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Atomically write `obj` as indented JSON (NaN/inf become null)."""
    storage.write_json(path, jsonable(obj), indent=1)


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file; None when it does not exist."""
    path = storage.path(path)
    if not path.exists():
        return None
    return json.loads(path.read_text())


def store_fits(path: str | os.PathLike, fits: dict[str, Any]) -> None:
    """Merge `fits` ({law: fit}) into fit.json at `path`, keeping the laws stored there.

    A fit.json that is empty or unreadable (e.g. emptied by `llm-jax fit ... > fit.json`)
    counts as holding nothing: the new fits are never lost to it.
    """
    try:
        stored = read_json(path) or {}
    except (ValueError, UnicodeDecodeError):
        stored = {}
    if not isinstance(stored, dict):
        stored = {}
    write_json(path, {**stored, **fits})


def jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if hasattr(obj, "tolist"):  # numpy scalars and arrays
        return jsonable(obj.tolist())
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def curve(rows: list[dict], key: str = "train/loss") -> dict[str, list[float]]:
    """One training curve: `tokens`, `flops` and `loss` (the `key` metric) per logged step.

    A resumed run logs some steps twice; the last row for a step wins.
    """
    by_step: dict[int, dict] = {}
    for row in rows:
        if key in row and row.get(key) is not None and "step" in row:
            by_step[int(row["step"])] = row
    steps = sorted(by_step)
    return {
        "step": steps,
        "tokens": [float(by_step[s].get("tokens", math.nan)) for s in steps],
        "flops": [float(by_step[s].get("flops", math.nan)) for s in steps],
        "loss": [float(by_step[s][key]) for s in steps],
    }


def write_results(path: str | os.PathLike, rows: list[dict], columns: list[str]) -> None:
    """Atomically write the results table; missing values are left empty."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _csv_cell(row.get(k)) for k in columns})
    storage.write_text(path, buf.getvalue())


def _csv_cell(value: Any) -> str:
    if hasattr(value, "item"):  # numpy scalars
        value = value.item()
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if not math.isfinite(value) else repr(value)
    return str(value)


def read_results(path: str | os.PathLike) -> list[dict]:
    """Rows of a results CSV (or of DIR/results.csv), numbers parsed, empty cells None."""
    path = storage.path(path)
    if path.is_dir():
        path = path / RESULTS_CSV
    if not path.exists():
        raise ResultsError(
            f"{path} does not exist; run `llm-jax sweep SWEEP.py --workdir DIR` "
            "(or `llm-jax sweep --collect DIR`) first, or pass a CSV with columns N, D, loss"
        )
    try:
        text = io.StringIO(path.read_bytes().decode("utf-8"), newline="")
        return [{k: _parse_cell(v) for k, v in row.items()} for row in csv.DictReader(text)]
    except (UnicodeDecodeError, csv.Error) as e:
        raise ResultsError(f"{path} is not a UTF-8 CSV table ({e}); pass a results.csv") from e


def _parse_cell(text: str | None) -> Any:
    if text is None or text == "":
        return None
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    if text in ("True", "False"):
        return text == "True"
    return text


def trial_dirs(sweep_dir: str | os.PathLike) -> list[epath.Path]:
    """The trial workdirs of a sweep directory (those holding a trial.json or metrics.jsonl)."""
    sweep_dir = storage.path(sweep_dir)
    return sorted(
        p
        for p in sweep_dir.iterdir()
        if p.is_dir() and ((p / "trial.json").exists() or (p / "metrics.jsonl").exists())
    )


# --- trial state ----------------------------------------------------------------------------


def last_row(trial_dir: epath.Path, key: str) -> dict | None:
    """The last metrics row of a trial that holds `key`."""
    rows = [r for r in read_metrics(trial_dir / "metrics.jsonl") if key in r]
    return rows[-1] if rows else None


def last_eval(trial_dir: epath.Path) -> dict | None:
    """The last metrics row of a trial holding an evaluation (val/loss, or a task's val/...)."""
    rows = read_metrics(trial_dir / "metrics.jsonl")
    evals = [r for r in rows if any(k.startswith("val/") for k in r)]
    return evals[-1] if evals else None


def is_complete(trial_dir: epath.Path, steps: int) -> bool:
    """The trial's metrics hold an evaluation at its planned last step."""
    row = last_eval(trial_dir)
    return row is not None and row["step"] >= steps


def trial_status(trial_dir: epath.Path, steps: int | None = None) -> str:
    """done | failed | stopped | running | incomplete | pending."""
    if (trial_dir / "done.json").exists():
        return "done"
    state = read_json(trial_dir / "status.json") or {}
    if steps is None:
        steps = (read_json(trial_dir / "trial.json") or {}).get("plan", {}).get("steps")
    if steps is not None and is_complete(trial_dir, steps) and state.get("status") != "running":
        return "done"
    if state.get("status"):
        return state["status"]
    return "incomplete" if (trial_dir / "metrics.jsonl").exists() else "pending"
