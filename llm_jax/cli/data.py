"""`llm-jax data prepare [--config FILE] [--config.a.b=v ...]`: build tokenizer and caches."""

from __future__ import annotations

from collections.abc import Sequence

import ml_collections

from llm_jax import config as config_lib
from llm_jax import data
from llm_jax.cli import args as args_lib
from llm_jax.tokenizer import DataError


def prepare_main(config: ml_collections.ConfigDict) -> data.Prepared:
    """Build (or reuse) the tokenizer and token caches, and print their statistics."""
    prepared = data.prepare(config)
    m, d = prepared.manifest, config.data
    print(f"corpus     {d.source} {d.path or d.hf_name}".rstrip())
    print(f"tokenizer  {prepared.tokenizer.path}  vocab {prepared.tokenizer.vocab_size}")
    print(f"cache      {prepared.folder}  ({m['dtype']})")
    print(
        f"{'split':<6}{'documents':>11}{'bytes':>14}{'tokens':>14}{'bytes/token':>13}"
        f"{'sequences':>11}"
    )
    for split, info in m["splits"].items():
        print(
            f"{split:<6}{info['documents']:>11,}{info['bytes']:>14,}{info['tokens']:>14,}"
            f"{info['bytes_per_token']:>13.3f}{info['tokens'] // (d.seq_len + 1):>11,}"
        )
    print(f"sequences are seq_len+1={d.seq_len + 1} tokens")
    if m["decode_replacements"]:
        print(f"replaced {m['decode_replacements']:,} undecodable byte sequences with U+FFFD")
    return prepared


def main(argv: Sequence[str]) -> int:
    """Run `llm-jax data prepare [--config FILE] [--config.a.b=v ...]`."""
    p = args_lib.parser(
        argv[0],
        "Build (or reuse) the tokenizer and token caches of a "
        "config's corpus and print their statistics.",
        config="optional",
    )
    p.add_argument("action", choices=("prepare",), help="prepare: build and report")
    args, config = args_lib.parse_with_config(p, argv[1:])
    try:
        prepare_main(config_lib.validate(config))
    except OSError as e:  # a cache folder that cannot be written (permissions, disk full)
        raise DataError(f"cannot write the data cache: {e}") from e
    return 0
