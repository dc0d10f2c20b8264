"""gs:// paths of the commands other than train/generate/sweep runs (test_gcs_run.py):
config and sweep files, local copies of objects and folders, import-hf (its source too) /
eval / generate / export-hf workdirs, task, prompt and predict input files, metrics uploads."""

import json
import os

import pytest
from hf_tokenizers import byte_level_bpe
from tiny_run import BASE_CONFIG

from llm_jax import cli, evaluate, metrics, storage, tasks
from llm_jax import config as config_lib
from llm_jax.scaling import sweep as sweep_lib
from llm_jax.tasks import classify

SWEEP = """
from llm_jax import config as config_lib
from llm_jax.scaling.sweep import Trial

def get_config():
    config = config_lib.default_config()
    config.train.steps = 3
    return config

def get_sweep():
    return [Trial("lr-a", {"train.lr": 3e-3})]
"""


def test_config_and_sweep_files_in_a_bucket(gs):
    storage.write_bytes(f"{gs}/base.py", open(BASE_CONFIG, "rb").read())
    remote = config_lib.load_config_file(f"{gs}/base.py")
    assert remote.to_dict() == config_lib.load_config_file(BASE_CONFIG).to_dict()
    storage.write_text(f"{gs}/sweep.py", SWEEP)
    loaded = sweep_lib.load_sweep(f"{gs}/sweep.py")
    assert loaded.config.train.steps == 3 and [t.name for t in loaded.trials] == ["lr-a"]
    with pytest.raises(config_lib.ConfigError, match=f"config file {gs}/none.py not found"):
        config_lib.load_config_file(f"{gs}/none.py")


def test_task_files_in_a_bucket(gs):
    storage.write_text(f"{gs}/wiki.txt", "To be or not to be.")
    rows = [{"context": "The king", "choices": [" sleeps", " speaks"], "label": 1}] * 2
    storage.write_text(f"{gs}/mc.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    text, choice = evaluate.load_task(f"{gs}/wiki.txt"), evaluate.load_task(f"{gs}/mc.jsonl")
    assert (text.name, text.kind, text.documents) == ("wiki", "perplexity", ["To be or not to be."])
    assert (choice.kind, choice.rows) == ("multiple_choice", rows)
    with pytest.raises(evaluate.EvalError, match=f"task file {gs}/none.jsonl not found"):
        evaluate.load_task(f"{gs}/none.jsonl")


def test_local_copy_of_a_bucket_folder_and_file(gs):
    storage.write_text(f"{gs}/folder/a.txt", "a")
    storage.write_text(f"{gs}/folder/sub/b.txt", "b")
    with storage.local_copy(f"{gs}/folder/") as local:
        found = {
            os.path.relpath(os.path.join(d, n), local): open(os.path.join(d, n)).read()
            for d, _, names in os.walk(local)
            for n in names
        }
        assert found == {"a.txt": "a", os.path.join("sub", "b.txt"): "b"}
    assert not os.path.exists(local)  # removed afterwards
    with storage.local_copy(f"{gs}/folder/a.txt") as local:
        assert os.path.basename(local) == "a.txt" and open(local).read() == "a"
    with pytest.raises(storage.StorageError, match="no such object"):
        with storage.local_copy(f"{gs}/none.txt"):
            pass


def test_classify_and_predict_inputs_in_a_bucket(gs):
    storage.write_text(f"{gs}/rows.csv", "text,label\nthe king,a\nmy lord,b\n")
    storage.write_text(f"{gs}/rows.jsonl", '{"text": "the king", "label": "a"}\n')
    storage.write_text(f"{gs}/texts.txt", "the king\n\nmy lord\n")
    assert tasks.read_rows(f"{gs}/rows.csv", "task.path")[1] == {"text": "my lord", "label": "b"}
    assert tasks.read_rows(f"{gs}/rows.jsonl", "task.path") == [{"text": "the king", "label": "a"}]
    assert classify.read_texts(f"{gs}/texts.txt", "text") == ["the king", "my lord"]


@pytest.mark.slow  # four commands, each compiling a model: ~10 s of CPU
def test_import_eval_export_with_a_bucket_workdir(gs, tmp_path, capsys):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=64, vocab_size=300)
    src = tmp_path / "src"
    transformers.GPT2LMHeadModel(config).save_pretrained(src)
    tokenizer_dir = byte_level_bpe(tmp_path / "bpe")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (src / name).write_bytes((tokenizer_dir / name).read_bytes())
    for f in src.iterdir():  # the HF folder in the bucket too
        storage.write_bytes(f"{gs}/src/{f.name}", f.read_bytes())
    w = f"{gs}/gpt2"
    assert cli.run(["import-hf", f"{gs}/src", "--workdir", w]) == 0
    assert storage.exists(f"{w}/checkpoints/0") and storage.exists(f"{w}/tokenizer.json")
    assert cli.run(["import-hf", str(src), "--workdir", w]) == 2  # never over a checkpoint
    assert "already holds checkpoints" in capsys.readouterr().err

    storage.write_text(f"{gs}/wiki.txt", "Wherefore art thou Romeo? " * 8)
    assert cli.run(["eval", "--workdir", w, "--task", f"{gs}/wiki.txt"]) == 0
    assert "wiki" in capsys.readouterr().out
    storage.write_text(f"{gs}/prompt.txt", "Wherefore art")
    argv = ["generate", "--workdir", w, "--prompt-file", f"{gs}/prompt.txt", "--no-stream"]
    assert cli.run([*argv, "--max-new-tokens", "2"]) == 0
    assert capsys.readouterr().out.startswith("--- prompt 1, sample 1 ---\nWherefore art")
    assert "wiki" in json.loads(storage.read_text(f"{w}/eval.json"))["tasks"]

    out = f"{gs}/exported"
    assert cli.run(["export-hf", "--workdir", w, "--out", out]) == 0
    assert cli.run(["export-hf", "--workdir", w, "--out", str(tmp_path / "local")]) == 0
    for name in ("model.safetensors", "config.json", "tokenizer.json"):  # same bytes
        assert storage.read_bytes(f"{out}/{name}") == (tmp_path / "local" / name).read_bytes()


def test_gcs_metrics_are_uploaded_at_flush_not_per_row(gs):
    writer = metrics.MetricsWriter(f"{gs}/run")
    for step in (1, 2, 3):
        writer.write({"step": step, "train/loss": 1.0 / step})
    assert not storage.exists(writer.path)  # buffered: no upload per row
    writer.flush()  # what a checkpoint does
    assert [r["step"] for r in metrics.read_metrics(writer.path)] == [1, 2, 3]
    writer.write({"step": 4, "train/loss": 0.25})
    writer.close()
    assert [r["step"] for r in metrics.read_metrics(writer.path)] == [1, 2, 3, 4]
    assert (writer._out.uploads, writer._tb._out.uploads) == (2, 2)
    events = storage.glob(f"{gs}/run/tensorboard/events.out.tfevents.*")
    assert len(events) == 1 and len(metrics.read_records(events[0])) == 2 + 4  # header, purge
    resumed = metrics.MetricsWriter(f"{gs}/run", start_step=2)  # rows past 2 dropped at once
    assert [r["step"] for r in metrics.read_metrics(resumed.path)] == [1, 2]
    resumed.write({"step": 3, "train/loss": 0.3})
    resumed.close()
    assert [r["step"] for r in metrics.read_metrics(resumed.path)] == [1, 2, 3]
