"""The `llm-jax` command: a table of subcommands, each a lazily imported function.

To add a subcommand, add one line to `COMMANDS`: name -> ("module:function", help).
The function takes argv (`[prog, *args]`, prog being e.g. "llm-jax train") and
returns an exit code or None. Errors a user can cause (`USER_ERRORS`) print one
line, `error: ...`, and exit with code 2, without a traceback.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence

from llm_jax import tpu_env

COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("llm_jax.train:train_main", "train a model: --config FILE --workdir DIR"),
    "data": ("llm_jax.data_cli:data_main", "prepare and inspect datasets and tokenizers"),
    "plan": ("llm_jax.plan_cli:plan_main", "fit and speed on a TPU pod, compiled here: "
             "--config FILE --topology v5p-256"),
    "generate": ("llm_jax.generate_cli:generate_main", "sample text from a run: --workdir DIR"),
    "sweep": ("llm_jax.scaling.runner:main", "run a sweep's trials, resumably; or --collect DIR"),
    "fit": ("llm_jax.scaling.fit:main", "fit a scaling law to a results CSV"),
    "plot": ("llm_jax.scaling.plot:main", "redraw a sweep's plots: DIR"),
}

# Exception classes ("module:Class") that mean the user must change something. They
# are matched only when their module is already loaded, so none is imported here.
USER_ERRORS: tuple[str, ...] = (
    "llm_jax.config:ConfigError",
    "llm_jax.data:DataError",
    "llm_jax.tokenizer:DataError",
    "llm_jax.checkpoint:CheckpointError",
    "llm_jax.train:TrainError",
    "absl.flags:Error",
)


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = ["usage: llm-jax <command> [options]   (llm-jax <command> --help for its options)",
             "", "commands:"]
    lines += [f"  {name:<{width}}  {help_}" for name, (_, help_) in COMMANDS.items()]
    return "\n".join(lines)


def _is_user_error(error: BaseException) -> bool:
    for spec in USER_ERRORS:
        module, name = spec.split(":")
        cls = getattr(sys.modules.get(module), name, None)
        if isinstance(cls, type) and isinstance(error, cls):
            return True
    return False


def run(argv: Sequence[str]) -> int:
    """Dispatch `argv` (without the program name) to a subcommand; returns the exit code."""
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0 if argv else 2
    name, rest = argv[0], list(argv[1:])
    if name not in COMMANDS:
        print(f"error: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module_name, func_name = COMMANDS[name][0].split(":")
    tpu_env.quiet_libtpu_without_tpu()  # before any subcommand starts JAX
    try:
        func = getattr(importlib.import_module(module_name), func_name)
        return int(func([f"llm-jax {name}", *rest]) or 0)
    except Exception as e:  # noqa: BLE001 (user errors become one line; others re-raise)
        if not _is_user_error(e):
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2


def main() -> None:
    """Console-script entry point."""
    sys.exit(run(sys.argv[1:]))


if __name__ == "__main__":
    main()
