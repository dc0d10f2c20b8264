"""µP: standard parametrization untouched, activations flat across widths under µP."""

import dataclasses
import functools
import hashlib

import jax
import numpy as np
import pytest
from tiny_run import init_params, tiny_train_config

from llm_jax import mup
from llm_jax import sharding as sharding_lib
from llm_jax import train as train_lib
from llm_jax.model import ModelConfig, Transformer
from llm_jax.scaling import sweep

VOCAB = 64
N_LAYERS = 2  # tiny_train_config's


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
                state, jax.device_put(_batch(seed), setup.batch_sharding), setup.schedule_args
            )
            losses.append(float(jax.device_get(metrics["train/loss"])))
    return setup, first, jax.device_get(state), losses


def _digest(tree) -> str:
    h = hashlib.sha256()
    for leaf in jax.tree.leaves(tree):
        h.update(np.asarray(leaf).tobytes())
    return h.hexdigest()[:16]


def test_standard_parametrization_is_bit_identical_to_before_mup(optimized_xla):
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
    heads_cfg = dataclasses.replace(cfg, mup_base_head_dim=64)  # the width added heads
    assert mup.attention_scale(heads_cfg) == pytest.approx(1 / 8)  # SP's 1 / sqrt(K)
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


def test_mup_divides_every_readout_by_m_and_keeps_embed_scale_at_the_base():
    # With mup_base_head_dim = head_dim (attention as SP's) and the same params, µP's
    # forward is SP's but for the readouts (x 1/m) and embed_scale (sqrt(base), not
    # sqrt(d_model)): m = 4 makes the readout scale exact.
    model = tiny_train_config(d_model=128).model
    model.update(n_layers=1, mup_base_width=32, mup_base_head_dim=64)
    sp_cfg = ModelConfig.from_config(model)
    tokens = _batch(0)["inputs"]

    def forward(parametrization, params=None, **changes):
        cfg = dataclasses.replace(sp_cfg, parametrization=parametrization, **changes)
        if params is None:
            params = init_params(Transformer(cfg), tokens)
        return Transformer(cfg).apply({"params": params}, tokens), params

    sp_classes, params = forward("sp", num_classes=3)
    mup_classes, _ = forward("mup", params, num_classes=3)
    np.testing.assert_array_equal(mup_classes * 4, sp_classes)  # the classification head
    # µP with embed_scale = SP without it, the embedding table pre-multiplied by sqrt(32).
    mup_logits, params = forward("mup", embed_scale=True)
    scaled = {**params, "token_embed": params["token_embed"] * np.float32(np.sqrt(32))}
    sp_logits, _ = forward("sp", scaled)
    np.testing.assert_allclose(mup_logits * 4, sp_logits, rtol=1e-5)  # and the LM head


def _coordinates(parametrization: str, width: int, **model) -> np.ndarray:
    """After 4 Adam steps of a width-`width` model (base width 64), per layer: the mean
    |activation| of the residual stream, and the spread (std over keys) of the last query's
    attention scores; then the mean |logit|."""
    config = tiny_train_config(
        d_model=width, steps=4, warmup_steps=0, schedule="constant", lr=1e-2, grad_clip=0.0
    )
    config.model.update(parametrization=parametrization, mup_base_width=64, **model)
    setup, _, state, _ = _train(config, 4)
    inspected = jax.jit(
        functools.partial(setup.model.apply, inspect=True, mutable=["intermediates"])
    )
    logits, inter = inspected({"params": state["params"]}, _batch(9)["inputs"])
    inter = inter["intermediates"]
    residual = np.abs(np.asarray(inter["residual"][0])).mean(axis=(1, 2, 3))
    # log softmax = scores - a constant per query: its spread over the keys is the scores'.
    weights_YxBxHxLxS = np.asarray(inter["layers"]["attn"]["attention_weights"][0])
    scores = np.log(weights_YxBxHxLxS[..., -1, :]).std(axis=-1).mean(axis=(1, 2))
    return np.concatenate([residual, scores, [np.abs(np.asarray(logits)[..., :VOCAB]).mean()]])


def _coordinate_check(model_at_width, flat, widths=(64, 256, 512)) -> None:
    """µP coordinates (`flat` of them) stay within 2.5x from width 64 to 512 and, where
    `widths` has 256, 1.25x from 256 to 512; SP's residual stream grows over 10x and its
    logits over 3x. Each width trains (and compiles) a model of its own: ~10 s of CPU."""
    mup = np.array([_coordinates("mup", w, **model_at_width(w)) for w in widths])
    sp_512 = _coordinates("sp", 512, **model_at_width(512))
    print("mup", mup.round(4).tolist(), "sp 512", sp_512.round(4).tolist())
    assert np.all(np.abs(np.log(mup[-1, flat] / mup[0, flat])) < np.log(2.5))
    if 256 in widths:
        assert np.all(np.abs(np.log(mup[-1, flat] / mup[-2, flat])) < np.log(1.25))
    sp_growth = sp_512 / mup[0]  # at width 64 (m = 1) µP is SP
    assert np.all(sp_growth[:N_LAYERS] > 10) and sp_growth[-1] > 3


def _widened_heads(width: int) -> dict:
    return {"n_heads": 4}


def test_coordinate_check_flat_under_mup_growing_under_sp():
    # Width grows by widening 4 heads (head_dim 16 to 128). Measured (load 8-11, 2 cores):
    # µP 64 -> 512 moves the residual stream and logits by 0.5-0.8x; SP grows them 4.6-210x.
    # The attention scores are left out: under µP's 1/K they start 1/sqrt(m) smaller
    # (0.24-0.32x at width 512), as µP intends, until training aligns q with k. The middle
    # width (the fading of finite-width effects) is the slow test below.
    _coordinate_check(_widened_heads, flat=np.r_[:N_LAYERS, -1], widths=(64, 512))


@pytest.mark.slow
def test_coordinate_check_converges_from_256_to_512():
    # µP 256 -> 512 moves the residual stream and logits by under 15% (finite-width effects
    # fading), measured with the test above.
    _coordinate_check(_widened_heads, flat=np.r_[:N_LAYERS, -1])


@pytest.mark.slow
def test_coordinate_check_when_width_adds_heads():
    # Width grows by adding heads of 16 (4 to 32), so the base keeps head_dim 16 and the
    # attention scale stays 1/4. Measured (load 9-12): µP 64 -> 512 moves every coordinate,
    # attention scores included, by 0.45-0.8x, 256 -> 512 by under 15%; SP grows the
    # residual stream 114-231x and the scores 21-25x. With K_0 = K / m (mup_base_head_dim
    # unset, the rule for widening heads) the scores fell 0.16-0.23x: the test fails.
    _coordinate_check(
        lambda width: {"n_heads": width // 16, "mup_base_head_dim": 16}, flat=np.s_[:]
    )


def test_size_rules_mup_mode_keeps_one_learning_rate_across_sizes():
    base = tiny_train_config()
    rules = sweep.SizeRules(lr_ref=3e-3, mup_base_width=64)
    trials = sweep.model_sizes(base, [3e4, 3e5], tokens=2e5, rules=rules, head_dim=16)
    assert len({t.overrides["model.d_model"] for t in trials}) == 2
    for t in trials:
        assert t.overrides["train.lr"] == 3e-3
        assert t.overrides["model.parametrization"] == "mup"
        assert t.overrides["model.mup_base_width"] == 64
        assert t.overrides["model.mup_base_head_dim"] == 16  # the ladder adds heads of 16
    assert sweep.SizeRules().lr(base, 3e5) != sweep.SizeRules().lr(base, 3e4)  # SP rules
