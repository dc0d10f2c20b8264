"""Tasks: classify (pooling, a run, predict, the genre split), mlm (masking, no leak),
sft (packing, completion-only loss)."""

import csv
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tiny_run import init_params, tiny_config, write_corpus

from llm_jax import cli, trainer
from llm_jax import config as config_lib
from llm_jax import corpus as corpus_lib
from llm_jax import tasks as tasks_lib
from llm_jax.model import ModelConfig, Transformer, pool_hidden
from llm_jax.tasks import genre, mlm, sft


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("tasks")
    return write_corpus(root / "corpus"), root / "cache", root


def _tiny_model(**model):
    config = config_lib.default_config()
    config.model.update(d_model=32, n_layers=2, n_heads=2, vocab_size=64, vocab_multiple=64)
    config.model.update(model)
    model = Transformer(ModelConfig.from_config(config.model))
    return model, init_params(model, jnp.zeros((1, 8), jnp.int32))


def test_pool_hidden_picks_the_last_real_token_or_the_mean():
    x_BxLxD = jnp.arange(2 * 4 * 1, dtype=jnp.float32).reshape(2, 4, 1)
    real_BxL = jnp.array([[0, 0, 1, 1], [1, 1, 1, 0]], bool)  # left, right padded
    np.testing.assert_array_equal(pool_hidden(x_BxLxD, real_BxL, "last")[:, 0], [3.0, 6.0])
    np.testing.assert_allclose(pool_hidden(x_BxLxD, real_BxL, "mean")[:, 0], [2.5, 5.0])


@pytest.mark.parametrize("pool,causal", [("last", True), ("mean", True), ("last", False)])
def test_class_logits_do_not_depend_on_the_padding_side(pool, causal):
    model, params = _tiny_model(num_classes=3, pool=pool, causal=causal)
    text = jnp.array([5, 9, 17, 33, 40])
    pad = jnp.zeros(3, jnp.int32)
    tokens = jnp.stack([jnp.concatenate([pad, text]), jnp.concatenate([text, pad])])
    real = jnp.array([[0] * 3 + [1] * 5, [1] * 5 + [0] * 3], jnp.int32)
    apply = jax.jit(model.apply)  # one compiled forward: cheaper than op by op
    logits_BxC = apply({"params": params}, tokens, segment_ids_BxL=real)
    assert logits_BxC.shape == (2, 3)
    np.testing.assert_allclose(logits_BxC[0], logits_BxC[1], rtol=1e-5, atol=1e-6)
    other = tokens.at[1, 6].set(7)  # a padding token changes nothing either
    np.testing.assert_allclose(
        apply({"params": params}, other, segment_ids_BxL=real), logits_BxC, atol=1e-6
    )


def _labelled_rows(path, n=60):
    rng = np.random.default_rng(0)
    words = {"war": "king sword crown death honour", "love": "love night day good sir"}
    with open(path, "w") as f:
        for i in range(n):
            label = ("war", "love")[i % 2]
            text = " ".join(rng.choice(words[label].split(), 8))
            f.write(json.dumps({"text": text, "label": label}) + "\n")
    return str(path)


def test_classify_run_writes_metrics_and_confusion_matrix_and_predict_one_row_each(corpus):
    glob, cache, root = corpus
    train, val = _labelled_rows(root / "train.jsonl", 64), _labelled_rows(root / "val.jsonl", 16)
    workdir = str(root / "classify")
    config = tiny_config(glob, cache, task__name="classify", task__path=train, task__val_path=val)
    result = trainer.train_and_evaluate(config, workdir)
    for key in ("val/accuracy", "val/macro_f1", "val/majority_accuracy"):
        assert 0.0 <= result[key] <= 1.0
    assert result["val/majority_accuracy"] == 0.5  # alternating val labels
    assert os.path.getsize(os.path.join(workdir, "confusion_matrix.png")) > 1000
    saved = json.load(open(os.path.join(workdir, "config.json")))
    assert saved["task"]["labels"] == ["love", "war"] and saved["model"]["num_classes"] == 2

    texts = root / "texts.txt"
    texts.write_text("king sword\nlove night day\nhonour\n")
    out = root / "predictions.csv"
    assert (
        cli.run(["predict", "--workdir", workdir, "--input", str(texts), "--output", str(out)]) == 0
    )
    table = list(csv.reader(open(out)))
    assert table[0] == ["label", "p_love", "p_war"] and len(table) == 1 + 3
    for row in table[1:]:
        assert row[0] in ("love", "war")
        assert sum(map(float, row[1:])) == pytest.approx(1.0, abs=1e-3)


def test_predict_refuses_a_run_that_is_not_a_classifier(corpus, tmp_path, capsys):
    glob, cache, _ = corpus
    workdir = str(tmp_path / "lm")
    os.makedirs(workdir)
    config = tiny_config(glob, cache)
    json.dump(config.to_dict(), open(os.path.join(workdir, "config.json"), "w"))
    assert cli.run(["predict", "--workdir", workdir, "--input", "x.txt"]) == 2
    assert "predict needs a classify run" in capsys.readouterr().err


def test_genre_task_validates_on_plays_never_trained_on():
    train, val = genre.plays("train"), genre.plays("val")
    assert not set(train) & set(val)
    assert sorted(val) == sorted(corpus_lib.SHAKESPEARE_VAL_PLAYS)
    assert sorted(genre.genre(p) for p in val) == ["comedy", "history", "tragedy"]
    train_genres = [genre.genre(p) for p in train]  # every play has a Folio genre
    assert len(train) == 35 and set(train_genres) == set(genre.GENRES)
    assert genre.genre("romances/the-tempest.md") == "comedy"
    assert genre.genre("romances/cymbeline.md") == "tragedy"


def test_mlm_masking_rates():
    tokens = np.random.default_rng(1).integers(4, 500, (400, 500))
    batch = mlm.mask_tokens(tokens, np.random.default_rng(0), 0.15, vocab_size=512)
    chosen = batch["weights"] > 0
    masked = batch["inputs"] == 512
    kept = chosen & (batch["inputs"] == tokens)
    n = chosen.sum()  # about 30,000: binomial sd of a share p is sqrt(p(1-p)/n) < 0.003
    assert chosen.mean() == pytest.approx(0.15, abs=0.003)
    assert not (masked & ~chosen).any() and (batch["inputs"][~chosen] == tokens[~chosen]).all()
    assert masked.sum() / n == pytest.approx(0.8, abs=0.01)
    assert kept.sum() / n == pytest.approx(0.1 + 0.1 / 512, abs=0.01)  # random may redraw it
    assert (chosen & ~masked & ~kept).sum() / n == pytest.approx(0.1, abs=0.01)
    np.testing.assert_array_equal(batch["targets"], tokens)


def test_mlm_loss_sees_no_target_outside_the_chosen_tokens():
    config = config_lib.default_config()
    config.task.name = "mlm"
    model, params = _tiny_model(causal=False, mask_token=True)
    tokens = np.random.default_rng(0).integers(4, 60, (2, 16))
    batch = mlm.mask_tokens(tokens, np.random.default_rng(3), 0.3, vocab_size=64)
    objective = tasks_lib.objective(config)
    loss_of = jax.jit(lambda b: objective.sums(model, params, b, None, True)[0])  # one compile
    loss = loss_of(batch)
    unchosen = np.argwhere(batch["weights"] == 0)[0]
    changed = dict(batch, targets=batch["targets"].copy())
    changed["targets"][tuple(unchosen)] = (changed["targets"][tuple(unchosen)] + 1) % 60
    assert loss_of(changed) == loss
    hidden = (batch["weights"] > 0) & (batch["inputs"] == 64)
    assert hidden.any() and not (batch["inputs"][hidden] == tokens[hidden]).any()


def test_mlm_run_reports_masked_accuracy(corpus, tmp_path):
    glob, cache, _ = corpus
    config = tiny_config(glob, cache, task__name="mlm", model__causal=False)
    result = trainer.train_and_evaluate(config, str(tmp_path / "mlm"))
    assert 0.0 <= result["val/mlm_accuracy"] <= 1.0 and result["val/mlm_loss"] > 0
    saved = json.load(open(tmp_path / "mlm" / "config.json"))
    assert saved["model"]["mask_token"] is True


class _ByteTokenizer:
    """One token per byte (+4), eos 2: enough to pack and weight examples."""

    eos_id = 2

    def encode(self, text):
        return [b + 4 for b in text.encode()]


def test_sft_packs_whole_examples_and_weights_only_completions():
    pairs = [("ab", "cd"), ("efg", "h"), ("ijklmnop", "qr"), ("s" * 20, "tuv")]
    encoded = [sft.encode_example(_ByteTokenizer(), p, c, 8) for p, c in pairs]
    assert [cut for *_, cut in encoded] == [False, False, True, True]
    assert encoded[3][0][-4:] == [ord("t") + 4, ord("u") + 4, ord("v") + 4, 2]  # prompt cut
    rows = sft.pack([(ids, n) for ids, n, _ in encoded], 8)
    # each example sits whole in one row: its token count there is len(ids) - 1
    counts = sorted(
        int((rows["segment_ids"][r] == s).sum())
        for r in range(len(rows["inputs"]))
        for s in set(rows["segment_ids"][r]) - {0}
    )
    assert counts == sorted(len(ids) - 1 for ids, _, _ in encoded)
    completion_targets = rows["targets"][rows["weights"] > 0]
    assert sorted(completion_targets.tolist()) == sorted(
        t for ids, n, _ in encoded for t in ids[n:]
    )


def test_sft_prompt_targets_carry_no_gradient():
    config = config_lib.default_config()
    config.task.name = "sft"
    model, params = _tiny_model()
    examples = [([5, 6, 7, 8, 9, 10, 2], 4), ([11, 12, 13, 2], 2), ([14, 15, 16, 17, 2], 3)]
    batch = {k: jnp.asarray(v) for k, v in sft.pack(examples, 8).items()}
    objective = tasks_lib.objective(config)

    @jax.jit  # one compile for the three batches, not every op of each
    def grads(b):
        return jax.grad(lambda p: objective.sums(model, p, b, None, True)[0])(params)

    prompt = (batch["weights"] == 0) & (batch["segment_ids"] > 0)
    assert prompt.any()
    other = dict(batch, targets=jnp.where(prompt, (batch["targets"] + 1) % 64, batch["targets"]))
    jax.tree.map(np.testing.assert_array_equal, grads(batch), grads(other))
    prompt_only = dict(batch, weights=jnp.zeros_like(batch["weights"]))
    assert all(not np.asarray(g).any() for g in jax.tree.leaves(grads(prompt_only)))


def test_sft_run_on_a_jsonl_with_messages(corpus, tmp_path):
    glob, cache, _ = corpus
    rows = tmp_path / "chat.jsonl"
    with open(rows, "w") as f:
        for i in range(40):
            messages = [
                {"role": "user", "content": f"say {i % 3}"},
                {"role": "assistant", "content": "king"},
            ]
            row = (
                {"messages": messages}
                if i % 2
                else {"prompt": f"say {i % 3}", "completion": " king"}
            )
            f.write(json.dumps(row) + "\n")
    config = tiny_config(
        glob, cache, task__name="sft", task__path=str(rows), data__val_batch_size=8
    )
    result = trainer.train_and_evaluate(config, str(tmp_path / "sft"))
    assert 0.0 <= result["val/exact_match"] <= 1.0 and result["val/completion_loss"] > 0
    assert sft.render_messages(
        [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "lo"}]
    ) == ("user: hi\nassistant:", " lo")


def test_example_iterator_resumes_exactly_and_covers_each_epoch():
    examples = {"x": np.arange(10), "y": np.arange(10) * 2}
    it = tasks_lib.ExampleIterator(examples, batch_size=4, seed=3, process_index=0, process_count=1)
    first_epoch = np.concatenate([next(it)["x"] for _ in range(2)] + [next(it)["x"][:2]])
    assert sorted(first_epoch) == list(range(10))  # 12 rows: one epoch, then 2 of the next
    state = it.get_state()
    ahead = [next(it) for _ in range(3)]
    again = tasks_lib.ExampleIterator(
        examples, batch_size=4, seed=3, process_index=0, process_count=1
    )
    again.set_state(state)
    for want in ahead:
        got = next(again)
        np.testing.assert_array_equal(got["x"], want["x"])
        np.testing.assert_array_equal(got["y"], 2 * got["x"])
