"""Model tests on tiny shapes: switches, causality, positions, norms, GQA, decode cache."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from llm_jax import config as config_lib
from llm_jax import model as model_lib

POSITIONS = ("sinusoidal", "learned", "rope", "none")


def tiny(**overrides):
    """config.model of a 2-layer, d_model 32 model with vocab 100 (padded to 128)."""
    m = config_lib.default_config().model
    m.update(dict(vocab_size=100, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_seq_len=32))
    m.update(overrides)
    return m


def init(m, length=8, seed=0):
    model = model_lib.Transformer(config=m)
    tokens = jnp.zeros((1, length), jnp.int32)
    return model, nn.meta.unbox(model.init(jax.random.key(seed), tokens)["params"])


def random_tokens(shape, seed=1, vocab=100):
    return jax.random.randint(jax.random.key(seed), shape, 0, vocab)


@pytest.mark.parametrize("positions", POSITIONS)
def test_causal_for_every_position_scheme(positions):
    model, params = init(tiny(positions=positions))
    tokens = random_tokens((2, 12))
    t = 7
    changed = tokens.at[:, t].set((tokens[:, t] + 1) % 100)
    a = model.apply({"params": params}, tokens)
    b = model.apply({"params": params}, changed)
    np.testing.assert_array_equal(a[:, :t], b[:, :t])
    assert np.abs(a[:, t:] - b[:, t:]).max() > 1e-4  # later positions do see the change


def test_logits_shape_dtype_and_padding_columns():
    model, params = init(tiny())
    logits = model.apply({"params": params}, random_tokens((2, 8)))
    assert logits.shape == (2, 8, 128) and logits.dtype == jnp.float32
    assert (logits[..., 100:] == model_lib.PAD_LOGIT).all()
    assert (logits[..., :100] > -100).all()
    # padding never gets probability mass
    assert jax.nn.softmax(logits)[..., 100:].max() == 0.0


SWITCHES = [
    dict(positions="rope", norm="rmsnorm", mlp="swiglu", n_kv_heads=2, qk_norm=True),
    dict(positions="learned", norm="layernorm", norm_bias=True, mlp="gelu", attn_bias=True,
         mlp_bias=True, tie_embeddings=True, scan_layers=False),
    dict(positions="sinusoidal", norm_position="post", norm="layernorm", mlp="relu",
         embed_scale=True, scaled_residual_init=False, remat="full"),
    dict(positions="none", n_kv_heads=1, causal=False, mlp="swiglu", mlp_bias=True,
         remat="save_dots", dropout=0.1),
    dict(positions="rope", dtype="bfloat16", head_dim=16, n_kv_heads=2, qk_norm=True,
         norm="layernorm", scan_layers=False, remat="save_dots", dropout=0.1),
]


@pytest.mark.parametrize("overrides", SWITCHES, ids=lambda o: "-".join(
    f"{k}={v}" for k, v in list(o.items())[:3]))
def test_switch_combinations_forward_backward_finite(overrides):
    m = tiny(**overrides)
    model, params = init(m)
    tokens = random_tokens((2, 8))

    def loss(p):
        logits = model.apply({"params": p}, tokens, deterministic=False,
                             rngs={"dropout": jax.random.key(3)})
        logp = jax.nn.log_softmax(logits)
        return -jnp.take_along_axis(logp, tokens[..., None], -1).mean()

    value, grads = jax.value_and_grad(loss)(params)
    assert np.isfinite(value) and 3.0 < value < 7.0  # near log(100) at init
    leaves = jax.tree.leaves(grads)
    assert all(np.isfinite(g).all() for g in leaves)
    assert sum(float(jnp.abs(g).sum()) for g in leaves) > 0
    if m.dropout:  # dropout active: two rng keys give different outputs
        a, b = (model.apply({"params": params}, tokens, deterministic=False,
                            rngs={"dropout": jax.random.key(k)}) for k in (1, 2))
        assert np.abs(a - b).max() > 0


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

    def score(pq, pk):
        rq = model_lib.apply_rope(q, jnp.array([[pq]]), 10000.0)
        rk = model_lib.apply_rope(k, jnp.array([[pk]]), 10000.0)
        return float((rq * rk).sum())

    assert score(3, 1) == pytest.approx(score(10, 8), abs=1e-4)
    assert score(0, 0) == pytest.approx(score(25, 25), abs=1e-4)
    assert score(0, 0) == pytest.approx(float((q * k).sum()), abs=1e-4)  # no rotation at 0
    assert abs(score(3, 1) - score(3, 2)) > 1e-3


def test_gqa_equals_mha_with_repeated_kv_heads():
    gqa, params = init(tiny(n_kv_heads=2))
    mha, _ = init(tiny(n_kv_heads=4))
    # Each kv head serves n_heads / n_kv_heads consecutive query heads.
    attn = dict(params["layers"]["attn"])
    for name in ("key", "value"):
        attn[name] = jnp.repeat(attn[name], 2, axis=2)  # [layers, D, G, K] -> [.., H, K]
    mha_params = dict(params, layers=dict(params["layers"], attn=attn))
    tokens = random_tokens((2, 10))
    np.testing.assert_allclose(gqa.apply({"params": params}, tokens),
                               mha.apply({"params": mha_params}, tokens), atol=1e-5)
    # n_kv_heads == n_heads is plain MHA: the same as leaving it unset.
    assert model_lib.ModelSpec.from_config(tiny(n_kv_heads=0)).n_kv_heads == 4


@pytest.mark.parametrize("norm", ["rmsnorm", "layernorm"])
def test_norm_placement(norm):
    x = 3.0 * jax.random.normal(jax.random.key(0), (2, 6, 32))
    positions = jnp.broadcast_to(jnp.arange(6), (2, 6))
    outs = {}
    for where in ("pre", "post"):
        spec = model_lib.ModelSpec.from_config(tiny(norm=norm, norm_position=where))
        block = model_lib.Block(spec)
        params = block.init(jax.random.key(1), x, positions, None, None)
        outs[where] = (lambda v, p=params, b=block: b.apply(p, v, positions, None, None)[0])
    # post-norm ("Add & Norm"): every position leaves the block with unit RMS (and zero
    # mean for LayerNorm), since scale starts at 1 and bias at 0.
    y = outs["post"](x)
    np.testing.assert_allclose(jnp.sqrt((y * y).mean(-1)) if norm == "rmsnorm"
                               else y.std(-1), 1.0, atol=1e-3)
    # pre-norm: the residual path is untouched, so for a huge input the block adds only
    # a bounded update to it, and the output keeps the input's scale.
    big = 1000.0 * x
    update = outs["pre"](big) - big
    assert float(jnp.abs(update).max()) < 10.0
    assert float(jnp.sqrt((outs["pre"](big) ** 2).mean())) > 1000.0
    # the final norm exists exactly for pre-norm models
    assert "final_norm" in init(tiny(norm=norm, norm_position="pre"))[1]
    assert "final_norm" not in init(tiny(norm=norm, norm_position="post"))[1]


def test_scan_and_loop_layers_agree():
    scanned, params = init(tiny(scan_layers=True))
    looped, _ = init(tiny(scan_layers=False))
    loop_params = {k: v for k, v in params.items() if k != "layers"}
    for i in range(2):
        loop_params[f"layer_{i}"] = jax.tree.map(lambda a, i=i: a[i], params["layers"])
    tokens = random_tokens((2, 8))
    np.testing.assert_allclose(scanned.apply({"params": params}, tokens),
                               looped.apply({"params": loop_params}, tokens), atol=1e-5)


def test_params_carry_logical_axes():
    model = model_lib.Transformer(config=tiny(n_kv_heads=2))
    boxed = model.init(jax.random.key(0), jnp.zeros((1, 4), jnp.int32))["params"]
    specs = nn.get_partition_spec(boxed)
    assert tuple(specs["token_embed"]) == ("vocab", "embed")
    assert tuple(specs["layers"]["attn"]["key"]) == ("layers", "embed", "kv_heads", "kv")
    assert tuple(specs["layers"]["mlp"]["down"]) == ("layers", "mlp", "embed")


def test_residual_init_is_scaled():
    _, params = init(tiny(n_layers=8, d_model=64, d_ff=256))
    std_in = float(params["layers"]["mlp"]["up"].std())
    std_out = float(params["layers"]["mlp"]["down"].std())
    assert std_in == pytest.approx(0.02, rel=0.05)
    assert std_out == pytest.approx(0.02 / 4.0, rel=0.05)  # 1/sqrt(2 * 8 layers)


def test_forced_cudnn_on_cpu_is_a_clear_error():
    model, params = init(tiny())
    forced = model_lib.Transformer(config=tiny(attention_impl="cudnn"))
    with pytest.raises(ValueError, match="cudnn.*backend is cpu.*float32"):
        forced.apply({"params": params}, random_tokens((1, 4)))
    assert model_lib.choose_attention_impl(model.config) == "xla"


# --- segments and the decode path --------------------------------------------------------


def test_packed_documents_equal_each_alone():
    model, params = init(tiny(positions="learned"))
    doc_a, doc_b = random_tokens((1, 5), seed=4), random_tokens((1, 7), seed=5)
    packed = jnp.concatenate([doc_a, doc_b], axis=1)
    segments = jnp.array([[1] * 5 + [2] * 7])
    out = model.apply({"params": params}, packed, segment_ids_BxL=segments)
    alone_a = model.apply({"params": params}, doc_a)
    alone_b = model.apply({"params": params}, doc_b)
    np.testing.assert_allclose(out[:, :5], alone_a, atol=1e-5)
    np.testing.assert_allclose(out[:, 5:], alone_b, atol=1e-5)


def decode_stepwise(model, params, tokens, prefill, positions=None, segments=None):
    """Logits from a prefill of `prefill` tokens, then one token per call."""
    cache = model_lib.init_cache(model.config, tokens.shape[0], 16)
    outs = []
    for start, stop in [(0, prefill)] + [(t, t + 1) for t in range(prefill, tokens.shape[1])]:
        kw = {}
        if positions is not None:
            kw["positions_BxL"] = positions[:, start:stop]
        if segments is not None:
            kw["segment_ids_BxL"] = segments[:, start:stop]
        logits, state = model.apply({"params": params, "cache": cache},
                                    tokens[:, start:stop], decode=True, mutable=["cache"],
                                    **kw)
        cache = state["cache"]
        outs.append(logits)
    assert int(cache["index"]) == tokens.shape[1]
    return jnp.concatenate(outs, axis=1)


@pytest.mark.parametrize("overrides", [dict(positions=p) for p in POSITIONS]
                         + [dict(n_kv_heads=1, scan_layers=False), dict(n_kv_heads=2)])
def test_cached_decoding_equals_full_forward(overrides):
    model, params = init(tiny(**overrides))
    tokens = random_tokens((2, 9))
    full = model.apply({"params": params}, tokens)
    np.testing.assert_allclose(decode_stepwise(model, params, tokens, prefill=4), full,
                               atol=1e-5)


def test_cache_layout():
    cache = model_lib.init_cache(tiny(n_kv_heads=2), batch=3, max_len=16)
    assert cache["layers"]["attn"]["key"].shape == (2, 3, 16, 2, 8)  # [layers, B, S, G, K]
    assert cache["segment_ids"].shape == (3, 16) and int(cache["index"]) == 0
    loop = model_lib.init_cache(tiny(scan_layers=False, dtype="bfloat16"), 1, 8)
    assert loop["layer_1"]["attn"]["value"].shape == (1, 8, 4, 8)
    assert loop["layer_1"]["attn"]["value"].dtype == jnp.bfloat16


@pytest.mark.parametrize("positions", ["learned", "rope"])
def test_left_padded_prompt_matches_unpadded(positions):
    model, params = init(tiny(positions=positions))
    prompt = random_tokens((1, 6), seed=7)
    pad = 3
    padded = jnp.concatenate([jnp.full((1, pad), 5), prompt], axis=1)
    segments = jnp.array([[0] * pad + [1] * 6])
    positions_BxL = jnp.array([[0] * pad + list(range(6))])
    expected = model.apply({"params": params}, prompt)
    got = decode_stepwise(model, params, padded, prefill=pad + 2, positions=positions_BxL,
                          segments=segments)
    np.testing.assert_allclose(got[:, pad:], expected, atol=1e-5)
    # The full forward derives the same positions from the segment ids by itself.
    direct = model.apply({"params": params}, padded, segment_ids_BxL=segments)
    np.testing.assert_allclose(direct[:, pad:], expected, atol=1e-5)
