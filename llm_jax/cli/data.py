"""`llm-jax data prepare|inspect [--config FILE] [--config.a.b=v ...]`: build or look at
a config's tokenizer and token caches."""

from __future__ import annotations

from collections.abc import Sequence

import ml_collections

from llm_jax import config as config_lib
from llm_jax import data, mixture
from llm_jax.cli import args as args_lib
from llm_jax.errors import UsageError
from llm_jax.tokenizer import DataError


def _validation_rule(d: ml_collections.ConfigDict) -> str:
    """How the config's validation split is made (corpus.py's docstring has the rules)."""
    if d.source == "shakespeare":
        return "3 whole plays held out (Twelfth Night, Henry V, Macbeth)"
    if d.get("val_path"):
        return f"the files of config.data.val_path={d.val_path!r}"
    k = max(2, round(1 / d.val_fraction))
    rule = f"every {k}th document (val_fraction {d.val_fraction:g})"
    if d.source == "hf":
        rule = f"the dataset's {d.hf_val_split!r} split if it has one, else {rule}"
    return rule + "; with fewer documents, the tail of the last one"


def prepare_main(config: ml_collections.ConfigDict, verify: bool = False) -> data.Prepared:
    """Build (or reuse) the tokenizer and token caches, and print their statistics."""
    prepared = data.prepare(config, verify)
    m, d = prepared.manifest, config.data
    source = d.path if d.source == "files" else d.hf_name if d.source == "hf" else ""
    print(f"corpus     {d.source} {source}".rstrip())
    print(f"validation {_validation_rule(d)}")
    print(f"tokenizer  {prepared.tokenizer.path}  vocab {prepared.tokenizer.vocab_size:,}")
    print(f"cache      {prepared.folder}  ({m['dtype']})")
    print(
        f"{'split':<6}{'documents':>11}{'bytes':>14}{'tokens':>14}{'bytes/token':>13}"
        f"{'sequences':>11}{'shards':>8}"
    )
    for split, info in m["splits"].items():
        print(
            f"{split:<6}{info['documents']:>11,}{info['bytes']:>14,}{info['tokens']:>14,}"
            f"{info['bytes_per_token']:>13.3f}{info['tokens'] // (d.seq_len + 1):>11,}"
            f"{len(info['shards']):>8}"
        )
    print(f"sequences are seq_len+1={d.seq_len + 1} tokens")
    if m["decode_replacements"]:
        print(f"replaced {m['decode_replacements']:,} undecodable byte sequences with U+FFFD")
    return prepared


def inspect_main(config: ml_collections.ConfigDict, split: str, sample_tokens: int) -> None:
    """The statistics of `prepare`, then the first tokens of a split, decoded and as ids."""
    prepared = prepare_main(config)
    ids = [int(t) for t in prepared.tokens(split)[:sample_tokens]]
    print(f"\nfirst {len(ids)} tokens of {split}, decoded:")
    print("-" * 72)
    print(prepared.tokenizer.decode(ids))
    print("-" * 72)
    print("as ids: " + " ".join(map(str, ids[:32])) + (" ..." if len(ids) > 32 else ""))


def main(argv: Sequence[str]) -> int:
    """Run `llm-jax data prepare|inspect [--config FILE] [--config.a.b=v ...]`."""
    p = args_lib.parser(
        argv[0],
        "prepare: build (or reuse) the tokenizer and token caches of a config's corpus and "
        "print their statistics (vocabulary, documents, bytes, tokens and bytes per token "
        "per split, how the validation split is made). inspect: the same, then a decoded "
        "sample of a split's tokens.",
        config="optional",
    )
    p.add_argument("action", choices=("prepare", "inspect"))
    p.add_argument("--split", choices=("train", "val"), default="val", help="inspect: the split")
    p.add_argument("--tokens", type=int, default=200, help="inspect: tokens to decode")
    p.add_argument(
        "--verify",
        action="store_true",
        help="re-hash every shard of an existing cache (one full read) and rebuild it if "
        "any changed; without it, opening a cache checks sizes only",
    )
    args, config = args_lib.parse_with_config(p, argv[1:])
    config = config_lib.validate(config)
    try:
        if args.action == "prepare" and config.data.sources is not None:
            mixture.prepare(config, lambda source: prepare_main(source, args.verify))
        elif args.action == "prepare":
            prepare_main(config, args.verify)
        elif config.data.sources is not None:
            raise UsageError(
                "data inspect shows one corpus, not a data.sources mixture; pass one "
                "source's keys instead (e.g. --config.data.sources=None --config.data.path=...)"
            )
        else:
            inspect_main(config, args.split, max(1, args.tokens))
    except OSError as e:  # a cache folder that cannot be written (permissions, disk full)
        raise DataError(f"cannot write the data cache: {e}") from e
    return 0
