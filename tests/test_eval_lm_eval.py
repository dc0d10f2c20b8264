"""The lm-evaluation-harness adapter, offline: a task defined from a local jsonl file."""

import json

import pytest

pytest.importorskip("tokenizers")
lm_eval = pytest.importorskip("lm_eval")

import ml_collections  # noqa: E402
from test_eval import ROWS, run  # noqa: E402, F401 - `run` is the shared workdir fixture

from llm_jax import cli, evaluate, sample, sharding  # noqa: E402
from llm_jax.lm_eval_adapter import LlmJaxLM  # noqa: E402
from llm_jax.model import ModelConfig  # noqa: E402

TASK_YAML = """\
task: local_choice
dataset_path: json
dataset_kwargs:
  data_files:
    test: {path}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{context}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: "{{{{label}}}}"
target_delimiter: ""
metric_list:
  - metric: acc
  - metric: acc_norm
"""


def _local_task(tmp_path, monkeypatch) -> str:
    """A folder with the `local_choice` task (ROWS in a local jsonl); no hub access."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "datasets"))
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "local_choice.yaml").write_text(TASK_YAML.format(path=rows))
    return str(tasks)


def _llm_jax_eval(config, params, tokenizer) -> dict:
    mesh = sharding.make_mesh(ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1)))
    return evaluate.multiple_choice(evaluate.Scorer(config.model, params, mesh), tokenizer, ROWS)


def test_lm_eval_multiple_choice_equals_llm_jax_eval(run, tmp_path, monkeypatch):  # noqa: F811
    workdir, config, params, tokenizer = run
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=_local_task(tmp_path, monkeypatch), include_defaults=False)
    out = lm_eval.simple_evaluate(  # registered by importing llm_jax.lm_eval_adapter
        model="llm_jax",
        model_args=f"workdir={workdir},batch_size=4",
        tasks=["local_choice"],
        task_manager=manager,
        bootstrap_iters=0,
    )
    got = out["results"]["local_choice"]
    want = _llm_jax_eval(config, params, tokenizer)
    assert got["acc,none"] == want["acc"]
    assert got["acc_norm,none"] == want["acc_norm"]


@pytest.mark.slow  # lm_eval's command line indexes its ~10k bundled task files first
def test_llm_jax_lm_eval_command(run, tmp_path, monkeypatch):  # noqa: F811
    """`llm-jax lm-eval --model llm_jax ...` is lm_eval's CLI with the model registered."""
    workdir, config, params, tokenizer = run
    argv = ["lm-eval", "--model", "llm_jax", "--model_args", f"workdir={workdir}"]
    argv += ["--batch_size", "4", "--include_path", _local_task(tmp_path, monkeypatch)]
    argv += ["--tasks", "local_choice", "--output_path", str(tmp_path / "out")]
    assert cli.run(argv) == 0
    (results_file,) = (tmp_path / "out").rglob("results_*.json")
    got = json.loads(results_file.read_text())["results"]["local_choice"]
    want = _llm_jax_eval(config, params, tokenizer)
    assert (got["acc,none"], got["acc_norm,none"]) == (want["acc"], want["acc_norm"])


def test_rolling_and_generation(run):  # noqa: F811
    workdir, config, params, tokenizer = run
    lm = LlmJaxLM(workdir=workdir, max_gen_toks=6)
    request = type("Request", (), {})
    text = request()
    text.args = ("Now is the winter of our discontent",)
    (logprob,) = lm.loglikelihood_rolling([text])
    tokens = tokenizer.encode(text.args[0])
    ((pair_logprob, _),) = lm.scorer.loglikelihood([([tokenizer.eos_id], tokens)])
    assert logprob == pytest.approx(pair_logprob, rel=1e-6)
    gen = request()
    gen.args = ("To be", {"until": ["\n"], "max_gen_toks": 6})
    (continuation,) = lm.generate_until([gen])
    greedy = sample.generate(
        params,
        ModelConfig.from_config(config.model),
        [[tokenizer.eos_id, *tokenizer.encode("To be")]],
        max_new_tokens=6,
        sampling=sample.SamplingConfig(temperature=0.0),
        eos_id=tokenizer.eos_id,
    )[0][0]
    assert continuation == tokenizer.decode(greedy).split("\n")[0]
