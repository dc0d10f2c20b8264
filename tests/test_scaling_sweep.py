"""Sweep expansion: trial counts, token budgets from FLOPs, shapes from target sizes."""

from pathlib import Path

import pytest

from llm_jax import config as config_lib
from llm_jax import flops
from llm_jax.scaling import sweep

SWEEPS = Path(__file__).resolve().parent.parent / "experiments" / "sweeps"


def _base(vocab=32000):
    config = config_lib.default_config()
    config.model.vocab_size = vocab
    config.model.max_seq_len = 2048
    config.data.seq_len = 2048
    config.train.batch_size = 256
    return config


@pytest.mark.parametrize(
    "vocab,target,head_dim,aspect,tolerance",
    [
        (32000, 2e7, 64, 64, 0.05),
        (32000, 1.5e8, 64, 64, 0.05),
        (32000, 1e9, 128, 128, 0.05),
        (32000, 7e9, 128, 128, 0.05),
        (512, 8e4, 16, 32, 0.1),
        (512, 3e5, 16, 32, 0.1),
    ],
)
def test_shapes_hit_target_size_within_tolerance(vocab, target, head_dim, aspect, tolerance):
    base = _base(vocab)
    shape = sweep.shape_for_params(
        target, base, aspect=aspect, head_dim=head_dim, tolerance=tolerance
    )
    assert abs(shape["N"] / target - 1) <= tolerance
    config = sweep.apply_overrides(base, {k: v for k, v in shape.items() if "." in k})
    config_lib.validate(config)
    assert flops.param_counts(config.model).total == shape["N"]
    d_model = config.model.d_model
    assert d_model % head_dim == 0 and config.model.n_heads * head_dim == d_model
    # On the depth-to-width family: d_model / n_layers within 2x of the aspect ratio.
    assert aspect / 2 <= d_model / config.model.n_layers <= aspect * 2


def test_shape_can_target_non_embedding_count():
    shape = sweep.shape_for_params(1e8, _base(), count="non_embedding")
    assert abs(shape["N_non_embedding"] / 1e8 - 1) <= 0.05
    assert shape["N_total"] > shape["N_non_embedding"]


def test_isoflop_tokens_match_the_budget():
    base = _base()
    budgets, sizes = [1e18, 1e19, 1e20], [5e7, 1e8, 2e8, 4e8]
    trials = sweep.isoflop(base, budgets, sizes)
    assert len(trials) == 12 and len({t.name for t in trials}) == 12
    for t in trials:
        config = sweep.apply_overrides(base, t.overrides)
        tokens_per_step = config.train.batch_size * config.data.seq_len
        per_token = flops.flops_per_token(config.model, config.data.seq_len).detailed
        # D = C / FLOPs-per-token, rounded to whole steps.
        step_flops = tokens_per_step * per_token
        assert abs(config.train.tokens * per_token - t.tags["budget"]) <= step_flops
        steps = config_lib.train_steps(config)
        assert steps * tokens_per_step == config.train.tokens
        assert config.train.warmup_steps == max(10, round(0.05 * steps))
        assert config.train.eval_every == -(-steps // 4)
    # Larger models at a fixed budget see fewer tokens.
    first = [sweep.apply_overrides(base, t.overrides).train.tokens for t in trials[:4]]
    assert first == sorted(first, reverse=True)


def test_isoflop_sizes_per_budget_and_six_n_convention():
    base = _base()
    trials = sweep.isoflop(
        base, [1e18, 1e19], {1e18: [3e7, 6e7, 1.2e8], 1e19: [1e8, 2e8]}, flops="six_n"
    )
    assert len(trials) == 5
    t = trials[0]
    config = sweep.apply_overrides(base, t.overrides)
    six_n = flops.flops_per_token(config.model, config.data.seq_len).six_n
    assert config.train.tokens * six_n == pytest.approx(1e18, rel=0.01)


def test_size_rules_lr_falls_with_size_and_batch_grows():
    base = _base()
    rules = sweep.SizeRules(batch_tokens_ref=2**19)
    assert rules.lr(base, 8.5e7) == pytest.approx(6e-4)
    assert rules.lr(base, 8.5e7 * 8) == pytest.approx(3e-4)
    assert rules.lr(base, 10) == rules.lr_max
    assert rules.batch_size(base, 8.5e7) == 2**19 // 2048
    assert rules.batch_size(base, 8.5e7 * 16) == 2 * 2**19 // 2048
    assert sweep.SizeRules().batch_size(base, 1e9) == base.train.batch_size


def test_model_data_and_grid_sweeps():
    base = _base()
    by_n = sweep.model_sizes(base, [2e7, 5e7, 1e8], tokens=1e9)
    tokens = {sweep.apply_overrides(base, t.overrides).train.tokens for t in by_n}
    assert len(by_n) == 3 and len(tokens) == 1
    by_d = sweep.data_sizes(base, [1e8, 1e9, 1e10], size=5e7)
    assert len({t.overrides["model.d_model"] for t in by_d}) == 1
    assert len({t.overrides["train.tokens"] for t in by_d}) == 3
    assert len(sweep.nd_grid(base, [2e7, 5e7], [1e8, 1e9, 1e10])) == 6


def test_ablation_crosses_fields_lrs_and_seeds():
    trials = sweep.ablation(
        {"model.norm_position": ["pre", "post"]}, lrs=[1e-3, 3e-3, 1e-2], seeds=[0, 1]
    )
    assert len(trials) == 12
    assert trials[0].name == "norm_position=pre-lr=0.001-seed=0"
    base = config_lib.default_config()
    for t in trials:
        config_lib.validate(sweep.apply_overrides(base, t.overrides))


def test_unknown_override_and_duplicate_names_are_rejected():
    with pytest.raises(sweep.SweepError, match="not a config key"):
        sweep.apply_overrides(_base(), {"model.d_modle": 3})
    with pytest.raises(sweep.SweepError, match="both named"):
        sweep._unique([sweep.Trial("a", {"train.lr": 1.0}), sweep.Trial("a", {"train.lr": 2.0})])


@pytest.mark.parametrize("path", sorted(SWEEPS.glob("*.py")), ids=lambda p: p.stem)
def test_shipped_sweep_files_load_and_validate(path):
    base, trials, parallel = sweep.load_sweep(path)
    assert parallel >= 1
    assert len(trials) >= 4
    plans = [sweep.plan(sweep.apply_overrides(base, t.overrides)) for t in trials]
    assert all(p["steps"] >= 1 and p["N"] > 0 for p in plans)


def test_shakespeare_demo_is_at_least_three_budgets_by_four_sizes():
    trials = [t for t in sweep.load_sweep(SWEEPS / "shakespeare_isoflop.py").trials if t.parent]
    budgets = {t.tags["budget"] for t in trials}
    assert len(budgets) >= 3
    assert all(sum(t.tags["budget"] == c for t in trials) >= 4 for c in budgets)


def test_chinchilla_design_spans_real_budgets():
    trials = sweep.load_sweep(SWEEPS / "chinchilla_isoflop.py").trials
    budgets = sorted({t.tags["budget"] for t in trials})
    assert budgets[0] <= 1e18 and budgets[-1] >= 1e21
