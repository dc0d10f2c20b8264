"""Maximal-update parametrization (µP): what changes with width, relative to a base model.

With `model.parametrization = 'mup'` and width multiplier m = d_model / mup_base_width
(Yang et al. 2022, "Tensor Programs V", table 3, in the `mup` package's form for Adam):

- hidden matrices (attention q, k, v, out; MLP gate, up, down; both dimensions grow with
  width): init std divided by sqrt(m), Adam learning rate divided by m;
- vector-like parameters (embeddings, norm scales, biases) and the output layer (one
  dimension, the vocabulary, is fixed): init and learning rate unchanged;
- output logits multiplied by 1/m (the `mup` package's MuReadout), the LM head's and a
  classification head's alike; with `embed_scale` the embeddings are multiplied by the
  base's sqrt(d_model / m), so the inputs do not grow with width;
- attention scores q.k / K instead of q.k / sqrt(K), times sqrt(K_0) so the base model's
  scale is unchanged, K_0 being the base model's head_dim, `mup_base_head_dim`. The
  width can grow two ways: by widening heads at a fixed n_heads (`mup_base_head_dim=0`:
  K_0 = K / m), or by adding heads at a fixed head_dim (`mup_base_head_dim = head_dim`,
  as `sweep.SizeRules` sets it: K_0 = K, so the scale stays SP's 1/sqrt(K)).

The rules assume that every hidden width grows by m: d_model, n_heads * head_dim (the
out-projection's fan-in), n_kv_heads * head_dim and d_ff. With GQA that means a fixed
group size (n_kv_heads grows with n_heads when heads are added); a sweep that keeps
n_kv_heads fixed while adding heads keeps k and v's output width fixed, which µP would
treat as a readout (init std / m rather than / sqrt(m)) and this module does not.
Depth is not covered either: sizes that also grow n_layers need depth-µP, not this.

At m = 1 every rule is the identity, so µP at the base width is standard parametrization.
'sp' (the default) leaves the model and optimizer exactly as they were. Sweeps tune the
learning rate once at the base width and keep it (`SizeRules(mup=True)`).
"""

from __future__ import annotations

import math
from typing import Any

import jax

from llm_jax import trees

HIDDEN = "hidden"  # optimizer partition of the matrices whose Adam LR is divided by m
VECTOR = "vector"
_HIDDEN_NAMES = {"attn": ("query", "key", "value", "out"), "mlp": ("gate", "up", "down")}


def width_mult(cfg: Any) -> float:
    """m = d_model / mup_base_width under µP (0: the model is its own base), else 1."""
    if cfg.parametrization != "mup" or not cfg.mup_base_width:
        return 1.0
    return cfg.d_model / cfg.mup_base_width


def hidden_init_scale(cfg: Any) -> float:
    """Factor on the init std of hidden matrices: 1 / sqrt(m)."""
    return 1.0 / math.sqrt(width_mult(cfg))


def base_head_dim(cfg: Any) -> float:
    """K_0, the base model's head_dim: mup_base_head_dim, else K / m (heads widen)."""
    return cfg.mup_base_head_dim or cfg.head_dim / width_mult(cfg)


def attention_scale(cfg: Any) -> float:
    """Multiplier of q.k: 1 / sqrt(K) (SP), sqrt(K_0) / K (µP)."""
    if cfg.parametrization != "mup":
        return 1.0 / math.sqrt(cfg.head_dim)
    return math.sqrt(base_head_dim(cfg)) / cfg.head_dim


def scale_logits(cfg: Any, logits: jax.Array) -> jax.Array:
    """Output logits times 1/m under µP; SP logits are returned untouched."""
    if cfg.parametrization != "mup":
        return logits
    return logits / width_mult(cfg)


def param_labels(params: Any) -> Any:
    """HIDDEN or VECTOR for each parameter (by name, so scanned layers label alike)."""

    def label(path, _leaf) -> str:
        # The name right after 'attn' / 'mlp' is the parameter's: a boxed leaf's path
        # continues with 'value', and biases and norms have names of their own.
        names = trees.key_names(path)
        pairs = zip(names, names[1:], strict=False)
        return HIDDEN if any(b in _HIDDEN_NAMES.get(a, ()) for a, b in pairs) else VECTOR

    return jax.tree_util.tree_map_with_path(label, params)


def lr_multipliers(cfg: Any) -> dict[str, float]:
    """Adam learning-rate factor of each partition of `param_labels`."""
    return {HIDDEN: 1.0 / width_mult(cfg), VECTOR: 1.0}
