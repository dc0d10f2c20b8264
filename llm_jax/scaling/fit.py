"""Scaling-law fits on a results table: numpy and scipy only, nothing of JAX training.

The laws, each a function returning a JSON-able dict:

- `fit_power_law(x, loss)`: L(X) = E + A / X^alpha, X one of N, D, C (Kaplan et al. 2020,
  with the irreducible term E).
- `fit_envelope(curves)`: Chinchilla approach 1. The envelope of the training curves (the
  lowest loss reached at each FLOP value over all runs) gives N_opt(C) ∝ C^a and
  D_opt(C) ∝ C^b. As in approach 2, envelope points won by the smallest or the largest
  model that reaches that compute are left out of the a, b regressions (the optimum there
  is outside the grid), with a note; they stay in the envelope for L(C).
- `fit_isoflop(n, d, loss, budget)`: Chinchilla approach 2. Per IsoFLOP budget, a parabola
  in log N; its vertex is N_opt(C). Budgets whose lowest loss is at the edge of the size
  grid are dropped with a note (their optimum is outside the grid, so the vertex would be
  an extrapolation), as are those whose parabola has no vertex inside the grid.
- `fit_parametric(n, d, loss)`: Chinchilla approach 3. L(N, D) = E + A/N^alpha + B/D^beta,
  fitted as Hoffmann et al. (2022, appendix D.2) do: log L is modelled as
  LSE(a - alpha log N, b - beta log D, e) with A = e^a, B = e^b, E = e^e; the Huber loss
  (delta = 1e-3) of the log-loss residuals is *summed* over points (a mean makes the
  objective so small that L-BFGS stops early); L-BFGS starts from a grid of points and the
  best optimum is kept. Bootstrap refits give the intervals. `compute_optimal` turns the
  fit into the frontier N_opt(C) = G (C/6)^a, D_opt(C) = (C/6) / N_opt, with
  a = beta / (alpha + beta), b = alpha / (alpha + beta), G = (alpha A / (beta B))^(1/(alpha+beta)).

`main(argv)` is `llm-jax fit FILE [--law chinchilla|kaplan|isoflop] [--json]`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import scipy.optimize
import scipy.special
import scipy.stats

from llm_jax.errors import UserError
from llm_jax.scaling import results as results_io

HUBER_DELTA = 1e-3
# Hoffmann et al.'s grid of L-BFGS initialisations (appendix D.2).
E_GRID = (-1.0, -0.5, 0.0, 0.5, 1.0)
A_GRID = (0.0, 5.0, 10.0, 15.0, 20.0, 25.0)
EXPONENT_GRID = (0.0, 0.5, 1.0, 1.5, 2.0)


class FitError(UserError, ValueError):
    """The data cannot support the requested fit; the message says what is missing."""


# --- the Huber / log-sum-exp fitter shared by approach 3 and the single-variable laws -----


def _lse_terms(theta: np.ndarray, log_x: np.ndarray) -> np.ndarray:
    """Terms of the LSE model, [..., k+1, n]; theta = [e, a_1, alpha_1, ..., a_k, alpha_k]."""
    theta = np.asarray(theta, dtype=float)
    e = theta[..., :1, None] + np.zeros(log_x.shape[1])
    a = theta[..., 1::2, None]
    alpha = theta[..., 2::2, None]
    return np.concatenate([e, a - alpha * log_x], axis=-2)


def _huber(r: np.ndarray, delta: float) -> np.ndarray:
    abs_r = np.abs(r)
    return np.where(abs_r <= delta, 0.5 * r**2, delta * (abs_r - 0.5 * delta))


def _objective(theta: np.ndarray, log_x: np.ndarray, log_loss: np.ndarray, delta: float):
    """Summed Huber loss of log-loss residuals, and its gradient."""
    terms = _lse_terms(theta, log_x)  # [k+1, n]
    top = terms.max(axis=0)
    exp = np.exp(terms - top)
    total = exp.sum(axis=0)
    residual = top + np.log(total) - log_loss
    weights = exp / total  # d prediction / d term
    psi = np.clip(residual, -delta, delta)  # d huber / d residual
    grad = np.empty_like(theta)
    grad[0] = np.sum(psi * weights[0])
    grad[1::2] = np.sum(psi * weights[1:], axis=1)
    grad[2::2] = -np.sum(psi * weights[1:] * log_x, axis=1)
    return float(np.sum(_huber(residual, delta))), grad


def _screen(starts: np.ndarray, log_x, log_loss, delta: float, keep: int) -> np.ndarray:
    """The `keep` starting points with the lowest objective, evaluated all at once."""
    values = []
    for chunk in np.array_split(starts, max(1, len(starts) // 512)):
        terms = _lse_terms(chunk, log_x)  # [g, k+1, n]
        residual = scipy.special.logsumexp(terms, axis=1) - log_loss
        values.append(_huber(residual, delta).sum(axis=1))
    order = np.argsort(np.concatenate(values), kind="stable")
    return starts[order[:keep]]


def _minimize(
    starts: np.ndarray, log_x, log_loss, delta: float, maxiter: int = 2000
) -> tuple[np.ndarray, float]:
    best_theta, best_value = None, math.inf
    for start in starts:
        res = scipy.optimize.minimize(
            _objective,
            start,
            args=(log_x, log_loss, delta),
            jac=True,
            method="L-BFGS-B",
            options={"maxiter": maxiter, "ftol": 1e-15, "gtol": 1e-12},
        )
        if np.all(np.isfinite(res.x)) and res.fun < best_value:
            best_theta, best_value = res.x, float(res.fun)
    return best_theta, best_value


def _fit_lse(log_x, log_loss, *, n_starts, n_boot, seed, delta):
    """Best theta over the grid of starts, and bootstrap thetas ([n_boot, P])."""
    k = log_x.shape[0]
    grid = [E_GRID] + [A_GRID, EXPONENT_GRID] * k
    starts = np.array(list(itertools.product(*grid)), dtype=float)
    theta, value = _minimize(
        _screen(starts, log_x, log_loss, delta, n_starts), log_x, log_loss, delta
    )
    rng = np.random.default_rng(seed)
    boot = []
    n = log_loss.shape[0]
    for _ in range(n_boot):
        idx = rng.integers(0, n, n)
        # A resample's optimum lies near the full-data one: start there. Few points (a
        # small sweep) make flat valleys where L-BFGS crawls; the cap bounds the cost.
        boot.append(_minimize(theta[None], log_x[:, idx], log_loss[idx], delta, 200)[0])
    return theta, value, np.array(boot).reshape(n_boot, len(theta))


def _intervals(summaries: list[dict], level: float) -> dict[str, list[float]]:
    if not summaries:
        return {}
    out = {}
    for key in summaries[0]:
        values = np.array([s[key] for s in summaries], dtype=float)
        values = values[np.isfinite(values)]  # a, b, G are NaN where a resample has no optimum
        if len(values) >= len(summaries) / 2:
            out[key] = np.percentile(values, [50 * (1 - level), 50 * (1 + level)]).tolist()
    return out


def _positive(name: str, values) -> np.ndarray:
    arr = np.asarray(values, dtype=float)
    if arr.ndim != 1 or not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        raise FitError(f"column {name} must hold positive finite numbers")
    return arr


# --- single-variable power law (Kaplan) -----------------------------------------------------


def fit_power_law(
    x: Sequence[float],
    loss: Sequence[float],
    *,
    n_boot: int = 100,
    level: float = 0.95,
    seed: int = 0,
    n_starts: int = 4,
    delta: float = HUBER_DELTA,
) -> dict:
    """Fit L(X) = E + A / X^alpha (Huber on log-loss, L-BFGS from a grid), with intervals."""
    x, loss = _positive("X", x), _positive("loss", loss)
    if len(np.unique(x)) < 3:
        raise FitError(f"a power law needs at least 3 distinct X values (got {len(np.unique(x))})")
    log_x = np.log(x)[None]
    theta, value, boot = _fit_lse(
        log_x, np.log(loss), n_starts=n_starts, n_boot=n_boot, seed=seed, delta=delta
    )

    def summary(t):
        return {"E": math.exp(t[0]), "A": math.exp(t[1]), "alpha": float(t[2])}

    return {
        "law": "L(X) = E + A / X^alpha",
        **summary(theta),
        "ci": _intervals([summary(t) for t in boot], level),
        "level": level,
        "n_points": int(len(x)),
        "objective": value,
    }


# --- Chinchilla approach 3 -------------------------------------------------------------------


def compute_optimal(fit: dict, compute: Sequence[float] | float) -> dict[str, np.ndarray]:
    """Compute-optimal N, D and tokens per parameter at FLOP budgets C (C = 6 N D)."""
    c6 = np.asarray(compute, dtype=float) / 6.0
    alpha, beta = fit["alpha"], fit["beta"]
    g = (alpha * fit["A"] / (beta * fit["B"])) ** (1.0 / (alpha + beta))
    n_opt = g * c6 ** (beta / (alpha + beta))
    d_opt = c6 / n_opt
    return {
        "C": np.asarray(compute, float),
        "N_opt": n_opt,
        "D_opt": d_opt,
        "tokens_per_param": d_opt / n_opt,
    }


def _parametric_summary(theta: np.ndarray) -> dict[str, float]:
    e, a, alpha, b, beta = (float(v) for v in theta)
    s = {"E": math.exp(e), "A": math.exp(a), "B": math.exp(b), "alpha": alpha, "beta": beta}
    if alpha > 0 and beta > 0:
        s["a"] = beta / (alpha + beta)
        s["b"] = alpha / (alpha + beta)
        s["G"] = (alpha * s["A"] / (beta * s["B"])) ** (1.0 / (alpha + beta))
    else:  # no interior optimum: loss does not fall with one of N, D
        s["a"] = s["b"] = s["G"] = math.nan
    return s


def fit_parametric(
    n: Sequence[float],
    d: Sequence[float],
    loss: Sequence[float],
    *,
    n_boot: int = 100,
    level: float = 0.95,
    seed: int = 0,
    n_starts: int = 8,
    delta: float = HUBER_DELTA,
    frontier: Sequence[float] | None = None,
) -> dict:
    """Chinchilla approach 3: L(N, D) = E + A/N^alpha + B/D^beta, with bootstrap intervals.

    All 4,500 points of the paper's start grid are scored in one vectorised pass and L-BFGS
    runs from the best `n_starts` of them (the rest lie in the same basins, farther away;
    on synthetic data most of the best 16 reach the same optimum). Bootstrap refits start
    from the full-data optimum. `frontier`: FLOP budgets at which to report N_opt, D_opt
    and D/N (default: the decades from the data's smallest 6ND to 100x its largest).
    """
    n, d, loss = _positive("N", n), _positive("D", d), _positive("loss", loss)
    if len(loss) < 5 or len(np.unique(n)) < 2 or len(np.unique(d)) < 2:
        raise FitError(
            "the parametric fit needs >= 5 points with at least 2 distinct N and "
            f"2 distinct D (got {len(loss)} points)"
        )
    log_x = np.log(np.vstack([n, d]))
    theta, value, boot = _fit_lse(
        log_x, np.log(loss), n_starts=n_starts, n_boot=n_boot, seed=seed, delta=delta
    )
    out = {"law": "L(N, D) = E + A/N^alpha + B/D^beta", **_parametric_summary(theta)}
    out["ci"] = _intervals([_parametric_summary(t) for t in boot], level)
    out.update(
        level=level, n_points=int(len(loss)), n_boot=n_boot, huber_delta=delta, objective=value
    )
    if math.isfinite(out["a"]):
        if frontier is None:
            c = 6 * n * d
            frontier = 10.0 ** np.arange(
                math.floor(np.log10(c.min())), math.ceil(np.log10(c.max())) + 3
            )
        opt = compute_optimal(out, frontier)
        out["frontier"] = [
            dict(zip(opt, vals, strict=True)) for vals in zip(*opt.values(), strict=True)
        ]
    return out


def predict(fit: dict, n: Sequence[float], d: Sequence[float]) -> np.ndarray:
    """Loss predicted by a parametric fit at (N, D)."""
    n, d = np.asarray(n, float), np.asarray(d, float)
    return fit["E"] + fit["A"] / n ** fit["alpha"] + fit["B"] / d ** fit["beta"]


# --- Chinchilla approaches 1 and 2: optima regressed on C ------------------------------------


def _loglog(c: np.ndarray, y: np.ndarray, level: float) -> tuple[float, float, list | None]:
    """Slope and intercept of log y on log C, and the slope's t-interval (>= 3 points)."""
    reg = scipy.stats.linregress(np.log(c), np.log(y))
    ci = None
    if len(c) >= 3:
        half = scipy.stats.t.ppf(0.5 + level / 2, len(c) - 2) * reg.stderr
        ci = [reg.slope - half, reg.slope + half]
    return float(reg.slope), float(reg.intercept), ci


def group_budgets(c: Sequence[float], rel_tol: float = 0.05) -> np.ndarray:
    """Label each run with its IsoFLOP budget: C values within rel_tol of each other share one."""
    c = np.asarray(c, dtype=float)
    labels = np.empty_like(c)
    order = np.argsort(c)
    start = order[0]
    for i in order:
        if c[i] > c[start] * (1 + rel_tol):
            start = i
        labels[i] = c[start]
    return labels


def fit_isoflop(
    n: Sequence[float],
    d: Sequence[float],
    loss: Sequence[float],
    budget: Sequence[float],
    *,
    level: float = 0.95,
) -> dict:
    """Chinchilla approach 2: a parabola in log N per budget, its vertex N_opt(C).

    D_opt at the vertex comes from the budget's own log D - log N line, so it holds for any
    FLOP count convention the sweep used. Returns a, b (N_opt ∝ C^a, D_opt ∝ C^b), per-budget
    details, and `notes` for every budget dropped.
    """
    n, d, loss = _positive("N", n), _positive("D", d), _positive("loss", loss)
    budget = _positive("budget", budget)
    budgets, notes = [], []
    for c in np.unique(budget):
        sel = budget == c
        order = np.argsort(n[sel])
        bn, bd, bl = n[sel][order], d[sel][order], loss[sel][order]
        entry = {
            "C": float(c),
            "N": bn.tolist(),
            "D": bd.tolist(),
            "loss": bl.tolist(),
            "kept": False,
        }
        budgets.append(entry)
        if len(np.unique(bn)) < 3:
            notes.append(
                f"budget C={c:.3g}: dropped, {len(np.unique(bn))} sizes (a parabola needs 3)"
            )
            continue
        best = int(np.argmin(bl))
        if best in (0, len(bl) - 1):
            side = "smallest" if best == 0 else "largest"
            fix = "smaller" if best == 0 else "larger"
            notes.append(
                f"budget C={c:.3g}: dropped, lowest loss at the {side} model "
                f"(N={bn[best]:.3g}), so the optimum lies outside the grid; "
                f"add {fix} sizes"
            )
            continue
        log_n = np.log(bn)
        coef = np.polyfit(log_n, bl, 2)
        if coef[0] <= 0:
            notes.append(f"budget C={c:.3g}: dropped, the parabola opens downward")
            continue
        vertex = -coef[1] / (2 * coef[0])
        if not log_n[0] <= vertex <= log_n[-1]:
            notes.append(
                f"budget C={c:.3g}: dropped, the parabola's vertex (N="
                f"{math.exp(vertex):.3g}) lies outside the sizes tried: the profile "
                "is not U-shaped; add sizes around its lowest point"
            )
            continue
        line = np.polyfit(log_n, np.log(bd), 1)
        entry.update(
            kept=True,
            parabola=coef.tolist(),
            N_opt=math.exp(vertex),
            D_opt=math.exp(np.polyval(line, vertex)),
            loss_opt=float(np.polyval(coef, vertex)),
        )
    out = {
        "law": "N_opt ∝ C^a, D_opt ∝ C^b (IsoFLOP parabolas)",
        "budgets": budgets,
        "notes": notes,
        "level": level,
        "a": None,
        "b": None,
    }
    kept = [b for b in budgets if b["kept"]]
    if len(kept) < 2:
        notes.append(f"{len(kept)} usable budget(s): a and b need at least 2")
        return out
    c = np.array([b["C"] for b in kept])
    out["a"], out["log_G_n"], a_ci = _loglog(c, np.array([b["N_opt"] for b in kept]), level)
    out["b"], out["log_G_d"], b_ci = _loglog(c, np.array([b["D_opt"] for b in kept]), level)
    out["ci"] = {k: v for k, v in (("a", a_ci), ("b", b_ci)) if v is not None}
    return out


def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    if window <= 1 or len(values) < window:
        return values
    kernel = np.ones(window) / window
    padded = np.concatenate([np.full(window - 1, values[0]), values])
    return np.convolve(padded, kernel, mode="valid")


def fit_envelope(
    curves: Sequence[dict],
    *,
    n_grid: int = 60,
    min_runs: int = 2,
    smooth: int = 5,
    level: float = 0.95,
) -> dict:
    """Chinchilla approach 1: the lowest loss at each FLOP value over all runs.

    `curves`: one dict per run with `N` and arrays `flops`, `tokens`, `loss` along training.
    The loss is smoothed with a trailing mean over `smooth` logged points. At `n_grid`
    log-spaced FLOP values covered by at least `min_runs` runs, the run with the lowest
    (interpolated) loss gives N_opt and its tokens D_opt. A point whose winner is the
    smallest or the largest of the covering models is marked `interior: False`: the
    optimum lies outside the sizes there (at low compute the smallest model always wins),
    so log-log regressions over the interior points only give a and b. Every point stays
    in the returned envelope (C, loss), for L(C) fits and plots.
    """
    runs = []
    for cv in curves:
        f, t, lo = (np.asarray(cv[k], dtype=float) for k in ("flops", "tokens", "loss"))
        ok = np.isfinite(f) & np.isfinite(lo) & (f > 0)
        if ok.sum() >= 2:
            runs.append((float(cv["N"]), np.log(f[ok]), t[ok], _smooth(lo[ok], smooth)))
    if len({r[0] for r in runs}) < 2:
        raise FitError("the envelope needs training curves of at least 2 model sizes")
    lo_c, hi_c = min(r[1][0] for r in runs), max(r[1][-1] for r in runs)
    envelope = []
    for log_c in np.linspace(lo_c, hi_c, n_grid):
        covering = [r for r in runs if r[1][0] <= log_c <= r[1][-1]]
        if len(covering) < min_runs:
            continue
        losses = [np.interp(log_c, r[1], r[3]) for r in covering]
        win = covering[int(np.argmin(losses))]
        sizes = [r[0] for r in covering]
        envelope.append(
            {
                "C": math.exp(log_c),
                "N": win[0],
                "D": float(np.interp(log_c, win[1], win[2])),
                "loss": float(min(losses)),
                "interior": min(sizes) < win[0] < max(sizes),
            }
        )
    inner = [p for p in envelope if p["interior"]]
    if len(inner) < 3:
        raise FitError(
            f"only {len(inner)} of {len(envelope)} envelope points have their best "
            "run strictly inside the model sizes reaching that compute (3 needed); "
            "add sizes on both sides of the optimum, or runs whose FLOPs overlap"
        )
    c = np.array([p["C"] for p in inner])
    out = {
        "law": "N_opt ∝ C^a, D_opt ∝ C^b (envelope of training curves)",
        "envelope": envelope,
        "level": level,
        "notes": [],
    }
    if len(inner) < len(envelope):
        out["notes"].append(
            f"{len(envelope) - len(inner)} of {len(envelope)} envelope points left out of a "
            "and b: their best run was the smallest or largest model reaching that compute, "
            "so the optimum lies outside the grid there"
        )
    out["a"], out["log_G_n"], a_ci = _loglog(c, np.array([p["N"] for p in inner]), level)
    out["b"], out["log_G_d"], b_ci = _loglog(c, np.array([p["D"] for p in inner]), level)
    out["ci"] = {k: v for k, v in (("a", a_ci), ("b", b_ci)) if v is not None}
    return out


# --- the command line ------------------------------------------------------------------------


def load_points(path: str | Path, n_column: str = "N") -> dict[str, np.ndarray]:
    """N, D, loss (and C, budget where present) of the finished rows of a results table."""
    rows = [r for r in results_io.read_results(path) if r.get("status") in (None, "done")]
    if not rows:
        raise FitError(f"{path}: no finished rows to fit")
    missing = [k for k in (n_column, "D", "loss") if k not in rows[0]]
    if missing:
        raise FitError(
            f"{path} has no column(s) {', '.join(missing)}; a results table needs "
            f"columns N, D, loss (it has: {', '.join(rows[0])})"
        )
    rows = [
        r for r in rows if all(isinstance(r.get(k), (int, float)) for k in (n_column, "D", "loss"))
    ]
    points = {
        "N": np.array([r[n_column] for r in rows], float),
        "D": np.array([r["D"] for r in rows], float),
        "loss": np.array([r["loss"] for r in rows], float),
    }
    for key in ("C", "budget"):
        if rows and all(isinstance(r.get(key), (int, float)) for r in rows):
            points[key] = np.array([r[key] for r in rows], float)
    return points


def run_law(
    points: dict[str, np.ndarray], law: str, *, n_boot: int = 100, level: float = 0.95
) -> dict:
    """Fit `law` (chinchilla | kaplan | isoflop) to loaded points."""
    if law == "chinchilla":
        return fit_parametric(points["N"], points["D"], points["loss"], n_boot=n_boot, level=level)
    if law == "isoflop":
        budget = points.get("budget")
        if budget is None:
            budget = group_budgets(points.get("C", 6 * points["N"] * points["D"]))
        return fit_isoflop(points["N"], points["D"], points["loss"], budget, level=level)
    out = {}
    for key in ("N", "D", "C"):
        if key in points and len(np.unique(points[key])) >= 3:
            out[key] = fit_power_law(points[key], points["loss"], n_boot=n_boot, level=level)
    if not out:
        raise FitError("no column among N, D, C has 3 distinct values to fit L(X)")
    return out


def format_fit(law: str, fit: dict) -> str:
    """A readable table of a fit's estimates and intervals."""
    if law == "kaplan":
        return "\n\n".join(format_fit(f"L({k})", v) for k, v in fit.items())
    pct = f"{100 * fit.get('level', 0.95):.0f}%"
    lines = [f"{law}: {fit['law']}"]
    if "n_points" in fit:
        lines[0] += f"  ({fit['n_points']} points)"
    lines.append(f"  {'':8s}{'estimate':>12s}   {pct} interval")
    ci = fit.get("ci", {})
    for key in ("E", "A", "B", "alpha", "beta", "a", "b", "G"):
        if fit.get(key) is None:
            continue
        interval = "[{:.4g}, {:.4g}]".format(*ci[key]) if key in ci else "-"
        lines.append(f"  {key:8s}{fit[key]:12.4g}   {interval}")
    if fit.get("frontier"):
        lines.append("  compute-optimal frontier (C = 6ND):")
        lines.append(f"  {'C':>10s}{'N_opt':>11s}{'D_opt':>11s}{'D/N':>8s}")
        for p in fit["frontier"]:
            lines.append(
                f"  {p['C']:10.3g}{p['N_opt']:11.3g}{p['D_opt']:11.3g}{p['tokens_per_param']:8.1f}"
            )
    for b in fit.get("budgets", []):
        if b["kept"]:
            lines.append(
                f"  budget C={b['C']:.3g}: N_opt={b['N_opt']:.3g} "
                f"D_opt={b['D_opt']:.3g} loss={b['loss_opt']:.4f}"
            )
    lines += [f"  note: {n}" for n in fit.get("notes", [])]
    return "\n".join(lines)


def update_fit_json(path: str | Path, law: str, fit: dict) -> None:
    """Set fit.json[law] = fit, keeping the other laws already stored there."""
    stored = results_io.read_json(path) or {}
    stored[law] = fit
    results_io.write_json(path, stored)
