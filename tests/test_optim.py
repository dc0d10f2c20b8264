"""Schedules at key steps, the weight-decay mask, and what the optimizer does with it."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from llm_jax import config as config_lib
from llm_jax import optim
from llm_jax.model import ModelConfig, Transformer


def _train_cfg(**overrides):
    t = config_lib.default_config().train
    t.update(dict(lr=1.0, warmup_steps=10, min_lr_ratio=0.1, decay_fraction=0.2), **overrides)
    return t


@pytest.mark.parametrize(
    "kind, expected",
    [
        # warmup is shared: lr * (s + 1) / warmup
        ("cosine", {0: 0.1, 4: 0.5, 9: 1.0, 10: 1.0, 60: 0.55, 110: 0.1, 500: 0.1}),
        ("linear", {0: 0.1, 9: 1.0, 35: 0.775, 60: 0.55, 110: 0.1}),
        # 22 decay steps (20% of 110) start at step 88
        ("wsd", {0: 0.1, 9: 1.0, 50: 1.0, 88: 1.0, 99: 0.55, 110: 0.1}),
        ("constant", {0: 0.1, 9: 1.0, 10: 1.0, 109: 1.0}),
        ("rsqrt", {0: 0.1, 9: 1.0, 10: 1.0, 40: 0.5, 160: 0.25}),
    ],
)
def test_schedule_values_at_key_steps(kind, expected):
    schedule = optim.make_schedule(_train_cfg(schedule=kind), total_steps=110)
    for step, value in expected.items():
        assert float(schedule(step)) == pytest.approx(value, rel=1e-5), (kind, step)


def test_schedule_without_warmup_starts_at_peak():
    schedule = optim.make_schedule(_train_cfg(warmup_steps=0), total_steps=100)
    assert float(schedule(0)) == pytest.approx(1.0)
    assert float(schedule(100)) == pytest.approx(0.1)


def _reference(t, total):
    """The module docstring's formulas with the numbers as constants of the program."""
    peak, low = t.lr, t.lr * t.min_lr_ratio
    warmup = min(t.warmup_steps, total)
    start = max(warmup, total - max(1, round(t.decay_fraction * total)))

    def schedule(step):
        s = jnp.asarray(step, jnp.float32)
        p = jnp.clip((s - warmup) / max(1, total - warmup), 0.0, 1.0)
        q = jnp.clip((s - start) / max(1, total - start), 0.0, 1.0)
        after = {
            "cosine": lambda: low + (peak - low) * 0.5 * (1.0 + jnp.cos(jnp.pi * p)),
            "linear": lambda: peak - (peak - low) * p,
            "wsd": lambda: (
                low + (peak - low) * (1.0 - jnp.sqrt(q))
                if t.decay_shape == "1-sqrt"
                else peak - (peak - low) * q
            ),
            "constant": lambda: jnp.full_like(s, peak),
            "rsqrt": lambda: peak * jnp.sqrt(max(1, warmup) / jnp.maximum(s, max(1, warmup))),
        }[t.schedule]()
        return after if warmup == 0 else jnp.where(s < warmup, peak * (s + 1.0) / warmup, after)

    return schedule


@pytest.mark.parametrize("kind", ["cosine", "linear", "wsd", "wsd-1-sqrt", "constant", "rsqrt"])
def test_schedule_as_step_inputs_equals_it_as_constants_bit_for_bit(kind, optimized_xla):
    # The step takes the schedule's numbers as inputs (so runs differing only in them share
    # a program); XLA would have folded them into the program as constants before.
    kind, _, shape = kind.partition("-")
    program = optim.program_kind(_train_cfg(schedule=kind, decay_shape=shape or "linear"))
    traced = jax.jit(lambda s, v: jax.vmap(optim.schedule_from_values(program, v))(s))
    for lr, ratio, warmup, total, fraction in [
        (3e-3, 0.1, 5, 113, 0.2),
        (1.23e-2, 0.0, 0, 97, 0.33),
        (6e-4, 0.07, 30, 40, 0.25),
    ]:
        t = _train_cfg(
            schedule=kind,
            decay_shape=shape or "linear",
            lr=lr,
            min_lr_ratio=ratio,
            warmup_steps=warmup,
            decay_fraction=fraction,
        )
        steps = jnp.arange(total + 3)
        want = np.asarray(jax.jit(jax.vmap(_reference(t, total)))(steps))
        values = {k: np.float32(v) for k, v in optim.schedule_values(t, total).items()}
        np.testing.assert_array_equal(np.asarray(traced(steps, values)), want)


def _params(preset):
    config = config_lib.apply_preset(config_lib.default_config(), preset)
    config.model.update(d_model=32, n_heads=2, n_kv_heads=0, d_ff=64, vocab_size=64)
    shapes = jax.eval_shape(
        lambda: Transformer(ModelConfig.from_config(config.model)).init(
            jax.random.key(0), jnp.zeros((1, 8), jnp.int32)
        )["params"]
    )
    return nn.meta.unbox(shapes)


def _flat(tree):
    return {
        "/".join(str(getattr(k, "key", k)) for k in path): v
        for path, v in jax.tree_util.tree_flatten_with_path(tree)[0]
    }


def test_weight_decay_mask_excludes_norms_biases_and_embeddings():
    mask = _flat(optim.weight_decay_mask(_params("gpt2-tiny")))  # biases, LayerNorm, learned pos
    decayed = {k for k, v in mask.items() if v}
    assert decayed == {
        "layers/attn/query",
        "layers/attn/key",
        "layers/attn/value",
        "layers/attn/out",
        "layers/mlp/up",
        "layers/mlp/down",
    }
    assert not mask["layers/attn/query_bias"] and not mask["layers/attn_norm/bias"]
    assert not mask["final_norm/scale"] and not mask["token_embed"] and not mask["pos_embed"]
    with_embed = _flat(optim.weight_decay_mask(_params("gpt2-tiny"), decay_embeddings=True))
    assert with_embed["token_embed"] and with_embed["pos_embed"]
    assert not with_embed["layers/mlp_norm/scale"]


def test_optimizer_decays_only_masked_params_and_clips():
    params = {"dense": {"kernel": jnp.ones((4, 4))}, "norm": {"scale": jnp.ones((4,))}}
    t = _train_cfg(schedule="constant", warmup_steps=0, lr=0.1, weight_decay=0.5)
    tx = optim.make_optimizer(t, optim.make_schedule(t, 10))
    zero_grads = jax.tree.map(jnp.zeros_like, params)
    updates, _ = tx.update(zero_grads, tx.init(params), params)
    new = optax.apply_updates(params, updates)
    np.testing.assert_allclose(new["dense"]["kernel"], 1 - 0.1 * 0.5)  # decoupled decay
    np.testing.assert_allclose(new["norm"]["scale"], 1.0)
    # Clipping: llm_jax's optimizer scales a huge gradient to global norm grad_clip before
    # Adam sees it, so Adam's first moment after one step is (1 - b1) * the clipped gradient.
    huge = jax.tree.map(lambda p: 1e6 * jnp.ones_like(p), params)

    def first_moment_norm(grad_clip):
        t = _train_cfg(grad_clip=grad_clip, b1=0.9)
        opt = optim.make_optimizer(t, optim.make_schedule(t, 10))
        _, state = opt.update(huge, opt.init(params), params)
        (adam,) = [s for s in jax.tree.leaves(state, is_leaf=_is_adam) if _is_adam(s)]
        return float(optax.tree.norm(adam.mu))

    assert first_moment_norm(2.0) == pytest.approx(0.1 * 2.0, rel=1e-5)
    assert first_moment_norm(0.0) == pytest.approx(0.1 * 1e6 * np.sqrt(20), rel=1e-5)


def _is_adam(node) -> bool:
    return isinstance(node, optax.ScaleByAdamState)
