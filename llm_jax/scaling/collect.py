"""Collecting a sweep: the results table, every law the results support, the summary.

`collect(DIR)` (also `llm-jax sweep --collect DIR`) reads each trial directory (its
trial.json, the config.json and metrics.jsonl the trainer wrote), writes DIR/results.csv,
fits into DIR/fit.json whatever the finished trials support (IsoFLOP parabolas when
trials carry a budget, the parametric L(N, D) when N and D both vary, the envelope of the
training curves when there are several sizes, Kaplan's L(N) / L(D) when the other is
fixed, L(C) on the envelope), draws DIR/plots/ and prints the laws. A trial's fine-tunes
(DIR/<trial>/finetune/<name>, `sweep.finetune_each`) add their last evaluation to its row
as `ft/<name>/val/...` columns, with `ft/<name>/status`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import ml_collections
import numpy as np

from llm_jax import eval_results, storage
from llm_jax import flops as flops_lib
from llm_jax import metrics as metrics_lib
from llm_jax.scaling import fit as fitting
from llm_jax.scaling import plot as plotting
from llm_jax.scaling import results as results_io


def _row(trial_dir: Path) -> dict:
    """One results row from a trial directory."""
    info = results_io.read_json(trial_dir / "trial.json") or {}
    config = results_io.read_json(trial_dir / "config.json")
    plan = info.get("plan", {})
    row = {"name": trial_dir.name, **info.get("tags", {}), **info.get("overrides", {})}
    if config:  # what the trainer ran, not what the sweep planned
        counts = flops_lib.param_counts(ml_collections.ConfigDict(config["model"]))
        row.update(N=counts.total, N_non_embedding=counts.non_embedding)
    else:
        row.update(N=plan.get("N"), N_non_embedding=plan.get("N_non_embedding"))
    status = results_io.trial_status(trial_dir, plan.get("steps"))
    state = results_io.read_json(trial_dir / "status.json") or {}
    row.update(status=status, steps=plan.get("steps"), wall_s=state.get("wall_s"))
    metrics = metrics_lib.read_metrics(trial_dir / "metrics.jsonl")
    last = metrics[-1] if metrics else None
    evals = [r for r in metrics if r.get("val/loss") is not None]
    train = [r for r in metrics if r.get("train/loss") is not None]
    if last:
        row.update(
            D=last["tokens"],
            C=flops_lib.training_flops(row["N"], last["tokens"]),
            C_detailed=last.get("flops"),
            epochs=last.get("epochs"),
        )
    if evals:
        row.update(
            loss=evals[-1]["val/loss"],
            bpb=evals[-1].get("val/bpb"),
            best_loss=min(r["val/loss"] for r in evals),
        )
    if train:
        row["train_loss"] = train[-1]["train/loss"]
    row.update(eval_results.read_columns(trial_dir))  # end-of-training eval, if any
    row.update(_finetune_columns(trial_dir))
    return row


def _finetune_columns(trial_dir: Path) -> dict:
    """`ft/<name>/val/...` (the last evaluation) and `ft/<name>/status` of each fine-tune."""
    columns = {}
    stages = trial_dir / results_io.FINETUNE_DIR
    for stage in sorted(stages.iterdir()) if stages.is_dir() else []:
        if not (stage / "trial.json").exists() and not (stage / "metrics.jsonl").exists():
            continue
        prefix = f"{results_io.DOWNSTREAM_PREFIX}{stage.name}/"
        last = results_io.last_eval(stage) or {}
        columns.update({prefix + k: v for k, v in last.items() if k.startswith("val/")})
        columns[prefix + "status"] = results_io.trial_status(stage)
    return columns


def collect_rows(sweep_dir: str | Path) -> tuple[list[dict], list[str]]:
    """Results rows of every trial directory, and the table's columns."""
    rows = [_row(d) for d in results_io.trial_dirs(sweep_dir)]
    if not rows:
        raise results_io.ResultsError(f"{sweep_dir} holds no trial directories")
    keys = dict.fromkeys(
        k for r in rows for k in r if k != "name" and k not in results_io.MEASURED_COLUMNS
    )
    evals = [k for k in keys if k.startswith(eval_results.COLUMN_PREFIX)]
    downstream = [k for k in keys if k.startswith(results_io.DOWNSTREAM_PREFIX)]
    swept = [
        k
        for k in keys
        if k not in evals and k not in downstream and len({repr(r.get(k)) for r in rows}) > 1
    ]
    return rows, ["name", *swept, *results_io.MEASURED_COLUMNS, *evals, *downstream]


def _constant(values: np.ndarray) -> bool:
    return bool(values.max() <= values.min() * 1.01)


def _curves(sweep_dir: Path, rows: list[dict]) -> list[dict]:
    """Approach 1's loss curves: each run's training curve, or for WSD branches, each
    size's cooldown ends (one point per branch: losses of a finished schedule, not the
    middle of one)."""
    branches = [r for r in rows if r.get("wsd_role") == "branch"]
    if not branches:
        return plotting.load_curves(sweep_dir, rows)
    curves = []
    for size in sorted({r["N"] for r in branches}):
        ends = sorted((r for r in branches if r["N"] == size), key=lambda r: r["D"])
        curves.append(
            {
                "N": size,
                "tokens": [r["D"] for r in ends],
                "flops": [r["C_detailed"] or r["C"] for r in ends],
                "loss": [r["loss"] for r in ends],
            }
        )
    return curves


def _smooth(rows: list[dict]) -> int:
    """Trailing-mean window of approach 1: none over cooldown ends (they are final losses)."""
    return 1 if any(r.get("wsd_role") == "branch" for r in rows) else 5


def fit_sweep(sweep_dir: Path, rows: list[dict], n_boot: int = 100) -> dict:
    """Every law the finished trials support; `notes` says why others were skipped."""
    done = [r for r in rows if r["status"] == "done" and r.get("loss") is not None]
    fits: dict = {"notes": []}
    if any(r.get("wsd_role") == "parent" for r in done):
        done = [r for r in done if r.get("wsd_role") != "parent"]
        fits["notes"].append(
            "WSD parents left out of every fit (constant-LR losses, not cooled down); the "
            "branches' cooldown ends are the points, and approach 1's curves"
        )
    if not done:
        fits["notes"].append("no finished trials to fit")
        return fits
    n, d, loss = (np.array([r[k] for r in done], float) for k in ("N", "D", "loss"))
    attempts = {
        "isoflop": (lambda: fitting.fit_isoflop(n, d, loss, [r["budget"] for r in done]))
        if all(r.get("budget") for r in done)
        else None,
        "chinchilla": (lambda: fitting.fit_parametric(n, d, loss, n_boot=n_boot))
        if len(done) >= 5 and not _constant(n) and not _constant(d)
        else None,
        "envelope": (lambda: fitting.fit_envelope(_curves(sweep_dir, done), smooth=_smooth(done)))
        if len(set(n)) >= 2
        else None,
    }
    kaplan = {}
    if _constant(d) and len(set(n)) >= 3:
        kaplan["N"] = lambda: fitting.fit_power_law(n, loss, n_boot=n_boot, name="N")
    if _constant(n) and len(set(d)) >= 3:
        kaplan["D"] = lambda: fitting.fit_power_law(d, loss, n_boot=n_boot, name="D")
    for law, run in attempts.items():
        if run is None:
            continue
        try:
            fits[law] = run()
        except fitting.FitError as err:
            fits["notes"].append(f"{law}: {err}")
    if "envelope" in fits:  # Kaplan's L(C): a power law on the compute frontier
        env = fits["envelope"]["envelope"]
        kaplan["C"] = lambda: fitting.fit_power_law(
            [p["C"] for p in env], [p["loss"] for p in env], n_boot=n_boot, name="C"
        )
    for key, run in kaplan.items():
        try:
            fits.setdefault("kaplan", {})[key] = run()
        except fitting.FitError as err:
            fits["notes"].append(f"kaplan L({key}): {err}")
    return fits


def collect(sweep_dir: str | Path, n_boot: int = 100) -> dict:
    """Write DIR/results.csv and DIR/fit.json, draw DIR/plots/, print the fitted laws."""
    sweep_dir = storage.path(sweep_dir)
    rows, columns = collect_rows(sweep_dir)
    results_io.write_results(sweep_dir / results_io.RESULTS_CSV, rows, columns)
    fits = fit_sweep(sweep_dir, rows, n_boot)
    results_io.store_fits(sweep_dir / results_io.FIT_JSON, fits)
    plots = plotting.plot_sweep(sweep_dir)
    summarize(sweep_dir, rows, fits, plots)
    return {"rows": rows, "fits": fits, "plots": plots}


def summarize(sweep_dir: Path, rows: list[dict], fits: dict, plots: Sequence[Path]) -> None:
    """Print the trial counts, the fitted laws and where the results and plots are."""
    counts = {s: sum(r["status"] == s for r in rows) for s in {r["status"] for r in rows}}
    print(f"\n[sweep] {sweep_dir}: " + ", ".join(f"{v} {k}" for k, v in sorted(counts.items())))
    titles = {
        "isoflop": "Chinchilla approach 2 (IsoFLOP parabolas)",
        "envelope": "Chinchilla approach 1 (training-curve envelope)",
        "chinchilla": "Chinchilla approach 3 (parametric fit)",
        "kaplan": "Kaplan",
    }
    for law, title in titles.items():
        if law in fits:
            print(f"\n{fitting.format_fit(law, fits[law], title)}")
    for note in fits.get("notes", []):
        print(f"note: {note}")
    print(
        f"\nresults: {sweep_dir / results_io.RESULTS_CSV}\nfits:    "
        f"{sweep_dir / results_io.FIT_JSON}"
    )
    for path in plots:
        print(f"plot:    {path}")
