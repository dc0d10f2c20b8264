"""Starting from a trained workdir (params only), freezing params (no optimizer state for
them), the causal-leak refusal, LM commands refusing a classifier workdir."""

import json

import jax
import numpy as np
import pytest
from tiny_run import tiny_config, tiny_train_config, write_corpus

from llm_jax import checkpoint as ckpt_lib
from llm_jax import cli, finetune, trainer
from llm_jax import config as config_lib
from llm_jax import sharding as sharding_lib
from llm_jax import train as train_lib
from llm_jax import workdir as workdir_lib


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A tiny trained LM run: (its workdir, the corpus glob, the cache dir)."""
    root = tmp_path_factory.mktemp("finetune")
    corpus, cache = write_corpus(root / "corpus"), root / "cache"
    workdir = str(root / "source")
    trainer.train_and_evaluate(tiny_config(corpus, cache), workdir)
    return workdir, corpus, cache


def _leaves(tree) -> dict:
    return {
        finetune.path_name(p): np.asarray(v)
        for p, v in jax.tree_util.tree_leaves_with_path(jax.device_get(tree))
    }


def test_init_restores_the_trained_params_exactly_and_not_the_optimizer(source, tmp_path):
    workdir, corpus, cache = source
    _, trained = workdir_lib.restore_params(workdir)
    config = tiny_config(corpus, cache, init__workdir=workdir)
    with trainer.Trainer(config, str(tmp_path / "ft")) as t:
        state = jax.device_get(t.state)
    assert int(state["step"]) == 0
    got, want = _leaves(state["params"]), _leaves(trained)
    assert got.keys() == want.keys()
    for name, value in want.items():
        np.testing.assert_array_equal(got[name], value, err_msg=name)
    moments = [np.asarray(x) for x in jax.tree.leaves(state["opt_state"]) if np.ndim(x) >= 1]
    assert moments and all(not m.any() for m in moments)  # fresh Adam: zero moments


def test_init_takes_the_source_model_and_refuses_a_shape_mismatch(source, tmp_path):
    workdir, corpus, cache = source
    config = config_lib.default_config()
    config.init.workdir = workdir
    resolved = finetune.resolve_init(config)
    assert resolved.model.d_model == 32  # the source's, left at default here
    assert resolved.data.tokenizer_path.endswith("tokenizer.model")
    wrong = tiny_config(corpus, cache, init__workdir=workdir, model__d_ff=96)
    with pytest.raises(ckpt_lib.CheckpointError) as e:
        trainer.Trainer(wrong, str(tmp_path / "bad"))
    message = str(e.value)
    assert "\n" not in message and "shape" in message and "mlp" in message


def test_frozen_params_stay_bit_identical(source, tmp_path):
    workdir, corpus, cache = source
    _, trained = workdir_lib.restore_params(workdir)
    freeze = ("token_embed", "layers/attn/*")
    config = tiny_config(corpus, cache, init__workdir=workdir, finetune__freeze=freeze)
    out = str(tmp_path / "frozen")
    trainer.train_and_evaluate(config, out)
    _, tuned = workdir_lib.restore_params(out)
    before, after = _leaves(trained), _leaves(tuned)
    frozen = [n for n in before if n == "token_embed" or n.startswith("layers/attn/")]
    assert len(frozen) >= 5
    for name in before:
        same = np.array_equal(before[name], after[name])
        assert same == (name in frozen), name


def test_frozen_params_hold_no_adam_moments_and_the_others_keep_their_shardings():
    config = tiny_train_config()
    mesh_cfg = config.mesh
    mesh_cfg.update(data=2, fsdp=2, tensor=2)
    mesh = sharding_lib.make_mesh(mesh_cfg, jax.devices()[:8])
    plain = train_lib.make_train(config, mesh)
    config.finetune.freeze = ("token_embed",)
    frozen = train_lib.make_train(config, mesh)

    def nbytes(tree):
        return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))

    params = {
        finetune.path_name(p): s
        for p, s in jax.tree_util.tree_leaves_with_path(frozen.state_shardings["params"])
    }
    embed_bytes = nbytes(frozen.abstract_state["params"]["token_embed"])
    saved = nbytes(plain.abstract_state["opt_state"]) - nbytes(frozen.abstract_state["opt_state"])
    assert embed_bytes > 0 and saved == 2 * embed_bytes  # no mu, no nu for the embeddings
    moments = 0
    for path, sharding in jax.tree_util.tree_leaves_with_path(frozen.state_shardings["opt_state"]):
        name = finetune.path_name(path)
        for moment in ("/mu/", "/nu/"):
            if moment in name:
                param = name.split(moment, 1)[1]
                assert not param.startswith("token_embed"), name
                assert sharding.spec == params[param].spec, name
                moments += 1
    assert moments == 2 * (len(params) - 1)


def test_a_freeze_pattern_that_matches_nothing_is_an_error(source, tmp_path):
    _, corpus, cache = source
    config = tiny_config(corpus, cache, finetune__freeze=("layer_7/*",))
    with pytest.raises(config_lib.ConfigError, match="matches no param"):
        trainer.Trainer(config, str(tmp_path / "x"))


def test_bidirectional_model_refused_where_it_leaks():
    config = config_lib.default_config()
    config.model.causal = False
    for task in ("lm", "sft"):
        config.task.name = task
        with pytest.raises(config_lib.ConfigError, match="leaks") as e:
            config_lib.validate(config)
        assert "\n" not in str(e.value)
    for task in ("mlm", "classify"):
        config.task.name = task
        config_lib.validate(config)


@pytest.mark.parametrize(
    "command,args",
    [
        ("generate", ["--prompt", "ROMEO:"]),
        ("eval", ["--task", "tasks.jsonl"]),
        ("export-hf", ["--out", "exported"]),
    ],
)
def test_lm_commands_refuse_a_classifier_workdir_in_one_line(command, args, tmp_path, capsys):
    config = config_lib.default_config()
    config.task.name = "classify"
    workdir = tmp_path / "genre"
    workdir.mkdir()
    (workdir / workdir_lib.CONFIG_FILE).write_text(json.dumps(config.to_dict()))
    assert cli.run([command, "--workdir", str(workdir), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith(f"error: llm-jax {command}: ")
    assert "classifier" in err and f"llm-jax predict --workdir {workdir}" in err
    assert not (tmp_path / "exported").exists()
