"""The optimizer: AdamW with a weight-decay mask, learning-rate schedules, clipping.

All schedules share one linear warmup: the rate climbs from lr/warmup to lr over
the first `warmup_steps` steps (step s gets lr*(s+1)/warmup), so the first step
already moves the weights. After warmup, with T = total steps and
lr_min = lr * min_lr_ratio:

  cosine    lr_min + (lr - lr_min) * (1 + cos(pi * p)) / 2,  p = (s - warmup)/(T - warmup)
  linear    lr - (lr - lr_min) * p
  wsd       lr until the last decay_fraction*T steps, then down to lr_min: linear, or
            with decay_shape='1-sqrt' lr_min + (lr - lr_min) * (1 - sqrt(q)), q the
            decay's progress (warmup-stable-decay, Hu et al. 2024 / Hägele et al. 2024)
  constant  lr
  rsqrt     lr * sqrt(warmup / s)  (inverse square root, Vaswani et al. 2017)

Weight decay applies to matrices only: never to norm scales or biases, and to
embeddings only when `train.decay_embeddings` is set. The mask is computed from
parameter names, so it holds with scanned layers too (where a norm scale is 2-D).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import optax

from llm_jax import mup, trees

Schedule = Callable[[jax.Array | int], jax.Array]


def make_schedule(train_cfg: ml_collections.ConfigDict, total_steps: int) -> Schedule:
    """The learning rate as a jittable function of the (0-based) step."""
    peak = train_cfg.lr
    low = peak * train_cfg.min_lr_ratio
    warmup = max(0, min(train_cfg.warmup_steps, total_steps))
    kind = train_cfg.schedule
    decay_steps = max(1, round(train_cfg.decay_fraction * total_steps))

    def schedule(step):
        s = jnp.asarray(step, jnp.float32)
        p = jnp.clip((s - warmup) / max(1, total_steps - warmup), 0.0, 1.0)
        if kind == "cosine":
            after = low + (peak - low) * 0.5 * (1.0 + jnp.cos(jnp.pi * p))
        elif kind == "linear":
            after = peak - (peak - low) * p
        elif kind == "wsd":
            start = max(warmup, total_steps - decay_steps)
            q = jnp.clip((s - start) / max(1, total_steps - start), 0.0, 1.0)
            if train_cfg.decay_shape == "1-sqrt":
                after = low + (peak - low) * (1.0 - jnp.sqrt(q))
            else:
                after = peak - (peak - low) * q
        elif kind == "constant":
            after = jnp.full_like(s, peak)
        elif kind == "rsqrt":
            after = peak * jnp.sqrt(max(1, warmup) / jnp.maximum(s, max(1, warmup)))
        else:
            raise ValueError(f"unknown schedule {kind!r}")
        if warmup == 0:
            return after
        return jnp.where(s < warmup, peak * (s + 1.0) / warmup, after)

    return schedule


def _is_embedding(names: tuple[str, ...]) -> bool:
    return any("embed" in n or n in ("wte", "wpe") for n in names)


def weight_decay_mask(params: Any, decay_embeddings: bool = False) -> Any:
    """A tree of bools like `params`: True where weight decay applies.

    Excluded: biases and norm scales (a leaf named 'scale' or ending in 'bias', or
    any module on the path whose name contains 'norm'), and embeddings (a path component
    containing 'embed') unless `decay_embeddings`. An untied output projection is
    a matrix like any other and is decayed.
    """

    def decays(path, _leaf) -> bool:
        names = tuple(n.lower() for n in trees.key_names(path))
        if names and (names[-1] == "scale" or names[-1].endswith("bias")):
            return False
        if any("norm" in n for n in names):
            return False
        if _is_embedding(names) and not decay_embeddings:
            return False
        return True

    return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(
    train_cfg: ml_collections.ConfigDict,
    total_steps: int,
    model_cfg: ml_collections.ConfigDict | None = None,
) -> tuple[optax.GradientTransformation, Schedule]:
    """AdamW (with masked decay) after global-norm clipping; returns (optimizer, schedule).

    Under µP (`model_cfg.parametrization == 'mup'`) each parameter's update is then
    scaled by its partition's learning-rate multiplier (llm_jax/mup.py): AdamW's update,
    decoupled decay included, is proportional to the learning rate, so this is AdamW at
    lr x multiplier per partition, with no extra optimizer state.
    """
    schedule = make_schedule(train_cfg, total_steps)
    adamw = optax.adamw(
        learning_rate=schedule,
        b1=train_cfg.b1,
        b2=train_cfg.b2,
        eps=train_cfg.eps,
        weight_decay=train_cfg.weight_decay,
        mask=lambda p: weight_decay_mask(p, train_cfg.decay_embeddings),
    )
    if model_cfg is not None and model_cfg.parametrization == "mup":
        multipliers = mup.lr_multipliers(model_cfg)
        adamw = optax.chain(
            adamw,
            optax.stateless(
                lambda updates, _params: jax.tree.map(
                    lambda u, label: u * multipliers[label], updates, mup.param_labels(updates)
                )
            ),
        )
    if train_cfg.grad_clip > 0:
        return optax.chain(optax.clip_by_global_norm(train_cfg.grad_clip), adamw), schedule
    return adamw, schedule
