"""Where a finished sweep's time went, by phase, summed over its trials.

    python tools/profile_sweep.py DIR [--parallel 2] [--trials]

Each trial's trainer writes DIR/<trial>/phases.json (wall and CPU seconds per phase and
attempt: `startup` = interpreter, imports and config before the trainer; `setup` = model
and step definitions; `data` = tokenizer, token cache, batches; `init` = initialise or
restore the state; `compile` = the first train step; `steps`; `log`; `eval_compile` = the
first evaluation; `eval`; `checkpoint` = saves and waiting for them; `finish`). The
runner's status.json gives each attempt's span from process start to exit, so `exit`
is the rest (interpreter teardown). Slot time the trials did not fill is `idle`: before
the last trial started (waiting for parents' checkpoints, or the runner's polling), and
`tail` after it (fewer trials left than slots).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from llm_jax import cli
from llm_jax.cli import args as args_lib

ORDER = [
    "startup",
    "setup",
    "data",
    "init",
    "compile",
    "steps",
    "log",
    "eval_compile",
    "eval",
    "checkpoint",
    "finish",
]


def _read(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _ordered(phases: dict) -> list[str]:
    """The phases in the order a run goes through them (unknown ones after), `exit` last."""
    known = [p for p in ORDER if p in phases]
    return known + sorted(set(phases) - set(ORDER) - {"exit"}) + ["exit"] * ("exit" in phases)


def trial_phases(trial_dir: Path) -> dict[str, list[float]]:
    """{phase: [wall, cpu]} summed over the trial's attempts, plus `exit` (wall only)."""
    totals: dict[str, list[float]] = {}
    for attempt in _read(trial_dir / "phases.json") or []:
        for phase, t in attempt.items():
            total = totals.setdefault(phase, [0.0, 0.0])
            total[0] += t["wall"]
            total[1] += t["cpu"]
    status = _read(trial_dir / "status.json") or {"attempts": []}
    span = sum(a["end"] - a["start"] for a in status["attempts"])
    if totals:
        totals["exit"] = [max(0.0, span - sum(w for w, _ in totals.values())), 0.0]
    return totals


def slot_use(spans: list[tuple[float, float]], parallel: int) -> dict[str, float]:
    """Sweep wall time and the slot-seconds no trial filled, before and after the last start."""
    start, end = min(s for s, _ in spans), max(e for _, e in spans)
    last_start = max(s for s, _ in spans)
    busy_before = sum(min(e, last_start) - s for s, e in spans if s < last_start)
    busy_after = sum(e - max(s, last_start) for s, e in spans if e > last_start)
    return {
        "wall": end - start,
        "idle": parallel * (last_start - start) - busy_before,
        "tail": parallel * (end - last_start) - busy_after,
    }


def timed_trials(sweep_dir: Path) -> list[str]:
    """The trials (paths under `sweep_dir`) that recorded their phases."""
    return [
        str(p.parent.relative_to(sweep_dir))
        for p in sorted(sweep_dir.rglob("status.json"))
        if (p.parent / "phases.json").exists()
    ]


def profile(
    sweep_dir: Path, parallel: int, per_trial: bool = False, only: set[str] | None = None
) -> str:
    """The table: per phase, wall and CPU seconds summed over trials and their shares.
    `only`: these trials alone (e.g. those two sweeps both finished, to compare them)."""
    rows: dict[str, list[float]] = {}
    spans, lines = [], []
    for name in timed_trials(sweep_dir):
        if only is not None and name not in only:
            continue
        trial_dir = sweep_dir / name
        phases = trial_phases(trial_dir)
        status_path = trial_dir / "status.json"
        for a in (_read(status_path) or {}).get("attempts", []):
            spans.append((a["start"], a["end"]))
        for phase, (w, c) in phases.items():
            total = rows.setdefault(phase, [0.0, 0.0])
            total[0] += w
            total[1] += c
        if per_trial:
            shown = [(p, phases[p]) for p in _ordered(phases) if phases[p][0] >= 0.05]
            lines.append(f"{name:28s} " + " ".join(f"{p} {w:.1f}/{c:.1f}" for p, (w, c) in shown))
    if not spans:
        return f"{sweep_dir}: no trial with phases.json (trained before phases were recorded?)"
    use = slot_use(spans, parallel)
    wall, cpu = sum(w for w, _ in rows.values()), sum(c for _, c in rows.values())
    out = [*lines, ""] if lines else []
    out.append(f"{'phase':14s}{'wall s':>9s}{'share':>7s}{'CPU s':>9s}{'share':>7s}")
    for phase in _ordered(rows):
        w, c = rows[phase]
        out.append(f"{phase:14s}{w:9.1f}{w / wall:7.1%}{c:9.1f}{c / cpu:7.1%}")
    out.append(f"{'trials':14s}{wall:9.1f}{'':7s}{cpu:9.1f}")
    out.append(
        f"\n{len(spans)} attempts over {use['wall']:.1f} s wall on {parallel} slots; slot-seconds "
        f"not filled: {use['idle']:.1f} idle before the last start, {use['tail']:.1f} tail after"
    )
    return "\n".join(out)


def parse_args(argv=None) -> argparse.Namespace:
    """Command-line switches."""
    p = args_lib.parser("tools/profile_sweep.py", __doc__.split("\n\n")[0])
    p.add_argument("sweep_dir", type=args_lib.existing_dir)
    p.add_argument(
        "--parallel", type=args_lib.positive_int, default=2, help="the sweep's parallel slots"
    )
    p.add_argument("--trials", action="store_true", help="also one line per trial")
    p.add_argument(
        "--same-as",
        type=args_lib.existing_dir,
        metavar="DIR",
        help="only the trials DIR has timed too",
    )
    return p.parse_args(argv)


def main(argv=None) -> None:
    """Print the table of a sweep directory."""
    args = parse_args(argv)
    only = set(timed_trials(args.same_as)) if args.same_as else None
    print(profile(args.sweep_dir, args.parallel, args.trials, only))


if __name__ == "__main__":
    cli.run_tool(main)
