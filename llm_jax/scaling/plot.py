"""Scaling-study plots (matplotlib, Agg backend, PNG), drawn from a sweep directory.

- `plot_curves`: training loss vs tokens and vs FLOPs, one colour per model size N.
- `plot_isoflop`: loss vs N per IsoFLOP budget, the fitted parabolas and their optima.
- `plot_optimal`: N_opt and D_opt vs C, the fitted laws, extrapolated 100x beyond the data.
- `plot_parametric`: loss predicted by the L(N, D) fit vs observed.
- `plot_backtest`: the same for a backtest, the held-out points marked with their intervals.
- `plot_ablation`: final loss vs learning rate, one line per variant (mean and range over seeds).
- `plot_downstream`: each fine-tune's metric (genre accuracy, ...) vs pre-training compute and
  vs pre-training validation loss, one line per model size N, the majority baseline dashed.
- `plot_run`: one training workdir's train/val loss, learning rate and gradient norm.

`plot_sweep(DIR)` draws every plot the sweep's results support into DIR/plots/
(`llm-jax plot DIR`; on a training workdir, `llm-jax plot` draws `plot_run`).
"""

from __future__ import annotations

import io
import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib import ticker
from matplotlib.lines import Line2D

from llm_jax import metrics as metrics_lib
from llm_jax import storage
from llm_jax.scaling import fit as fitting
from llm_jax.scaling import results as results_io

LOSS_LABEL = "loss (nats / token)"
EXTRAPOLATE = 100.0  # draw fitted laws this far beyond the largest budget
BUDGET_STYLES = ("-", "--", ":", "-.")
OPT = ("N_opt", "D_opt")
SMOOTH = 5  # training-curve plots: trailing mean over this many logged steps


def _colors(values: Sequence[float], cmap: str = "viridis") -> dict[float, tuple]:
    """One colour per distinct value, in order along a sequential colormap (no pale end)."""
    distinct = sorted(set(values))
    cm = plt.get_cmap(cmap)
    return {v: cm(0.85 * i / max(1, len(distinct) - 1)) for i, v in enumerate(distinct)}


def _count(x: float) -> str:
    """12k, 1.4M, 2.5B: parameter and token counts for labels."""
    for scale, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if x >= scale:
            return f"{x / scale:.3g}{unit}"
    return f"{x:.3g}"


def _count_axis(axis, decades: float = 1.0) -> None:
    """Log-axis labels 10k, 20k, 50k (1-2-5 steps; decades only over a wide range), without
    minor labels that would collide."""
    subs = (1.0, 2.0, 5.0) if decades < 2.5 else (1.0,)
    axis.set_major_locator(ticker.LogLocator(base=10, subs=subs))
    axis.set_major_formatter(ticker.FuncFormatter(lambda x, _: _count(x)))
    axis.set_minor_formatter(ticker.NullFormatter())


def _save(fig, path: str | Path) -> Path:
    """Write `fig` as a PNG through storage (atomic, local or gs://)."""
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    storage.write_bytes(path, png.getvalue())
    return storage.path(path)


def plot_curves(curves: Sequence[dict], path: str | Path) -> Path:
    """Training loss (smoothed) vs tokens, a panel per IsoFLOP budget, and vs FLOPs, all
    runs together; colour by size N (sequential colormap), line style by budget.

    `curves`: dicts with N, tokens, flops, loss and optionally budget. The y range starts
    below the lowest loss and stops where the slowest curve has done a tenth of its
    training, so the first steps' loss (~log vocab) does not flatten the rest.
    """
    budgets = sorted({c.get("budget") for c in curves if c.get("budget")}) or [None]
    fig, axes = plt.subplots(
        1, len(budgets) + 1, figsize=(4 * len(budgets) + 5, 4.5), sharey=True, squeeze=False
    )
    axes = axes[0]
    colors = _colors([c["N"] for c in curves])
    style = {b: BUDGET_STYLES[i % len(BUDGET_STYLES)] for i, b in enumerate(budgets)}
    smoothed = [fitting.smooth_curve(np.asarray(c["loss"], float), SMOOTH) for c in curves]
    for c, loss in zip(curves, smoothed, strict=True):
        panel = axes[budgets.index(c.get("budget"))] if c.get("budget") in budgets else axes[0]
        color, ls = colors[c["N"]], style.get(c.get("budget"), "-")
        panel.plot(c["tokens"], loss, color=color, lw=1.3)
        axes[-1].plot(c["flops"], loss, color=color, ls=ls, lw=1.3)
    top = max(loss[len(loss) // 10] for loss in smoothed)
    bottom = min(loss.min() for loss in smoothed)
    axes[0].set_ylim(bottom - 0.05 * (top - bottom), top)
    axes[0].set_ylabel(f"training {LOSS_LABEL}")
    for ax, b in zip(axes, budgets, strict=False):
        ax.set_xlabel("tokens seen D")
        if b is not None:
            ax.set_title(f"budget C = {b:.2g} FLOPs", fontsize=10)
    axes[-1].set_xlabel("training compute C (FLOPs)")
    axes[-1].set_title(
        "all runs" + (" (line style: budget)" if len(budgets) > 1 else ""), fontsize=10
    )
    for ax in axes:
        ax.set_xscale("log")
        ax.grid(True, which="both", alpha=0.3)
    handles = [
        Line2D([], [], color=colors[n], lw=2, label=f"N = {_count(n)}") for n in sorted(colors)
    ]
    if len(budgets) > 1:
        handles += [
            Line2D([], [], color="black", ls=style[b], label=f"C = {b:.2g}") for b in budgets
        ]
    axes[-1].legend(handles=handles, fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1))
    fig.suptitle(f"Training curves (trailing mean over {SMOOTH} logged steps)")
    fig.tight_layout()
    return _save(fig, path)


def _budget_label(b: dict) -> str:
    label = f"C = {b['C']:.2g}"
    if "r2" in b:
        label += f": R² {b['r2']:.2f}"
    if b.get("poor_fit"):
        label += ", poor fit (excluded)"
    elif not b["kept"]:
        label += ", dropped (no interior optimum)"
    return label


def plot_isoflop(isoflop: dict, path: str | Path) -> Path:
    """Loss vs N per budget with the fitted parabolas and their optima (stars).

    Every run is drawn. A budget left out of the exponents keeps its points; a poor fit
    (fit.POOR_FIT_R2 rule) draws a dashed parabola and a hollow star.
    """
    fig, ax = plt.subplots(figsize=(8.5, 5))
    colors = _colors([b["C"] for b in isoflop["budgets"]], "plasma")
    for b in isoflop["budgets"]:
        color = colors[b["C"]]
        ax.scatter(b["N"], b["loss"], color=color, zorder=3, s=25, label=_budget_label(b))
        if "parabola" not in b:
            continue
        log_n = np.linspace(math.log(min(b["N"])), math.log(max(b["N"])), 100)
        ls = "-" if b["kept"] else "--"
        ax.plot(np.exp(log_n), np.polyval(b["parabola"], log_n), color=color, lw=1.2, ls=ls)
        if "N_opt" in b:
            ax.scatter(
                [b["N_opt"]],
                [b["loss_opt"]],
                marker="*",
                s=220,
                facecolors=color if b["kept"] else "white",
                edgecolors=color if not b["kept"] else "black",
                linewidths=1.2,
                zorder=4,
            )
    ax.scatter([], [], marker="*", s=120, color="grey", edgecolors="black", label="fitted optimum")
    ax.scatter([], [], marker="*", s=120, facecolors="white", edgecolors="grey", label="poor fit")
    ax.set_xscale("log")
    _count_axis(ax.xaxis)
    ax.set_xlabel("parameters N")
    ax.set_ylabel(f"final validation {LOSS_LABEL}")
    title = "IsoFLOP profiles (Chinchilla approach 2)"
    if isoflop.get("a") is not None:
        title += f"\nN_opt ∝ C^{_exponent(isoflop, 'a')}, D_opt ∝ C^{_exponent(isoflop, 'b')}"
        if not isoflop.get("ci"):
            kept = sum(b["kept"] for b in isoflop["budgets"])
            title += f" (from {kept} budgets: no interval)"
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1), title="budget (FLOPs)")
    fig.text(
        0.01,
        -0.02,
        f"Poor fit: parabola R² < {fitting.POOR_FIT_R2}, or its minimum above the lowest run "
        "by over 2x its RMS residual; such budgets are left out of a and b.",
        fontsize=7,
        color="dimgrey",
    )
    fig.tight_layout()
    return _save(fig, path)


def _unreliable(fit: dict, key: str) -> str:
    """Why an exponent cannot be trusted ('' when it can): no interval, or a wide one."""
    ci = (fit.get("ci") or {}).get(key)
    if ci is None:
        return "unreliable: no interval"
    return "unreliable: interval wider than the value" if ci[1] - ci[0] > abs(fit[key]) else ""


def _exponent(fit: dict, key: str) -> str:
    ci = (fit.get("ci") or {}).get(key)
    return f"{fit[key]:.3f}" + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")


def _line(ax, c_line, law, span, color, label, unreliable):
    """A fitted law y = law(C): solid over the compute span its data cover, dotted beyond
    (extrapolation, either side); faint if unreliable."""
    lo, hi = span
    c = np.unique(np.r_[c_line, lo, hi])
    alpha = 0.35 if unreliable else 1.0
    inside = (c >= lo) & (c <= hi)
    ax.plot(c[inside], law(c[inside]), color=color, alpha=alpha, label=label)
    for side in (c <= lo, c >= hi):
        ax.plot(c[side], law(c[side]), color=color, alpha=alpha, ls=":")


def _loglog_law(axes, f, pts, keys, c_line, color, name):
    """Approach 1 or 2: optima, their log-log lines and t-bands, per panel."""
    c = np.array([p["C"] for p in pts])
    for i, (ax, key, exp) in enumerate(zip(axes, keys, ("a", "b"), strict=True)):
        y = np.array([p[key] for p in pts])
        bad = _unreliable(f, exp)
        ax.scatter(c, y, color=color, zorder=3, s=22, label=f"{name} optima" if i == 0 else None)
        label = f"{name}: {OPT[i]} ∝ C^{_exponent(f, exp)}" + (f" ({bad})" if bad else "")
        log_g = ("log_G_n", "log_G_d")[i]
        g, slope = math.exp(f[log_g]), f[exp]
        _line(ax, c_line, lambda x, g=g, s=slope: g * x**s, (c.min(), c.max()), color, label, bad)
        band = None if bad else fitting.loglog_band(c, y, c_line, f.get("level", 0.95))
        if band is not None:
            ax.fill_between(c_line, *band, color=color, alpha=0.15, lw=0)


def plot_optimal(fits: dict, path: str | Path) -> Path:
    """N_opt(C) and D_opt(C): each approach's optima and fitted law, with uncertainty.

    `fits` maps law names to results: `isoflop` (approach 2), `envelope` (approach 1),
    `chinchilla` (approach 3); any subset. Bands: 95% t-bands of the log-log lines
    (approaches 1, 2), the bootstrap resamples' frontiers (approach 3). Laws are solid over
    the compute their data cover and dotted outside it (beyond the largest budget, to
    EXTRAPOLATE x it, shaded); an exponent without an interval or one wider than itself
    is drawn faint and labelled unreliable, without a band.
    Envelope points left out of approach 1 and budgets left out of approach 2 are grey.
    """
    fig, axes = plt.subplots(1, 2, figsize=(12, 5))
    iso, env, f3 = (fits.get(k) or {} for k in ("isoflop", "envelope", "chinchilla"))
    c_data = [b["C"] for b in iso.get("budgets", [])] + [p["C"] for p in env.get("envelope", [])]
    if not c_data and f3.get("frontier"):
        c_data = [p["C"] for p in f3["frontier"]]
    c_max = max(c_data)
    c_line = np.logspace(math.log10(min(c_data)), math.log10(c_max * EXTRAPOLATE), 80)
    if iso.get("a") is not None:
        kept = [b for b in iso["budgets"] if b["kept"]]
        _loglog_law(axes, iso, kept, ("N_opt", "D_opt"), c_line, "C0", "approach 2 (IsoFLOP)")
        out = [b for b in iso["budgets"] if b.get("poor_fit")]
        for ax, key in zip(axes, ("N_opt", "D_opt"), strict=True):
            if out:
                ax.scatter(
                    [b["C"] for b in out],
                    [b[key] for b in out],
                    facecolors="none",
                    edgecolors="grey",
                    zorder=3,
                    label=f"approach 2: {len(out)} poor-fit budget(s), excluded"
                    if ax is axes[0]
                    else None,
                )
    if env.get("a") is not None:
        inner = [p for p in env["envelope"] if p.get("interior", True)]
        _loglog_law(axes, env, inner, ("N", "D"), c_line, "C1", "approach 1 (envelope)")
        edge = [p for p in env["envelope"] if not p.get("interior", True)]
        for ax, key in zip(axes, ("N", "D"), strict=True):
            if edge:
                ax.scatter(
                    [p["C"] for p in edge],
                    [p[key] for p in edge],
                    color="lightgrey",
                    s=12,
                    zorder=2,
                    label=f"approach 1: {len(edge)} of {len(env['envelope'])} envelope "
                    "points left out (won at a size edge)"
                    if ax is axes[0]
                    else None,
                )
    if f3.get("frontier") and math.isfinite(f3.get("a") or math.nan):
        # Approach 3 fits final losses: its data span the trained budgets.
        budgets = [b["C"] for b in iso.get("budgets", [])] or [min(c_data)]
        _parametric_frontier(axes, f3, c_line, (min(budgets), c_max))
    for ax in axes:
        ax.axvspan(c_max, c_line[-1], color="grey", alpha=0.08, lw=0)
        ax.text(
            c_max * 1.15,
            0.95,
            "extrapolation",
            transform=ax.get_xaxis_transform(),
            fontsize=8,
            color="dimgrey",
        )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlim(c_line[0], c_line[-1])
        ax.set_xlabel("training compute C (FLOPs)")
        ax.grid(True, which="both", alpha=0.3)
    for ax in axes:
        lo, hi = ax.get_ylim()
        _count_axis(ax.yaxis, math.log10(hi / lo))
        ax.grid(False, which="minor")
    axes[0].set_ylabel("compute-optimal parameters N_opt")
    axes[1].set_ylabel("compute-optimal tokens D_opt")
    fig.suptitle("Compute-optimal model size and data (shaded: 95% bands)")
    fig.tight_layout()
    _legend_by_approach(fig, axes)
    return _save(fig, path)


def _legend_by_approach(fig, axes) -> None:
    """One legend below the panels, a column per approach (labels start "approach k")."""
    columns: dict[str, list] = defaultdict(list)
    for ax in axes:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            columns[label.split(" (")[0].split(":")[0]].append((handle, label))
    order = ("optima", "N_opt ∝", "D_opt ∝")  # then what was left out
    for col in columns.values():
        col.sort(key=lambda e: next((i for i, k in enumerate(order) if k in e[1]), len(order)))
    rows = max(map(len, columns.values()))
    blank = (Line2D([], [], alpha=0), "")
    entries = [e for col in columns.values() for e in col + [blank] * (rows - len(col))]
    handles, labels = zip(*entries, strict=True)
    fig.legend(
        handles, labels, fontsize=8, loc="upper center", ncol=len(columns), bbox_to_anchor=(0.5, 0)
    )


def _parametric_frontier(axes, f3, c_line, span):
    """Approach 3's frontier N_opt = G (C/6)^a and D_opt = C / (6 N_opt), with its band."""
    boot = np.array(f3.get("frontier_boot") or [], dtype=float).reshape(-1, 2)
    for ax, key, exp in zip(axes, OPT, ("a", "b"), strict=True):
        bad = _unreliable(f3, exp)
        label = f"approach 3 (L(N, D)): {key} ∝ C^{_exponent(f3, exp)}" + (
            f" ({bad})" if bad else ""
        )
        _line(
            ax, c_line, lambda c, k=key: fitting.compute_optimal(f3, c)[k], span, "C2", label, bad
        )
        if len(boot) >= 10 and not bad:
            n_opt = boot[:, :1] * (c_line / 6) ** boot[:, 1:]
            y = n_opt if key == "N_opt" else (c_line / 6) / n_opt
            level = f3.get("level", 0.95)
            lo, hi = np.percentile(y, [50 * (1 - level), 50 * (1 + level)], axis=0)
            ax.fill_between(c_line, lo, hi, color="C2", alpha=0.15, lw=0)


def plot_parametric(n, d, loss, fit: dict, path: str | Path, names=None, label: int = 3) -> Path:
    """Loss predicted by the L(N, D) fit against the observed loss, coloured by N; the
    `label` largest residuals carry their trial names."""
    n, loss = np.asarray(n, float), np.asarray(loss, float)
    pred = fitting.predict(fit, n, d)
    fig, ax = plt.subplots(figsize=(6, 5))
    sc = ax.scatter(loss, pred, c=np.log10(n), cmap="viridis", zorder=3)
    fig.colorbar(sc, ax=ax, label="log10 N")
    lims = [min(loss.min(), pred.min()), max(loss.max(), pred.max())]
    ax.plot(lims, lims, color="grey", ls="--", label="predicted = observed")
    if names is not None:
        for i in np.argsort(-np.abs(pred - loss))[:label]:
            right = loss[i] > (loss.min() + loss.max()) / 2  # label inwards, off the frame
            ax.annotate(
                str(names[i]),
                (loss[i], pred[i]),
                xytext=(-6 if right else 6, -3),
                textcoords="offset points",
                ha="right" if right else "left",
                va="top",
                fontsize=7,
            )
    ax.set_xlabel(f"observed {LOSS_LABEL}")
    ax.set_ylabel(f"predicted {LOSS_LABEL}")
    ax.set_title(
        "Chinchilla approach 3: parametric fit L(N, D)"
        + (f" (named: the {label} largest residuals)" if names is not None else "")
        + "\n"
        f"L = {fit['E']:.3g} + {fit['A']:.3g}/N^{fit['alpha']:.3f}"
        f" + {fit['B']:.3g}/D^{fit['beta']:.3f}",
        fontsize=10,
    )
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    return _save(fig, path)


def plot_backtest(result: dict, path: str | Path) -> Path:
    """A backtest (fit.backtest): predicted vs observed loss; the fitted points as dots,
    the held-out points as red diamonds with their prediction intervals."""
    fig, ax = plt.subplots(figsize=(6, 5))
    fitted = result["fit_points"]
    ax.scatter(
        [p["observed"] for p in fitted],
        [p["predicted"] for p in fitted],
        color="C0",
        s=18,
        zorder=3,
        label=f"fitted ({len(fitted)} points, C <= {result['fit_C_max']:.2g})",
    )
    held = result["held_out"]
    observed = np.array([p["observed"] for p in held])
    predicted = np.array([p["predicted"] for p in held])
    lo, hi = np.array([p["interval"] for p in held]).T
    ax.errorbar(
        observed,
        predicted,
        yerr=[predicted - lo, hi - predicted],
        fmt="D",
        color="C3",
        capsize=3,
        zorder=4,
        label=f"held out: {result['inside']} of {len(held)} inside the "
        f"{100 * result['level']:.0f}% interval",
    )
    values = [p["observed"] for p in fitted] + observed.tolist() + lo.tolist() + hi.tolist()
    lims = [min(values), max(values)]
    ax.plot(lims, lims, color="grey", ls="--", label="predicted = observed")
    ax.set_xlabel(f"observed {LOSS_LABEL}")
    ax.set_ylabel(f"predicted {LOSS_LABEL}")
    worst = max(abs(p["rel_error"]) for p in held)
    ax.set_title(
        f"Backtest of L(N, D): fitted on the smaller budgets\nworst held-out error {worst:.2%}",
        fontsize=10,
    )
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
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
    tried = sorted({lr for by_lr in groups.values() for lr in by_lr})
    # Label every learning rate tried, in 2 significant digits (powers of 2 run long).
    ax.set_xticks(tried, [f"{lr:.2g}" for lr in tried], rotation=45 if len(tried) > 5 else 0)
    ax.xaxis.set_minor_formatter(ticker.NullFormatter())
    ax.set_xlabel("peak learning rate")
    ax.set_ylabel(f"final validation {LOSS_LABEL}")
    ax.set_title("Learning-rate sensitivity (bars: range over seeds)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1))
    fig.tight_layout()
    return _save(fig, path)


# A fine-tune's headline metric: the first of these it logs (classify, sft, mlm).
DOWNSTREAM_METRICS = ("val/accuracy", "val/exact_match", "val/mlm_accuracy")
BASELINE_METRIC = "val/majority_accuracy"


def downstream_metrics(rows: Sequence[dict]) -> list[tuple[str, str]]:
    """(column of the headline metric, column of its baseline or '') of each fine-tune in
    results rows (`ft/<name>/val/...` columns)."""
    keys = dict.fromkeys(k for r in rows for k in r if k.startswith(results_io.DOWNSTREAM_PREFIX))
    names = dict.fromkeys(k.split("/")[1] for k in keys)
    found = []
    for name in names:
        prefix = f"{results_io.DOWNSTREAM_PREFIX}{name}/"
        metric = next((prefix + m for m in DOWNSTREAM_METRICS if prefix + m in keys), None)
        if metric:
            baseline = prefix + BASELINE_METRIC
            found.append((metric, baseline if baseline in keys else ""))
    return found


def plot_downstream(rows: Sequence[dict], path: str | Path) -> Path:
    """Per fine-tune (a row of panels): its metric vs the pre-training compute C and vs the
    pre-training validation loss; a line per model size N (colour), the mean majority
    baseline dashed. `rows`: results rows with N, C (or C_detailed), loss and ft/ columns."""
    metrics = downstream_metrics(rows)
    fig, axes = plt.subplots(
        len(metrics), 2, figsize=(11, 4.2 * len(metrics)), squeeze=False, sharey="row"
    )
    colors = _colors([r["N"] for r in rows])
    for (metric, baseline), (ax_c, ax_loss) in zip(metrics, axes, strict=True):
        scored = [r for r in rows if isinstance(r.get(metric), (int, float))]
        for n in sorted({r["N"] for r in scored}):
            of_size = sorted((r for r in scored if r["N"] == n), key=lambda r: _compute(r))
            ax_c.plot(
                [_compute(r) for r in of_size],
                [r[metric] for r in of_size],
                "o-",
                color=colors[n],
                label=f"N = {_count(n)}",
            )
            ax_loss.plot(
                [r["loss"] for r in of_size], [r[metric] for r in of_size], "o-", color=colors[n]
            )
        base = [r[baseline] for r in scored if baseline and r.get(baseline) is not None]
        for ax in (ax_c, ax_loss):
            if base:
                ax.axhline(np.mean(base), color="gray", ls="--", lw=1, label="majority class")
            ax.grid(True, which="both", alpha=0.3)
        name, label = metric.split("/")[1], metric.split("/", 2)[2]
        ax_c.set_xscale("log")
        ax_c.set_xlabel("pre-training compute C (FLOPs)")
        ax_c.set_ylabel(f"{name}: {label}")
        ax_loss.set_xlabel(f"pre-training validation {LOSS_LABEL}")
        ax_loss.invert_xaxis()  # better models to the right in both panels
        ax_c.set_title(f"fine-tune '{name}' vs pre-training compute", fontsize=10)
        ax_loss.set_title(f"fine-tune '{name}' vs pre-training loss", fontsize=10)
        ax_c.legend(fontsize=8, loc="best")
    fig.suptitle("Downstream: fine-tuned after each pre-training trial")
    fig.tight_layout()
    return _save(fig, path)


def _compute(row: dict) -> float:
    return float(row.get("C_detailed") or row["C"])


def plot_run(workdir: str | Path, path: str | Path | None = None) -> Path:
    """One training run's curves from its metrics.jsonl (default: WORKDIR/plots/run.png):
    train and validation loss vs tokens and vs FLOPs, learning rate and gradient norm."""
    workdir = storage.path(workdir)
    rows = metrics_lib.read_metrics(workdir / "metrics.jsonl")
    train, val = results_io.curve(rows), results_io.curve(rows, "val/loss")
    if len(train["step"]) + len(val["step"]) < 2:
        raise results_io.ResultsError(
            f"{workdir}/metrics.jsonl has fewer than 2 logged losses: nothing to plot yet"
        )
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    for ax, x, label in zip(
        axes[0], ("tokens", "flops"), ("tokens seen D", "training compute C (FLOPs)"), strict=True
    ):
        ax.plot(train[x], train["loss"], lw=1, color="C0", label="train")
        ax.plot(val[x], val["loss"], marker="o", ms=4, color="C3", label="validation")
        ax.set_xscale("log")
        ax.set_xlabel(label)
        ax.set_ylabel(LOSS_LABEL)
        ax.legend(fontsize=8)
    axes[0, 1].sharey(axes[0, 0])
    for ax, key, label in zip(
        axes[1], ("lr", "grad_norm"), ("learning rate", "gradient norm"), strict=True
    ):
        cv = results_io.curve(rows, key)
        ax.plot(cv["step"], cv["loss"], lw=1, color="C2")
        ax.set_xlabel("step")
        ax.set_ylabel(label)
    for ax in axes.flat:
        ax.grid(True, which="both", alpha=0.3)
    fig.suptitle(f"Training run {(workdir if storage.is_gcs(workdir) else workdir.resolve()).name}")
    fig.tight_layout()
    return _save(fig, path or workdir / results_io.PLOTS_DIR / "run.png")


def load_curves(sweep_dir: str | Path, rows: Sequence[dict]) -> list[dict]:
    """Training curves of the finished trials of a sweep, each tagged with its N."""
    curves = []
    for r in rows:
        if r.get("status") != "done" or not r.get("N"):
            continue
        cv = results_io.curve(
            metrics_lib.read_metrics(storage.path(sweep_dir) / r["name"] / "metrics.jsonl")
        )
        if len(cv["step"]) >= 2:
            curves.append({"name": r["name"], "N": float(r["N"]), "budget": r.get("budget"), **cv})
    return curves


def plot_sweep(sweep_dir: str | Path) -> list[Path]:
    """Draw every plot the sweep's results.csv and fit.json support into DIR/plots/."""
    sweep_dir = storage.path(sweep_dir)
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
                names=[r["name"] for r in done],
            )
        )
    if fits.get("backtest", {}).get("held_out"):
        paths.append(plot_backtest(fits["backtest"], out / "backtest.png"))
    if downstream_metrics(done):
        paths.append(plot_downstream(done, out / "downstream.png"))
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
