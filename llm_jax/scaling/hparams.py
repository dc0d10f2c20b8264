"""Hyperparameter laws: the optimal learning rate (or batch size) as a power law in N and D.

From a sweep that tries several values of a hyperparameter at each model size N and token
count D (an LR sweep, an ablation with `lrs=`, a batch-size grid), `fit_hyperparameter`
finds the optimum at each (N, D) and regresses it on N and D in log space:

    h_opt(N, D) = K N^p D^q    (Porian et al. 2024; DeepSeek LLM 2024, section 3.1)

The optimum at one (N, D) is the vertex of a parabola in log h through the loss profile
(the lowest loss at each value tried, after averaging seeds), as IsoFLOP profiles locate
N_opt; a profile whose lowest loss is at an edge value is left out with a note (the
optimum lies outside the values tried). The exponents carry t-intervals.
`sweep.SizeRules.from_fit` turns the stored law into the next sweep's rules.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from llm_jax.scaling import results as results_io
from llm_jax.scaling.fit import FitError, group_budgets

SEED_KEY = "train.seed"
_CONFIG = ("model.", "train.", "data.", "optim.")  # swept config columns of a results table


def _profile_optimum(values: np.ndarray, loss: np.ndarray) -> tuple[float | None, str]:
    """The vertex of a parabola in log value through (value, loss); None and why not."""
    if len(values) < 3:
        return None, f"{len(values)} values tried (a parabola needs 3)"
    best = int(np.argmin(loss))
    if best in (0, len(values) - 1):
        return None, f"lowest loss at the {'smallest' if best == 0 else 'largest'} value tried"
    coef = np.polyfit(np.log(values), loss, 2)
    if coef[0] <= 0:
        return None, "the parabola opens downward"
    return math.exp(-coef[1] / (2 * coef[0])), ""


def _profiles(rows: Sequence[dict], key: str, n_column: str) -> dict[tuple, dict[float, float]]:
    """Per (N, D): the lowest seed-averaged loss at each value of `key` (other swept
    columns, such as the batch size in an LR law, are minimised over)."""
    d_group = group_budgets([r["D"] for r in rows])  # runs of one D differ by step rounding
    runs: dict[tuple, list[float]] = defaultdict(list)
    for r, d in zip(rows, d_group, strict=True):
        others = tuple(sorted((k, repr(v)) for k, v in r.items() if k.startswith(_CONFIG)))
        others = tuple(o for o in others if o[0] not in (key, SEED_KEY))
        runs[(float(r[n_column]), float(d), float(r[key]), others)].append(float(r["loss"]))
    profiles: dict[tuple, dict[float, float]] = defaultdict(dict)
    for (n, d, value, _), losses in runs.items():
        best = profiles[(n, d)].get(value, math.inf)
        profiles[(n, d)][value] = min(best, float(np.mean(losses)))
    return profiles


def _loglinear(x_kn: np.ndarray, y_n: np.ndarray, level: float):
    """Least squares of y on the rows of x plus an intercept: coefficients, intercept and
    the coefficients' t-intervals (None without spare points)."""
    design = np.vstack([x_kn, np.ones(len(y_n))]).T
    coef, *_ = np.linalg.lstsq(design, y_n, rcond=None)
    dof = len(y_n) - design.shape[1]
    if dof < 1:
        return coef[:-1], float(coef[-1]), None
    import scipy.special  # ~0.3 s to import: only fits with intervals pay it

    residual = y_n - design @ coef
    cov = (residual @ residual / dof) * np.linalg.inv(design.T @ design)
    half = float(scipy.special.stdtrit(dof, 0.5 + level / 2)) * np.sqrt(np.diag(cov)[:-1])
    return coef[:-1], float(coef[-1]), np.stack([coef[:-1] - half, coef[:-1] + half], axis=1)


def fit_hyperparameter(
    rows: Sequence[dict],
    key: str = "train.lr",
    *,
    n_column: str = "N_non_embedding",
    level: float = 0.95,
) -> dict:
    """Fit h_opt = K N^p D^q for the hyperparameter column `key` of a results table.

    `rows`: finished results rows with `n_column`, D, loss and `key`. A variable (N or D)
    that does not vary across the optima is left out of the law. Returns the law (K, the
    exponents by variable, their intervals), the optima it was fitted to and notes.
    """
    rows = [
        r
        for r in rows
        if r.get("status") in (None, "done")
        and all(isinstance(r.get(k), (int, float)) for k in (n_column, "D", "loss", key))
    ]
    if not rows:
        raise FitError(f"no finished rows with columns {n_column}, D, loss and {key}")
    optima, notes = [], []
    for (n, d), profile in sorted(_profiles(rows, key, n_column).items()):
        values = np.array(sorted(profile))
        opt, why = _profile_optimum(values, np.array([profile[v] for v in values]))
        if opt is None:
            notes.append(f"N={n:.3g}, D={d:.3g}: left out, {why}")
        else:
            optima.append({"N": n, "D": d, key: opt})
    variables = [
        v for v in ("N", "D") if len(optima) and np.ptp(np.log([o[v] for o in optima])) > 0.01
    ]
    if len(optima) < len(variables) + 1 or not variables:
        raise FitError(
            f"{len(optima)} usable optima of {key} across {len(variables)} varying variable(s): "
            "a law needs optima at 2 or more sizes or token counts, each with the lowest loss "
            "inside the values tried; " + "; ".join(notes)
        )
    x = np.log([[o[v] for o in optima] for v in variables])
    coef, intercept, ci = _loglinear(x, np.log([o[key] for o in optima]), level)
    if ci is None:
        notes.append(f"{len(optima)} optima for {len(variables) + 1} parameters: no interval")
    return {
        "law": f"{key} = K " + " ".join(f"{v}^p_{v}" for v in variables),
        "key": key,
        "K": math.exp(intercept),
        "exponents": dict(zip(variables, coef.tolist(), strict=True)),
        "ci": {} if ci is None else dict(zip(variables, ci.tolist(), strict=True)),
        "reference": {v: float(np.exp(np.mean(np.log([o[v] for o in optima])))) for v in "ND"},
        "n_column": n_column,
        "optima": optima,
        "notes": notes,
        "level": level,
    }


def predict(law: dict, n: float, d: float) -> float:
    """The law's optimal value at N, D."""
    return law["K"] * math.prod(x ** law["exponents"].get(v, 0.0) for v, x in (("N", n), ("D", d)))


def _variants(rows: Sequence[dict]) -> dict[str, list[dict]]:
    """Rows split by the swept config columns that hold words, not numbers (e.g.
    model.parametrization): each variant gets laws of its own, labelled '[k=v]'."""
    words = sorted(
        k
        for k in {k for r in rows for k in r}
        if k.startswith(_CONFIG)
        and any(isinstance(r.get(k), (str, bool)) for r in rows)
        and len({repr(r.get(k)) for r in rows}) > 1
    )
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        label = ",".join(f"{k}={r.get(k)}" for k in words)
        groups[f"[{label}]" if label else ""].append(r)
    return dict(groups)


def fit_hyperparameters(rows: Sequence[dict], **kwargs) -> dict:
    """The laws of every swept hyperparameter of a results table that has one:
    {"train.lr": law, "train.batch_size": law, "notes": [...]}; none is a FitError.

    Rows differing in a word-valued column (e.g. model.parametrization) are fitted apart,
    their laws keyed "train.lr[model.parametrization=mup]" and so on.
    """
    swept = {k for r in rows for k in r} & {"train.lr", "train.batch_size"}
    out: dict = {"notes": []}
    for label, group in _variants(rows).items():
        for key in sorted(swept, reverse=True):  # lr first
            if len({r.get(key) for r in group}) < 3:
                continue
            try:
                out[key + label] = fit_hyperparameter(group, key, **kwargs)
            except FitError as err:
                out["notes"].append(f"{key}{label}: {err}")
    if len(out) == 1:
        raise FitError(
            "no hyperparameter law: the table needs a swept train.lr or train.batch_size "
            "column with >= 3 values at 2 or more sizes" + "".join(f"; {n}" for n in out["notes"])
        )
    return out


def load_laws(path: str | Path) -> dict:
    """The hyperparameter laws stored in a fit.json (or the directory holding it)."""
    path = Path(path)
    path = path / results_io.FIT_JSON if path.is_dir() else path
    laws = (results_io.read_json(path) or {}).get("hparams")
    if not laws:
        raise FitError(f"{path} holds no hyperparameter laws; run `llm-jax fit DIR --law hparams`")
    return laws


def format_laws(laws: dict) -> str:
    """The fitted laws, one block each, with their optima."""
    lines = []
    for key, law in laws.items():
        if key == "notes":
            continue
        pct = f"{100 * law['level']:.0f}%"
        terms = " ".join(f"{v}^{p:.3f}" for v, p in law["exponents"].items())
        lines.append(f"{key}: optimum = {law['K']:.4g} {terms}   ({len(law['optima'])} optima)")
        for v, p in law["exponents"].items():
            ci = law["ci"].get(v)
            interval = f"[{ci[0]:.3f}, {ci[1]:.3f}] ({pct} t-interval)" if ci else "no interval"
            lines.append(f"  exponent of {v}: {p:+.3f} {interval}")
        for o in law["optima"]:
            lines.append(f"  optimum at N={o['N']:.3g}, D={o['D']:.3g}: {o[law['key']]:.4g}")
        lines += [f"  note: {n}" for n in law["notes"]]
    lines += [f"note: {n}" for n in laws.get("notes", [])]
    return "\n".join(lines)
