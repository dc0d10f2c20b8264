"""`llm-jax inspect`: look inside a trained model on one text.

    llm-jax inspect --workdir runs/tiny --text "Is this a dagger which I see before me"

Prints, for the text (preceded by the end-of-sequence token every training document
followed): the next-token table (top-k predictions, probability and loss of the actual next
token, entropy) and the logit lens (each layer's top prediction); with --query-token, the
tokens that position attends to most in every layer and head; with --neighbours, the
nearest pieces in embedding space. Writes into --out (default WORKDIR/inspect):
attention_layer<N>.png (the heads of layer N), attention.npz (the raw weights),
surprise.png (the loss of each token along the text), and with --embedding-plot
embedding_pca.png. Runs on one device (a CPU is enough for small models).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from typing import TextIO

from llm_jax import inspect as inspect_lib
from llm_jax import workdir as workdir_lib
from llm_jax.cli import args as args_lib
from llm_jax.errors import UsageError
from llm_jax.model import ModelConfig

log = logging.getLogger(__name__)

EMBEDDING_PLOT_PIECES = 150  # pieces in the PCA plot: readable labels, the common ones


def _parser(prog: str) -> argparse.ArgumentParser:
    p = args_lib.parser(prog, __doc__.split("\n\n")[0])
    p.add_argument("--workdir", required=True, help="a training run's directory")
    p.add_argument("--text", required=True, help="the text to run through the model")
    p.add_argument("--out", default=None, help="folder for the PNGs and .npz (WORKDIR/inspect)")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    p.add_argument(
        "--query-token",
        default=None,
        metavar="I|PIECE",
        help="print the tokens this position attends to most, per layer and head: an index "
        "into the printed tokens (negative counts from the end) or a piece such as 'it' "
        "(its last occurrence)",
    )
    p.add_argument("--top-k", type=int, default=5, help="rows of each top list (default 5)")
    p.add_argument(
        "--neighbours",
        nargs="+",
        default=[],
        metavar="WORD",
        help="print the pieces nearest to each word by cosine similarity of embeddings",
    )
    p.add_argument(
        "--embedding-plot",
        action="store_true",
        help=f"write embedding_pca.png: the {EMBEDDING_PLOT_PIECES} most frequent pieces "
        "on the 2-D PCA of the input embedding",
    )
    return p


def main(argv: Sequence[str], out: TextIO | None = None) -> int:
    """Entry point of `llm-jax inspect` (argv[0] is the program name); prints to `out`."""
    args = _parser(argv[0]).parse_args(list(argv[1:]))
    out = out or sys.stdout
    if args.top_k < 1:
        raise UsageError(f"--top-k must be >= 1, got {args.top_k}")
    if not args.text:
        raise UsageError("--text is empty; give the text to inspect")
    args_lib.require_workdir(args.workdir)

    config, params, tokenizer = workdir_lib.restore_run(args.workdir, args.step)
    tokens = [tokenizer.eos_id, *tokenizer.encode(args.text)]
    if len(tokens) > config.model.max_seq_len:
        raise UsageError(
            f"--text is {len(tokens)} tokens with the separator in front; the model reads "
            f"at most {config.model.max_seq_len}: pass a shorter text"
        )
    pieces = inspect_lib.display_pieces(tokenizer, config.model.vocab_size)
    labels = [pieces[t] for t in tokens]
    query = None
    if args.query_token is not None:
        try:
            query = inspect_lib.resolve_query(args.query_token, labels)
        except ValueError as e:
            raise UsageError(f"--query-token: {e}") from e

    cfg = ModelConfig.from_config(config.model)
    insp = inspect_lib.inspect_tokens(params, cfg, tokens)
    _print_tables(out, insp, pieces, labels, query, args.top_k)
    if args.neighbours:
        tables = inspect_lib.embedding_tables(params, cfg)
        _print_neighbours(out, tables, pieces, tokenizer, args.neighbours, args.top_k)
    _write_files(args, cfg, params, insp, pieces, labels)
    return 0


def _print_tables(out: TextIO, insp, pieces, labels, query: int | None, k: int) -> None:
    out.write("next-token predictions (loss and entropy in nats)\n")
    out.write(inspect_lib.next_token_table(insp, pieces, k) + "\n\n")
    out.write("logit lens: top prediction read from the residual stream after each layer\n")
    out.write(inspect_lib.logit_lens_table(insp, pieces) + "\n\n")
    out.write("attention heads: mean weight on each kind of token\n")
    out.write(inspect_lib.head_summary_table(insp) + "\n")
    if query is not None:
        out.write(f"\nattention of position {query} ({labels[query]})\n")
        out.write(inspect_lib.query_table(insp, pieces, query, k) + "\n")


def _print_neighbours(out: TextIO, tables, pieces, tokenizer, words, k: int) -> None:
    for word in words:
        ids = inspect_lib.find_piece(pieces, word)
        if not ids:
            ids = tokenizer.encode(" " + word)
            out.write(
                f"\n{word!r} is not one piece; its pieces in running text: "
                + " ".join(pieces[i] for i in ids)
                + "\n"
            )
        for piece in dict.fromkeys(ids):  # each piece once
            out.write(f"\nnearest to {pieces[piece]} (cosine similarity)\n")
            out.write(inspect_lib.neighbours_table(tables, pieces, piece, k) + "\n")


def _write_files(args, cfg: ModelConfig, params, insp, pieces, labels) -> None:
    folder = args.out or os.path.join(args.workdir, "inspect")
    written = []
    for n, weights_HxLxL in enumerate(insp.attention_YxHxLxL):
        path = os.path.join(folder, f"attention_layer{n + 1}.png")
        inspect_lib.plot_attention(weights_HxLxL, labels, f"layer {n + 1}", path)
        written.append(path)
    path = os.path.join(folder, "attention.npz")
    inspect_lib.save_attention(insp, labels, path)
    written.append(path)
    path = os.path.join(folder, "surprise.png")
    inspect_lib.plot_surprise(insp.surprise_L1, labels[1:], path)
    written.append(path)
    if args.embedding_plot:
        ids = inspect_lib.frequent_pieces(pieces, EMBEDDING_PLOT_PIECES)
        table_VxD = inspect_lib.embedding_tables(params, cfg)["input"]
        path = os.path.join(folder, "embedding_pca.png")
        inspect_lib.plot_embedding(
            inspect_lib.pca_2d(table_VxD[ids]),
            [pieces[i] for i in ids],
            f"input embedding of {len(ids)} frequent pieces, 2-D PCA",
            path,
        )
        written.append(path)
    log.info("wrote %s", ", ".join(written))
