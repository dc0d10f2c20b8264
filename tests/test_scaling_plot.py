"""Plots are written, non-empty, from a synthetic sweep directory."""

import json

import numpy as np
from matplotlib import image

from llm_jax import cli
from llm_jax.scaling import fit, plot
from llm_jax.scaling import results as results_io

TRUE = dict(E=1.7, A=400.0, B=410.0, alpha=0.34, beta=0.28)


def _law(n, d):
    return TRUE["E"] + TRUE["A"] / n ** TRUE["alpha"] + TRUE["B"] / d ** TRUE["beta"]


def _make_sweep_dir(root):
    """An IsoFLOP-shaped sweep: 3 budgets x 5 sizes, metrics curves, no fits yet."""
    rows = []
    for c in (1e17, 1e18, 1e19):
        n_opt = fit.compute_optimal(TRUE, c)["N_opt"]
        for i, n in enumerate(n_opt * np.logspace(-0.8, 0.8, 5)):
            name = f"C{c:.0e}-{i}"
            d = c / (6 * n)
            tokens = np.linspace(d / 20, d, 20)
            (root / name).mkdir(parents=True)
            with open(root / name / "metrics.jsonl", "w") as f:
                for s, t in enumerate(tokens, 1):
                    f.write(
                        json.dumps(
                            {"step": s, "tokens": t, "flops": 6 * n * t, "train/loss": _law(n, t)}
                        )
                        + "\n"
                    )
            rows.append(
                {"name": name, "budget": c, "N": n, "D": d, "loss": _law(n, d), "status": "done"}
            )
    results_io.write_results(
        root / "results.csv", rows, ["name", "budget", *results_io.MEASURED_COLUMNS]
    )
    return rows


def _assert_png(path):
    assert path.exists() and path.stat().st_size > 10_000
    pixels = image.imread(path)
    assert pixels.std() > 0.05  # not a blank canvas


def test_plot_sweep_draws_every_supported_plot(tmp_path, capsys):
    rows = _make_sweep_dir(tmp_path)
    n, d, loss, c = (np.array([r[k] for r in rows]) for k in ("N", "D", "loss", "budget"))
    fits = {
        "isoflop": fit.fit_isoflop(n, d, loss, c),
        "chinchilla": {**TRUE, "a": 0.28 / 0.62, "b": 0.34 / 0.62, "frontier": [{"C": 1e20}]},
        "envelope": fit.fit_envelope(plot.load_curves(tmp_path, rows), smooth=1),
    }
    points = {"N": n, "D": d, "loss": loss, "budget": c}
    fits["backtest"] = fit.backtest(points, fit.holdout_mask(points), n_boot=10)
    results_io.write_json(tmp_path / "fit.json", fits)
    assert cli.run(["plot", str(tmp_path)]) == 0
    names = {p.name for p in (tmp_path / "plots").iterdir()}
    assert names == {
        "training_curves.png",
        "isoflop.png",
        "compute_optimal.png",
        "parametric_fit.png",
        "backtest.png",
    }
    for name in names:
        _assert_png(tmp_path / "plots" / name)
    assert capsys.readouterr().out.count("wrote ") == 5


def test_ablation_plot_for_lr_sweeps(tmp_path):
    rng = np.random.default_rng(0)
    rows = [
        {
            "name": f"{v}-{lr}-{s}",
            "model.norm_position": v,
            "train.lr": lr,
            "train.seed": s,
            "loss": 3
            + (np.log10(lr) + 2.5) ** 2
            + (0.3 if v == "post" else 0)
            + rng.normal(0, 0.02),
            "status": "done",
        }
        for v in ("pre", "post")
        for lr in (1e-3, 3e-3, 1e-2)
        for s in (0, 1)
    ]
    results_io.write_results(
        tmp_path / "results.csv",
        rows,
        ["name", "model.norm_position", "train.lr", "train.seed", *results_io.MEASURED_COLUMNS],
    )
    paths = plot.plot_sweep(tmp_path)
    assert [p.name for p in paths] == ["lr_sensitivity.png"]
    _assert_png(paths[0])


def test_plot_command_without_results_names_the_fix(tmp_path, capsys):
    assert cli.run(["plot", str(tmp_path)]) == 2
    assert "llm-jax sweep" in capsys.readouterr().err


def test_plot_command_draws_one_training_runs_curves(tmp_path, capsys):
    # A workdir as `llm-jax train` leaves it: train rows with lr and grad norm, val rows.
    with open(tmp_path / "metrics.jsonl", "w") as f:
        for step in range(10, 210, 10):
            tokens = step * 1024
            row = {"step": step, "tokens": tokens, "flops": 6e4 * tokens, "lr": 1e-3}
            f.write(json.dumps({**row, "train/loss": 6 / step**0.2, "grad_norm": 1 / step}) + "\n")
            if step % 50 == 0:
                f.write(json.dumps({**row, "val/loss": 6.1 / step**0.2}) + "\n")
    assert cli.run(["plot", str(tmp_path)]) == 0
    _assert_png(tmp_path / "plots" / "run.png")
    assert capsys.readouterr().out.strip().endswith("run.png")


def test_isoflop_plot_marks_a_poor_fit_and_optimal_plot_an_unreliable_exponent(tmp_path):
    rows = _make_sweep_dir(tmp_path)
    n, d, loss, c = (np.array([r[k] for r in rows]) for k in ("N", "D", "loss", "budget"))
    loss[c == 1e17] += [0.0, 0.3, -0.05, 0.25, 0.1]  # a zig-zag profile: a poor parabola
    iso = fit.fit_isoflop(n, d, loss, c)
    poor = [b for b in iso["budgets"] if b["poor_fit"]]
    assert [b["C"] for b in poor] == [1e17] and "poor fit (excluded)" in plot._budget_label(poor[0])
    assert "no interval" in plot._unreliable(iso, "a")  # a line through the 2 budgets left
    _assert_png(plot.plot_isoflop(iso, tmp_path / "iso.png"))
    _assert_png(plot.plot_optimal({"isoflop": iso}, tmp_path / "opt.png"))
