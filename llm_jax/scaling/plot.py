"""Scaling-study plots (matplotlib, Agg backend, PNG), drawn from a sweep directory.

- `plot_curves`: training loss vs tokens and vs FLOPs, one colour per model size N.
- `plot_isoflop`: loss vs N per IsoFLOP budget, the fitted parabolas and their optima.
- `plot_optimal`: N_opt and D_opt vs C, the fitted laws, extrapolated 100x beyond the data.
- `plot_parametric`: loss predicted by the L(N, D) fit vs observed.
- `plot_ablation`: final loss vs learning rate, one line per variant (mean and range over seeds).

`plot_sweep(DIR)` draws every plot the sweep's results support into DIR/plots/;
`main(argv)` is `llm-jax plot DIR`.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from llm_jax import metrics as metrics_lib
from llm_jax.scaling import fit as fitting
from llm_jax.scaling import results as results_io

LOSS_LABEL = "loss (nats / token)"
EXTRAPOLATE = 100.0  # draw fitted laws this far beyond the largest budget


def _colors(values: Sequence[float], cmap: str = "viridis") -> dict[float, tuple]:
    """One colour per distinct value, ordered by size."""
    distinct = sorted(set(values))
    cm = plt.get_cmap(cmap)
    return {v: cm(i / max(1, len(distinct) - 1) * 0.9) for i, v in enumerate(distinct)}


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_curves(curves: Sequence[dict], path: str | Path) -> Path:
    """Training loss vs tokens and vs FLOPs; `curves`: dicts with N, tokens, flops, loss."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    colors = _colors([c["N"] for c in curves])
    labelled = set()
    for c in curves:
        label = None if c["N"] in labelled else f"N = {c['N']:.3g}"
        labelled.add(c["N"])
        for ax, x in zip(axes, ("tokens", "flops"), strict=True):
            ax.plot(
                c[x],
                c["loss"],
                color=colors[c["N"]],
                lw=1,
                alpha=0.8,
                label=label if ax is axes[0] else None,
            )
    axes[0].set_xlabel("tokens seen")
    axes[1].set_xlabel("training compute C (FLOPs)")
    axes[0].set_ylabel(f"training {LOSS_LABEL}")
    for ax in axes:
        ax.set_xscale("log")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(title="parameters", fontsize=8)
    fig.suptitle("Training curves")
    return _save(fig, path)


def plot_isoflop(isoflop: dict, path: str | Path) -> Path:
    """Loss vs N per budget with the fitted parabolas; optima starred, dropped budgets hollow."""
    fig, ax = plt.subplots(figsize=(7, 5))
    colors = _colors([b["C"] for b in isoflop["budgets"]], "plasma")
    for b in isoflop["budgets"]:
        color = colors[b["C"]]
        face = color if b["kept"] else "none"
        ax.scatter(
            b["N"],
            b["loss"],
            facecolors=face,
            edgecolors=[color],
            zorder=3,
            label=f"C = {b['C']:.2g} FLOPs" + ("" if b["kept"] else " (dropped)"),
        )
        if b["kept"]:
            log_n = np.linspace(math.log(min(b["N"])), math.log(max(b["N"])), 100)
            ax.plot(np.exp(log_n), np.polyval(b["parabola"], log_n), color=color, lw=1.2)
            ax.scatter(
                [b["N_opt"]],
                [b["loss_opt"]],
                marker="*",
                s=180,
                color=color,
                edgecolors="black",
                zorder=4,
            )
    ax.set_xscale("log")
    ax.set_xlabel("parameters N")
    ax.set_ylabel(f"final validation {LOSS_LABEL}")
    title = "IsoFLOP curves (stars: fitted optima)"
    if isoflop.get("a") is not None:
        title += f"\nN_opt ∝ C^{isoflop['a']:.2f}, D_opt ∝ C^{isoflop['b']:.2f}"
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_optimal(fits: dict, path: str | Path) -> Path:
    """N_opt(C) and D_opt(C): the optima each approach found and its fitted law, extrapolated.

    `fits` maps law names to results: `isoflop` (approach 2), `envelope` (approach 1),
    `chinchilla` (approach 3); any subset.
    """
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    spans = []
    for name, marker, color in (("isoflop", "o", "C0"), ("envelope", ".", "C1")):
        f = fits.get(name)
        if not f or f.get("a") is None:
            continue
        pts = (
            [b for b in f["budgets"] if b["kept"]]
            if name == "isoflop"
            else [p for p in f["envelope"] if p.get("interior", True)]
        )
        c = np.array([p["C"] for p in pts])
        spans.append(c)
        c_line = np.logspace(math.log10(c.min()), math.log10(c.max() * EXTRAPOLATE), 50)
        for ax, key, exp, log_g in ((axes[0], "N", "a", "log_G_n"), (axes[1], "D", "b", "log_G_d")):
            y = [p[f"{key}_opt"] if name == "isoflop" else p[key] for p in pts]
            label = "approach 2 (IsoFLOP)" if name == "isoflop" else "approach 1 (envelope)"
            ax.scatter(c, y, marker=marker, color=color, zorder=3, label=f"{label} optima")
            ax.plot(
                c_line,
                np.exp(f[log_g]) * c_line ** f[exp],
                color=color,
                ls="--",
                label=f"{label}: ∝ C^{f[exp]:.3f}",
            )
    f3 = fits.get("chinchilla")
    if f3 and f3.get("frontier") and math.isfinite(f3.get("a", math.nan)):
        c_all = np.concatenate(spans) if spans else np.array([p["C"] for p in f3["frontier"]])
        c_line = np.logspace(math.log10(c_all.min()), math.log10(c_all.max() * EXTRAPOLATE), 50)
        opt = fitting.compute_optimal(f3, c_line)
        for ax, key, exp in ((axes[0], "N_opt", "a"), (axes[1], "D_opt", "b")):
            ax.plot(c_line, opt[key], color="C2", label=f"approach 3 (L(N,D)): ∝ C^{f3[exp]:.3f}")
    if spans:
        for ax in axes:
            ax.axvspan(
                np.concatenate(spans).max(),
                ax.get_xlim()[1],
                color="grey",
                alpha=0.08,
                label="extrapolation",
            )
    axes[0].set_ylabel("compute-optimal parameters N_opt")
    axes[1].set_ylabel("compute-optimal tokens D_opt")
    for ax in axes:
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("training compute C (FLOPs)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Compute-optimal model size and data")
    return _save(fig, path)


def plot_parametric(n, d, loss, fit: dict, path: str | Path) -> Path:
    """Loss predicted by the L(N, D) fit against the observed loss, coloured by N."""
    loss = np.asarray(loss, float)
    pred = fitting.predict(fit, n, d)
    fig, ax = plt.subplots(figsize=(5.5, 5))
    sc = ax.scatter(loss, pred, c=np.log10(np.asarray(n, float)), cmap="viridis", zorder=3)
    fig.colorbar(sc, ax=ax, label="log10 N")
    lims = [min(loss.min(), pred.min()), max(loss.max(), pred.max())]
    ax.plot(lims, lims, color="grey", ls="--", label="predicted = observed")
    ax.set_xlabel(f"observed {LOSS_LABEL}")
    ax.set_ylabel(f"predicted {LOSS_LABEL}")
    ax.set_title(
        f"L = {fit['E']:.3g} + {fit['A']:.3g}/N^{fit['alpha']:.3f}"
        f" + {fit['B']:.3g}/D^{fit['beta']:.3f}",
        fontsize=10,
    )
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_ablation(
    rows: Sequence[dict], lr_key: str, variant_keys: Sequence[str], path: str | Path
) -> Path:
    """Final loss vs learning rate, one line per variant; mean over seeds, range as bars."""
    groups: dict[tuple, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rows:
        if isinstance(r.get("loss"), (int, float)) and math.isfinite(r["loss"]):
            groups[tuple(r.get(k) for k in variant_keys)][float(r[lr_key])].append(r["loss"])
    fig, ax = plt.subplots(figsize=(7, 5))
    for i, (variant, by_lr) in enumerate(sorted(groups.items(), key=lambda kv: str(kv[0]))):
        lrs = np.array(sorted(by_lr))
        mean = np.array([np.mean(by_lr[x]) for x in lrs])
        err = np.array(
            [[mean[j] - min(by_lr[x]), max(by_lr[x]) - mean[j]] for j, x in enumerate(lrs)]
        ).T
        label = (
            ", ".join(f"{k.split('.')[-1]}={v}" for k, v in zip(variant_keys, variant, strict=True))
            or "base"
        )
        ax.errorbar(lrs, mean, yerr=err, marker="o", capsize=3, color=f"C{i % 10}", label=label)
    ax.set_xscale("log")
    ax.set_xlabel("peak learning rate")
    ax.set_ylabel(f"final validation {LOSS_LABEL}")
    ax.set_title("Learning-rate sensitivity (bars: range over seeds)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def load_curves(sweep_dir: str | Path, rows: Sequence[dict]) -> list[dict]:
    """Training curves of the finished trials of a sweep, each tagged with its N."""
    curves = []
    for r in rows:
        if r.get("status") != "done" or not r.get("N"):
            continue
        cv = results_io.curve(
            metrics_lib.read_metrics(Path(sweep_dir) / r["name"] / "metrics.jsonl")
        )
        if len(cv["step"]) >= 2:
            curves.append({"name": r["name"], "N": float(r["N"]), **cv})
    return curves


def plot_sweep(sweep_dir: str | Path) -> list[Path]:
    """Draw every plot the sweep's results.csv and fit.json support into DIR/plots/."""
    sweep_dir = Path(sweep_dir)
    rows = results_io.read_results(sweep_dir)
    done = [r for r in rows if r.get("status") == "done" and r.get("loss") is not None]
    fits = results_io.read_json(sweep_dir / results_io.FIT_JSON) or {}
    out = sweep_dir / results_io.PLOTS_DIR
    paths = []
    curves = load_curves(sweep_dir, done)
    if curves:
        paths.append(plot_curves(curves, out / "training_curves.png"))
    if fits.get("isoflop", {}).get("budgets"):
        paths.append(plot_isoflop(fits["isoflop"], out / "isoflop.png"))
    if any(fits.get(k, {}).get("a") is not None for k in ("isoflop", "envelope", "chinchilla")):
        paths.append(plot_optimal(fits, out / "compute_optimal.png"))
    if "E" in fits.get("chinchilla", {}):
        paths.append(
            plot_parametric(
                [r["N"] for r in done],
                [r["D"] for r in done],
                [r["loss"] for r in done],
                fits["chinchilla"],
                out / "parametric_fit.png",
            )
        )
    swept = results_io.swept_columns(rows)
    lr_key = next((k for k in swept if k.endswith(".lr")), None)
    variants = [k for k in swept if k not in (lr_key, "train.seed")]
    lrs_per_variant = defaultdict(set)
    for r in done:
        lrs_per_variant[tuple(r.get(k) for k in variants)].add(r.get(lr_key))
    # An LR study, not per-size LRs (as in an IsoFLOP sweep): every variant sees >= 2 LRs.
    if lr_key and lrs_per_variant and min(map(len, lrs_per_variant.values())) >= 2:
        paths.append(plot_ablation(done, lr_key, variants, out / "lr_sensitivity.png"))
    return paths
