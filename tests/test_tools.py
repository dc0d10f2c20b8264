"""The scripts in tools/ keep the error contract: a bad input is one `error: ...` line on
stderr and exit code 2, never a traceback; and those that start JAX keep libtpu quiet on a
machine without TPU chips, as `llm-jax` does."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from llm_jax import cli
from llm_jax.errors import UsageError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))  # not a package
import bench
import bench_decode
import bench_fit
import bench_prepare
import make_big_corpus
import make_random_hf
import matmul_bound
import profile_sweep

TOOLS = Path(bench.__file__).parent
TINY_BENCH = (
    "--preset gpt2-small --n-layers 1 --d-model 32 --n-heads 2 --d-ff 64 --vocab-size 64 "
    "--seq-len 16 --batch 8 --steps 1 --warmup 0 --dtype float32"
).split()


@pytest.mark.parametrize(
    "tool, argv, message",
    [
        (bench, ["--batch", "0"], "--batch: '0' is not a positive integer"),
        (bench, ["--seq-len", "-3"], "--seq-len: '-3' is not a positive integer"),
        (bench, ["--steps", "0"], "--steps: '0' is not a positive integer"),
        (bench, ["--warmup", "-1"], "--warmup: '-1' is not an integer >= 0"),
        (bench, ["--d-model", "1.5"], "--d-model: '1.5' is not an integer >= 0"),
        (bench, ["--mesh", "1,1"], "--mesh: '1,1' is not three integers"),
        (bench_decode, ["--batches", "1,0"], "--batches: '0' is not a positive integer"),
        (bench_decode, ["--new-tokens", "x"], "--new-tokens: 'x' is not a positive integer"),
        (matmul_bound, ["--d-model", "30", "--n-heads", "4"], "30 is not a multiple of"),
        (bench_fit, ["--repeat", "0"], "--repeat: '0' is not a positive integer"),
        (bench_prepare, ["--corpus", "c", "--workers", "1,a"], "'a' is not an integer >= 0"),
        (bench_prepare, ["--corpus", "c", "--before", "{tmp}/no"], "{tmp}/no is not a dir"),
        (profile_sweep, ["{tmp}/no"], "{tmp}/no is not a directory"),
        (profile_sweep, ["{tmp}", "--parallel", "0"], "'0' is not a positive integer"),
        (
            make_random_hf,
            ["--shape", "llama-3.2-1b", "--out", "{tmp}", "--shard-gb", "0"],
            "--shard-gb: '0' is not a positive number",
        ),
        (make_big_corpus, ["{tmp}", "--mb", "nan"], "--mb: 'nan' is not a positive number"),
    ],
)
def test_bad_flags_are_usage_errors(tool, argv, message, tmp_path):
    with pytest.raises(UsageError, match=re.escape(message.format(tmp=tmp_path))):
        tool.parse_args([arg.format(tmp=tmp_path) for arg in argv])


def test_defaults_go_through_the_flag_types():
    assert bench.parse_args([]).mesh == (-1, 1, 1)
    assert bench_decode.parse_args([]).batches == [1, 8]
    assert bench_prepare.parse_args(["--corpus", "c"]).workers == [1, 2]
    assert bench_prepare.parse_args(["--corpus", "c", "--workers", ""]).workers == []


def test_exit_code_prints_a_user_error_as_one_line(capsys):
    # A bad model shape is the config's ConfigError, raised before any JAX work.
    code = cli.exit_code(lambda: bench_decode.main(["--d-model", "30", "--layers", "1"]))
    err = capsys.readouterr().err
    assert code == 2
    assert err.splitlines() == [
        "error: config.model.d_model=30 is not divisible by n_heads=4; change one of them "
        "or set config.model.head_dim"
    ]
    assert cli.exit_code(lambda: bench_fit.main(["--help"])) == 0


def _run(tool: str, *args: str, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(TOOLS / tool), *args],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
    )


@pytest.mark.parametrize(
    "argv, message",
    [
        (["bench.py", "--preset", "gpt2-small", "--d-model", "97", "--n-heads", "6"], "97 is"),
        (["bench_fit.py", "--csv", "{tmp}/points.csv"], "--csv {tmp}/points.csv has no column"),
        (["make_big_corpus.py", "{tmp}/points.csv"], "cannot create this folder"),
        (["profile_sweep.py", "{tmp}/sweep"], "{tmp}/sweep is not a directory"),
    ],
)
def test_tools_exit_2_with_one_error_line(argv, message, tmp_path):
    (tmp_path / "points.csv").write_text("a,b\n1,2\n")
    done = _run(*(arg.format(tmp=tmp_path) for arg in argv))
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    (line,) = done.stderr.splitlines()
    assert line.startswith("error: ") and message.format(tmp=tmp_path) in line


def test_bench_runs_without_libtpu_noise():
    """Without JAX_PLATFORMS JAX probes every backend: with the tpu extra (as in .venv) and no
    TPU chips, libtpu would complain about TPU_WORKER_HOSTNAMES unless the tool names one."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("JAX_PLATFORMS", "TPU_ACCELERATOR_TYPE", "TPU_WORKER_HOSTNAMES")
    }
    done = _run("bench.py", *TINY_BENCH, env=env)
    assert done.returncode == 0, done.stderr
    assert "TPU_WORKER_HOSTNAMES" not in done.stderr
    assert re.search(r"^tokens/s\s+[\d,]+$", done.stdout, re.MULTILINE), done.stdout
