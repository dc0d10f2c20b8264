"""What every subcommand's (and tools/ script's) parsing shares: an argparse parser whose
errors are `UsageError`s (one line, exit 2), argparse types that refuse bad numbers and
paths in one line, and the config flags (`--config FILE` plus `--config.section.key=value`
overrides) of the commands that take a config."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import ml_collections

from llm_jax import config as config_lib
from llm_jax.errors import UsageError

CONFIG_EPILOG = (
    "Any config key can be overridden: --config.SECTION.KEY=VALUE (e.g. "
    "--config.train.lr=1e-3); every key and its default is in llm_jax/config.py."
)


class Parser(argparse.ArgumentParser):
    """argparse, with errors raised as UsageError instead of printed and exited."""

    def error(self, message: str):
        raise UsageError(f"{self.prog}: {message} (see {self.prog} --help)")


def parser(prog: str, description: str, config: str | None = None) -> Parser:
    """A parser for `prog`; `config` = 'required' or 'optional' adds the config flags."""
    p = Parser(
        prog=prog,
        description=description,
        epilog=CONFIG_EPILOG if config else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    if config:
        p.add_argument(
            "--config",
            metavar="FILE",
            required=config == "required",
            help="experiment config: a Python file with get_config()"
            + ("" if config == "required" else " (default: the built-in defaults)"),
        )
    return p


def _number(convert: Callable[[str], float], accept: Callable[[float], bool], what: str):
    """An argparse type: `convert(text)` where `accept` takes it, else a one-line usage error."""

    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            value = None
        if value is None or not accept(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
        return value

    return parse


# argparse types for sizes and counts (`type=positive_int`).
positive_int = _number(int, lambda v: v >= 1, "a positive integer")
nonnegative_int = _number(int, lambda v: v >= 0, "an integer >= 0")
positive_float = _number(float, lambda v: 0 < v < math.inf, "a positive number")


def comma_list(item: Callable[[str], object]) -> Callable[[str], list]:
    """An argparse type: comma-separated values (e.g. '1,8'), each read by the type `item`."""
    return lambda text: [item(part) for part in text.split(",") if part]


def existing_dir(text: str) -> Path:
    """An argparse type: the path of an existing directory."""
    if not Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"{text} is not a directory")
    return Path(text)


def make_dir(path: Path, flag: str) -> None:
    """Create the output folder `path` (given as `flag`) if need be, or refuse it in one line."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(
            f"{flag} {path}: cannot create this folder ({e.strerror}); give one you can write"
        ) from None


def split_overrides(argv: Sequence[str]) -> tuple[dict[str, str], list[str]]:
    """(`{'a.b': 'v'}` from `--config.a.b=v` or `--config.a.b v`, the other arguments)."""
    overrides, rest, args = {}, [], list(argv)
    while args:
        arg = args.pop(0)
        if not arg.startswith("--config."):
            rest.append(arg)
            continue
        key, sep, value = arg[len("--config.") :].partition("=")
        if not sep:
            if not args or args[0].startswith("--"):
                raise UsageError(f"--config.{key} needs a value (--config.{key}=VALUE)")
            value = args.pop(0)
        overrides[key] = value
    return overrides, rest


def parse_with_config(
    p: Parser, argv: Sequence[str]
) -> tuple[argparse.Namespace, ml_collections.ConfigDict]:
    """Parse `argv` (without the program name); returns (args, config with overrides)."""
    overrides, rest = split_overrides(argv)
    args = p.parse_args(rest)
    base = config_lib.load_config_file(args.config) if args.config else config_lib.default_config()
    return args, config_lib.apply_overrides(base, overrides)


def require_workdir(workdir: str) -> None:
    """Refuse a --workdir that is not an existing directory (local or gs://)."""
    from llm_jax import storage

    if not storage.is_dir(workdir):
        raise UsageError(f"--workdir {workdir} is not a directory")
