"""Evaluation: scores equal a numpy reference computed from the model's own logits."""

import functools
import json
import math
from pathlib import Path

import jax
import ml_collections
import numpy as np
import pytest

pytest.importorskip("tokenizers")

from hf_tokenizers import byte_level_bpe, shakespeare_texts
from tiny_run import init_params

from llm_jax import cli, eval_results, evaluate
from llm_jax import config as config_lib
from llm_jax import sharding as sharding_lib
from llm_jax import workdir as workdir_lib
from llm_jax.hf import io
from llm_jax.hf.tokenizer import load_hf_tokenizer
from llm_jax.model import ModelConfig, Transformer

ROWS = [
    {
        "context": "ROMEO: But soft, what light",
        "choices": [" through", " is", " yonder"],
        "label": 0,
    },
    {"context": "To be, or not to", "choices": [" be", " sleep"], "label": 0},
    {"context": "Friends, Romans, ", "choices": ["countrymen", "lend me", "ears"], "label": 2},
    {"context": "A horse! a horse!", "choices": [" My kingdom", " for a horse"], "label": 1},
]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """(workdir, config, params, tokenizer): a random tiny Llama with a byte-level BPE."""
    tokenizer_dir = byte_level_bpe(tmp_path_factory.mktemp("bpe"))
    tokenizer = load_hf_tokenizer(tokenizer_dir)
    config = config_lib.default_config()
    config.model.update(vocab_size=tokenizer.vocab_size, d_model=32, max_seq_len=32)
    config.data.seq_len = 32
    model = Transformer(ModelConfig.from_config(config.model))
    params = init_params(model, np.zeros((1, 8), np.int32))
    workdir = str(tmp_path_factory.mktemp("run") / "w")
    io.write_workdir(workdir, config, params, tokenizer, source="test")
    return workdir, config, params, tokenizer


REFERENCE_LEN = 64  # every reference sequence right-padded to this: one compilation


@functools.cache
def _forward(config_json: str):
    model_cfg = ModelConfig.from_config(ml_collections.ConfigDict(json.loads(config_json)))
    return jax.jit(lambda params, tokens: Transformer(model_cfg).apply({"params": params}, tokens))


def _reference_logprob(config, params, context, continuation) -> float:
    """log P(continuation | context) from one unbatched forward pass without segment ids.

    The model is causal, so zeros appended on the right change no logit before them.
    """
    tokens = [*context, *continuation]
    padded = np.zeros((1, REFERENCE_LEN), np.int32)
    padded[0, : len(tokens)] = tokens
    forward = _forward(json.dumps(config.model.to_dict()))
    logits = np.asarray(forward(params, padded), np.float64)[0, : len(tokens) - 1]
    top = logits.max(-1, keepdims=True)
    logp = logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))
    n = len(continuation)
    return float(sum(logp[-n + i, tok] for i, tok in enumerate(continuation)))


def _mesh(**sizes):
    return sharding_lib.make_mesh(
        ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1) | sizes)
    )


def test_multiple_choice_equals_numpy_reference(run):
    workdir, config, params, tokenizer = run
    scorer = evaluate.Scorer(config.model, params, _mesh(), batch_size=3)  # rounds up to 8
    requests = [
        evaluate.encode_pair(tokenizer, r["context"], c) for r in ROWS for c in r["choices"]
    ]
    got = [lp for lp, _ in scorer.loglikelihood(requests)]
    want = [_reference_logprob(config, params, *req) for req in requests]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)
    acc = acc_norm = 0
    start = 0
    for row in ROWS:
        ll = np.array(want[start : start + len(row["choices"])])
        start += len(row["choices"])
        acc += int(np.argmax(ll)) == row["label"]
        acc_norm += int(np.argmax(ll / [len(c) for c in row["choices"]])) == row["label"]
    metrics = evaluate.multiple_choice(scorer, tokenizer, ROWS)
    assert metrics == {"acc": acc / 4, "acc_norm": acc_norm / 4, "n": 4}


def test_encode_pair_moves_trailing_spaces_to_the_continuation(run):
    tokenizer = run[3]
    context, continuation = evaluate.encode_pair(tokenizer, "Friends, Romans, ", "countrymen")
    assert context[0] == tokenizer.eos_id
    assert tokenizer.decode(context[1:]) == "Friends, Romans,"
    assert tokenizer.decode(continuation) == " countrymen"


def test_perplexity_over_windows_equals_reference(run):
    """A document longer than max_seq_len is scored in windows, each token once."""
    workdir, config, params, tokenizer = run
    document = shakespeare_texts(1)[0][:400]
    tokens = tokenizer.encode(document)
    assert len(tokens) > 3 * config.model.max_seq_len
    scorer = evaluate.Scorer(config.model, params, _mesh(), batch_size=2)
    metrics = evaluate.perplexity(scorer, tokenizer, [document])
    windows = scorer.rolling_requests(tokens, tokenizer.eos_id)
    assert sum(len(c) for _, c in windows) == len(tokens)
    nll = -sum(_reference_logprob(config, params, *w) for w in windows)
    assert metrics["tokens"] == len(tokens)
    assert metrics["loss"] == pytest.approx(nll / len(tokens), rel=1e-5)
    assert metrics["perplexity"] == pytest.approx(math.exp(nll / len(tokens)), rel=1e-5)
    n_bytes = len(document.encode())
    assert metrics["bits_per_byte"] == pytest.approx(nll / math.log(2) / n_bytes, rel=1e-5)


def test_fsdp_mesh_gives_the_same_scores(run):
    workdir, config, params, tokenizer = run
    requests = [
        evaluate.encode_pair(tokenizer, r["context"], c) for r in ROWS for c in r["choices"]
    ]
    data_only = evaluate.Scorer(config.model, params, _mesh(), 8).loglikelihood(requests)
    mesh = _mesh(fsdp=2, tensor=2)
    _, sharded_params = workdir_lib.restore_params(workdir, mesh=mesh)
    sharded = evaluate.Scorer(config.model, sharded_params, mesh, 8).loglikelihood(requests)
    np.testing.assert_allclose([s[0] for s in sharded], [s[0] for s in data_only], atol=1e-4)


def test_eval_command_writes_eval_json(run, tmp_path, capsys):
    workdir = run[0]
    choice = tmp_path / "choice.jsonl"
    choice.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    text = tmp_path / "text.txt"
    text.write_text("Now is the winter of our discontent\nMade glorious summer by this sun of York")
    assert cli.run(["eval", "--workdir", workdir, "--task", str(choice), "--task", str(text)]) == 0
    table = capsys.readouterr().out
    assert "choice" in table and "bits_per_byte" in table
    saved = json.loads((Path(workdir, eval_results.EVAL_FILE)).read_text())
    assert set(saved["tasks"]) == {"choice", "text"}
    assert saved["tasks"]["choice"]["n"] == 4
    columns = eval_results.read_columns(workdir)
    assert columns["eval/choice/acc"] == saved["tasks"]["choice"]["acc"]


@pytest.mark.parametrize(
    "content,match",
    [
        ('{"context": "a", "choices": ["b"], "label": 0}\n', "two or more"),
        ('{"context": "a", "choices": ["b", "c"], "label": 2}\n', "index of the right one"),
        ('{"prompt": "a"}\n', "rows need 'text'"),
        ("not json\n", "line 1 is not JSON"),
    ],
)
def test_bad_task_files_are_one_line_errors(tmp_path, content, match):
    path = tmp_path / "task.jsonl"
    path.write_text(content)
    with pytest.raises(evaluate.EvalError, match=match):
        evaluate.load_task(path)


def test_run_tasks_hook(run, tmp_path):
    """What the trainer calls at the end of a run with config.eval.tasks."""
    workdir, config, params, _ = run
    task = tmp_path / "mc.jsonl"
    task.write_text("".join(json.dumps(r) + "\n" for r in ROWS[:2]))
    assert evaluate.run_tasks(config, workdir, params, _mesh()) == {}  # no tasks: nothing
    config = ml_collections.ConfigDict(config.to_dict())
    config.eval.tasks = (str(task),)
    columns = evaluate.run_tasks(config, workdir, params, _mesh(), step=7)
    assert set(columns) == {"eval/mc/acc", "eval/mc/acc_norm", "eval/mc/n"}
    assert json.loads((Path(workdir, eval_results.EVAL_FILE)).read_text())["step"] == 7


def test_training_ends_with_eval_and_sweeps_collect_it(tmp_path):
    """config.eval.tasks: the trainer evaluates at the last step; results.csv gets columns."""
    from tiny_run import tiny_config, write_corpus

    from llm_jax.scaling import collect, results
    from llm_jax.trainer import train_and_evaluate

    task = tmp_path / "mc.jsonl"
    task.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    for lr in (1e-3, 3e-3):
        config = tiny_config(write_corpus(tmp_path / "corpus"), tmp_path / "cache")
        config.train.update(lr=lr, steps=2, eval_every=2, log_every=1)
        config.checkpoint.every = 2
        config.eval.tasks = (str(task),)
        train_and_evaluate(config, str(tmp_path / "sweep" / f"lr{lr}"))
    saved = json.loads((tmp_path / "sweep" / "lr0.001" / eval_results.EVAL_FILE).read_text())
    assert saved["step"] == config.train.steps and saved["tasks"]["mc"]["n"] == 4
    rows, columns = collect.collect_rows(tmp_path / "sweep")
    assert columns[-3:] == ["eval/mc/acc", "eval/mc/acc_norm", "eval/mc/n"]
    assert all(r["eval/mc/n"] == 4 for r in rows)
    assert "eval/mc/acc" not in results.swept_columns(rows)
