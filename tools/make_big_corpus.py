"""Write a large `files` corpus (one document per .txt file) from the embedded plays.

    python tools/make_big_corpus.py /tmp/big_corpus --mb 200

Each document is one play with its paragraphs (blank-line separated blocks) shuffled,
so the text is Shakespeare's but no two documents are the same. Deterministic in
`--seed`. For benchmarking `llm-jax data prepare` (tools/bench_prepare.py); write it
outside the repository.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from llm_jax import cli
from llm_jax.cli import args as args_lib
from llm_jax.corpus import shakespeare_dir


def parse_args(argv=None) -> argparse.Namespace:
    """Command-line switches."""
    p = args_lib.parser("tools/make_big_corpus.py", __doc__.split("\n\n")[0])
    p.add_argument("out", type=Path, help="folder to write doc-NNNNN.txt files into")
    p.add_argument(
        "--mb", type=args_lib.positive_float, default=200.0, help="corpus size in MB (10^6 bytes)"
    )
    p.add_argument("--seed", type=args_lib.nonnegative_int, default=0)
    return p.parse_args(argv)


def main(argv=None) -> None:
    """Write the corpus and say how much."""
    args = parse_args(argv)
    plays = [f.read_text(encoding="utf-8") for f in sorted(shakespeare_dir().rglob("*.md"))]
    paragraphs = [play.split("\n\n") for play in plays]
    rng = np.random.default_rng(args.seed)
    args_lib.make_dir(args.out, "output folder")
    written, target, index = 0, int(args.mb * 1e6), 0
    while written < target:
        blocks = paragraphs[rng.integers(len(plays))]
        text = "\n\n".join(blocks[i] for i in rng.permutation(len(blocks)))
        data = text.encode("utf-8")
        (args.out / f"doc-{index:05d}.txt").write_bytes(data)
        written, index = written + len(data), index + 1
    print(f"wrote {index} documents, {written / 1e6:.1f} MB, to {args.out}")


if __name__ == "__main__":
    cli.run_tool(main)
