"""Parameter counts and training FLOPs of the Transformer in llm_jax/model.py.

Everything is computed analytically from `config.model`, using the derived sizes of
llm_jax/config.py (D d_model, H heads, G kv heads, K head_dim, F d_ff, V vocab_size,
Vp padded vocab, n_layers, T = max_seq_len). A test checks the counts against the
initialised params of every preset, and the FLOPs against XLA's own count.

Parameter counts (`param_counts`):
    per layer   attention  D*H*K + 2*D*G*K + H*K*D          (q, k, v, out)
                           + H*K + 2*G*K + D                 (attn_bias)
                           + 2 * norm(K)                     (qk_norm)
                mlp        2*D*F (relu, gelu) or 3*D*F (swiglu)
                           + F + D or 2*F + D                (mlp_bias)
                norms      2 * norm(D); norm(n) = n, or 2n for a LayerNorm with bias
    non_embedding  N = n_layers * per_layer + norm(D) (final norm, pre-norm only).
                   Kaplan et al.'s N: it excludes every vocabulary matrix and the
                   position table, so tying or untying the output layer leaves N unchanged.
    embedding      V*D (tokens) + V*D (untied output layer) + T*D (learned positions)
    total          non_embedding + embedding: real vocabulary rows only;
    vocab_padding  (Vp - V)*D per vocabulary matrix: the rows added for speed, so
                   total + vocab_padding == the number of initialised parameters.

Training FLOPs per token (`flops_per_token`), forward + backward = 3 x forward, where
a matmul of an [m, k] by a [k, n] matrix costs 2*m*k*n (PaLM, Chowdhery et al. 2022,
appendix B):
    six_n      6 * N                                  Kaplan's C ~ 6 N per token
    matmuls    6 * n_layers * (matrix params of one layer)
    attention  12 * n_layers * seq_len * H * K        q.k scores and the weighted sum of
               values, counted over the full seq_len x seq_len matrix (not halved for the
               causal mask: the XLA and cuDNN kernels compute it whole, as PaLM counts)
    lm_head    6 * D * Vp                             the output layer, padding included
    detailed   matmuls + attention + lm_head
Ignored as small: norms, biases, softmax, activations, the embedding lookup, the loss.
"""

from __future__ import annotations

from typing import NamedTuple

import ml_collections

from llm_jax import config as config_lib


class ParamCounts(NamedTuple):
    """Parameter counts of a model config (see the module docstring)."""

    total: int
    non_embedding: int  # Kaplan's N
    embedding: int
    vocab_padding: int


class LayerParams(NamedTuple):
    """Parameters of one Transformer layer."""

    attention: int
    mlp: int
    norms: int
    total: int


class FlopsPerToken(NamedTuple):
    """Training (forward + backward) FLOPs per token (see the module docstring)."""

    six_n: int
    matmuls: int
    attention: int
    lm_head: int
    detailed: int  # the count reported in metrics, MFU, plans and sweeps


def _norm_params(model_cfg: ml_collections.ConfigDict, dim: int) -> int:
    with_bias = model_cfg.norm == "layernorm" and model_cfg.norm_bias
    return dim * (2 if with_bias else 1)


def _matrix_params_per_layer(model_cfg: ml_collections.ConfigDict) -> dict[str, int]:
    """Weights of the matmuls in one layer (no biases, no norms)."""
    D, H = model_cfg.d_model, model_cfg.n_heads
    G, K = config_lib.n_kv_heads(model_cfg), config_lib.head_dim(model_cfg)
    F = config_lib.d_ff(model_cfg)
    return dict(
        attention=2 * D * H * K + 2 * D * G * K, mlp=(3 if model_cfg.mlp == "swiglu" else 2) * D * F
    )


def layer_params(model_cfg: ml_collections.ConfigDict) -> LayerParams:
    """Parameters of one Transformer layer: attention, mlp, norms and their sum."""
    D, H = model_cfg.d_model, model_cfg.n_heads
    G, K = config_lib.n_kv_heads(model_cfg), config_lib.head_dim(model_cfg)
    F = config_lib.d_ff(model_cfg)
    matrices = _matrix_params_per_layer(model_cfg)
    attention = matrices["attention"]
    if model_cfg.attn_bias:
        attention += H * K + 2 * G * K + D
    if model_cfg.qk_norm:
        attention += 2 * _norm_params(model_cfg, K)
    mlp = matrices["mlp"]
    if model_cfg.mlp_bias:
        mlp += (2 * F if model_cfg.mlp == "swiglu" else F) + D
    norms = 2 * _norm_params(model_cfg, D)
    return LayerParams(attention, mlp, norms, total=attention + mlp + norms)


def param_counts(model_cfg: ml_collections.ConfigDict) -> ParamCounts:
    """total, non_embedding (Kaplan's N), embedding, vocab_padding (see module docstring)."""
    D, V = model_cfg.d_model, model_cfg.vocab_size
    vocab_matrices = 1 if model_cfg.tie_embeddings else 2
    non_embedding = model_cfg.n_layers * layer_params(model_cfg).total
    if model_cfg.norm_position == "pre":
        non_embedding += _norm_params(model_cfg, D)
    embedding = vocab_matrices * V * D
    if model_cfg.positions == "learned":
        embedding += model_cfg.max_seq_len * D
    padding = vocab_matrices * (config_lib.padded_vocab(model_cfg) - V) * D
    return ParamCounts(
        total=non_embedding + embedding,
        non_embedding=non_embedding,
        embedding=embedding,
        vocab_padding=padding,
    )


def flops_per_token(model_cfg: ml_collections.ConfigDict, seq_len: int) -> FlopsPerToken:
    """Training (forward + backward) FLOPs per token at context `seq_len`."""
    L = model_cfg.n_layers
    H, K = model_cfg.n_heads, config_lib.head_dim(model_cfg)
    matmuls = 6 * L * sum(_matrix_params_per_layer(model_cfg).values())
    attention = 12 * L * seq_len * H * K
    lm_head = 6 * model_cfg.d_model * config_lib.padded_vocab(model_cfg)
    return FlopsPerToken(
        six_n=6 * param_counts(model_cfg).non_embedding,
        matmuls=matmuls,
        attention=attention,
        lm_head=lm_head,
        detailed=matmuls + attention + lm_head,
    )


def training_flops(n_params: float, tokens: float) -> float:
    """Training compute C = 6 * N * D FLOPs for N parameters and D tokens (Kaplan 2020)."""
    return 6.0 * n_params * tokens
