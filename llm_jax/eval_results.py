"""`eval.json`, the file evaluation writes into a workdir, and its results.csv columns.

JAX-free, so sweep collection reads it without loading a model:
    {"step": 1000, "tasks": {"hellaswag": {"acc": 0.31, "acc_norm": 0.33, "n": 500}}}
becomes the columns `eval/hellaswag/acc`, `eval/hellaswag/acc_norm`, `eval/hellaswag/n`.
"""

from __future__ import annotations

import json
import os

from llm_jax import storage

EVAL_FILE = "eval.json"
COLUMN_PREFIX = "eval/"


def write_results(workdir: str | os.PathLike, step: int | None, results: dict) -> None:
    """`workdir/eval.json`: {'step': ..., 'tasks': {task: {metric: value}}}, atomically."""
    storage.write_json(storage.join(workdir, EVAL_FILE), {"step": step, "tasks": results}, indent=1)


def columns(results: dict[str, dict[str, float]]) -> dict[str, float]:
    """Results as flat `eval/<task>/<metric>` columns."""
    return {
        f"{COLUMN_PREFIX}{task}/{metric}": value
        for task, metrics in results.items()
        for metric, value in metrics.items()
    }


def read_columns(workdir: str | os.PathLike) -> dict[str, float]:
    """The `columns` of `workdir/eval.json` ({} if there is none or it is unreadable)."""
    try:
        return columns(json.loads(storage.read_text(storage.join(workdir, EVAL_FILE)))["tasks"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError, storage.StorageError):
        return {}


def format_table(results: dict[str, dict[str, float]]) -> str:
    """The results as aligned text: task, metric, value."""
    lines = [f"{'task':<24} {'metric':<14} {'value':>12}"]
    for task, metrics in results.items():
        for metric, value in metrics.items():
            text = f"{value:>12,}" if isinstance(value, int) else f"{value:>12.4f}"
            lines.append(f"{task:<24} {metric:<14} {text}")
    return "\n".join(lines)
