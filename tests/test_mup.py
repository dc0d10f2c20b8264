"""µP: standard parametrization untouched, activations flat across widths under µP."""

import hashlib

import jax
import numpy as np
import pytest
from tiny_run import tiny_train_config

from llm_jax import mup
from llm_jax import sharding as sharding_lib
from llm_jax import train as train_lib
from llm_jax.model import ModelConfig
from llm_jax.scaling import sweep

VOCAB = 64


def _batch(seed: int) -> dict:
    tokens = np.random.default_rng(seed).integers(0, VOCAB, (8, 17))
    return {"inputs": tokens[:, :-1].astype(np.int32), "targets": tokens[:, 1:].astype(np.int32)}


def _train(config, steps: int):
    """(setup, state after `steps` steps, the losses) on one device."""
    mesh = sharding_lib.make_mesh(config.mesh, jax.devices()[:1])
    setup = train_lib.make_train(config, mesh)
    with setup.context():
        state = setup.init_state(config.train.seed)
        first = jax.device_get(state["params"])
        losses = []
        for seed in range(steps):
            state, metrics = setup.train_step(
                state, jax.device_put(_batch(seed), setup.batch_sharding)
            )
            losses.append(float(jax.device_get(metrics["train/loss"])))
    return setup, first, jax.device_get(state), losses


def _digest(tree) -> str:
    h = hashlib.sha256()
    for leaf in jax.tree.leaves(tree):
        h.update(np.asarray(leaf).tobytes())
    return h.hexdigest()[:16]


def test_standard_parametrization_is_bit_identical_to_before_mup():
    # Recorded before µP was added (same tiny config, CPU): init params and first losses.
    _, params, _, losses = _train(tiny_train_config(steps=10, warmup_steps=2), 3)
    assert _digest(params) == "c97e41f97735c9a1"
    assert [x.hex() for x in losses] == [
        "0x1.0b6aac0000000p+2",
        "0x1.0a1d760000000p+2",
        "0x1.0a3d240000000p+2",
    ]


def test_mup_labels_and_multipliers():
    config = tiny_train_config(d_model=128)
    config.model.update(parametrization="mup", mup_base_width=32)
    cfg = ModelConfig.from_config(config.model)
    assert mup.width_mult(cfg) == 4 and mup.hidden_init_scale(cfg) == 0.5
    assert mup.attention_scale(cfg) == pytest.approx(1 / 16)  # sqrt(K / 4) / K, K = 64
    _, params, _, _ = _train(config, 0)
    labels = {
        "/".join(k.key for k in path): label
        for path, label in jax.tree_util.tree_flatten_with_path(mup.param_labels(params))[0]
    }
    hidden = {k for k, v in labels.items() if v == mup.HIDDEN}
    assert hidden == {
        f"layers/{m}/{w}"
        for m, ws in (("attn", ("query", "key", "value", "out")), ("mlp", ("gate", "up", "down")))
        for w in ws
    }
    assert mup.lr_multipliers(cfg) == {mup.HIDDEN: 0.25, mup.VECTOR: 1.0}


def _coordinates(parametrization: str, width: int) -> np.ndarray:
    """Mean |activation| of the residual stream after each layer, and of the logits, after
    4 Adam steps of a width-`width` model (base width 64)."""
    config = tiny_train_config(
        d_model=width, steps=4, warmup_steps=0, schedule="constant", lr=1e-2, grad_clip=0.0
    )
    config.model.update(n_heads=4, parametrization=parametrization, mup_base_width=64)
    setup, _, state, _ = _train(config, 4)
    logits, inter = setup.model.apply(
        {"params": state["params"]}, _batch(9)["inputs"], inspect=True, mutable=["intermediates"]
    )
    residual = np.abs(np.asarray(inter["intermediates"]["residual"][0])).mean(axis=(1, 2, 3))
    return np.append(residual, np.abs(np.asarray(logits)[..., :VOCAB]).mean())


def test_coordinate_check_flat_under_mup_growing_under_sp():
    # Measured (load 8, 2 cores): µP 64 -> 512 moves each coordinate by 0.5-0.8x and
    # 256 -> 512 by under 15% (finite-width effects fading); SP grows it 4-200x.
    mup_coords = np.array([_coordinates("mup", w) for w in (64, 256, 512)])  # [width, layer]
    sp_coords = np.array([_coordinates("sp", w) for w in (64, 512)])
    print("mup", mup_coords.round(3).tolist(), "sp", sp_coords.round(3).tolist())
    assert np.all(np.abs(np.log(mup_coords[-1] / mup_coords[0])) < np.log(2.5))
    assert np.all(np.abs(np.log(mup_coords[-1] / mup_coords[1])) < np.log(1.25))
    assert np.all(sp_coords[-1, :-1] / sp_coords[0, :-1] > 10)  # the residual stream
    assert sp_coords[-1, -1] / sp_coords[0, -1] > 3  # the logits


def test_size_rules_mup_mode_keeps_one_learning_rate_across_sizes():
    base = tiny_train_config()
    rules = sweep.SizeRules(lr_ref=3e-3, mup_base_width=64)
    trials = sweep.model_sizes(base, [3e4, 3e5], tokens=2e5, rules=rules, head_dim=16)
    assert len({t.overrides["model.d_model"] for t in trials}) == 2
    for t in trials:
        assert t.overrides["train.lr"] == 3e-3
        assert t.overrides["model.parametrization"] == "mup"
        assert t.overrides["model.mup_base_width"] == 64
    assert sweep.SizeRules().lr(base, 3e5) != sweep.SizeRules().lr(base, 3e4)  # SP rules
