"""The `llm-jax` command: a table of subcommands, each a lazily imported `main(argv)`.

To add a subcommand, add a module `llm_jax/cli/<name>.py` (dashes in the name become
underscores) with `main(argv) -> int` and one line to `COMMANDS`. `argv` is
`[prog, *args]` (prog e.g. "llm-jax train"). A `UserError` from anywhere below prints
one line, `error: ...`, and exits with code 2; any other exception is a bug and keeps
its traceback. The scripts in tools/ start through `run_tool`, under the same contract.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from llm_jax import tpu_env, xla_cpu
from llm_jax.errors import UsageError, UserError

COMMANDS: dict[str, str] = {
    "train": "train a model: --config FILE --workdir DIR",
    "train-pack": "train same-shape trials as one vmapped program: --config F --trial DIR ...",
    "data": "prepare a dataset and its tokenizer (prepare), or look at one (inspect)",
    "plan": "fit and speed on a TPU pod, compiled here: --config FILE --topology v5p-256",
    "generate": "sample text from a run: --workdir DIR",
    "sweep": "run a sweep's trials, resumably; or --collect DIR",
    "fit": "fit a scaling law to a results CSV",
    "plot": "redraw a sweep's plots, or draw one run's curves: DIR",
    "import-hf": "a Hugging Face GPT-2/Llama checkpoint (or nanoGPT ckpt.pt) as a workdir",
    "export-hf": "a workdir as a Hugging Face model directory: --workdir W --out DIR",
    "eval": "perplexity and multiple-choice accuracy on task files: --workdir W --task F",
    "lm-eval": "lm-evaluation-harness with the llm_jax model: --model_args workdir=W --tasks T",
    "predict": "label texts with a classify run: --workdir W --input FILE",
    "inspect": "attention maps, next-token probabilities, logit lens of a run: --workdir W",
}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [
        "usage: llm-jax <command> [options]   (llm-jax <command> --help for its options)",
        "",
        "commands:",
    ]
    lines += [f"  {name:<{width}}  {help_}" for name, help_ in COMMANDS.items()]
    return "\n".join(lines)


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time (tests and redirects replace it)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value):
        pass


def configure_logging() -> None:
    """Status lines from llm_jax loggers go to stderr as plain lines; libraries stay quiet."""
    handler = _StderrHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    package = logging.getLogger("llm_jax")
    if not package.handlers:
        package.addHandler(handler)
    package.setLevel(logging.INFO)
    package.propagate = False
    # Orbax logs routine warnings (e.g. on read-only restores) through absl.
    logging.getLogger("absl").setLevel(logging.ERROR)


def _apply_cpu_env() -> None:
    """Apply LLM_JAX_CPUS (llm_jax/xla_cpu.py) before any subcommand starts JAX, and check
    LLM_JAX_REUSE_MEMORY (`import llm_jax` applied it, or ignored a bad value)."""
    try:
        xla_cpu.reuse_memory_mode()
    except ValueError as e:
        raise UsageError(str(e)) from None
    try:
        xla_cpu.pin_from_env()
    except (ValueError, OSError) as e:
        raise UsageError(
            f"{xla_cpu.CPUS_ENV}={os.environ[xla_cpu.CPUS_ENV]!r} is not a usable CPU list "
            f"({e}); give CPUs this machine has, e.g. 0 or 0-3, or unset it"
        ) from None


def run(argv: Sequence[str]) -> int:
    """Dispatch `argv` (without the program name) to a subcommand; returns the exit code."""
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0 if argv else 2
    name, rest = argv[0], list(argv[1:])
    if name not in COMMANDS:
        print(f"error: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    tpu_env.quiet_libtpu_without_tpu()  # before any subcommand starts JAX
    configure_logging()

    def command() -> int | None:
        _apply_cpu_env()
        module = importlib.import_module(f"llm_jax.cli.{name.replace('-', '_')}")
        return module.main([f"llm-jax {name}", *rest])

    return exit_code(command)


def exit_code(fn: Callable[[], int | None]) -> int:
    """Call `fn` and return the process's exit code: `fn`'s (None: 0), or 2 after printing
    a `UserError` as one line, `error: ...`, on stderr. Other exceptions keep their traceback."""
    try:
        return int(fn() or 0)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except SystemExit as e:  # argparse's --help
        return e.code if isinstance(e.code, int) else 0


def run_tool(main_fn: Callable[[Sequence[str]], int | None]) -> NoReturn:
    """The `__main__` of a script in tools/: keep libtpu quiet (before JAX starts its
    backend), run `main_fn(sys.argv[1:])` under the error contract and exit with its code."""
    tpu_env.quiet_libtpu_without_tpu()
    sys.exit(exit_code(lambda: main_fn(sys.argv[1:])))


def main() -> None:
    """Console-script entry point."""
    try:
        code = run(sys.argv[1:])
        sys.stdout.flush()
    except BrokenPipeError:  # `llm-jax ... | head`: the reader left, nothing to report
        # Point stdout at /dev/null so the interpreter's final flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 0
    sys.exit(code)
