"""Training, resuming and sampling with everything in a bucket (a real local GCS server)."""

import glob
import json
import os

import pytest
from test_scaling_runner import _write_sweep
from tiny_run import metric_rows, tiny_config, write_corpus

from llm_jax import data as data_lib
from llm_jax import storage, trainer
from llm_jax.cli import run as cli_run
from llm_jax.scaling import results, runner


def _upload_corpus(local_glob: str, remote: str) -> None:
    for f in sorted(glob.glob(local_glob)):
        with open(f, "rb") as src:
            storage.write_bytes(f"{remote}/{os.path.basename(f)}", src.read())


class _StopAfter:
    """A guard that "gets SIGTERM" at poll `polls`: one poll before the loop, one per step."""

    def __init__(self, polls):
        self.left = polls

    @property
    def requested(self):
        self.left -= 1
        return "SIGTERM" if self.left <= 0 else None


def test_train_stop_resume_and_generate_in_a_bucket(gs, tmp_path, capsys):
    local_glob = write_corpus(tmp_path / "corpus")
    _upload_corpus(local_glob, f"{gs}/corpus")
    config = tiny_config(
        f"{gs}/corpus/*.txt",
        tmp_path / "cache",
        train__steps=8,
        train__log_every=2,
        train__eval_every=4,
        checkpoint__every=4,  # and step 5's save on the stop: each save to the bucket is slow
        checkpoint__async_save=False,
    )
    reference = str(tmp_path / "reference")
    trainer.train_and_evaluate(config, reference)
    workdir = f"{gs}/run"
    stopped = trainer.train_and_evaluate(config, workdir, _StopAfter(1 + 5))
    assert stopped["preempted"] and stopped["step"] == 5
    assert storage.exists(f"{workdir}/checkpoints/5") and storage.exists(f"{workdir}/config.json")
    assert not os.path.exists("gs:")  # nothing went to a local folder named after the URL
    trainer.train_and_evaluate(config, workdir)
    assert metric_rows(workdir) == metric_rows(
        reference
    )  # bit-exact: the same losses, step by step
    assert json.loads(storage.read_text(f"{workdir}/config.json"))["train"]["steps"] == 8

    capsys.readouterr()
    generate = ["generate", "--workdir", workdir, "--prompt", "the king", "--max-new-tokens", "5"]
    assert cli_run([*generate, "--no-stream"]) == 0
    assert capsys.readouterr().out.startswith("--- prompt 1, sample 1 ---\nthe king")


def test_a_jsonl_corpus_in_a_bucket_tokenizes_like_the_local_copy(gs, tmp_path):
    local = tmp_path / "jsonl"
    local.mkdir()
    for i in range(4):
        rows = [{"text": f"doc {i} line {j} the king speaks"} for j in range(50)]
        (local / f"part{i}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    _upload_corpus(str(local / "*.jsonl"), f"{gs}/jsonl")
    paths = {"local": str(local / "*.jsonl"), "gcs": f"{gs}/jsonl/*.jsonl"}
    tokens = {}
    for where, path in paths.items():
        prepared = data_lib.prepare(tiny_config(path, tmp_path / "cache"))
        tokens[where] = (prepared.tokens("train").tolist(), prepared.tokens("val").tolist())
    assert tokens["gcs"] == tokens["local"] and tokens["gcs"][0]


def test_missing_gcs_workdir_is_one_line_error(gs, capsys):
    assert cli_run(["generate", "--workdir", f"{gs}/none"]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [f"error: --workdir {gs}/none is not a directory"]


def test_a_sweep_in_a_bucket_runs_collects_and_plots(gs, tmp_path, capsys):
    sweep = _write_sweep(
        tmp_path / "sweep.py",
        """[
        Trial("lr-a", {"train.lr": 3e-3}),
        Trial("broken", {"data.source": "files", "data.path": "/nonexistent/corpus.txt"}),
    ]""",
    )
    work = f"{gs}/sweep"
    assert runner.run_sweep(sweep, work, n_boot=0) == 1
    assert "FAILED broken" in capsys.readouterr().out
    assert results.trial_status(storage.path(work) / "lr-a") == "done"
    assert {r["name"]: r["status"] for r in results.read_results(work)} == {
        "lr-a": "done",
        "broken": "failed",
    }
    assert "nonexistent" in storage.read_text(f"{work}/broken/train.log")  # uploaded log
    assert storage.glob(f"{work}/plots/*.png") == [f"{work}/plots/training_curves.png"]
    assert not os.path.exists("gs:")

    assert cli_run(["sweep", "--collect", work, "--bootstrap", "0"]) == 0
    assert cli_run(["plot", f"{work}/lr-a"]) == 0
    assert f"wrote {work}/lr-a/plots/run.png" in capsys.readouterr().out
    assert storage.read_bytes(f"{work}/lr-a/plots/run.png").startswith(b"\x89PNG")


def test_tpu_launch_script_for_a_bucket_sweep_is_written_locally(gs, tmp_path, monkeypatch):
    sweep = _write_sweep(tmp_path / "sweep.py", '[Trial("lr-a", {"train.lr": 3e-3})]')
    monkeypatch.chdir(tmp_path)
    assert runner.run_sweep(sweep, f"{gs}/sweep", launcher="tpu") == 0
    script = (tmp_path / "launch_tpu.sh").read_text()
    assert f"--workdir {gs}/sweep/lr-a" in script
    assert storage.exists(f"{gs}/sweep/lr-a/trial.json") and not os.path.exists("gs:")


def test_a_gcs_token_cache_is_refused_in_one_line():
    config = tiny_config("corpus/*.txt", "gs://llmjax-test/cache")
    with pytest.raises(data_lib.DataError, match="token caches are memory-mapped local files"):
        data_lib.cache_root(config.data)
