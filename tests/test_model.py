"""Model tests on tiny shapes: switches, causality, positions, norms, GQA, decode cache.

Compiling dominates on a 2-core CPU, so models are built once per shape (`_build`) and
most tests share the token shape [2, 9] and four position configs.
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tiny_run import tiny_model as tiny

from llm_jax import model as model_lib

# One config per position scheme; together they also cover MQA, GQA and unscanned layers.
POSITION_CONFIGS = [
    dict(positions="sinusoidal", n_kv_heads=1, scan_layers=False),
    dict(positions="learned"),
    dict(positions="rope", n_kv_heads=2),
    dict(positions="none"),
]
B, L = 2, 9


@functools.cache
def _build(spec):
    model = model_lib.Transformer(spec)
    tokens = jnp.zeros((1, 8), jnp.int32)
    params = jax.jit(lambda k: nn.meta.unbox(model.init(k, tokens)["params"]))(jax.random.key(0))
    decode = jax.jit(functools.partial(model.apply, decode=True, mutable=["cache"]))
    return model, params, jax.jit(model.apply), decode


def build(m):
    """(model, params, jitted apply, jitted decode apply) for config.model `m`, cached."""
    return _build(model_lib.ModelConfig.from_config(m))


def random_tokens(shape, seed=1):
    return jax.random.randint(jax.random.key(seed), shape, 0, 100)


@pytest.mark.parametrize("overrides", POSITION_CONFIGS, ids=lambda o: o["positions"])
def test_causal_for_every_position_scheme(overrides):
    _, params, apply, _ = build(tiny(**overrides))
    tokens = random_tokens((B, L))
    t = 5
    changed = tokens.at[:, t].set((tokens[:, t] + 1) % 100)
    a = apply({"params": params}, tokens)
    b = apply({"params": params}, changed)
    np.testing.assert_array_equal(a[:, :t], b[:, :t])
    assert np.abs(a[:, t:] - b[:, t:]).max() > 1e-4  # later positions do see the change


def test_logits_shape_dtype_and_padding_columns():
    _, params, apply, _ = build(tiny(**POSITION_CONFIGS[2]))
    logits = apply({"params": params}, random_tokens((B, L)))
    assert logits.shape == (B, L, 128) and logits.dtype == jnp.float32
    assert (logits[..., 100:] == model_lib.PAD_LOGIT).all()
    assert (logits[..., :100] > -100).all()
    assert jax.nn.softmax(logits)[..., 100:].max() == 0.0  # padding is never sampled


SWITCHES = [
    dict(
        positions="rope",
        norm="rmsnorm",
        mlp="swiglu",
        qk_norm=True,
        n_kv_heads=2,
        dtype="bfloat16",
        head_dim=16,
    ),
    dict(
        positions="learned",
        norm="layernorm",
        mlp="gelu",
        norm_bias=True,
        attn_bias=True,
        mlp_bias=True,
        tie_embeddings=True,
        scan_layers=False,
        remat="full",
    ),
    dict(
        positions="sinusoidal",
        norm_position="post",
        mlp="relu",
        norm="layernorm",
        embed_scale=True,
        scaled_residual_init=False,
        remat="full",
    ),
    dict(
        positions="none",
        causal=False,
        mlp="swiglu",
        n_kv_heads=1,
        mlp_bias=True,
        remat="save_dots",
        dropout=0.1,
    ),
]


@pytest.mark.parametrize(
    "overrides", SWITCHES, ids=lambda o: "-".join(f"{k}={v}" for k, v in list(o.items())[:4])
)
def test_switch_combinations_forward_backward_finite(overrides):
    m = tiny(**overrides)
    model, params, _, _ = build(m)
    tokens = random_tokens((B, 8))

    @jax.jit
    def loss_and_grad(p, key):
        def loss(p):
            logits = model.apply({"params": p}, tokens, deterministic=False, rngs={"dropout": key})
            logp = jax.nn.log_softmax(logits)
            return -jnp.take_along_axis(logp, tokens[..., None], -1).mean()

        return jax.value_and_grad(loss)(p)

    value, grads = loss_and_grad(params, jax.random.key(1))
    assert np.isfinite(value) and 3.0 < value < 7.0  # near log(100) at init
    leaves = jax.tree.leaves(grads)
    assert all(np.isfinite(g).all() for g in leaves)
    assert all(float(jnp.abs(g).max()) > 0 for g in leaves)  # every param gets a gradient
    other, _ = loss_and_grad(params, jax.random.key(2))
    assert (other != value) == (m.dropout > 0)  # dropout, and only dropout, draws rng


def test_sinusoidal_matches_paper_formula():
    d = 16
    pe = np.asarray(model_lib.sinusoidal_embedding(jnp.arange(50)[None], d))[0]
    for pos in (0, 1, 17, 49):
        for i in range(d // 2):
            angle = pos / 10000 ** (2 * i / d)
            assert pe[pos, 2 * i] == pytest.approx(np.sin(angle), abs=1e-5)
            assert pe[pos, 2 * i + 1] == pytest.approx(np.cos(angle), abs=1e-5)


def test_rope_dot_product_depends_only_on_relative_position():
    q, k = jax.random.normal(jax.random.key(0), (2, 1, 1, 1, 16))
    inv_freq = model_lib.rope_frequencies(model_lib.ModelConfig.from_config(tiny(head_dim=16)))

    def score(pq, pk):
        rq = model_lib.apply_rope(q, jnp.array([[pq]]), inv_freq)
        rk = model_lib.apply_rope(k, jnp.array([[pk]]), inv_freq)
        return float((rq * rk).sum())

    assert score(3, 1) == pytest.approx(score(10, 8), abs=1e-4)
    assert score(0, 0) == pytest.approx(score(25, 25), abs=1e-4)
    assert score(0, 0) == pytest.approx(float((q * k).sum()), abs=1e-4)  # no rotation at 0
    assert abs(score(3, 1) - score(3, 2)) > 1e-3


def test_llama3_rope_scaling_follows_the_published_rule():
    """Llama 3.1's rule, written out per frequency: long wavelengths / factor, short kept,
    the band between interpolated."""
    m = tiny(
        head_dim=64,
        rope_theta=500000.0,
        rope_scaling="llama3",
        rope_scaling_factor=8.0,
        rope_low_freq_factor=1.0,
        rope_high_freq_factor=4.0,
        rope_original_max_positions=8192,
    )
    scaled = np.asarray(model_lib.rope_frequencies(model_lib.ModelConfig.from_config(m)))
    plain = 500000.0 ** (-np.arange(32) / 32)
    expected = []
    for f in plain:
        wavelen = 2 * np.pi / f
        if wavelen < 8192 / 4.0:
            expected.append(f)
        elif wavelen > 8192 / 1.0:
            expected.append(f / 8.0)
        else:
            smooth = (8192 / wavelen - 1.0) / (4.0 - 1.0)
            expected.append((1 - smooth) * f / 8.0 + smooth * f)
    np.testing.assert_allclose(scaled, expected, rtol=1e-5)
    assert (scaled < plain * 0.99).any() and (scaled == np.float32(plain)).any()


def test_gelu_exact_is_the_erf_form():
    from scipy.special import erf

    x = np.linspace(-4, 4, 81, dtype=np.float32)
    exact = np.asarray(model_lib._ACTIVATIONS["gelu_exact"](jnp.asarray(x)))
    np.testing.assert_allclose(exact, 0.5 * x * (1 + erf(x / np.sqrt(2))), atol=1e-6)
    tanh_form = np.asarray(model_lib._ACTIVATIONS["gelu"](jnp.asarray(x)))
    assert np.abs(exact - tanh_form).max() > 1e-4  # the two forms differ


@pytest.mark.parametrize("remat", ["save_qkv", "save_proj"])
def test_named_remat_policies_give_the_same_gradients(remat):
    tokens = random_tokens((B, 8))

    def grads(m):
        model, params, _, _ = build(m)

        def loss(p):
            logp = jax.nn.log_softmax(model.apply({"params": p}, tokens))
            return -jnp.take_along_axis(logp, tokens[..., None], -1).mean()

        return jax.jit(jax.grad(loss))(params)

    plain, named = grads(tiny()), grads(tiny(remat=remat))
    for a, b in zip(jax.tree.leaves(plain), jax.tree.leaves(named), strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_gqa_equals_mha_with_repeated_kv_heads():
    _, params, gqa_apply, _ = build(tiny(**POSITION_CONFIGS[2]))  # 4 query, 2 kv heads
    mha = model_lib.Transformer(
        model_lib.ModelConfig.from_config(tiny(positions="rope", n_kv_heads=4))
    )
    # Each kv head serves n_heads / n_kv_heads consecutive query heads.
    attn = dict(params["layers"]["attn"])
    for name in ("key", "value"):
        attn[name] = jnp.repeat(attn[name], 2, axis=2)  # [layers, D, G, K] -> [.., H, K]
    mha_params = dict(params, layers=dict(params["layers"], attn=attn))
    tokens = random_tokens((B, L))
    np.testing.assert_allclose(
        gqa_apply({"params": params}, tokens),
        jax.jit(mha.apply)({"params": mha_params}, tokens),
        atol=1e-5,
    )


def _block(norm, where):
    spec = model_lib.ModelConfig.from_config(tiny(norm=norm, norm_position=where))
    block = model_lib.Block(spec)
    positions = jnp.broadcast_to(jnp.arange(6), (2, 6))
    x = jnp.zeros((2, 6, 32))
    params = jax.jit(block.init)(jax.random.key(1), x, positions, None, None)
    return jax.jit(lambda v: block.apply(params, v, positions, None, None)[0])


@pytest.mark.parametrize("norm", ["rmsnorm", "layernorm"])
def test_post_norm_block_output_is_normalised(norm):
    # "Add & Norm": every position leaves the block with unit RMS (unit std and zero mean
    # for LayerNorm), since norm scales start at 1 and biases at 0.
    x = 3.0 * jax.random.normal(jax.random.key(0), (2, 6, 32))
    y = _block(norm, "post")(x)
    spread = jnp.sqrt((y * y).mean(-1)) if norm == "rmsnorm" else y.std(-1)
    np.testing.assert_allclose(spread, 1.0, atol=1e-3)
    if norm == "layernorm":
        np.testing.assert_allclose(y.mean(-1), 0.0, atol=1e-4)


def test_pre_norm_block_keeps_the_residual_path_untouched():
    # For a huge input the sublayers see only norm(x), so the block adds a bounded update
    # and its output keeps the input's scale (a post-norm block would squash it to 1).
    big = 1000.0 * jax.random.normal(jax.random.key(0), (2, 6, 32))
    y = _block("rmsnorm", "pre")(big)
    assert float(jnp.abs(y - big).max()) < 10.0
    assert float(jnp.sqrt((y * y).mean())) > 500.0


def param_shapes(m):
    model = model_lib.Transformer(model_lib.ModelConfig.from_config(m))
    return jax.eval_shape(
        lambda: nn.meta.unbox(model.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"])
    )


def test_final_norm_only_for_pre_norm():
    assert "final_norm" in param_shapes(tiny(norm_position="pre"))
    assert "final_norm" not in param_shapes(tiny(norm_position="post"))


def test_scan_and_loop_layers_agree():
    _, params, apply, _ = build(tiny(**POSITION_CONFIGS[1]))
    looped = model_lib.Transformer(
        model_lib.ModelConfig.from_config(tiny(positions="learned", scan_layers=False))
    )
    loop_params = {k: v for k, v in params.items() if k != "layers"}
    for i in range(2):
        loop_params[f"layer_{i}"] = jax.tree.map(lambda a, i=i: a[i], params["layers"])
    tokens = random_tokens((B, L))
    np.testing.assert_allclose(
        apply({"params": params}, tokens),
        jax.jit(looped.apply)({"params": loop_params}, tokens),
        atol=1e-5,
    )


def test_params_carry_logical_axes():
    model = model_lib.Transformer(model_lib.ModelConfig.from_config(tiny(n_kv_heads=2)))
    boxed = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 4), jnp.int32))
    specs = nn.get_partition_spec(boxed["params"])
    assert tuple(specs["token_embed"]) == ("vocab", "embed")
    assert tuple(specs["lm_head"]) == ("embed", "vocab")
    assert tuple(specs["layers"]["attn"]["key"]) == ("layers", "embed", "kv_heads", "kv")
    assert tuple(specs["layers"]["attn"]["out"]) == ("layers", "heads", "kv", "embed")
    assert tuple(specs["layers"]["mlp"]["down"]) == ("layers", "mlp", "embed")


def test_residual_init_is_scaled():
    _, params, _, _ = build(tiny(**POSITION_CONFIGS[3]))  # 2 layers
    mlp = params["layers"]["mlp"]
    assert float(mlp["up"].std()) == pytest.approx(0.02, rel=0.06)
    assert float(mlp["down"].std()) == pytest.approx(0.02 / 2.0, rel=0.06)  # 1/sqrt(2*2)
    assert float(params["layers"]["attn"]["out"].std()) == pytest.approx(0.01, rel=0.1)


def test_forced_cudnn_on_cpu_is_a_clear_error():
    forced = model_lib.Transformer(model_lib.ModelConfig.from_config(tiny(attention_impl="cudnn")))
    with pytest.raises(ValueError, match="cudnn.*backend is cpu.*float32"):
        jax.eval_shape(forced.init, jax.random.key(0), jnp.zeros((1, 4), jnp.int32))
    assert model_lib.choose_attention_impl(model_lib.ModelConfig.from_config(tiny())) == "xla"
    # Inspect mode writes attention out on any backend: a run trained with cuDNN
    # attention can still be inspected on a CPU.
    _, params, _, _ = build(tiny())
    inspect = jax.jit(functools.partial(forced.apply, inspect=True, mutable=["intermediates"]))
    _, sown = inspect({"params": params}, jnp.zeros((1, 4), jnp.int32))
    assert "intermediates" in sown


# --- segments and the decode path --------------------------------------------------------


def test_packed_documents_equal_each_alone():
    _, params, apply, _ = build(tiny(**POSITION_CONFIGS[1]))  # learned positions
    doc_a, doc_b = random_tokens((B, 4), seed=4), random_tokens((B, 5), seed=5)
    packed = jnp.concatenate([doc_a, doc_b], axis=1)
    segments = jnp.array([[1] * 4 + [2] * 5] * B)
    out = apply({"params": params}, packed, segment_ids_BxL=segments)
    # Alone: each document first, junk after it (which a causal model cannot see).
    alone_a = apply({"params": params}, packed)[:, :4]
    alone_b = apply({"params": params}, jnp.concatenate([doc_b, doc_a], axis=1))[:, :5]
    np.testing.assert_allclose(out[:, :4], alone_a, atol=1e-5)
    np.testing.assert_allclose(out[:, 4:], alone_b, atol=1e-5)


def decode_stepwise(m, tokens, positions, segments, prefill=5):
    """Logits from a prefill of `prefill` tokens, then one token per call."""
    model, params, _, decode = build(m)
    cache = model_lib.init_cache(model_lib.ModelConfig.from_config(m), tokens.shape[0], 16)
    outs = []
    for start, stop in [(0, prefill)] + [(t, t + 1) for t in range(prefill, tokens.shape[1])]:
        logits, state = decode(
            {"params": params, "cache": cache},
            tokens[:, start:stop],
            positions_BxL=positions[:, start:stop],
            segment_ids_BxL=segments[:, start:stop],
        )
        cache = state["cache"]
        outs.append(logits)
    assert int(cache["index"]) == tokens.shape[1]
    return jnp.concatenate(outs, axis=1)


@pytest.mark.parametrize("overrides", POSITION_CONFIGS, ids=lambda o: o["positions"])
def test_cached_decoding_equals_full_forward(overrides):
    m = tiny(**overrides)
    _, params, apply, _ = build(m)
    tokens = random_tokens((B, L))
    full = apply({"params": params}, tokens)
    positions = jnp.broadcast_to(jnp.arange(L), (B, L))
    got = decode_stepwise(m, tokens, positions, jnp.ones((B, L), jnp.int32))
    np.testing.assert_allclose(got, full, atol=1e-5)


@pytest.mark.parametrize("overrides", POSITION_CONFIGS[1:3], ids=lambda o: o["positions"])
def test_left_padded_prompt_matches_unpadded(overrides):
    # The sampler's batch: row 0 a 6-token prompt left-padded by 3, row 1 a 9-token one.
    m = tiny(**overrides)
    _, params, apply, _ = build(m)
    prompts = random_tokens((B, L), seed=7)
    pad = 3
    padded = prompts.at[0].set(jnp.concatenate([jnp.full((pad,), 5), prompts[0, :6]]))
    segments = jnp.array([[0] * pad + [1] * 6, [1] * L])
    positions = jnp.array([[0] * pad + list(range(6)), list(range(L))])
    expected = apply({"params": params}, prompts)  # row 0's first 6: its prompt alone
    got = decode_stepwise(m, padded, positions, segments)
    np.testing.assert_allclose(got[0, pad:], expected[0, :6], atol=1e-5)
    np.testing.assert_allclose(got[1], expected[1], atol=1e-5)
    # The full forward derives the same positions from the segment ids by itself.
    direct = apply({"params": params}, padded, segment_ids_BxL=segments)
    np.testing.assert_allclose(direct[0, pad:], expected[0, :6], atol=1e-5)


def test_cache_layout():
    cache = model_lib.init_cache(
        model_lib.ModelConfig.from_config(tiny(n_kv_heads=2)), batch=3, max_len=16
    )
    assert cache["layers"]["attn"]["key"].shape == (2, 3, 16, 2, 8)  # [layers, B, S, G, K]
    assert cache["segment_ids"].shape == (3, 16) and int(cache["index"]) == 0
    assert not cache["segment_ids"].any()  # every slot starts empty
    loop = model_lib.init_cache(
        model_lib.ModelConfig.from_config(tiny(scan_layers=False, dtype="bfloat16")), 1, 8
    )
    assert loop["layer_1"]["attn"]["value"].shape == (1, 8, 4, 8)
    assert loop["layer_1"]["attn"]["value"].dtype == jnp.bfloat16
    with pytest.raises(ValueError, match="learned position table"):
        model_lib.init_cache(model_lib.ModelConfig.from_config(tiny(positions="learned")), 1, 64)
