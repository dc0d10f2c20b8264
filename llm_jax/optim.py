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
import numpy as np
import optax

from llm_jax import mup, trees

Schedule = Callable[[jax.Array | int], jax.Array]


def schedule_values(train_cfg: ml_collections.ConfigDict, total_steps: int) -> dict[str, float]:
    """The numbers a schedule reads, worked out in Python: `schedule_from_values` takes
    them as constants or as traced arrays (the train step's inputs, so that runs differing
    only in these numbers, such as a WSD parent and its cooldowns, share one program)."""
    peak = train_cfg.lr
    low = peak * train_cfg.min_lr_ratio
    warmup = max(0, min(train_cfg.warmup_steps, total_steps))
    decay_steps = max(1, round(train_cfg.decay_fraction * total_steps))
    start = max(warmup, total_steps - decay_steps)
    # 'constant' is the linear WSD formula at a decay progress held at 0.
    inv_decay_span = 0.0 if train_cfg.schedule == "constant" else _reciprocal(total_steps - start)
    return {
        "peak": peak,
        "low": low,
        "range": peak - low,
        "half_range": (peak - low) * 0.5,
        "warmup": warmup,
        "warmup_at_least_1": max(1, warmup),
        "start": start,  # the step a WSD decay starts
        # Reciprocals: XLA turns a division by a constant into a product with its float32
        # reciprocal, so multiplying by these keeps the arithmetic of constant schedules.
        "warmup_rate": float(np.float32(peak) * _reciprocal(warmup)),  # lr per step
        "inv_span": float(_reciprocal(total_steps - warmup)),  # after warmup to the end
        "inv_decay_span": float(inv_decay_span),
    }


def _reciprocal(n: int) -> np.float32:
    return np.float32(1.0) / np.float32(max(1, n))


def program_kind(train_cfg: ml_collections.ConfigDict) -> tuple[str, str]:
    """(formula, decay shape): what the compiled step depends on, beyond the numbers."""
    if train_cfg.schedule == "constant":  # exactly the linear WSD formula before its decay
        return "wsd", "linear"
    return train_cfg.schedule, train_cfg.decay_shape


def schedule_from_values(kind: tuple[str, str], values: dict) -> Schedule:
    """The learning rate as a jittable function of the (0-based) step; `kind` from
    `program_kind`, `values` from `schedule_values` (Python numbers or scalar arrays)."""
    formula, decay_shape = kind
    v = values

    def schedule(step):
        s = jnp.asarray(step, jnp.float32)
        p = jnp.clip((s - v["warmup"]) * v["inv_span"], 0.0, 1.0)
        if formula == "cosine":
            after = v["low"] + v["half_range"] * (1.0 + jnp.cos(jnp.pi * p))
        elif formula == "linear":
            after = v["peak"] - v["range"] * p
        elif formula == "wsd":
            q = jnp.clip((s - v["start"]) * v["inv_decay_span"], 0.0, 1.0)
            if decay_shape == "1-sqrt":
                after = v["low"] + v["range"] * (1.0 - jnp.sqrt(q))
            else:
                after = v["peak"] - v["range"] * q
        elif formula == "rsqrt":
            w = v["warmup_at_least_1"]
            after = v["peak"] * jnp.sqrt(w / jnp.maximum(s, w))
        else:
            raise ValueError(f"unknown schedule {formula!r}")
        # With no warmup, s < 0 never holds.
        return jnp.where(s < v["warmup"], (s + 1.0) * v["warmup_rate"], after)

    return schedule


def make_schedule(train_cfg: ml_collections.ConfigDict, total_steps: int) -> Schedule:
    """The learning rate of `train_cfg` as a jittable function of the (0-based) step."""
    return schedule_from_values(program_kind(train_cfg), schedule_values(train_cfg, total_steps))


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
    schedule: Schedule,
    model_cfg: ml_collections.ConfigDict | None = None,
) -> optax.GradientTransformation:
    """AdamW at `schedule`'s rate (with masked decay) after global-norm clipping.

    Under µP (`model_cfg.parametrization == 'mup'`) each parameter's update is then
    scaled by its partition's learning-rate multiplier (llm_jax/mup.py): AdamW's update,
    decoupled decay included, is proportional to the learning rate, so this is AdamW at
    lr x multiplier per partition, with no extra optimizer state.
    """
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
        return optax.chain(optax.clip_by_global_norm(train_cfg.grad_clip), adamw)
    return adamw
