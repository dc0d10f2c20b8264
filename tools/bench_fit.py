"""Time `llm-jax fit`'s parametric fit (Chinchilla approach 3) now and at an earlier commit.

    python tools/bench_fit.py                   # 240 synthetic points, 100 resamples
    python tools/bench_fit.py --csv svg_extracted_data.csv --before HEAD~3

`--csv` takes a table with columns N, D, loss, or Epoch AI's extraction of the Chinchilla
points (columns `Model Size`, `Training FLOP`, `loss`; its 5 highest losses are dropped,
as Epoch did, leaving 240). Without it, 240 points are drawn from Hoffmann et al.'s law
with 2% noise. Each implementation runs in a fresh process (imports included, as a user
pays them), `--repeat` times; the table gives median wall and CPU seconds, and how far
each estimate and interval is from the first row's. Say the machine's load (`uptime`)
with the numbers: on a busy machine wall time is mostly waiting for a core.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from llm_jax import cli
from llm_jax.cli import args as args_lib
from llm_jax.errors import UsageError

ROOT = Path(__file__).resolve().parent.parent
KEYS = ("E", "A", "B", "alpha", "beta", "a")
SCIPY_LOOP = "4c390b4"  # the commit before fits were batched

# Runs in a child process: imports the fit module from a file, fits, prints JSON.
CHILD = """
import importlib.util, json, sys, time
t0, c0 = time.perf_counter(), time.process_time()
spec = importlib.util.spec_from_file_location("fit_under_test", sys.argv[1])
fit = importlib.util.module_from_spec(spec)
spec.loader.exec_module(fit)
points = fit.load_points(sys.argv[2])
out = fit.fit_parametric(points["N"], points["D"], points["loss"], n_boot=int(sys.argv[3]))
wall, cpu = time.perf_counter() - t0, time.process_time() - c0
keys = ("E", "A", "B", "alpha", "beta", "a")
print(json.dumps({"wall": wall, "cpu": cpu, **{k: out[k] for k in keys}, "ci": out["ci"]}))
"""


def _read_rows(src: str) -> list[tuple[float, float, float]]:
    """(N, D, loss) rows of the --csv table `src`; a UsageError if it cannot give any."""
    columns = "columns N, D, loss (or Epoch AI's Model Size, Training FLOP, loss)"
    try:
        with open(src, newline="") as f:
            table = list(csv.DictReader(f))
        if table and "Model Size" in table[0]:  # Epoch AI's: drop the 5 highest losses
            cut = sorted(float(r["loss"]) for r in table)[-min(5, len(table))]
            rows = [
                (n, float(r["Training FLOP"]) / (6 * n), float(r["loss"]))
                for r in table
                if float(r["loss"]) < cut
                for n in [float(r["Model Size"])]
            ]
        else:
            rows = [(float(r["N"]), float(r["D"]), float(r["loss"])) for r in table]
    except OSError as e:
        raise UsageError(f"--csv {src}: {e.strerror}; give a CSV file with {columns}") from None
    except KeyError as e:
        raise UsageError(f"--csv {src} has no column {e}; it needs {columns}") from None
    except ValueError as e:
        raise UsageError(f"--csv {src}: {e}; every value in {columns} is a number") from None
    if not rows:
        raise UsageError(f"--csv {src} has no rows to fit; give a CSV file with {columns}")
    return rows


def write_points(src: str | None, path: Path) -> int:
    """Write N, D, loss to `path` from `src` (see the module docstring); returns the count."""
    if src is None:
        rng = np.random.default_rng(0)
        n = 10 ** rng.uniform(7.5, 10.2, 240)
        d = 10 ** rng.uniform(9.0, 11.5, 240)
        loss = (1.69 + 406.4 / n**0.34 + 410.7 / d**0.28) * np.exp(rng.normal(0, 0.02, 240))
        rows = list(zip(n, d, loss, strict=True))
    else:
        rows = _read_rows(src)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["N", "D", "loss"])
        w.writerows(rows)
    return len(rows)


def fit_source(rev: str | None, folder: Path) -> Path:
    """llm_jax/scaling/fit.py of the working tree (rev None) or of a git revision."""
    if rev is None:
        return ROOT / "llm_jax/scaling/fit.py"
    done = subprocess.run(
        ["git", "-C", str(ROOT), "show", f"{rev}:llm_jax/scaling/fit.py"],
        capture_output=True,
        text=True,
    )
    if done.returncode:
        raise UsageError(
            f"--before {rev}: {_last_line(done.stderr).rstrip('.')}; give a git revision that has "
            "llm_jax/scaling/fit.py"
        )
    text = done.stdout
    path = folder / f"fit_{rev.replace('/', '_').replace('~', '_')}.py"
    path.write_text(text)
    return path


def _last_line(text: str) -> str:
    """The last non-blank line of a child's stderr (its error), or a note that it said none."""
    lines = [line for line in text.splitlines() if line.strip()]
    return lines[-1].strip() if lines else "(no message)"


def run_child(module: Path, points: Path, n_boot: int) -> dict:
    """Fit with the fit.py at `module` in a fresh process; its JSON line as a dict."""
    out = subprocess.run(
        [sys.executable, "-c", CHILD, str(module), str(points), str(n_boot)],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    if out.returncode:  # too few points (FitError), or a --before whose fit.py differs
        raise UsageError(f"fitting with {module.name} failed: {_last_line(out.stderr)}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def max_rel_diff(a: dict, b: dict) -> tuple[float, float]:
    """Largest relative difference of the estimates, and of the interval ends."""
    est = max(abs(a[k] - b[k]) / abs(b[k]) for k in KEYS)
    ends = [
        abs(x - y) / abs(y)
        for k in b["ci"]
        if k in a["ci"]
        for x, y in zip(a["ci"][k], b["ci"][k], strict=True)
    ]
    return est, max(ends, default=0.0)


def parse_args(argv=None) -> argparse.Namespace:
    """Command-line switches."""
    p = args_lib.parser("tools/bench_fit.py", __doc__.split("\n\n")[0])
    p.add_argument("--csv", help="N, D, loss table or Epoch AI's svg_extracted_data.csv")
    p.add_argument("--bootstrap", type=args_lib.nonnegative_int, default=100)
    p.add_argument("--repeat", type=args_lib.positive_int, default=3)
    p.add_argument(
        "--before",
        default=SCIPY_LOOP,
        help="git revision of the implementation to compare with (default: the last one "
        "fitting with scipy, one L-BFGS-B run at a time)",
    )
    return p.parse_args(argv)


def main(argv=None) -> None:
    """Time the fits and print the table."""
    args = parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        points = folder / "points.csv"
        count = write_points(args.csv, points)
        impls = {f"{args.before} (before)": fit_source(args.before, folder)}
        impls["working tree (after)"] = fit_source(None, folder)
        print(f"{count} points, {args.bootstrap} bootstrap refits, {args.repeat} runs each")
        print(f"load average before: {os.getloadavg()[0]:.2f}")
        header = f"{'implementation':<28}{'wall s':>9}{'CPU s':>9}{'est. diff':>11}{'CI diff':>10}"
        print(header)
        reference = None
        for name, module in impls.items():
            runs = [run_child(module, points, args.bootstrap) for _ in range(args.repeat)]
            reference = reference or runs[0]
            est, ci = max_rel_diff(runs[0], reference)
            wall = statistics.median(r["wall"] for r in runs)
            cpu = statistics.median(r["cpu"] for r in runs)
            print(f"{name:<28}{wall:>9.2f}{cpu:>9.2f}{est:>11.1e}{ci:>10.1e}")
        print(f"load average after: {os.getloadavg()[0]:.2f}")
        print("E, A, B, alpha, beta, a: " + ", ".join(f"{reference[k]:.4g}" for k in KEYS))


if __name__ == "__main__":
    cli.run_tool(main)
