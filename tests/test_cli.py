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
        module = importlib.import_module(f"llm_jax.cli.{name}")
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
