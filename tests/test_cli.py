"""The `llm-jax` dispatcher: help, unknown commands, user errors as one line with exit 2."""

import importlib
import importlib.util
import os
import subprocess
import sys

import pytest
from tiny_run import BASE_CONFIG

from llm_jax import cli


def test_help_lists_the_commands(capsys):
    assert cli.run(["--help"]) == 0
    out = capsys.readouterr().out
    for name in cli.COMMANDS:
        assert f"  {name}" in out
    assert cli.run([]) == 2


def test_every_command_names_an_importable_function():
    for name in cli.COMMANDS:
        module = importlib.import_module(f"llm_jax.cli.{name.replace('-', '_')}")
        assert callable(module.main)


@pytest.mark.parametrize("name", list(cli.COMMANDS))
def test_every_command_has_help(name, capsys):
    assert cli.run([name, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: llm-jax {name}") and "--help" in out


def test_unknown_command(capsys):
    assert cli.run(["trian"]) == 2
    assert "unknown command 'trian'" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--config.model.d_model=-4"], "error: config.model.d_model must be > 0 (got -4)\n"),
        (["--config.train.schedule=cosin"], "error: config.train.schedule='cosin' is not one of"),
        (["--config.mesh.tensor=3"], "error: config.mesh: "),
    ],
)
def test_config_errors_are_one_line(tmp_path, capsys, args, message):
    code = cli.run(["train", f"--config={BASE_CONFIG}", *args, f"--workdir={tmp_path}"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith(message) and err.count("\n") == 1 and "Traceback" not in err


def test_missing_flags_are_a_user_error(capsys):
    assert cli.run(["train", f"--config={BASE_CONFIG}"]) == 2
    assert "the following arguments are required: --workdir" in capsys.readouterr().err


def test_console_script_runs():
    script = os.path.join(os.path.dirname(sys.executable), "llm-jax")
    result = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "train" in result.stdout


@pytest.mark.skipif(importlib.util.find_spec("libtpu") is None, reason="needs the tpu extra")
def test_libtpu_stays_quiet_on_a_machine_without_tpu_chips():
    """With the tpu extra on a CPU machine, JAX's start makes libtpu complain about the
    accelerator type; the commands name one first, so nothing is printed."""
    from llm_jax import tpu_env

    if tpu_env.has_tpu_chips():
        pytest.skip("this machine has TPU chips")
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("JAX_PLATFORMS", "TPU_ACCELERATOR_TYPE", "TPU_WORKER_HOSTNAMES")
    }

    def stderr_of(setup: str) -> str:
        code = f"{setup}import jax; print(jax.devices()[0].platform)"
        done = subprocess.run(
            [sys.executable, "-c", code],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        assert done.stdout.strip() == "cpu"
        return done.stderr

    assert "TPU_ACCELERATOR_TYPE" in stderr_of("")  # the noise this guards against
    quiet = stderr_of("from llm_jax import tpu_env; tpu_env.quiet_libtpu_without_tpu(); ")
    assert "TPU" not in quiet and "Source Location Trace" not in quiet, quiet


# --- every user error is one line and exit 2 (issue: the error contract) ----------------------


def _one_line_error(capsys, argv, expected):
    code = cli.run(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    assert expected in err, err


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--config.train.stepz=1"], "config.train.stepz is not a config key"),
        (["--config.trian.steps=1"], "config.trian is not a config section"),
        (["--config.train.steps=many"], "config.train.steps: cannot read 'many' as a int"),
        (["--config.train.steps"], "--config.train.steps needs a value"),
    ],
)
def test_bad_overrides(tmp_path, capsys, args, expected):
    argv = ["train", f"--config={BASE_CONFIG}", *args, f"--workdir={tmp_path}"]
    _one_line_error(capsys, argv, expected)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("def get_config(:\n", "line 1: syntax error"),
        ("x = 1\n", "has no get_config() function"),
        ("import no_such_module_xyz\n", "failed to load: ModuleNotFoundError"),
        ("def get_config():\n    return 3\n", "returned int, not an ml_collections.ConfigDict"),
    ],
)
def test_bad_config_files(tmp_path, capsys, text, expected):
    (tmp_path / "exp.py").write_text(text)
    argv = ["train", f"--config={tmp_path / 'exp.py'}", f"--workdir={tmp_path / 'w'}"]
    _one_line_error(capsys, argv, expected)


def test_missing_config_file(tmp_path, capsys):
    argv = ["data", "prepare", f"--config={tmp_path / 'nope.py'}"]
    _one_line_error(capsys, argv, "config file " + str(tmp_path / "nope.py") + " not found")


def test_workdir_that_is_a_file(tmp_path, capsys):
    (tmp_path / "w").write_text("")
    argv = ["train", f"--config={BASE_CONFIG}", f"--workdir={tmp_path / 'w'}"]
    _one_line_error(capsys, argv, "is a file, not a directory")


def test_sweep_file_errors(tmp_path, capsys):
    (tmp_path / "s.py").write_text("def get_config(:\n")
    _one_line_error(
        capsys, ["sweep", str(tmp_path / "s.py"), "--workdir", str(tmp_path)], "syntax error"
    )
    (tmp_path / "t.py").write_text("def get_config():\n    return None\n")
    _one_line_error(
        capsys,
        ["sweep", str(tmp_path / "t.py"), "--workdir", str(tmp_path)],
        "has no get_sweep() function",
    )
    _one_line_error(
        capsys, ["sweep", "--collect", str(tmp_path / "none")], "no such sweep directory"
    )


def test_generate_errors(tmp_path, capsys):
    _one_line_error(
        capsys,
        ["generate", "--workdir", str(tmp_path), "--max-new-tokens", "-5"],
        "--max-new-tokens must be >= 1",
    )
    (tmp_path / "config.json").write_text('{"model": {')  # torn by a kill
    _one_line_error(capsys, ["generate", "--workdir", str(tmp_path)], "is not valid JSON")
    (tmp_path / "config.json").write_text("{}")
    _one_line_error(capsys, ["generate", "--workdir", str(tmp_path)], "no checkpoint in")


def test_fit_errors(tmp_path, capsys):
    (tmp_path / "bin.csv").write_bytes(bytes(range(256)) * 4)
    _one_line_error(capsys, ["fit", str(tmp_path / "bin.csv")], "bin.csv")
    (tmp_path / "r.csv").write_text("N,D,loss\n1e6,1e8,3.0\n")
    _one_line_error(
        capsys, ["fit", str(tmp_path / "r.csv"), "--level", "2"], "--level must be in (0, 1)"
    )
    _one_line_error(
        capsys, ["fit", str(tmp_path / "r.csv"), "--bootstrap", "-1"], "--bootstrap must be >= 0"
    )


def test_fit_json_redirected_onto_its_own_fit_json(tmp_path):
    """`llm-jax fit DIR/results.csv --json > DIR/fit.json`: the shell empties fit.json before
    the fit runs; the fit must neither crash on it nor lose the finished result."""
    rows = ["N,D,loss"] + [
        f"{n},{d},{1.7 + 400 / n**0.34 + 400 / d**0.28}"
        for n in (1e6, 3e6, 1e7, 3e7)
        for d in (1e8, 3e8, 1e9, 3e9)
    ]
    (tmp_path / "results.csv").write_text("\n".join(rows) + "\n")
    script = os.path.join(os.path.dirname(sys.executable), "llm-jax")
    results, fit_json = tmp_path / "results.csv", tmp_path / "fit.json"
    command = f"'{script}' fit '{results}' --json --bootstrap 2 > '{fit_json}'"
    done = subprocess.run(command, shell=True, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    import json

    stored = json.loads((tmp_path / "fit.json").read_text())
    assert "alpha" in stored.get("chinchilla", stored)
