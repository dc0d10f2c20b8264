"""Scaling-law fits recover the parameters of synthetic data drawn from known laws."""

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.optimize
import threadpoolctl

from llm_jax import cli
from llm_jax import config as config_lib
from llm_jax.scaling import fit, hparams, sweep
from llm_jax.scaling import results as results_io

# Hoffmann et al. (2022)'s fitted law: the ground truth of the synthetic data.
TRUE = dict(E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28)
TRUE_A = TRUE["beta"] / (TRUE["alpha"] + TRUE["beta"])  # N_opt ∝ C^a
TRUE_B = TRUE["alpha"] / (TRUE["alpha"] + TRUE["beta"])  # D_opt ∝ C^b


def law(n, d):
    return (
        TRUE["E"]
        + TRUE["A"] / np.asarray(n) ** TRUE["alpha"]
        + TRUE["B"] / np.asarray(d) ** TRUE["beta"]
    )


def grid_points(noise=0.002, seed=0):
    rng = np.random.default_rng(seed)
    n, d = (a.ravel() for a in np.meshgrid(np.logspace(6.5, 10.5, 9), np.logspace(8, 12.5, 9)))
    return n, d, law(n, d) * np.exp(rng.normal(0, noise, n.size))


def isoflop_points(budgets, spread=8.0, sizes=9, noise=0.0005, seed=0):
    """IsoFLOP profiles centred on the true optimum of each budget."""
    rng = np.random.default_rng(seed)
    rows = []
    for c in budgets:
        n_opt = fit.compute_optimal(TRUE, c)["N_opt"]
        for n in n_opt * np.logspace(-np.log10(spread), np.log10(spread), sizes):
            d = c / (6 * n)
            rows.append((n, d, law(n, d) * np.exp(rng.normal(0, noise)), c))
    return (np.array(col) for col in zip(*rows, strict=True))


def test_parametric_fit_recovers_the_law():
    n, d, loss = grid_points()
    got = fit.fit_parametric(n, d, loss, n_boot=8)
    for key in ("E", "alpha", "beta"):
        assert got[key] == pytest.approx(TRUE[key], rel=0.03), key
    assert got["a"] == pytest.approx(TRUE_A, abs=0.02)
    assert got["b"] == pytest.approx(1 - got["a"])
    lo, hi = got["ci"]["alpha"]
    assert lo <= got["alpha"] <= hi and hi - lo < 0.1
    # The frontier satisfies C = 6 N D at every budget.
    for p in got["frontier"]:
        assert 6 * p["N_opt"] * p["D_opt"] == pytest.approx(p["C"], rel=1e-9)


def _scipy_fit(theta0, log_x, log_loss, weight, delta=fit.HUBER_DELTA):
    """The reference: scipy's L-BFGS-B on one fit, from one start."""

    def objective(theta):
        value, grad = fit._objective(theta[None], log_x, log_loss, weight[None], delta)
        return value[0], grad[0]

    options = {"maxiter": 2000, "ftol": 1e-15, "gtol": 1e-12}
    with threadpoolctl.threadpool_limits(1):  # multi-threaded BLAS only slows these down
        return scipy.optimize.minimize(
            objective, theta0, jac=True, method="L-BFGS-B", options=options
        ).x


def test_batched_fits_reach_scipys_optimum_and_bootstrap():
    # Chinchilla-like scatter with 2% noise: the Huber loss is then mostly in its linear
    # part, the hard case for the optimiser.
    rng = np.random.default_rng(3)
    n, d = 10 ** rng.uniform(7.5, 10.2, 120), 10 ** rng.uniform(9.0, 11.5, 120)
    loss = law(n, d) * np.exp(rng.normal(0, 0.02, 120))
    got = fit.fit_parametric(n, d, loss, n_boot=6, seed=5)
    log_x, log_loss = np.log(np.vstack([n, d])), np.log(loss)
    theta = [np.log(got["E"]), np.log(got["A"]), got["alpha"], np.log(got["B"]), got["beta"]]
    ones = np.ones(len(loss))
    assert _scipy_fit(np.array(theta), log_x, log_loss, ones) == pytest.approx(theta, rel=1e-4)
    # The bootstrap: the same resamples (as weights), each refit from the optimum.
    idx = np.random.default_rng(5).integers(0, len(loss), (6, len(loss)))
    ref = [
        fit._parametric_summary(
            _scipy_fit(np.array(theta), log_x, log_loss, np.bincount(i, minlength=len(loss)))
        )
        for i in idx
    ]
    lo, hi = np.percentile([r["alpha"] for r in ref], [2.5, 97.5])
    assert got["ci"]["alpha"] == pytest.approx([lo, hi], rel=1e-3)


def test_power_law_recovers_exponent_and_floor():
    rng = np.random.default_rng(1)
    x = np.logspace(5, 9, 12)
    loss = (2.0 + 60.0 / x**0.3) * np.exp(rng.normal(0, 0.001, x.size))
    got = fit.fit_power_law(x, loss, n_boot=5)
    assert got["alpha"] == pytest.approx(0.3, rel=0.05)
    assert got["E"] == pytest.approx(2.0, rel=0.02)


def test_isoflop_recovers_exponents_and_drops_edge_budgets():
    n, d, loss, budget = isoflop_points([1e18, 1e19, 1e20, 1e21])
    # One more budget whose sizes all lie below its optimum: its minimum is at the edge.
    c_edge = 1e22
    n_edge = fit.compute_optimal(TRUE, c_edge)["N_opt"] * np.logspace(-3, -1, 5)
    d_edge = c_edge / (6 * n_edge)
    got = fit.fit_isoflop(
        np.r_[n, n_edge],
        np.r_[d, d_edge],
        np.r_[loss, law(n_edge, d_edge)],
        np.r_[budget, np.full(5, c_edge)],
    )
    assert got["a"] == pytest.approx(TRUE_A, abs=0.02)
    assert got["b"] == pytest.approx(TRUE_B, abs=0.02)
    kept = {b["C"]: b["kept"] for b in got["budgets"]}
    assert kept == {1e18: True, 1e19: True, 1e20: True, 1e21: True, 1e22: False}
    assert len(got["notes"]) == 1 and "largest model" in got["notes"][0]


def test_isoflop_drops_a_profile_that_is_not_u_shaped():
    n, d, loss, budget = isoflop_points([1e18, 1e19, 1e20])
    # A flat-then-cliff profile (from the Shakespeare demo): interior minimum, but the
    # parabola's vertex is far outside the sizes.
    n_odd = np.array([12336, 32864, 52368, 80112, 139584])
    loss_odd = np.array([3.418, 3.415, 3.856, 3.960, 3.941])
    got = fit.fit_isoflop(
        np.r_[n, n_odd],
        np.r_[d, 1e21 / (6 * n_odd)],
        np.r_[loss, loss_odd],
        np.r_[budget, np.full(5, 1e21)],
    )
    assert [b["kept"] for b in got["budgets"]] == [True, True, True, False]
    assert "vertex" in got["notes"][0] and got["a"] == pytest.approx(TRUE_A, abs=0.02)


def test_isoflop_leaves_a_poorly_fitted_budget_out_of_the_exponents():
    n, d, loss, budget = isoflop_points([1e18, 1e19, 1e20, 1e21], sizes=7)
    bad = budget == 1e19
    loss[bad] += np.array([0.0, 0.08, -0.02, 0.08, -0.02, 0.08, 0.0])  # zig-zag: R² < 0.9
    got = fit.fit_isoflop(n, d, loss, budget)
    poor = {b["C"]: b["poor_fit"] for b in got["budgets"]}
    assert poor == {1e18: False, 1e19: True, 1e20: False, 1e21: False}
    entry = next(b for b in got["budgets"] if b["C"] == 1e19)
    assert not entry["kept"] and entry["r2"] < fit.POOR_FIT_R2 and "N_opt" in entry
    assert "poor parabola fit" in got["notes"][0]
    assert got["a"] == pytest.approx(TRUE_A, abs=0.02)


def test_isoflop_needs_two_usable_budgets():
    n, d, loss, budget = isoflop_points([1e19])
    got = fit.fit_isoflop(n, d, loss, budget)
    assert got["a"] is None and "need at least 2" in got["notes"][-1]


def training_curves(sizes, tokens):
    """One noiseless training curve of the known law per model size."""
    return [
        {"N": n, "tokens": tokens, "flops": 6 * n * tokens, "loss": law(n, tokens)} for n in sizes
    ]


def test_envelope_of_training_curves_recovers_exponents():
    curves = training_curves(np.logspace(7, 10, 16), np.logspace(8, 12.5, 200))
    got = fit.fit_envelope(curves, smooth=1)
    assert got["a"] == pytest.approx(TRUE_A, abs=0.06)
    assert got["b"] == pytest.approx(TRUE_B, abs=0.06)
    losses = [p["loss"] for p in got["envelope"]]
    assert losses == sorted(losses, reverse=True)  # more compute, lower best loss


def test_envelope_leaves_points_won_at_the_grid_edge_out_of_the_exponents():
    # Sizes far below the optimum at high compute: there the largest model always wins,
    # and at low compute the smallest does. Regressing on those saturated points would
    # flatten a; they must be flagged, noted, and left out.
    curves = training_curves(np.logspace(7, 9, 9), np.logspace(8, 13, 200))
    got = fit.fit_envelope(curves, smooth=1)
    edge = [p for p in got["envelope"] if not p["interior"]]
    assert edge and all(p["N"] in (1e7, 1e9) for p in edge)
    assert all(1e7 < p["N"] < 1e9 for p in got["envelope"] if p["interior"])
    assert f"{len(edge)} of {len(got['envelope'])} envelope points left out" in got["notes"][0]
    assert got["a"] == pytest.approx(TRUE_A, abs=0.06)


def test_group_budgets_merges_near_equal_compute():
    labels = fit.group_budgets([1e18, 1.02e18, 0.99e18, 1e19, 1.01e19])
    assert len(set(labels)) == 2 and labels[0] == labels[1] == labels[2]


def _write_csv(path, n, d, loss):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["N", "D", "loss"])
        w.writerows(zip(n, d, loss, strict=True))


def test_fit_command_json_has_the_chinchilla_keys(tmp_path, capsys):
    n, d, loss = grid_points()
    _write_csv(tmp_path / "points.csv", n, d, loss)
    assert cli.run(["fit", str(tmp_path / "points.csv"), "--json", "--bootstrap", "3"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {"E", "A", "B", "alpha", "beta", "a", "b"} <= set(out)
    assert out["alpha"] == pytest.approx(TRUE["alpha"], rel=0.05)
    stored = json.loads((tmp_path / "fit.json").read_text())
    assert stored["chinchilla"]["beta"] == pytest.approx(out["beta"])


def test_fit_command_isoflop_table_and_kaplan(tmp_path, capsys):
    n, d, loss, budget = isoflop_points([1e18, 1e19, 1e20])
    with open(tmp_path / "results.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["name", "budget", "N", "D", "loss", "status"])
        w.writerows(
            (f"t{i}", *row, "done") for i, row in enumerate(zip(budget, n, d, loss, strict=True))
        )
    assert cli.run(["fit", str(tmp_path), "--law", "isoflop"]) == 0
    text = capsys.readouterr().out
    assert "a " in text and "budget C=1e+19" in text
    assert cli.run(["fit", str(tmp_path), "--law", "kaplan", "--json", "--bootstrap", "2"]) == 0
    kaplan = json.loads(capsys.readouterr().out)
    assert {"N", "D", "C"} <= set(kaplan) and "alpha" in kaplan["N"]
    assert set(json.loads((tmp_path / "fit.json").read_text())) == {"isoflop", "kaplan"}


def test_fit_command_names_missing_columns(tmp_path, capsys):
    (tmp_path / "bad.csv").write_text("N,tokens,loss\n1,2,3\n")
    assert cli.run(["fit", str(tmp_path / "bad.csv")]) == 2
    assert "no column(s) D" in capsys.readouterr().err


DEMO_RESULTS = Path(__file__).parent / "data" / "shakespeare_isoflop_results.csv"


@pytest.mark.parametrize("n_column", ["N", "N_non_embedding"])
def test_kaplan_on_the_demo_results(tmp_path, capsys, n_column):
    # The README demo's own results.csv (an IsoFLOP sweep: loss is not a function of N
    # alone) once overflowed in a bootstrap refit. Each law is fitted to the lowest loss
    # per X, and one whose loss does not fall with X is left out with a note.
    shutil.copy(DEMO_RESULTS, tmp_path / "results.csv")
    argv = ["fit", str(tmp_path / "results.csv"), "--law", "kaplan", "--n-column", n_column]
    assert cli.run(argv) == 0
    out = capsys.readouterr().out
    assert out.count("bootstrap interval") == 1  # one header for all three laws
    stored = json.loads((tmp_path / "fit.json").read_text())["kaplan"]
    assert set(stored) - {"notes"} and all(stored[k]["alpha"] > 0 for k in stored if k != "notes")
    assert "lowest loss at each of" in out


def _write_rows(path, rows):
    path.write_text("name,N,D,loss,status\n" + "".join(f"{','.join(r)}\n" for r in rows))


@pytest.mark.parametrize(
    ("cell", "message"), [("", "line 3 (t1): loss is empty"), ("abc", "loss is 'abc', not a")]
)
def test_fit_names_the_row_of_a_bad_cell(tmp_path, capsys, cell, message):
    rows = [("t0", "1e6", "1e9", "3.0", "done"), ("t1", "2e6", "2e9", cell, "done")]
    _write_rows(tmp_path / "r.csv", rows + [("t2", "4e6", "1e9", "", "failed")])
    assert cli.run(["fit", str(tmp_path / "r.csv")]) == 2
    assert message in capsys.readouterr().err


def test_fit_refuses_a_constant_loss_and_a_fit_without_exponents(tmp_path, capsys):
    n, d = np.logspace(6, 8, 6), np.logspace(9, 10, 6)
    _write_csv(tmp_path / "flat.csv", n, d, np.full(6, 3.0))
    assert cli.run(["fit", str(tmp_path / "flat.csv")]) == 2
    assert "constant loss" in capsys.readouterr().err
    # Loss rising with N and D: no positive exponent, so no frontier and no rc 0.
    n, d = (a.ravel() for a in np.meshgrid(np.logspace(6, 8, 4), np.logspace(9, 11, 4)))
    _write_csv(tmp_path / "up.csv", n, d, 2 + 0.1 * np.log(n) + 0.1 * np.log(d))
    assert cli.run(["fit", str(tmp_path / "up.csv")]) == 2
    assert "no compute-optimal frontier" in capsys.readouterr().err
    assert not (tmp_path / "fit.json").exists()


def test_fit_table_flags_intervals_wider_than_the_estimate():
    table = fit.format_fit(
        "chinchilla",
        {
            "law": "L",
            "E": 2.0,
            "alpha": 0.9,
            "beta": 0.3,
            "n_boot": 10,
            "ci": {"E": [1.9, 2.1], "alpha": [-2.0, 3.8], "beta": [0.25, 0.35]},
        },
    )
    flagged = [line.split()[0] for line in table.splitlines() if " ! " in line]
    assert flagged == ["alpha"] and "do not determine" in table
    assert "G " not in table


def test_fit_piped_into_head_still_stores_the_fit(tmp_path):
    shutil.copy(DEMO_RESULTS, tmp_path / "results.csv")
    command = [sys.executable, "-m", "llm_jax.cli", "fit", str(tmp_path), "--bootstrap", "0"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.readline()
    proc.stdout.close()  # as `| head -1` does
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0 and "Traceback" not in err
    assert "chinchilla" in json.loads((tmp_path / "fit.json").read_text())


# --- backtests ------------------------------------------------------------------------------


def _isoflop_table(path, noise=0.005):
    n, d, loss, budget = isoflop_points([1e18, 1e19, 1e20, 1e21], sizes=7, noise=noise)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["name", "budget", "N", "D", "loss", "status"])
        w.writerows(
            (f"t{i}", *row, "done") for i, row in enumerate(zip(budget, n, d, loss, strict=True))
        )
    return {"N": n, "D": d, "loss": loss, "budget": budget}


def test_backtest_predicts_the_held_out_budget_within_noise(tmp_path):
    noise = 0.005
    points = _isoflop_table(tmp_path / "results.csv", noise)
    held = fit.holdout_mask(points)
    assert held.sum() == 7 and set(points["budget"][held]) == {1e21}
    result = fit.backtest(points, held, n_boot=100)
    assert result["fit_C_max"] == pytest.approx(1e20, rel=0.01)  # fitted without 1e21
    for row in result["held_out"]:
        # The prediction is the true law's loss to within the data's own noise ...
        assert row["predicted"] == pytest.approx(law(row["N"], row["D"]), rel=3 * noise)
        assert row["error"] == pytest.approx(row["observed"] - row["predicted"])
    # ... and the prediction intervals cover most held-out losses (noise at 0.5%).
    assert result["inside"] >= 5
    # A law fitted to too few points says so rather than predicting.
    with pytest.raises(fit.FitError, match="held out"):
        fit.backtest(points, np.arange(28) >= 4)
    assert fit.holdout_mask(points, above=1e19).sum() == 14


def test_fit_command_backtest_stores_the_table_and_a_plot(tmp_path, capsys):
    _isoflop_table(tmp_path / "results.csv")
    assert cli.run(["fit", str(tmp_path), "--holdout-largest", "--bootstrap", "20"]) == 0
    out = capsys.readouterr().out
    assert "7 held-out point(s)" in out and "inside the interval" in out
    stored = json.loads((tmp_path / "fit.json").read_text())["backtest"]
    assert len(stored["held_out"]) == 7 and "predicted" in stored["held_out"][0]
    assert (tmp_path / "plots" / "backtest.png").stat().st_size > 10_000
    assert cli.run(["fit", str(tmp_path), "--law", "kaplan", "--holdout-above", "1e19"]) == 2
    assert "--law chinchilla" in capsys.readouterr().err


# --- hyperparameter laws --------------------------------------------------------------------

LR_LAW = dict(K=0.05, N=-0.3, D=0.1)  # lr_opt = 0.05 N^-0.3 D^0.1
BATCH_LAW = dict(K=0.02, N=0.1, D=0.3)  # batch_opt (sequences) = 0.02 N^0.1 D^0.3


def _hparam_rows(noise=0.003, seed=0):
    """An LR x batch grid at 4 sizes x 3 token counts; loss a bowl in log lr and log batch
    around the known optima, on top of the Chinchilla law."""
    rng = np.random.default_rng(seed)
    rows = []
    for n in np.logspace(6, 8, 4):
        for d in np.logspace(8, 10, 3):
            lr_opt = LR_LAW["K"] * n ** LR_LAW["N"] * d ** LR_LAW["D"]
            b_opt = BATCH_LAW["K"] * n ** BATCH_LAW["N"] * d ** BATCH_LAW["D"]
            for lr in 2.0 ** np.arange(-14, -4):
                for batch in 2 ** np.arange(2, 10):
                    bowl = 0.05 * np.log(lr / lr_opt) ** 2 + 0.02 * np.log(batch / b_opt) ** 2
                    loss = law(n, d) + bowl + rng.normal(0, noise)
                    rows.append(
                        {"N_non_embedding": n, "D": d * (1 + 0.01 * rng.random()), "loss": loss}
                        | {"train.lr": lr, "train.batch_size": int(batch), "status": "done"}
                    )
    return rows


def test_hyperparameter_laws_of_each_variant_apart():
    # Two parametrizations whose optima differ 4x: one law each, never a mixture.
    rows = _hparam_rows(seed=1)
    shifted = [r | {"train.lr": r["train.lr"] * 4} for r in rows]
    laws = hparams.fit_hyperparameters(
        [r | {"model.parametrization": "sp"} for r in rows]
        + [r | {"model.parametrization": "mup"} for r in shifted]
    )
    sp, mup = (
        laws["train.lr[model.parametrization=sp]"],
        laws["train.lr[model.parametrization=mup]"],
    )
    assert mup["K"] / sp["K"] == pytest.approx(4, rel=0.05)
    assert mup["exponents"]["N"] == pytest.approx(sp["exponents"]["N"], abs=1e-6)
    rules = sweep.SizeRules.from_fit(laws, variant="[model.parametrization=mup]", seq_len=64)
    base = config_lib.default_config()
    assert rules.lr(base, 1e7, 1e9) == pytest.approx(hparams.predict(mup, 1e7, 1e9))


def test_hyperparameter_law_recovers_known_exponents():
    laws = hparams.fit_hyperparameters(_hparam_rows())
    for key, truth in (("train.lr", LR_LAW), ("train.batch_size", BATCH_LAW)):
        got = laws[key]
        assert len(got["optima"]) == 12  # every (N, D): D within 1% is one token count
        for v in ("N", "D"):
            assert got["exponents"][v] == pytest.approx(truth[v], abs=0.02), (key, v)
            lo, hi = got["ci"][v]
            assert lo <= truth[v] <= hi and hi - lo < 0.1
        assert hparams.predict(got, 1e7, 1e9) == pytest.approx(
            truth["K"] * 1e7 ** truth["N"] * 1e9 ** truth["D"], rel=0.05
        )


def test_hyperparameter_law_leaves_edge_optima_out_and_feeds_size_rules(tmp_path, capsys):
    # LRs up to 2^-11 only: every optimum (1.3e-3 to 7.9e-3) lies above the values tried.
    rows = [r for r in _hparam_rows() if r["train.lr"] <= 2.0**-11]
    with pytest.raises(fit.FitError, match="lowest loss at the largest value"):
        hparams.fit_hyperparameter(rows)
    columns = ["N_non_embedding", "D", "loss", "train.lr", "train.batch_size", "status"]
    results_io.write_results(tmp_path / "results.csv", _hparam_rows(), columns)
    assert cli.run(["fit", str(tmp_path), "--law", "hparams"]) == 0
    assert "train.lr: optimum = " in capsys.readouterr().out
    rules = sweep.SizeRules.from_fit(tmp_path, seq_len=64)
    laws = hparams.load_laws(tmp_path / "fit.json")
    base = config_lib.default_config()
    assert rules.lr(base, 3e7, 2e9) == pytest.approx(
        hparams.predict(laws["train.lr"], 3e7, 2e9), rel=1e-6
    )
    batch = hparams.predict(laws["train.batch_size"], 3e7, 2e9)
    base.data.seq_len = 64
    assert abs(np.log2(rules.batch_size(base, 3e7, 2e9) / batch)) <= 0.5
