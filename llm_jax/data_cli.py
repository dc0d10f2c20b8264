"""`llm-jax data prepare --config FILE [--config.a.b=v ...]`: build tokenizer and caches.

Public API:
  - `data_main(argv) -> int`: argv is `[prog, *args]` as `llm_jax.cli` passes it, e.g.
    `['llm-jax data', 'prepare', '--config', 'experiments/configs/x.py',
    '--config.data.seq_len=256']`.
    Without `--config` the defaults of `llm_jax.config.default_config()` are used (and
    `--config.a.b=v` still overrides them). Returns the exit status: 0, or 2 after
    printing a one-line error (bad config or data input) without a traceback.
  - `prepare_main(config) -> Prepared`: prepare, then print the corpus statistics table.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import ml_collections
from absl import flags
from ml_collections import config_flags

from llm_jax import config as config_lib
from llm_jax import data

_USAGE = "usage: llm-jax data prepare [--config FILE] [--config.a.b=value ...]"


def prepare_main(config: ml_collections.ConfigDict) -> data.Prepared:
    """Build (or reuse) the tokenizer and token caches, and print their statistics."""
    prepared = data.prepare(config)
    m, d = prepared.manifest, config.data
    print(f"corpus     {d.source} {d.path or d.hf_name}".rstrip())
    print(f"tokenizer  {prepared.tokenizer.path}  vocab {prepared.tokenizer.vocab_size}")
    print(f"cache      {prepared.folder}  ({m['dtype']})")
    print(f"{'split':<6}{'documents':>11}{'bytes':>14}{'tokens':>14}{'bytes/token':>13}"
          f"{'sequences':>11}")
    for split, info in m["splits"].items():
        print(f"{split:<6}{info['documents']:>11,}{info['bytes']:>14,}{info['tokens']:>14,}"
              f"{info['bytes_per_token']:>13.3f}{info['tokens'] // (d.seq_len + 1):>11,}")
    print(f"sequences are seq_len+1={d.seq_len + 1} tokens")
    if m["decode_replacements"]:
        print(f"replaced {m['decode_replacements']:,} undecodable byte sequences with U+FFFD")
    return prepared


def data_main(argv: Sequence[str]) -> int:
    """Run `llm-jax data`; `argv` is `[prog, 'prepare', *flags]`. Returns the exit code."""
    args = list(argv[1:])
    if args[:1] in (["-h"], ["--help"]):
        print(_USAGE)
        return 0
    if args[:1] != ["prepare"]:
        print(_USAGE, file=sys.stderr)
        return 2
    try:
        config = _parse_config([f"{argv[0]} prepare", *args[1:]])
    except (flags.Error, OSError, AttributeError, KeyError, ValueError) as e:
        # config_flags reports a missing file as OSError and an unknown key as AttributeError.
        why = f"unknown key {e}" if isinstance(e, AttributeError | KeyError) else str(e)
        print(f"error: bad --config flags: {' '.join(why.split())}", file=sys.stderr)
        return 2
    try:
        prepare_main(config_lib.validate(config))
    except (OSError, config_lib.ConfigError, data.DataError) as e:
        # OSError: a cache folder that cannot be written (permissions, disk full).
        print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    return 0


def _parse_config(args: list[str]) -> ml_collections.ConfigDict:
    """The config named by --config (else the defaults) with --config.a.b overrides."""
    flag_values = flags.FlagValues()
    # config_flags reads --config.a.b overrides from sys_argv, not from the parse call.
    if any(a == "--config" or a.startswith("--config=") for a in args):
        config_flags.DEFINE_config_file("config", None, "experiment config file",
                                        flag_values=flag_values, sys_argv=args)
    else:
        config_flags.DEFINE_config_dict("config", config_lib.default_config(),
                                        flag_values=flag_values, sys_argv=args)
    extra = flag_values(args)
    if len(extra) > 1:
        raise flags.Error(f"unexpected arguments {extra[1:]}")
    return flag_values.config
