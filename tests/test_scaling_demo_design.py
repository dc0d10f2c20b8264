"""The README demo's design (experiments/sweeps/shakespeare_isoflop.py): IsoFLOP points as
WSD cooldowns, and the WSD-vs-cosine table of experiments/sweeps/wsd_vs_cosine.py. Nothing
here trains."""

from pathlib import Path

import pytest

from llm_jax import config as config_lib
from llm_jax.scaling import fit, sweep

SWEEPS = Path(__file__).parents[1] / "experiments" / "sweeps"


def _module(name):
    return config_lib.load_python_file(SWEEPS / f"{name}.py", ("get_sweep",), "sweep file")


def test_demo_branches_end_on_their_budgets_from_kept_checkpoints():
    base, trials, _ = sweep.load_sweep(SWEEPS / "shakespeare_isoflop.py")
    parents = {t.name: t.overrides for t in trials if not t.parent}
    branches = [t for t in trials if t.parent]
    assert len(parents) >= 5 and all("budget" not in t.tags for t in trials if not t.parent)
    for t in branches:
        plan = sweep.plan(sweep.apply_overrides(base, t.overrides))
        # On the budget's IsoFLOP line to within the branch point's rounding.
        assert plan["C_detailed"] == pytest.approx(t.tags["budget"], rel=0.025), t.name
        parent = parents[t.parent]
        parent_steps = sweep.plan(sweep.apply_overrides(base, parent)).get("steps")
        assert t.overrides["init.step"] % parent["checkpoint.keep_every"] == 0
        assert t.overrides["init.step"] <= parent_steps
    per_budget = {}
    for t in branches:
        per_budget.setdefault(t.tags["budget"], []).append(t.overrides["model.d_model"])
    assert len(per_budget) >= 4 and all(len(set(w)) >= 5 for w in per_budget.values())


def test_isoflop_branches_refuses_budgets_that_are_not_multiples():
    demo = _module("shakespeare_isoflop")
    base = demo.get_config()
    n = demo.size_of(base, 32)
    with pytest.raises(sweep.SweepError, match="not multiples"):
        demo.isoflop_branches(
            base,
            [2e11, 3e11],
            {2e11: [n], 3e11: [n]},
            cooldown_fraction=0.2,
            rules=demo.RULES,
            **demo.SHAPE,
        )


def test_wsd_vs_cosine_table_compares_each_design_at_its_best_rate():
    study = _module("wsd_vs_cosine")
    rows = [  # two rates per design at one (N, D); the parent and a failed run left out
        {"N": "100", "D": "1000", "loss": loss, "train.lr": lr, "wsd_role": role, "status": status}
        for loss, lr, role, status in [
            ("3.0", "0.01", "", "done"),
            ("2.9", "0.005", "", "done"),
            ("2.95", "0.01", "branch", "done"),
            ("3.1", "0.02", "branch", "done"),
            ("2.0", "0.01", "parent", "done"),
            ("1.0", "0.02", "", "failed"),
        ]
    ]
    best = study.best_per_design(rows)
    assert best == {(100, 1000): {"cosine": (2.9, 0.005), "wsd": (2.95, 0.01)}}
    assert "+1.7%" in study.format_table(best)


def test_fit_leaves_wsd_parents_out(tmp_path):
    # `llm-jax fit` once fitted the constant-LR parents of a WSD sweep (not cooled down)
    # beside their branches, where `sweep --collect` left them out.
    rows = ["p,5000,100,1.0,parent,,done", "b1,5100,100,3.0,branch,1e9,done"]
    rows += ["b2,5200,200,2.9,branch,2e9,done", "b3,5300,100,3.1,,1e9,done"]
    (tmp_path / "r.csv").write_text("name,D,N,loss,wsd_role,budget,status\n" + "\n".join(rows))
    points = fit.load_points(tmp_path / "r.csv")
    assert points["loss"].tolist() == [3.0, 2.9, 3.1]
    assert points["budget"].tolist() == [1e9, 2e9, 1e9]  # every fitted row has a budget
