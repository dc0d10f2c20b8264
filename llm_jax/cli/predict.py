"""`llm-jax predict --workdir W --input FILE [--output OUT.csv]`: label texts with a
classify run.

    llm-jax predict --workdir runs/genre --input passages.txt --output predictions.csv

FILE is a .txt (one text a line) or a .jsonl/.csv whose `task.text_field` column holds
the texts. One CSV row per input, in order: the predicted label, then the probability
of every label (columns p_<label>). Without --output the CSV goes to stdout.
"""

from __future__ import annotations

import csv
import io
import sys
from collections.abc import Sequence

from llm_jax import storage
from llm_jax.cli import args as args_lib
from llm_jax.errors import UsageError


def _parser(prog: str):
    p = args_lib.parser(prog, __doc__.split("\n\n")[0])
    p.add_argument("--workdir", required=True, help="a classify run's directory")
    p.add_argument("--input", required=True, help="texts: .txt (one a line), .jsonl or .csv")
    p.add_argument("--output", default="", help="CSV to write (default: stdout)")
    p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
    p.add_argument("--batch-size", type=int, default=32, help="texts per batch")
    return p


def main(argv: Sequence[str]) -> int:
    """Entry point of `llm-jax predict` (argv[0] is the program name)."""
    args = _parser(argv[0]).parse_args(list(argv[1:]))
    args_lib.require_workdir(args.workdir)
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    from llm_jax import workdir as workdir_lib
    from llm_jax.tasks import classify

    config = workdir_lib.load_config(args.workdir)
    classify.require_classifier(config, args.workdir)  # before reading the input
    texts = classify.read_texts(args.input, config.task.text_field)
    labels, probs = classify.predict(args.workdir, texts, args.batch_size, args.step)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["label", *(f"p_{label}" for label in labels)])
    for row in probs:
        writer.writerow([labels[int(row.argmax())], *(f"{p:.4f}" for p in row)])
    if args.output:
        storage.write_text(args.output, out.getvalue())
    else:
        sys.stdout.write(out.getvalue())
    return 0
