"""Inspection: the model's inspect mode against its fused path, the logit lens, embedding
neighbours, and `llm-jax inspect` on a tiny trained workdir."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tiny_run import init_params, tiny_config, write_corpus

from llm_jax import cli, trainer
from llm_jax import config as config_lib
from llm_jax import inspect as inspect_lib
from llm_jax import model as model_lib

# Every position scheme, MHA / GQA / MQA, post-norm, scanned and unscanned layers, remat.
CONFIGS = {
    "learned-mha-tied": dict(positions="learned", scan_layers=False, tie_embeddings=True),
    "rope-gqa-scan": dict(positions="rope", n_kv_heads=2),
    "sinusoidal-mqa-post": dict(positions="sinusoidal", n_kv_heads=1, norm_position="post"),
    "none-remat": dict(positions="none", remat="full"),
}
B, L = 2, 10
# Two packed documents in row 0 (the second ends in padding); one document in row 1.
SEGMENT_IDS = np.array([[1, 1, 1, 1, 2, 2, 2, 2, 0, 0], [1] * L], np.int32)


def _cfg(name: str, **overrides) -> model_lib.ModelConfig:
    m = config_lib.default_config().model
    # A large init_std makes attention peaked: uniform weights would hide mistakes.
    m.update(vocab_size=50, d_model=32, n_layers=2, n_heads=4, d_ff=64, max_seq_len=16)
    m.update(init_std=0.3, scaled_residual_init=False, **CONFIGS[name], **overrides)
    return model_lib.ModelConfig.from_config(m)


@functools.cache
def _setup(name: str):
    """(model, params, fused apply, inspect apply) of config `name`, jitted, cached."""
    model = model_lib.Transformer(_cfg(name))
    tokens = jnp.zeros((1, 4), jnp.int32)
    params = init_params(model, tokens)  # jitted: an eager init compiles the layer scan too
    fused = jax.jit(model.apply)
    inspected = jax.jit(functools.partial(model.apply, inspect=True, mutable=["intermediates"]))
    return model, params, fused, inspected


def _tokens():
    return jax.random.randint(jax.random.key(1), (B, L), 0, 50)


@pytest.mark.parametrize("name", CONFIGS)
@pytest.mark.parametrize("segments", [False, True], ids=["causal", "segments"])
def test_sown_weights_are_masked_rows_summing_to_one(name, segments):
    _, params, _, inspected = _setup(name)
    segment_ids = SEGMENT_IDS if segments else np.ones((B, L), np.int32)
    _, state = inspected({"params": params}, _tokens(), segment_ids_BxL=segment_ids)
    weights_NxBxHxLxS = np.asarray(inspect_lib.stacked_attention(state["intermediates"], 2))
    assert weights_NxBxHxLxS.shape == (2, B, 4, L, L)
    np.testing.assert_allclose(weights_NxBxHxLxS.sum(-1), 1.0, atol=1e-5)
    allowed_BxLxS = (segment_ids[:, :, None] == segment_ids[:, None, :]) & np.tril(
        np.ones((L, L), bool)
    )
    allowed = np.broadcast_to(allowed_BxLxS[None, :, None], weights_NxBxHxLxS.shape)
    assert (weights_NxBxHxLxS[~allowed] == 0).all()
    assert (weights_NxBxHxLxS[allowed] > 0).all()


@pytest.mark.parametrize("name", CONFIGS)
def test_inspect_mode_gives_the_fused_logits_and_the_lens_ends_at_them(name):
    _, params, fused, inspected = _setup(name)
    expected_BxLxV = fused({"params": params}, _tokens(), segment_ids_BxL=SEGMENT_IDS)
    logits_BxLxV, state = inspected({"params": params}, _tokens(), segment_ids_BxL=SEGMENT_IDS)
    assert float(jnp.abs(expected_BxLxV).max()) > 1.0  # far from a trivially flat output
    np.testing.assert_allclose(logits_BxLxV, expected_BxLxV, atol=2e-4, rtol=1e-4)
    lens_NxBxLxV = state["intermediates"]["logit_lens"][0]
    assert lens_NxBxLxV.shape == (2, *logits_BxLxV.shape)
    np.testing.assert_allclose(lens_NxBxLxV[-1], logits_BxLxV, atol=2e-4, rtol=1e-4)
    assert not np.allclose(lens_NxBxLxV[0], logits_BxLxV, atol=1e-2)  # layer 1 reads otherwise
    assert state["intermediates"]["residual"][0].shape == (2, B, L, 32)


@pytest.mark.parametrize("name", ["learned-mha-tied", "rope-gqa-scan"])
def test_weights_times_values_give_the_fused_attention_output(name):
    """The first layer's attention rebuilt from the sown weights and values projected here
    from its input equals the fused kernel's output (captured on the default path)."""
    model, params, _, _ = _setup(name)
    capture = jax.jit(
        functools.partial(model.apply, capture_intermediates=True, mutable=["intermediates"])
    )
    _, fused_state = capture({"params": params}, _tokens(), segment_ids_BxL=SEGMENT_IDS)
    _, state = _setup(name)[3]({"params": params}, _tokens(), segment_ids_BxL=SEGMENT_IDS)
    if _cfg(name).scan_layers:
        layer = jax.tree.map(lambda a: a[0], params["layers"])
        captured = jax.tree.map(lambda a: a[0], fused_state["intermediates"]["layers"])
    else:
        layer, captured = params["layer_0"], fused_state["intermediates"]["layer_0"]
    x_BxLxD = captured["attn_norm"]["__call__"][0]  # pre-norm: the attention's input
    weights_BxHxLxS = inspect_lib.stacked_attention(state["intermediates"], 2)[0]
    v_BxSxGxK = jnp.einsum("BSD,DGK->BSGK", x_BxLxD, layer["attn"]["value"])
    v_BxSxHxK = jnp.repeat(v_BxSxGxK, 4 // v_BxSxGxK.shape[2], axis=2)
    out_BxLxHxK = jnp.einsum("BHLS,BSHK->BLHK", weights_BxHxLxS, v_BxSxHxK)
    y_BxLxD = jnp.einsum("BLHK,HKD->BLD", out_BxLxHxK, layer["attn"]["out"])
    np.testing.assert_allclose(y_BxLxD, captured["attn"]["__call__"][0], atol=1e-4, rtol=1e-4)


def test_scanned_and_unscanned_layers_sow_the_same_weights():
    _, params, _, inspected = _setup("rope-gqa-scan")
    unscanned = model_lib.Transformer(_cfg("rope-gqa-scan", scan_layers=False))
    apply = jax.jit(functools.partial(unscanned.apply, inspect=True, mutable=["intermediates"]))
    _, scanned_state = inspected({"params": params}, _tokens(), segment_ids_BxL=SEGMENT_IDS)
    _, state = apply(
        {"params": model_lib.unstack_layers(params, 2)}, _tokens(), segment_ids_BxL=SEGMENT_IDS
    )
    for sown in (scanned_state["intermediates"], state["intermediates"]):
        assert inspect_lib.stacked_attention(sown, 2).shape == (2, B, 4, L, L)
    np.testing.assert_allclose(
        inspect_lib.stacked_attention(scanned_state["intermediates"], 2),
        inspect_lib.stacked_attention(state["intermediates"], 2),
        atol=1e-6,
    )
    np.testing.assert_allclose(
        scanned_state["intermediates"]["logit_lens"][0],
        state["intermediates"]["logit_lens"][0],
        atol=1e-4,
    )


def test_neighbours_start_with_the_piece_itself():
    table_VxD = np.random.default_rng(0).normal(size=(40, 8))
    table_VxD[7] = 3 * table_VxD[3]  # same direction as piece 3, other length
    near = inspect_lib.neighbours(table_VxD, 3, k=5)
    assert near[0] == (3, pytest.approx(1.0))
    assert near[1] == (7, pytest.approx(1.0))
    sims = [s for _, s in near]
    assert sims == sorted(sims, reverse=True) and sims[-1] < 1.0
    assert [i for i, _ in inspect_lib.neighbours(table_VxD, 7, k=2)] == [7, 3]  # itself first


def test_embedding_tables_of_a_model():
    _, params, _, _ = _setup("none-remat")
    tables = inspect_lib.embedding_tables(params, _cfg("none-remat"))
    assert sorted(tables) == ["input", "output"]
    assert tables["input"].shape == tables["output"].shape == (50, 32)  # padding rows dropped
    for table_VxD in tables.values():
        piece, similarity = inspect_lib.neighbours(table_VxD, 11, k=3)[0]
        assert piece == 11 and similarity == pytest.approx(1.0, abs=1e-5)
    _, tied, _, _ = _setup("learned-mha-tied")
    assert list(inspect_lib.embedding_tables(tied, _cfg("learned-mha-tied"))) == ["input"]


def test_query_token_is_an_index_or_a_piece():
    pieces = ["</s>", "▁the", "▁cat", "▁sat", "▁on", "▁the", "▁mat", "."]
    assert inspect_lib.resolve_query("2", pieces) == 2
    assert inspect_lib.resolve_query("-1", pieces) == 7
    assert inspect_lib.resolve_query("the", pieces) == 5  # the last occurrence
    assert inspect_lib.resolve_query("▁mat", pieces) == 6
    with pytest.raises(ValueError, match="not one of the text's pieces"):
        inspect_lib.resolve_query("dog", pieces)
    with pytest.raises(ValueError, match="outside"):
        inspect_lib.resolve_query("8", pieces)
    assert inspect_lib.find_piece(["the", "▁the", "Ġthe", "▁then"], "the") == [0, 1, 2]


@pytest.fixture(scope="module")
def trained_workdir(tmp_path_factory):
    """A tiny model trained for 4 steps on the generated corpus."""
    tmp = tmp_path_factory.mktemp("inspect")
    config = tiny_config(
        write_corpus(tmp / "corpus"), tmp / "cache", train__steps=4, checkpoint__every=4
    )
    workdir = str(tmp / "run")
    trainer.train_and_evaluate(config, workdir)
    return workdir


def test_llm_jax_inspect_prints_the_tables_and_writes_the_files(trained_workdir, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["inspect", "--workdir", trained_workdir, "--text", "the king speak my lord"]
    rc = cli.run(
        [
            *args,
            "--out",
            str(out),
            "--query-token",
            "my",
            "--top-k",
            "3",
            "--neighbours",
            "king",
            "--embedding-plot",
        ]
    )
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    printed = captured.out
    for heading in (
        "next-token predictions",
        "logit lens",
        "attention heads",
        "attention of position",
        "nearest to",
    ):
        assert heading in printed
    assert sorted(p.name for p in out.iterdir()) == [
        "attention.npz",
        "attention_layer1.png",
        "attention_layer2.png",
        "embedding_pca.png",
        "surprise.png",
    ]
    saved = np.load(out / "attention.npz")
    n_tokens = len(saved["tokens"])
    assert saved["attention"].shape == (2, 2, n_tokens, n_tokens)
    assert saved["pieces"][0] == "</s>"
    np.testing.assert_allclose(saved["attention"].sum(-1), 1.0, atol=1e-5)


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--query-token", "dragon"], "--query-token: 'dragon' is not one of"),
        (["--text", "king " * 40], "the model reads at most 32"),
        (["--step", "3"], "no checkpoint at step 3"),
    ],
)
def test_llm_jax_inspect_errors_are_one_line(trained_workdir, tmp_path, capsys, extra, message):
    args = ["inspect", "--workdir", trained_workdir, "--text", "the king", "--out", str(tmp_path)]
    assert cli.run([*args, *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err
