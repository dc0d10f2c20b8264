"""Scaling-law fits on a results table: numpy (scipy for t-quantiles), nothing of JAX.

The laws, each a function returning a JSON-able dict:

- `fit_power_law(x, loss)`: L(X) = E + A / X^alpha, X one of N, D, C (Kaplan et al. 2020,
  with the irreducible term E); `fit_kaplan(points)` fits it to the lowest loss at each
  N, D and budget of a table.
- `fit_envelope(curves)`: Chinchilla approach 1. The envelope of the training curves (the
  lowest loss reached at each FLOP value over all runs) gives N_opt(C) ∝ C^a and
  D_opt(C) ∝ C^b. As in approach 2, envelope points won by the smallest or the largest
  model that reaches that compute are left out of the a, b regressions (the optimum there
  is outside the grid), with a note; they stay in the envelope for L(C).
- `fit_isoflop(n, d, loss, budget)`: Chinchilla approach 2. Per IsoFLOP budget, a parabola
  in log N; its vertex is N_opt(C). Budgets whose lowest loss is at the edge of the size
  grid are dropped with a note (their optimum is outside the grid, so the vertex would be
  an extrapolation), as are those whose parabola has no vertex inside the grid or fits
  poorly (`POOR_FIT_R2`).
- `fit_parametric(n, d, loss)`: Chinchilla approach 3. L(N, D) = E + A/N^alpha + B/D^beta,
  fitted as Hoffmann et al. (2022, appendix D.2) do: log L is modelled as
  LSE(a - alpha log N, b - beta log D, e) with A = e^a, B = e^b, E = e^e; the Huber loss
  (delta = 1e-3) of the log-loss residuals is *summed* over points (a mean makes the
  objective so small that L-BFGS stops early); L-BFGS starts from the best points of
  their grid and the best optimum is kept. Bootstrap refits give the intervals.
  `compute_optimal` turns the fit into the frontier N_opt(C) = G (C/6)^a,
  D_opt(C) = (C/6) / N_opt, with a = beta / (alpha + beta), b = alpha / (alpha + beta),
  G = (alpha A / (beta B))^(1/(alpha+beta)).

Every L-BFGS run of one fit (the starts, then the bootstrap refits) advances together in
`_minimize`, one vectorised numpy pass per iteration. `load_points`, `run_law` and
`format_fit` serve `llm-jax fit` (llm_jax/cli/fit.py).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import threadpoolctl

from llm_jax.errors import UserError
from llm_jax.scaling import results as results_io

HUBER_DELTA = 1e-3
# Hoffmann et al.'s grid of L-BFGS initialisations (appendix D.2).
E_GRID = (-1.0, -0.5, 0.0, 0.5, 1.0)
A_GRID = (0.0, 5.0, 10.0, 15.0, 20.0, 25.0)
EXPONENT_GRID = (0.0, 0.5, 1.0, 1.5, 2.0)
MAXITER = 2000  # L-BFGS iterations per fit (the fits here stop after 100-300)


class FitError(UserError, ValueError):
    """The data cannot support the requested fit; the message says what is missing."""


# --- the Huber / log-sum-exp fitter shared by approach 3 and the single-variable laws -----


def _lse_terms(theta_bp: np.ndarray, log_x: np.ndarray) -> np.ndarray:
    """Terms of the LSE model, [B, k+1, n]; theta rows: [e, a_1, alpha_1, ..., a_k, alpha_k]."""
    theta_bp = np.asarray(theta_bp, dtype=float)
    terms = np.empty((len(theta_bp), log_x.shape[0] + 1, log_x.shape[1]))
    terms[:, 0] = theta_bp[:, :1]
    np.multiply(theta_bp[:, 2::2, None], log_x, out=terms[:, 1:])
    np.subtract(theta_bp[:, 1::2, None], terms[:, 1:], out=terms[:, 1:])
    return terms


def _huber(r: np.ndarray, delta: float) -> np.ndarray:
    abs_r = np.abs(r)
    return np.where(abs_r <= delta, 0.5 * r**2, delta * (abs_r - 0.5 * delta))


def _objective(theta_bp, log_x, log_loss, weight_bn, delta: float):
    """Weighted, summed Huber loss of log-loss residuals of B fits, and its gradient.

    theta_bp: [B, P]; log_x: [k, n]; log_loss: [n]; weight_bn: [B, n] (a bootstrap
    resample is the full data weighted by how often each point was drawn).
    Returns values [B] and gradients [B, P].
    """
    terms = _lse_terms(theta_bp, log_x)  # [B, k+1, n], reused in place below
    top_bn = terms.max(axis=1)
    terms -= top_bn[:, None]
    np.exp(terms, out=terms)
    total_bn = terms.sum(axis=1)
    residual_bn = top_bn + np.log(total_bn) - log_loss
    # d loss / d term = d huber / d residual (clipped residual) x the term's softmax share
    psi_bn = weight_bn * np.minimum(np.maximum(residual_bn, -delta), delta)
    dterm = terms
    dterm *= (psi_bn / total_bn)[:, None]
    grad_bp = np.empty_like(theta_bp)
    grad_bp[:, 0] = dterm[:, 0].sum(axis=-1)
    grad_bp[:, 1::2] = dterm[:, 1:].sum(axis=-1)
    grad_bp[:, 2::2] = -(dterm[:, 1:] * log_x).sum(axis=-1)
    value_b = (weight_bn * _huber(residual_bn, delta)).sum(axis=-1)
    return value_b, grad_bp


def _screen(starts: np.ndarray, log_x, log_loss, delta: float, keep: int) -> np.ndarray:
    """The `keep` starting points with the lowest objective, evaluated all at once."""
    values = []
    for chunk in np.array_split(starts, max(1, len(starts) // 512)):
        terms = _lse_terms(chunk, log_x)  # [g, k+1, n]
        top = terms.max(axis=1)
        np.exp(terms - top[:, None], out=terms)
        residual = top + np.log(terms.sum(axis=1)) - log_loss
        values.append(_huber(residual, delta).sum(axis=1))
    order = np.argsort(np.concatenate(values), kind="stable")
    return starts[order[:keep]]


def _minimize(
    theta_bp, log_x, log_loss, weight_bn, delta: float, maxiter: int, memory: int = 10
) -> tuple[np.ndarray, np.ndarray]:
    """Minimise B independent fits at once: L-BFGS with a backtracking (Armijo) line search.

    One numpy pass evaluates every fit, so B fits cost little more than one (scipy's
    L-BFGS-B, one fit per call, spent its time in per-iteration Python overhead). Each fit
    stops, as scipy's does with ftol=1e-15, when a step no longer lowers its objective.
    Returns the thetas [B, P] and objective values [B].
    """
    x = np.array(theta_bp, dtype=float)
    f, g = _objective(x, log_x, log_loss, weight_bn, delta)
    s_mbp = np.zeros((memory, *x.shape))
    y_mbp = np.zeros((memory, *x.shape))
    rho_mb = np.zeros((memory, len(x)))  # 0 marks an empty or skipped pair: a no-op below
    gamma = 1.0 / np.maximum(1.0, np.abs(g).max(axis=1))  # first step: at most 1 per param
    active = np.isfinite(f)
    for it in range(maxiter):
        if not active.any():
            break
        d = _two_loop(g, s_mbp, y_mbp, rho_mb, gamma, it)
        slope = (g * d).sum(axis=1)
        downhill = slope < 0
        d = np.where(downhill[:, None], d, -g)  # a stale curvature pair: steepest descent
        slope = np.where(downhill, slope, -(g * g).sum(axis=1))
        step = np.where(active, 1.0, 0.0)
        pending = active.copy()
        x_new, f_new, g_new = x.copy(), f.copy(), g.copy()
        for _ in range(40):  # halve the step until it lowers f enough
            trial = x + step[:, None] * d
            f_t, g_t = _objective(trial[pending], log_x, log_loss, weight_bn[pending], delta)
            ok = np.isfinite(f_t) & (f_t <= f[pending] + 1e-4 * step[pending] * slope[pending])
            idx = np.flatnonzero(pending)
            x_new[idx[ok]], f_new[idx[ok]], g_new[idx[ok]] = trial[idx[ok]], f_t[ok], g_t[ok]
            pending[idx[ok]] = False
            step[pending] *= 0.5
            if not pending.any():
                break
        moved = active & ~pending
        progress = (f - f_new) / np.maximum(np.maximum(np.abs(f), np.abs(f_new)), 1.0)
        active = moved & (progress > 1e-15) & (np.abs(g_new).max(axis=1) > 1e-12)
        s, y = x_new - x, g_new - g
        sy = (s * y).sum(axis=1)
        good = moved & (sy > 1e-12 * (y * y).sum(axis=1))
        slot = it % memory
        s_mbp[slot], y_mbp[slot] = s, y
        rho_mb[slot] = np.where(good, 1.0 / np.where(good, sy, 1.0), 0.0)
        gamma = np.where(good, sy / np.maximum((y * y).sum(axis=1), 1e-300), gamma)
        x, f, g = x_new, f_new, g_new
    return x, f


def _two_loop(g, s_mbp, y_mbp, rho_mb, gamma, it: int) -> np.ndarray:
    """The L-BFGS direction -H g of every fit from its stored (s, y) pairs, newest first."""
    memory = len(rho_mb)
    order = [(it - 1 - j) % memory for j in range(min(it, memory))]
    q = g.copy()
    alpha = {}
    for j in order:
        alpha[j] = rho_mb[j] * (s_mbp[j] * q).sum(axis=1)
        q -= alpha[j][:, None] * y_mbp[j]
    r = gamma[:, None] * q
    for j in reversed(order):
        beta = rho_mb[j] * (y_mbp[j] * r).sum(axis=1)
        r += s_mbp[j] * (alpha[j] - beta)[:, None]
    return -r


def _fit_lse(log_x, log_loss, *, n_starts, n_boot, seed, delta):
    """Best theta over the grid of starts, and bootstrap thetas ([n_boot, P])."""
    k, n = log_x.shape
    grid = [E_GRID] + [A_GRID, EXPONENT_GRID] * k
    starts = np.array(list(itertools.product(*grid)), dtype=float)
    with threadpoolctl.threadpool_limits(1):  # tiny arrays: BLAS threads only contend
        screened = _screen(starts, log_x, log_loss, delta, n_starts)
        thetas, values = _minimize(
            screened, log_x, log_loss, np.ones((len(screened), n)), delta, MAXITER
        )
        best = int(np.argmin(np.where(np.isfinite(values), values, np.inf)))
        theta, value = thetas[best], float(values[best])
        # A resample is the data weighted by how often each point was drawn; its optimum
        # lies near the full-data one, so every refit starts there.
        idx = np.random.default_rng(seed).integers(0, n, (n_boot, n))
        weight_bn = np.zeros((n_boot, n))
        np.add.at(weight_bn, (np.arange(n_boot)[:, None], idx), 1.0)
        boot, _ = _minimize(np.tile(theta, (n_boot, 1)), log_x, log_loss, weight_bn, delta, MAXITER)
    return theta, value, boot


def _intervals(summaries: list[dict], level: float) -> dict[str, list[float]]:
    if not summaries:
        return {}
    out = {}
    for key in summaries[0]:
        values = np.array([s[key] for s in summaries], dtype=float)
        values = values[np.isfinite(values)]  # NaN/inf where a resample has no optimum
        if len(values) >= len(summaries) / 2:
            out[key] = np.percentile(values, [50 * (1 - level), 50 * (1 + level)]).tolist()
    return out


def _exp(v: float) -> float:
    """e^v, inf past float range: a degenerate resample must not abort the whole fit."""
    return math.exp(v) if v < 709.0 else math.inf


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
    name: str = "X",
) -> dict:
    """Fit L(X) = E + A / X^alpha (Huber on log-loss, L-BFGS from a grid), with intervals;
    `name` is X's name in the returned law."""
    x, loss = _positive("X", x), _positive("loss", loss)
    if len(np.unique(x)) < 3:
        raise FitError(f"a power law needs at least 3 distinct X values (got {len(np.unique(x))})")
    log_x = np.log(x)[None]
    theta, value, boot = _fit_lse(
        log_x, np.log(loss), n_starts=n_starts, n_boot=n_boot, seed=seed, delta=delta
    )

    def summary(t):
        return {"E": _exp(t[0]), "A": _exp(t[1]), "alpha": float(t[2])}

    exact = len(np.unique(x)) <= len(theta)  # the curve passes through every point
    return {
        "law": f"L({name}) = E + A / {name}^alpha",
        **summary(theta),
        "ci": {} if exact else _intervals([summary(t) for t in boot], level),
        "notes": [f"{len(x)} points for 3 parameters: an exact fit, no interval"] if exact else [],
        "level": level,
        "n_points": int(len(x)),
        "n_boot": n_boot,
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
    s = {"E": _exp(e), "A": _exp(a), "B": _exp(b), "alpha": alpha, "beta": beta}
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
    kwargs = dict(n_boot=n_boot, level=level, seed=seed, n_starts=n_starts, delta=delta)
    return _parametric(n, d, loss, frontier=frontier, **kwargs)[0]


def _parametric(
    n, d, loss, *, n_boot, level, seed, n_starts=8, delta=HUBER_DELTA, frontier=None
) -> tuple[dict, list[dict]]:
    """`fit_parametric`, and the summaries of its bootstrap refits (for backtests)."""
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
    summaries = [_parametric_summary(t) for t in boot]
    out["ci"] = _intervals(summaries, level)
    # N_opt = G (C/6)^a of each resample with an optimum: the frontier's bootstrap band.
    out["frontier_boot"] = [
        [s["G"], s["a"]] for s in summaries if math.isfinite(s["a"]) and math.isfinite(s["G"])
    ]
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
    return out, summaries


def predict(fit: dict, n: Sequence[float], d: Sequence[float]) -> np.ndarray:
    """Loss predicted by a parametric fit at (N, D)."""
    n, d = np.asarray(n, float), np.asarray(d, float)
    return fit["E"] + fit["A"] / n ** fit["alpha"] + fit["B"] / d ** fit["beta"]


# --- Chinchilla approaches 1 and 2: optima regressed on C ------------------------------------


def _loglog(c: np.ndarray, y: np.ndarray, level: float) -> tuple[float, float, list | None]:
    """Slope and intercept of log y on log C, and the slope's t-interval (>= 3 points)."""
    x, y = np.log(c), np.log(y)
    dx = x - x.mean()
    slope = float((dx * (y - y.mean())).sum() / (dx * dx).sum())
    intercept = float(y.mean() - slope * x.mean())
    ci = None
    if len(c) >= 3:
        residual = y - intercept - slope * x
        stderr = math.sqrt((residual * residual).sum() / (len(c) - 2) / (dx * dx).sum())
        import scipy.special  # ~0.3 s to import: only the laws with t-intervals pay it

        half = float(scipy.special.stdtrit(len(c) - 2, 0.5 + level / 2)) * stderr
        ci = [slope - half, slope + half]
    return slope, intercept, ci


def loglog_band(c, y, c_line, level: float = 0.95) -> tuple[np.ndarray, np.ndarray] | None:
    """Pointwise t-band of the log-log line through (c, y), evaluated at c_line; None with
    fewer than 3 points (a line through 2 points has no error estimate)."""
    if len(c) < 3:
        return None
    import scipy.special  # ~0.3 s to import: only plots and t-intervals pay it

    x, logy, x_line = np.log(c), np.log(y), np.log(c_line)
    dx = x - x.mean()
    slope = (dx * (logy - logy.mean())).sum() / (dx * dx).sum()
    fitted = logy.mean() + slope * (x_line - x.mean())
    residual = logy - logy.mean() - slope * dx
    s = math.sqrt((residual**2).sum() / (len(c) - 2))
    half = float(scipy.special.stdtrit(len(c) - 2, 0.5 + level / 2)) * s
    half = half * np.sqrt(1 / len(c) + (x_line - x.mean()) ** 2 / (dx * dx).sum())
    return np.exp(fitted - half), np.exp(fitted + half)


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


POOR_FIT_R2 = 0.9  # an IsoFLOP parabola explaining less of its budget's loss is a poor fit


def _parabola_note(c: float, bn, bl, coef, vertex: float, r2: float) -> str | None:
    """Why a budget's parabola cannot give its optimum, or None when it can."""
    if coef[0] <= 0:
        return f"budget C={c:.3g}: dropped, the parabola opens downward"
    if not math.log(bn[0]) <= vertex <= math.log(bn[-1]):
        return (
            f"budget C={c:.3g}: dropped, the parabola's vertex (N={math.exp(vertex):.3g}) "
            "lies outside the sizes tried: the profile is not U-shaped; add sizes around "
            "its lowest point"
        )
    loss_opt = float(np.polyval(coef, vertex))
    rms = math.sqrt(float(((bl - np.polyval(coef, np.log(bn))) ** 2).mean()))
    if r2 < POOR_FIT_R2:
        why = f"R² {r2:.2f} < {POOR_FIT_R2}"
    elif loss_opt > bl.min() + 2 * rms:
        why = f"its minimum {loss_opt:.4f} lies above the run at {bl.min():.4f}"
    else:
        return None
    return f"budget C={c:.3g}: poor parabola fit ({why}), left out of a and b"


def _isoflop_budget(c: float, bn, bd, bl) -> tuple[dict, str | None]:
    """One budget's parabola, vertex and R² (sizes sorted); a note when it is not kept."""
    entry = {"C": float(c), "N": bn.tolist(), "D": bd.tolist(), "loss": bl.tolist()}
    entry.update(kept=False, poor_fit=False)
    if len(np.unique(bn)) < 3:
        return entry, f"budget C={c:.3g}: dropped, {len(np.unique(bn))} sizes (a parabola needs 3)"
    best = int(np.argmin(bl))
    if best in (0, len(bl) - 1):
        side, fix = ("smallest", "smaller") if best == 0 else ("largest", "larger")
        return entry, (
            f"budget C={c:.3g}: dropped, lowest loss at the {side} model "
            f"(N={bn[best]:.3g}), so the optimum lies outside the grid; add {fix} sizes"
        )
    log_n = np.log(bn)
    coef = np.polyfit(log_n, bl, 2)
    residual = bl - np.polyval(coef, log_n)
    r2 = 1.0 - float((residual**2).sum() / max(((bl - bl.mean()) ** 2).sum(), 1e-300))
    vertex = -coef[1] / (2 * coef[0]) if coef[0] != 0 else math.inf
    entry.update(parabola=coef.tolist(), r2=r2)
    note = _parabola_note(c, bn, bl, coef, vertex, r2)
    if note is None or "poor" in note:
        line = np.polyfit(log_n, np.log(bd), 1)
        entry.update(
            kept=note is None,
            poor_fit=note is not None,
            N_opt=math.exp(vertex),
            D_opt=math.exp(np.polyval(line, vertex)),
            loss_opt=float(np.polyval(coef, vertex)),
        )
    return entry, note


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
    FLOP count convention the sweep used. A budget is left out of a and b, with a note,
    when its parabola cannot locate the optimum: fewer than 3 sizes, lowest loss at an
    edge size, no vertex inside the sizes, or a poor fit (R² < POOR_FIT_R2, or the
    fitted minimum above the lowest observed loss by more than twice the parabola's RMS
    residual: the star would sit above a run; such a budget keeps its vertex, marked
    `poor_fit`, for plots). Returns a, b (N_opt ∝ C^a, D_opt ∝ C^b), per-budget details
    (with R²) and the notes.
    """
    n, d, loss = _positive("N", n), _positive("D", d), _positive("loss", loss)
    budget = _positive("budget", budget)
    budgets, notes = [], []
    for c in np.unique(budget):
        sel = budget == c
        order = np.argsort(n[sel])
        entry, note = _isoflop_budget(c, n[sel][order], d[sel][order], loss[sel][order])
        budgets.append(entry)
        if note:
            notes.append(note)
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
    if len(kept) == 2:
        notes.append("2 usable budgets: a and b are a line through 2 points, with no interval")
    c = np.array([b["C"] for b in kept])
    out["a"], out["log_G_n"], a_ci = _loglog(c, np.array([b["N_opt"] for b in kept]), level)
    out["b"], out["log_G_d"], b_ci = _loglog(c, np.array([b["D_opt"] for b in kept]), level)
    out["ci"] = {k: v for k, v in (("a", a_ci), ("b", b_ci)) if v is not None}
    return out


def smooth_curve(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over `window` values (the first values average over what there is)."""
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
            runs.append((float(cv["N"]), np.log(f[ok]), t[ok], smooth_curve(lo[ok], smooth)))
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


# --- backtests: fit on the smaller budgets, predict the held-out larger ones ------------------


def holdout_mask(points: dict[str, np.ndarray], *, above: float | None = None) -> np.ndarray:
    """Which points a backtest holds out: those whose compute exceeds `above`, or (None)
    the largest budget (the `budget` column, else C or 6ND grouped as IsoFLOP budgets)."""
    compute = points.get("C", 6 * points["N"] * points["D"])
    if above is not None:
        return compute > above
    budget = points.get("budget", group_budgets(compute))
    return budget == budget.max()


def backtest(
    points: dict[str, np.ndarray],
    held_out: np.ndarray,
    *,
    n_boot: int = 100,
    level: float = 0.95,
    seed: int = 0,
) -> dict:
    """Fit L(N, D) on the points not `held_out`, then predict each held-out point.

    Each held-out point gets its predicted and observed loss, the error (observed -
    predicted, and relative to observed) and a bootstrap prediction interval: every refit's
    prediction times a residual drawn from the fitted points' own log residuals, so the
    interval covers both the law's uncertainty and the scatter of single runs; `inside`
    says whether the observed loss lies in it. The fitted points and their predictions
    are kept too, for plots.
    """
    held_out = np.asarray(held_out, bool)
    train = ~held_out
    if not held_out.any() or train.sum() < 5:
        raise FitError(
            f"a backtest needs held-out points and >= 5 points to fit (got {held_out.sum()} "
            f"held out, {train.sum()} to fit); hold out fewer or lower --holdout-above"
        )
    n, d, loss = points["N"], points["D"], points["loss"]
    compute = points.get("C", 6 * n * d)
    fit, boot = _parametric(n[train], d[train], loss[train], n_boot=n_boot, level=level, seed=seed)
    fitted = predict(fit, n[train], d[train])
    residual = np.log(loss[train]) - np.log(fitted)
    rng = np.random.default_rng(seed)
    rows = []
    for i in np.flatnonzero(held_out):
        guess = float(predict(fit, n[i], d[i]))
        draws = [predict(b, n[i], d[i]) for b in boot if math.isfinite(b["E"] + b["A"] + b["B"])]
        draws = np.array(draws) * np.exp(rng.choice(residual, len(draws)))
        lo, hi = np.percentile(draws, [50 * (1 - level), 50 * (1 + level)]).tolist()
        rows.append(
            {
                "N": float(n[i]),
                "D": float(d[i]),
                "C": float(compute[i]),
                "observed": float(loss[i]),
                "predicted": guess,
                "error": float(loss[i] - guess),
                "rel_error": float((loss[i] - guess) / loss[i]),
                "interval": [lo, hi],
                "inside": bool(lo <= loss[i] <= hi),
            }
        )
    fit_rows = [
        {"N": float(a), "D": float(b), "observed": float(o), "predicted": float(p)}
        for a, b, o, p in zip(n[train], d[train], loss[train], fitted, strict=True)
    ]
    return {
        "law": "chinchilla",
        "fit": fit,
        "fit_C_max": float(compute[train].max()),
        "fit_points": fit_rows,
        "residual_rms": float(np.sqrt(np.mean(residual**2))),
        "held_out": rows,
        "inside": sum(r["inside"] for r in rows),
        "level": level,
    }


def format_backtest(result: dict) -> str:
    """The backtest table: each held-out point's predicted and observed loss."""
    rows = result["held_out"]
    pct = f"{100 * result['level']:.0f}%"
    lines = [
        f"backtest: L(N, D) fitted on {len(result['fit_points'])} points with C <= "
        f"{result['fit_C_max']:.3g}, predicting {len(rows)} held-out point(s)",
        f"  fit: E={result['fit']['E']:.4g} alpha={result['fit']['alpha']:.4g} "
        f"beta={result['fit']['beta']:.4g} a={result['fit']['a']:.4g}; "
        f"in-sample log-residual RMS {result['residual_rms']:.4f}",
        f"  {'N':>9s}{'D':>10s}{'C':>10s}{'observed':>10s}{'predicted':>10s}{'error':>9s}"
        f"  {pct + ' prediction interval':24s}inside",
    ]
    for r in rows:
        lo, hi = r["interval"]
        lines.append(
            f"  {r['N']:9.3g}{r['D']:10.3g}{r['C']:10.3g}{r['observed']:10.4f}"
            f"{r['predicted']:10.4f}{r['rel_error']:+9.2%}  {f'[{lo:.4f}, {hi:.4f}]':24s}"
            f"{'yes' if r['inside'] else 'NO'}"
        )
    lines.append(f"  {result['inside']} of {len(rows)} held-out point(s) inside the interval")
    return "\n".join(lines)


# --- the command line ------------------------------------------------------------------------


def load_points(path: str | Path, n_column: str = "N") -> dict[str, np.ndarray]:
    """N, D, loss (and C, budget where present) of the finished rows of a results table.

    WSD parents (`wsd_role` parent: constant-LR losses, not cooled down) are left out, as
    `llm-jax sweep --collect` leaves them out. An empty or non-numeric N, D or loss cell in
    a finished row is an error naming the row.
    """
    table = results_io.read_results(path)
    rows = [
        (i + 2, r)
        for i, r in enumerate(table)
        if r.get("status") in (None, "done") and r.get("wsd_role") != "parent"
    ]
    if not rows:
        raise FitError(f"{path}: no finished rows to fit")
    missing = [k for k in (n_column, "D", "loss") if k not in rows[0][1]]
    if missing:
        raise FitError(
            f"{path} has no column(s) {', '.join(missing)}; a results table needs "
            f"columns N, D, loss (it has: {', '.join(rows[0][1])})"
        )
    for line, r in rows:
        for key in (n_column, "D", "loss"):
            value = r[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                what = "is empty" if value is None else f"is {value!r}, not a number"
                raise FitError(
                    f"{path} line {line} ({r.get('name') or 'unnamed'}): {key} {what}; "
                    "fix or delete that row"
                )
    points = {
        "N": np.array([r[n_column] for _, r in rows], float),
        "D": np.array([r["D"] for _, r in rows], float),
        "loss": np.array([r["loss"] for _, r in rows], float),
    }
    for key in ("C", "budget"):
        if all(isinstance(r.get(key), (int, float)) for _, r in rows):
            points[key] = np.array([r[key] for _, r in rows], float)
    return points


def _lowest_per_value(x: np.ndarray, loss: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The lowest loss at each distinct x."""
    values = np.unique(x)
    return values, np.array([loss[x == v].min() for v in values])


def fit_kaplan(points: dict[str, np.ndarray], *, n_boot: int = 100, level: float = 0.95) -> dict:
    """Kaplan et al.'s L(N), L(D), L(C) on a table's rows: {X: power-law fit, "notes": [...]}.

    Kaplan's laws describe the best loss at each X (L(N): each size trained near
    convergence; L(C): the compute frontier), so when X repeats (an IsoFLOP sweep trains
    each size on several budgets) each law is fitted to the lowest loss at each X value,
    with C grouped into budgets. A law whose fitted alpha is not positive (the loss does
    not fall with X in the table) is left out with a note; none left is an error.
    """
    out: dict = {"notes": []}
    columns = {"N": points["N"], "D": points["D"]}
    columns["C"] = points.get(
        "budget", group_budgets(points.get("C", 6 * points["N"] * points["D"]))
    )
    for key, x in columns.items():
        xs, best = _lowest_per_value(x, points["loss"])
        if len(xs) < 3:
            out["notes"].append(f"L({key}): {len(xs)} distinct {key} values (3 needed)")
            continue
        fit = fit_power_law(xs, best, n_boot=n_boot, level=level, name=key)
        if len(xs) < len(x):
            fit["points"] = f"the lowest loss at each of {len(xs)} {key} values, of {len(x)} rows"
        if not (fit["alpha"] > 0 and all(math.isfinite(fit[k]) for k in ("E", "A"))):
            out["notes"].append(
                f"L({key}): left out, the fitted alpha is {fit['alpha']:.3g} (the lowest "
                f"loss does not fall with {key} in this table)"
            )
            continue
        out[key] = fit
    if len(out) == 1:
        raise FitError("no Kaplan law fits this table: " + "; ".join(out["notes"]))
    return out


def run_law(
    points: dict[str, np.ndarray], law: str, *, n_boot: int = 100, level: float = 0.95
) -> dict:
    """Fit `law` (chinchilla | kaplan | isoflop) to loaded points; a fit without usable
    exponents is a FitError (the message says why)."""
    if np.ptp(points["loss"]) == 0:
        raise FitError(
            f"every row has loss {points['loss'][0]:.6g}: a constant loss has no scaling to fit"
        )
    if law == "kaplan":
        return fit_kaplan(points, n_boot=n_boot, level=level)
    if law == "chinchilla":
        fit = fit_parametric(points["N"], points["D"], points["loss"], n_boot=n_boot, level=level)
        if not math.isfinite(fit["a"]):
            raise FitError(
                f"the L(N, D) fit has alpha={fit['alpha']:.3g}, beta={fit['beta']:.3g}: the "
                "loss does not fall with both N and D in this table, so there is no "
                "compute-optimal frontier; vary N and D more widely"
            )
        return fit
    budget = points.get("budget")
    if budget is None:
        budget = group_budgets(points.get("C", 6 * points["N"] * points["D"]))
    fit = fit_isoflop(points["N"], points["D"], points["loss"], budget, level=level)
    if fit["a"] is None:
        raise FitError("no IsoFLOP exponents: " + "; ".join(fit["notes"]))
    return fit


# What the printed tables call each estimate (G, the frontier's prefactor, is in the JSON).
_ROWS = {
    "E": "irreducible loss",
    "A": "",
    "B": "",
    "alpha": "",
    "beta": "",
    "a": "N_opt ∝ C^a",
    "b": "D_opt ∝ C^b",
}


def _meaningless(key: str, estimate: float, lo: float, hi: float) -> bool:
    """An interval that does not pin the estimate down: wider than the estimate itself
    (prefactors A, B, being scales: spanning more than 100x)."""
    if key in ("A", "B"):
        return not (lo > 0 and hi / lo <= 100)
    return hi - lo > abs(estimate)


def _estimate_rows(fit: dict) -> tuple[list[str], bool]:
    rows, flagged = [], False
    ci = fit.get("ci", {})
    for key, meaning in _ROWS.items():
        if fit.get(key) is None:
            continue
        interval, flag = "-", ""
        if key in ci:
            lo, hi = ci[key]
            interval = f"[{lo:.4g}, {hi:.4g}]"
            if _meaningless(key, fit[key], lo, hi):
                flag, flagged = " !", True
        rows.append(f"  {key:8s}{fit[key]:12.4g}{flag:2s} {interval:24s}{meaning}".rstrip())
    return rows, flagged


def _interval_kind(fit: dict) -> str:
    pct = f"{100 * fit.get('level', 0.95):.0f}%"
    return f"{pct} bootstrap interval" if "n_boot" in fit else f"{pct} t-interval"


def format_fit(law: str, fit: dict, title: str | None = None) -> str:
    """A readable table of a fit's estimates and intervals; one column header per table.

    `law`: chinchilla | kaplan | isoflop | envelope; `title` replaces the law's name.
    Intervals that leave an estimate undetermined are flagged with "!".
    """
    parts = fit if law == "kaplan" else {"": fit}
    laws = {k: v for k, v in parts.items() if k != "notes"}
    first = next(iter(laws.values()), {})
    formula = "L(X) = E + A / X^alpha, X = " + ", ".join(laws) if law == "kaplan" else first["law"]
    lines = [f"{title or law}: {formula}"]
    lines.append(f"  {'':8s}{'estimate':>12s}   {_interval_kind(first)}")
    any_flag = False
    for f in laws.values():
        if law == "kaplan":
            lines.append(f" {f['law']}  ({f.get('points', str(f['n_points']) + ' points')})")
        elif "n_points" in f:
            lines[0] += f"  ({f['n_points']} points)"
        rows, flagged = _estimate_rows(f)
        lines += rows
        any_flag |= flagged
        lines += _frontier_lines(f)
    if any_flag:
        lines.append(
            "  !: the interval is wider than the estimate (A, B: spans over 100x); the "
            "data do not determine it"
        )
    notes = [*fit.get("notes", [])]
    if law == "kaplan":
        notes += [f"{k}: {n}" for k, f in laws.items() for n in f.get("notes", [])]
    lines += [f"  note: {n}" for n in notes]
    return "\n".join(lines)


def _frontier_lines(fit: dict) -> list[str]:
    lines = []
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
    return lines


def update_fit_json(path: str | Path, law: str, fit: dict) -> None:
    """Set fit.json[law] = fit, keeping the other laws already stored there."""
    results_io.store_fits(path, {law: fit})
