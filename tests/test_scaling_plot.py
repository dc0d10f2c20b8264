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
    results_io.write_json(tmp_path / "fit.json", fits)
    assert cli.run(["plot", str(tmp_path)]) == 0
    names = {p.name for p in (tmp_path / "plots").iterdir()}
    assert names == {
        "training_curves.png",
        "isoflop.png",
        "compute_optimal.png",
        "parametric_fit.png",
    }
    for name in names:
        _assert_png(tmp_path / "plots" / name)
    assert capsys.readouterr().out.count("wrote ") == 4


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
