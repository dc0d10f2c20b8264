"""A configurable decoder-only Transformer in Flax Linen, readable top to bottom.

Every architectural choice is a field of `config.model` (llm_jax/config.py), frozen into
a `ModelConfig`. The apply contracts (logits, segment ids, the KV-cache decode path, the
inspect mode, logical axes) are in docs/ARCHITECTURE.md.

Tensor-name letters (each tensor name ends in its shape):
    B batch         L length of the queries (the tokens passed in)
    S length of the keys / cache slots        D d_model
    H query heads   G key/value heads         K head_dim
    F d_ff          V padded vocab            N heads of either kind (H or G)
    R query heads per key/value head (H / G)  Y layers (n_layers)
    C rotary frequencies (K/2)
"""

from __future__ import annotations

import dataclasses
import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
from jax.ad_checkpoint import checkpoint_name

from llm_jax import config as config_lib
from llm_jax import mup

# Logits of the vocabulary padding columns: exp() of it is exactly 0 in float32, and
# unlike -inf it stays finite under temperature scaling and 0 * logit in a loss.
PAD_LOGIT = -1e9

# Logical axes of activations: named apart from the parameters' (`embed`, `heads`, ...) so
# the rules table maps each without depending on its order (llm_jax/sharding.py).
ACTIVATION_EMBED = ("activation_batch", "activation_length", "activation_embed")
ACTIVATION_HEADS = {
    "heads": ("activation_batch", "activation_length", "activation_heads", "activation_kv"),
    "kv_heads": ("activation_batch", "activation_length", "activation_kv_heads", "activation_kv"),
}
_ACTIVATIONS = {
    "relu": jax.nn.relu,
    "gelu": jax.nn.gelu,  # tanh approximation, as GPT-2 (and HF's "gelu_new")
    "gelu_exact": lambda x: jax.nn.gelu(x, approximate=False),  # erf, as torch's nn.GELU()
}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """`config.model` with derived sizes resolved: frozen, hashable, what Linen holds.

    Built once at the boundary (`ModelConfig.from_config(config.model)`); every field is
    documented in llm_jax/config.py.
    """

    vocab_size: int
    padded_vocab: int
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    d_ff: int
    max_seq_len: int
    positions: config_lib.Positions
    rope_theta: float
    rope_scaling: config_lib.RopeScaling
    rope_scaling_factor: float
    rope_low_freq_factor: float
    rope_high_freq_factor: float
    rope_original_max_positions: int
    norm: config_lib.NormKind
    norm_eps: float
    norm_bias: bool
    norm_position: config_lib.NormPosition
    mlp: config_lib.MlpKind
    mlp_bias: bool
    attn_bias: bool
    qk_norm: bool
    causal: bool
    num_classes: int
    pool: config_lib.Pool
    tie_embeddings: bool
    embed_scale: bool
    init_std: float
    scaled_residual_init: bool
    dropout: float
    dtype: config_lib.ComputeDtype
    param_dtype: config_lib.ParamDtype
    scan_layers: bool
    remat: config_lib.Remat
    attention_impl: config_lib.AttentionImpl
    parametrization: config_lib.Parametrization
    mup_base_width: int
    mup_base_head_dim: int
    cpu_matmul_bias_grads: bool

    @classmethod
    def from_config(cls, model_cfg: ml_collections.ConfigDict) -> ModelConfig:
        """Resolve a `config.model` ConfigDict (derived sizes filled in)."""
        derived = dict(
            n_kv_heads=config_lib.n_kv_heads(model_cfg),
            head_dim=config_lib.head_dim(model_cfg),
            d_ff=config_lib.d_ff(model_cfg),
            padded_vocab=config_lib.padded_vocab(model_cfg),
        )
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {k: model_cfg[k] for k in fields if k not in derived}
        return cls(**values, **derived)


# --- small building blocks ---------------------------------------------------------------


def _param(module: nn.Module, name: str, shape: tuple, axes: tuple, init) -> jax.Array:
    """A parameter carrying logical axis names, cast to the compute dtype."""
    cfg = module.config
    value = module.param(
        name, nn.with_logical_partitioning(init, axes), shape, jnp.dtype(cfg.param_dtype)
    )
    return value.astype(cfg.dtype)


def _init_std(cfg: ModelConfig, residual_output: bool) -> float:
    # Output projections feed the residual stream 2 * n_layers times; scaling their init
    # keeps the stream's variance independent of depth (GPT-2).
    std = cfg.init_std * mup.hidden_init_scale(cfg)  # only hidden matrices come here
    if residual_output and cfg.scaled_residual_init:
        return std / math.sqrt(2 * cfg.n_layers)
    return std


class Norm(nn.Module):
    """LayerNorm or RMSNorm over the last axis, computed in float32."""

    config: ModelConfig
    axis_name: str = "embed"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        s = self.config
        dim = x.shape[-1]
        x32 = x.astype(jnp.float32)
        if s.norm == "layernorm":
            x32 = x32 - x32.mean(-1, keepdims=True)
        y = x32 * jax.lax.rsqrt((x32 * x32).mean(-1, keepdims=True) + s.norm_eps)
        scale = self.param(
            "scale",
            nn.with_logical_partitioning(nn.initializers.ones, (self.axis_name,)),
            (dim,),
            jnp.dtype(s.param_dtype),
        )
        lead = (None,) * (x.ndim - 1)  # broadcast over every axis but the last
        y = y * scale.astype(jnp.float32)[lead]
        if s.norm == "layernorm" and s.norm_bias:
            bias = self.param(
                "bias",
                nn.with_logical_partitioning(nn.initializers.zeros, (self.axis_name,)),
                (dim,),
                jnp.dtype(s.param_dtype),
            )
            y = y + bias.astype(jnp.float32)[lead]
        return y.astype(s.dtype)


def _lookup(table_NxD: jax.Array, ids_BxL: jax.Array, row_axis: str | None) -> jax.Array:
    """Rows `ids` of an embedding table, [B, L, D].

    The table's d_model split (FSDP) is gathered first, as for every weight, so the rows
    come out split by batch like the activations; gathering from the d_model-split table
    made XLA replicate the result and re-split it ("involuntary full rematerialization").
    """
    table_NxD = nn.with_logical_constraint(table_NxD, (row_axis, None))
    return jnp.take(table_NxD, ids_BxL, axis=0)


def _on_cpu() -> bool:
    return jax.default_backend() == "cpu"


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _dense_cpu(x_BxLxI: jax.Array, w: jax.Array, w_is_OxI: bool) -> jax.Array:
    return jnp.einsum("BLI,OI->BLO" if w_is_OxI else "BLI,IO->BLO", x_BxLxI, w)


def _dense_cpu_fwd(x_BxLxI, w, w_is_OxI):
    return _dense_cpu(x_BxLxI, w, w_is_OxI), (x_BxLxI, w)


def _dense_cpu_bwd(w_is_OxI, residuals, g_BxLxO):
    x_BxLxI, w = residuals
    x_NxI = x_BxLxI.reshape(-1, x_BxLxI.shape[-1])
    g_NxO = g_BxLxO.reshape(-1, g_BxLxO.shape[-1])
    if w_is_OxI:
        return jnp.einsum("BLO,OI->BLI", g_BxLxO, w), _rows_product(g_NxO, x_NxI)
    return jnp.einsum("BLO,IO->BLI", g_BxLxO, w), _rows_product(x_NxI, g_NxO)


def _rows_product(a_NxP: jax.Array, b_NxQ: jax.Array) -> jax.Array:
    """a^T b, [P, Q], summed over the N rows. XLA:CPU's kernel is 1.3-3.4x faster with the
    narrower operand first, so a wider `a` is computed as (b^T a)^T: the same values bit for
    bit (the barrier keeps XLA from folding the transpose back into the product)."""
    if a_NxP.shape[1] <= b_NxQ.shape[1]:
        return jnp.einsum("NP,NQ->PQ", a_NxP, b_NxQ)
    return jax.lax.optimization_barrier(jnp.einsum("NQ,NP->QP", b_NxQ, a_NxP)).T


_dense_cpu.defvjp(_dense_cpu_fwd, _dense_cpu_bwd)


def dense(x_BxLxI: jax.Array, w: jax.Array, w_is_OxI: bool = False, **einsum_kw) -> jax.Array:
    """x @ w over the last axis ([I, O] weights, or [O, I] with `w_is_OxI`), [B, L, O].

    On CPU the weight gradient is one 2-D matmul over the B*L rows: XLA:CPU otherwise
    lays the output gradient out transposed and contracts over two axes, which made
    the backward pass of the MLP twice as slow as this (the same values, bit for bit).
    Other backends get the plain einsum, so their programs are unchanged.
    """
    if _on_cpu() and not einsum_kw and x_BxLxI.dtype == w.dtype:
        return _dense_cpu(x_BxLxI, w, w_is_OxI)
    spec = "BLI,OI->BLO" if w_is_OxI else "BLI,IO->BLO"
    return jnp.einsum(spec, x_BxLxI, w, **einsum_kw)


@jax.custom_vjp
def _add_bias_cpu(y_BxLx_: jax.Array, bias: jax.Array) -> jax.Array:
    return y_BxLx_ + bias[None, None]


def _add_bias_cpu_fwd(y_BxLx_, bias):
    return _add_bias_cpu(y_BxLx_, bias), None


def _add_bias_cpu_bwd(_, g_BxLx_):
    g_NxO = g_BxLx_.reshape(-1, math.prod(g_BxLx_.shape[2:]))
    ones_N = jnp.ones(g_NxO.shape[:1], g_NxO.dtype)
    return g_BxLx_, (ones_N @ g_NxO).reshape(g_BxLx_.shape[2:])


_add_bias_cpu.defvjp(_add_bias_cpu_fwd, _add_bias_cpu_bwd)


def add_bias(y_BxLx_: jax.Array, bias: jax.Array, matmul_grad: bool) -> jax.Array:
    """y + bias over the trailing axes. With `matmul_grad` on CPU, the bias gradient sums
    the B*L rows as one matmul (ones @ g): XLA:CPU's own sum walks them in strided
    windows, 20x slower at these sizes, but adds in another order (not bit-identical)."""
    if matmul_grad and _on_cpu():
        return _add_bias_cpu(y_BxLx_, bias)
    return y_BxLx_ + bias[None, None]


def sinusoidal_embedding(positions_BxL: jax.Array, d_model: int) -> jax.Array:
    """Vaswani et al. 2017: PE[p, 2i] = sin(p / 10000^(2i/d)), PE[p, 2i+1] = cos(same)."""
    exponent = jnp.arange(0, d_model, 2, dtype=jnp.float32) / d_model
    angle_BxLxC = positions_BxL[..., None].astype(jnp.float32) / (10000.0**exponent)[None, None]
    pe_BxLxCx2 = jnp.stack([jnp.sin(angle_BxLxC), jnp.cos(angle_BxLxC)], axis=-1)
    return pe_BxLxCx2.reshape(*positions_BxL.shape, -1)[..., :d_model]


def rope_frequencies(cfg: ModelConfig) -> jax.Array:
    """Inverse frequencies [K/2] of the rotary embedding: theta^(-2i/K).

    With `rope_scaling='llama3'` (Llama 3.1) long wavelengths are divided by the factor,
    short ones kept, and the band between interpolated smoothly, as HF's "llama3" type.
    """
    half = cfg.head_dim // 2
    inv_freq_C = cfg.rope_theta ** (-jnp.arange(half, dtype=jnp.float32) / half)
    if cfg.rope_scaling != "llama3":
        return inv_freq_C
    factor, low, high = cfg.rope_scaling_factor, cfg.rope_low_freq_factor, cfg.rope_high_freq_factor
    old_context = cfg.rope_original_max_positions
    wavelen_C = 2 * math.pi / inv_freq_C
    smooth_C = (old_context / wavelen_C - low) / (high - low)
    between_C = (1 - smooth_C) * inv_freq_C / factor + smooth_C * inv_freq_C
    scaled_C = jnp.where(wavelen_C > old_context / low, inv_freq_C / factor, inv_freq_C)
    in_band_C = (wavelen_C >= old_context / high) & (wavelen_C <= old_context / low)
    return jnp.where(in_band_C, between_C, scaled_C)


def apply_rope(x_BxLxNxK: jax.Array, positions_BxL: jax.Array, inv_freq_C: jax.Array) -> jax.Array:
    """Rotary embedding (Su et al. 2021), half-split layout as in HF Llama / GPT-NeoX.

    Pair (i, i + K/2) is rotated by angle p * inv_freq[i] (see `rope_frequencies`), so
    q.k depends on positions only through their difference.
    """
    angle_BxLx1xC = (positions_BxL.astype(jnp.float32)[..., None] * inv_freq_C[None, None])[
        :, :, None, :
    ]
    sin, cos = jnp.sin(angle_BxLx1xC), jnp.cos(angle_BxLx1xC)
    x1, x2 = jnp.split(x_BxLxNxK.astype(jnp.float32), 2, axis=-1)
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x_BxLxNxK.dtype)


def positions_from_segments(segment_ids_BxL: jax.Array) -> jax.Array:
    """Index of each token within its run of equal segment ids (restarts at 0 per run)."""
    idx_L = jnp.arange(segment_ids_BxL.shape[1])
    starts_BxL = jnp.concatenate(
        [
            jnp.ones_like(segment_ids_BxL[:, :1], bool),
            segment_ids_BxL[:, 1:] != segment_ids_BxL[:, :-1],
        ],
        axis=1,
    )
    start_BxL = jax.lax.cummax(jnp.where(starts_BxL, idx_L[None], 0), axis=1)
    return idx_L[None] - start_BxL


def attention_mask(
    q_slot_L: jax.Array,
    k_slot_S: jax.Array,
    seg_q_BxL: jax.Array,
    seg_k_BxS: jax.Array,
    causal: bool,
) -> jax.Array:
    """Boolean [B, 1, L, S]: same segment and, if causal, key slot <= query slot."""
    mask_BxLxS = seg_q_BxL[:, :, None] == seg_k_BxS[:, None, :]
    if causal:
        mask_BxLxS &= k_slot_S[None, None, :] <= q_slot_L[None, :, None]
    return mask_BxLxS[:, None]


def choose_attention_impl(cfg: ModelConfig, decode: bool = False) -> str:
    """'cudnn' or 'xla' for jax.nn.dot_product_attention; raises if forced cudnn can't run."""
    on_gpu = jax.default_backend() == "gpu"
    half = jnp.dtype(cfg.dtype) in (jnp.bfloat16, jnp.float16)
    reasons = [
        why
        for bad, why in [
            (not on_gpu, f"the backend is {jax.default_backend()}, not gpu"),
            (not half, f"model.dtype={cfg.dtype}; cuDNN attention needs bfloat16 or float16"),
            (
                cfg.head_dim % 8 or cfg.head_dim > 128,
                f"head_dim={cfg.head_dim}; cuDNN needs a multiple of 8 and <= 128",
            ),
        ]
        if bad
    ]
    if cfg.attention_impl == "cudnn" and reasons:
        raise ValueError(
            "config.model.attention_impl='cudnn' cannot run: "
            + "; ".join(reasons)
            + ". Set config.model.attention_impl='auto'."
        )
    # Decoding attends one query at a time: memory-bound, nothing for a fused kernel to win.
    if decode or cfg.attention_impl == "xla":
        return "xla"
    return "cudnn" if not reasons else "xla"


# --- attention, MLP, block ---------------------------------------------------------------


class Attention(nn.Module):
    """Multi-head attention with grouped KV heads (G = H: MHA, G = 1: MQA) and a KV cache."""

    config: ModelConfig
    decode: bool = False
    inspect: bool = False

    @nn.compact
    def __call__(
        self,
        x_BxLxD: jax.Array,
        positions_BxL: jax.Array,
        mask_Bx1xLxS: jax.Array | None,
        cache_slot: jax.Array | None,
    ) -> jax.Array:
        s = self.config
        D, H, G, K = s.d_model, s.n_heads, s.n_kv_heads, s.head_dim
        normal = nn.initializers.normal(_init_std(s, residual_output=False))
        zeros = nn.initializers.zeros

        def project(name: str, n_heads: int, head_axis: str) -> jax.Array:
            w_DxNxK = _param(self, name, (D, n_heads, K), ("embed", head_axis, "kv"), normal)
            y_BxLxNxK = dense(x_BxLxD, w_DxNxK.reshape(D, n_heads * K)).reshape(
                *x_BxLxD.shape[:2], n_heads, K
            )
            if s.attn_bias:
                bias_NxK = _param(self, name + "_bias", (n_heads, K), (head_axis, "kv"), zeros)
                y_BxLxNxK = add_bias(y_BxLxNxK, bias_NxK, s.cpu_matmul_bias_grads)
            if s.qk_norm and name != "value":
                y_BxLxNxK = Norm(s, axis_name="kv", name=name + "_norm")(y_BxLxNxK)
            if s.positions == "rope" and name != "value":
                y_BxLxNxK = apply_rope(y_BxLxNxK, positions_BxL, rope_frequencies(s))
            y_BxLxNxK = checkpoint_name(y_BxLxNxK, f"{name}_proj")
            return nn.with_logical_constraint(y_BxLxNxK, ACTIVATION_HEADS[head_axis])

        q_BxLxHxK = project("query", H, "heads")
        k_BxLxGxK = project("key", G, "kv_heads")
        v_BxLxGxK = project("value", G, "kv_heads")

        if self.decode:
            k_BxSxGxK = self._append_to_cache("key", k_BxLxGxK, cache_slot)
            v_BxSxGxK = self._append_to_cache("value", v_BxLxGxK, cache_slot)
        else:
            k_BxSxGxK, v_BxSxGxK = k_BxLxGxK, v_BxLxGxK

        # On CPU the written-out form is faster than the library's XLA path (no vmap over
        # heads); a forced 'cudnn' still goes to choose_attention_impl, which refuses it.
        if self.inspect or (_on_cpu() and s.attention_impl != "cudnn"):
            out_BxLxHxK = self._explicit_attention(q_BxLxHxK, k_BxSxGxK, v_BxSxGxK, mask_Bx1xLxS)
        else:
            # Scaled dot-product, softmax in float32 inside both implementations; without a
            # mask the kernel applies the causal mask itself (cuDNN's fast path).
            out_BxLxHxK = jax.nn.dot_product_attention(
                q_BxLxHxK,
                k_BxSxGxK,
                v_BxSxGxK,
                mask=mask_Bx1xLxS,
                is_causal=mask_Bx1xLxS is None and s.causal,
                scale=mup.attention_scale(s),
                implementation=choose_attention_impl(s, self.decode),
            )
        out_BxLxHxK = nn.with_logical_constraint(out_BxLxHxK, ACTIVATION_HEADS["heads"])

        w_HxKxD = _param(
            self,
            "out",
            (H, K, D),
            ("heads", "kv", "embed"),
            nn.initializers.normal(_init_std(s, residual_output=True)),
        )
        y_BxLxD = dense(
            out_BxLxHxK.reshape(*out_BxLxHxK.shape[:2], H * K), w_HxKxD.reshape(H * K, D)
        )
        if s.attn_bias:
            bias_D = _param(self, "out_bias", (D,), ("embed",), zeros)
            y_BxLxD = add_bias(y_BxLxD, bias_D, s.cpu_matmul_bias_grads)
        return checkpoint_name(y_BxLxD, "attn_out")

    def _explicit_attention(self, q_BxLxHxK, k_BxSxGxK, v_BxSxGxK, mask_Bx1xLxS):
        """The fused kernel's computation written out, to sow its weights [B, H, L, S]."""
        B, L, H, K = q_BxLxHxK.shape
        S, G = k_BxSxGxK.shape[1:3]
        if mask_Bx1xLxS is None:  # what is_causal means to the kernel
            ones_BxL = jnp.ones((B, L), jnp.int32)
            mask_Bx1xLxS = attention_mask(
                jnp.arange(L), jnp.arange(S), ones_BxL, ones_BxL, self.config.causal
            )
        # Query head h reads key/value head h // (H / G), as the kernel groups them.
        q_BxLxGxRxK = q_BxLxHxK.reshape(B, L, G, H // G, K)
        scores_BxGxRxLxS = jnp.einsum(
            "BLGRK,BSGK->BGRLS", q_BxLxGxRxK, k_BxSxGxK, preferred_element_type=jnp.float32
        ) * mup.attention_scale(self.config)
        scores_BxGxRxLxS = jnp.where(
            mask_Bx1xLxS[:, :, None], scores_BxGxRxLxS, jnp.finfo(jnp.float32).min
        )
        weights_BxGxRxLxS = jax.nn.softmax(scores_BxGxRxLxS, axis=-1)
        self.sow("intermediates", "attention_weights", weights_BxGxRxLxS.reshape(B, H, L, S))
        out_BxLxGxRxK = jnp.einsum(
            "BGRLS,BSGK->BLGRK", weights_BxGxRxLxS, v_BxSxGxK.astype(jnp.float32)
        )
        return out_BxLxGxRxK.reshape(B, L, H, K).astype(q_BxLxHxK.dtype)

    def _append_to_cache(
        self, name: str, new_BxLxGxK: jax.Array, cache_slot: jax.Array
    ) -> jax.Array:
        # Created with the input's shape when init_cache traces a max_len-long input.
        init = nn.with_logical_partitioning(jnp.zeros, ACTIVATION_HEADS["kv_heads"])
        cached = self.variable("cache", name, init, new_BxLxGxK.shape, new_BxLxGxK.dtype)
        cached.value = jax.lax.dynamic_update_slice(
            cached.value, new_BxLxGxK.astype(cached.value.dtype), (0, cache_slot, 0, 0)
        )
        return cached.value


class MLP(nn.Module):
    """Position-wise feed-forward: relu / gelu (tanh form, GPT-2) / gelu_exact (erf) / swiglu."""

    config: ModelConfig

    @nn.compact
    def __call__(self, x_BxLxD: jax.Array) -> jax.Array:
        s = self.config
        D, F = s.d_model, s.d_ff
        normal = nn.initializers.normal(_init_std(s, residual_output=False))
        zeros = nn.initializers.zeros

        def up(name: str) -> jax.Array:
            h_BxLxF = dense(x_BxLxD, _param(self, name, (D, F), ("embed", "mlp"), normal))
            if s.mlp_bias:
                bias_F = _param(self, name + "_bias", (F,), ("mlp",), zeros)
                h_BxLxF = add_bias(h_BxLxF, bias_F, s.cpu_matmul_bias_grads)
            return checkpoint_name(h_BxLxF, f"mlp_{name}")

        if s.mlp == "swiglu":
            h_BxLxF = jax.nn.silu(up("gate")) * up("up")
        else:
            h_BxLxF = _ACTIVATIONS[s.mlp](up("up"))
        h_BxLxF = nn.with_logical_constraint(
            h_BxLxF, ("activation_batch", "activation_length", "activation_mlp")
        )
        y_BxLxD = dense(
            h_BxLxF,
            _param(
                self,
                "down",
                (F, D),
                ("mlp", "embed"),
                nn.initializers.normal(_init_std(s, residual_output=True)),
            ),
        )
        if s.mlp_bias:
            bias_D = _param(self, "down_bias", (D,), ("embed",), zeros)
            y_BxLxD = add_bias(y_BxLxD, bias_D, s.cpu_matmul_bias_grads)
        return checkpoint_name(y_BxLxD, "mlp_down")


class Block(nn.Module):
    """One layer. pre: x + f(norm(x)); post ("Add & Norm", 2017): norm(x + f(x))."""

    config: ModelConfig
    deterministic: bool = True
    decode: bool = False
    inspect: bool = False

    @nn.compact
    def __call__(
        self,
        x_BxLxD: jax.Array,
        positions_BxL: jax.Array,
        mask_Bx1xLxS: jax.Array | None,
        cache_slot: jax.Array | None,
    ):
        s = self.config
        drop = nn.Dropout(s.dropout, deterministic=self.deterministic)
        sublayers = [
            (
                "attn",
                lambda h: Attention(s, self.decode, self.inspect, name="attn")(
                    h, positions_BxL, mask_Bx1xLxS, cache_slot
                ),
            ),
            ("mlp", lambda h: MLP(s, name="mlp")(h)),
        ]
        for name, fn in sublayers:
            norm = Norm(s, name=f"{name}_norm")
            if s.norm_position == "pre":
                x_BxLxD = x_BxLxD + drop(fn(norm(x_BxLxD)))
            else:
                x_BxLxD = norm(x_BxLxD + drop(fn(x_BxLxD)))
            x_BxLxD = nn.with_logical_constraint(x_BxLxD, ACTIVATION_EMBED)
        # (carry, output) for nn.scan: inspect mode stacks the residual stream of each layer
        return x_BxLxD, x_BxLxD if self.inspect else None


_PROJECTIONS = ("query_proj", "key_proj", "value_proj", "attn_out", "mlp_gate", "mlp_up")
_REMAT_POLICIES = {
    "full": None,  # save nothing: recompute the whole layer in the backward pass
    # keep the weight matmuls' outputs, recompute the rest (attention scores, elementwise)
    "save_dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    # named saves (checkpoint_name tags above): q, k, v only, or every projection
    "save_qkv": jax.checkpoint_policies.save_only_these_names(*_PROJECTIONS[:3]),
    "save_proj": jax.checkpoint_policies.save_only_these_names(*_PROJECTIONS, "mlp_down"),
}


# --- the model ----------------------------------------------------------------------------


class Transformer(nn.Module):
    """Decoder-only Transformer: `Transformer(ModelConfig.from_config(config.model))`."""

    config: ModelConfig

    @nn.compact
    def __call__(
        self,
        tokens_BxL: jax.Array,
        positions_BxL: jax.Array | None = None,
        segment_ids_BxL: jax.Array | None = None,
        deterministic: bool = True,
        decode: bool = False,
        inspect: bool = False,
    ) -> jax.Array:
        """Float32 logits [B, L, V]; columns >= vocab_size hold PAD_LOGIT.

        With model.num_classes > 0: class logits [B, C] instead (see `pool_hidden`).

        positions_BxL default to arange(L), or with segment_ids to the index within each
        segment (packed documents and left-padded prompts start at 0). segment_ids_BxL:
        attention stays within a segment; 0 marks padding. decode=True appends the tokens
        to the 'cache' collection (see the module docstring) and attends over it; there
        positions default to the cache slots, so a left-padded batch passes its own.

        inspect=True (with mutable=['intermediates']) computes attention explicitly (same
        masks, float32 softmax) and sows into 'intermediates': attn/attention_weights
        [B, H, L, S] of each layer, the residual stream after each layer [Y, B, L, D] and
        its logit lens [Y, B, L, V] (read out by the final norm and output layer; not
        with a classification head).
        """
        s = self.config
        B, L = tokens_BxL.shape
        if decode:
            positions_BxL, mask_Bx1xLxS, cache_slot = self._decode_inputs(
                B, L, positions_BxL, segment_ids_BxL
            )
        else:
            cache_slot = None
            mask_Bx1xLxS = None
            if segment_ids_BxL is not None:
                slot_L = jnp.arange(L)
                mask_Bx1xLxS = attention_mask(
                    slot_L, slot_L, segment_ids_BxL, segment_ids_BxL, s.causal
                )
                if positions_BxL is None:
                    positions_BxL = positions_from_segments(segment_ids_BxL)
            if positions_BxL is None:
                positions_BxL = jnp.broadcast_to(jnp.arange(L), (B, L))

        embed_VxD = _param(
            self,
            "token_embed",
            (s.padded_vocab, s.d_model),
            ("vocab", "embed"),
            nn.initializers.normal(s.init_std),
        )
        x_BxLxD = _lookup(embed_VxD, tokens_BxL, "vocab")
        if s.embed_scale:
            x_BxLxD *= math.sqrt(s.d_model / mup.width_mult(s))  # µP: the base's factor
        if s.positions == "sinusoidal":
            x_BxLxD += sinusoidal_embedding(positions_BxL, s.d_model).astype(s.dtype)
        elif s.positions == "learned":
            pos_PxD = _param(
                self,
                "pos_embed",
                (s.max_seq_len, s.d_model),
                (None, "embed"),
                nn.initializers.normal(s.init_std),
            )
            x_BxLxD += _lookup(pos_PxD, positions_BxL, None)
        x_BxLxD = nn.Dropout(s.dropout, deterministic=deterministic)(x_BxLxD)
        x_BxLxD = nn.with_logical_constraint(x_BxLxD, ACTIVATION_EMBED)

        x_BxLxD, residual_YxBxLxD = self._layers(
            x_BxLxD, positions_BxL, mask_Bx1xLxS, cache_slot, deterministic, decode, inspect
        )
        if inspect:
            self.sow("intermediates", "residual", residual_YxBxLxD)
        if inspect and not s.num_classes:
            # Logit lens: the final norm and output layer below read the residual stream of
            # every layer too, as Y * B rows appended to the batch and split off at the end.
            x_BxLxD = jnp.concatenate([x_BxLxD, residual_YxBxLxD.reshape(-1, L, s.d_model)])
        if s.norm_position == "pre":  # post-norm blocks already end in a norm
            x_BxLxD = Norm(s, name="final_norm")(x_BxLxD)
        if s.num_classes:
            return _class_logits(self, x_BxLxD, segment_ids_BxL)

        # Float32 logits; asking for them when they already are would skip dense's CPU path.
        f32_out = {} if x_BxLxD.dtype == jnp.float32 else {"preferred_element_type": jnp.float32}
        if s.tie_embeddings:
            logits_BxLxV = dense(x_BxLxD, embed_VxD, w_is_OxI=True, **f32_out)
        else:
            head_DxV = _param(
                self,
                "lm_head",
                (s.d_model, s.padded_vocab),
                ("embed", "vocab"),
                nn.initializers.normal(s.init_std),
            )
            logits_BxLxV = dense(x_BxLxD, head_DxV, **f32_out)
        logits_BxLxV = mup.scale_logits(s, logits_BxLxV)
        logits_BxLxV = nn.with_logical_constraint(
            logits_BxLxV, ("activation_batch", "activation_length", "activation_vocab")
        )
        if s.padded_vocab > s.vocab_size:  # a no-op select costs a pass over the logits
            real_V = jnp.arange(s.padded_vocab) < s.vocab_size
            logits_BxLxV = jnp.where(real_V[None, None], logits_BxLxV, PAD_LOGIT)
        if inspect:
            lens_YxBxLxV = logits_BxLxV[B:].reshape(-1, B, L, s.padded_vocab)
            self.sow("intermediates", "logit_lens", lens_YxBxLxV)
            logits_BxLxV = logits_BxLxV[:B]
        return logits_BxLxV

    def _decode_inputs(self, B: int, L: int, positions_BxL, segment_ids_BxL):
        """Advance the cache's index and segment ids; return positions, mask, write slot."""
        if not self.config.causal:
            raise ValueError("decode=True needs a causal model (config.model.causal=True)")
        index = self.variable("cache", "index", lambda: jnp.zeros((), jnp.int32))
        if segment_ids_BxL is None:
            segment_ids_BxL = jnp.ones((B, L), jnp.int32)
        cached_seg = self.variable("cache", "segment_ids", jnp.zeros, (B, L), jnp.int32)
        start = index.value
        cached_seg.value = jax.lax.dynamic_update_slice(
            cached_seg.value, segment_ids_BxL.astype(jnp.int32), (0, start)
        )
        q_slot_L = start + jnp.arange(L)
        mask_Bx1xLxS = attention_mask(
            q_slot_L,
            jnp.arange(cached_seg.value.shape[1]),
            segment_ids_BxL,
            cached_seg.value,
            causal=True,
        )
        index.value = start + L
        if positions_BxL is None:
            positions_BxL = jnp.broadcast_to(q_slot_L, (B, L))
        return positions_BxL, mask_Bx1xLxS, start

    def _layers(
        self, x_BxLxD, positions_BxL, mask_Bx1xLxS, cache_slot, deterministic, decode, inspect
    ):
        """(output, with inspect the residual stream after each layer [Y, B, L, D])."""
        s = self.config
        block = Block
        if s.remat != "none" and not (decode or inspect):  # remat only pays with a backward
            block = nn.remat(Block, policy=_REMAT_POLICIES[s.remat], prevent_cse=not s.scan_layers)
        if s.scan_layers:
            stack = nn.scan(
                block,
                variable_axes={"params": 0, "cache": 0, "intermediates": 0},
                split_rngs={"params": True, "dropout": True},
                in_axes=(nn.broadcast, nn.broadcast, nn.broadcast),
                length=s.n_layers,
                metadata_params={nn.PARTITION_NAME: "layers"},
            )
            return stack(s, deterministic, decode, inspect, name="layers")(
                x_BxLxD, positions_BxL, mask_Bx1xLxS, cache_slot
            )
        residuals = []
        for i in range(s.n_layers):
            x_BxLxD, residual_BxLxD = block(s, deterministic, decode, inspect, name=f"layer_{i}")(
                x_BxLxD, positions_BxL, mask_Bx1xLxS, cache_slot
            )
            residuals.append(residual_BxLxD)
        return x_BxLxD, jnp.stack(residuals) if inspect else None


def pool_hidden(x_BxLxD: jax.Array, real_BxL: jax.Array, pool: str) -> jax.Array:
    """[B, D]: the hidden state of each row's last real token, or the mean over real ones.

    `real_BxL` marks the tokens (False on padding), so left and right padding both work;
    with a causal model only the last token has read the whole row.
    """
    if pool == "mean":
        w_BxLx1 = real_BxL[..., None].astype(jnp.float32)
        total_BxD = (x_BxLxD.astype(jnp.float32) * w_BxLx1).sum(1)
        return total_BxD / jnp.maximum(w_BxLx1.sum(1), 1.0)
    last_B = jnp.max(jnp.where(real_BxL, jnp.arange(real_BxL.shape[1])[None], 0), axis=1)
    return jnp.take_along_axis(x_BxLxD, last_B[:, None, None], axis=1)[:, 0].astype(jnp.float32)


def _class_logits(module: nn.Module, x_BxLxD: jax.Array, segment_ids_BxL) -> jax.Array:
    """The classification head: a linear map of the pooled final hidden state, [B, C]."""
    s = module.config
    real_BxL = jnp.ones(x_BxLxD.shape[:2], bool) if segment_ids_BxL is None else segment_ids_BxL > 0
    x_BxD = pool_hidden(x_BxLxD, real_BxL, s.pool)
    head_DxC = _param(
        module,
        "class_head",
        (s.d_model, s.num_classes),
        ("embed", None),
        nn.initializers.normal(s.init_std),
    )
    bias_C = _param(module, "class_head_bias", (s.num_classes,), (None,), nn.initializers.zeros)
    logits_BxC = jnp.einsum("BD,DC->BC", x_BxD, head_DxC.astype(jnp.float32))
    return mup.scale_logits(s, logits_BxC) + bias_C[None]  # a readout, as the LM head


def unstack_layers(params: dict, n_layers: int) -> dict:
    """Params of a `scan_layers` model in the unscanned layout: 'layers' -> 'layer_<i>'.

    The sampler decodes unscanned: one-token steps through nn.scan, which slices each
    layer's KV cache out of the stacked array and stacks it back, decoded 1.6-2.9x slower
    on a CPU (tools/bench_decode.py). Params already unscanned are returned as they are.
    """
    params = nn.meta.unbox(params)
    if "layers" not in params:
        return params
    out = {name: value for name, value in params.items() if name != "layers"}
    for i in range(n_layers):
        out[f"layer_{i}"] = jax.tree.map(lambda stacked, i=i: stacked[i], params["layers"])
    return out


def init_cache(cfg: ModelConfig, batch: int, max_len: int | None = None) -> dict:
    """An empty 'cache' collection for `batch` rows of `max_len` slots (default max_seq_len).

    Shapes come from tracing the decode path abstractly (no parameter memory); all
    slots start empty (segment 0) and index 0. Pass it as {'params': p, 'cache': cache}.
    """
    max_len = max_len or cfg.max_seq_len
    if cfg.positions == "learned" and max_len > cfg.max_seq_len:
        raise ValueError(
            f"max_len={max_len} exceeds the learned position table "
            f"(model.max_seq_len={cfg.max_seq_len})"
        )
    model = Transformer(cfg)
    tokens_BxS = jnp.zeros((batch, max_len), jnp.int32)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), tokens_BxS, decode=True))
    cache = nn.meta.unbox(shapes["cache"])  # the slots carry logical axes; zeros do not
    return jax.tree.map(lambda a: jnp.zeros(a.shape, a.dtype), cache)
