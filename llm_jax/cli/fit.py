"""`llm-jax fit FILE [--law chinchilla|kaplan|isoflop] [--json]`: fit a results table."""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from llm_jax.cli import args as args_lib
from llm_jax.errors import UsageError, UserError
from llm_jax.scaling import fit as fit_lib
from llm_jax.scaling import results as results_io

log = logging.getLogger(__name__)


def main(argv: Sequence[str]) -> int:
    """Fit, print the law (or JSON), then store it in fit.json beside the table."""
    p = args_lib.parser(
        argv[0],
        "Fit a scaling law to a results table (a sweep's results.csv, "
        "its directory, or any CSV with columns N, D, loss and optionally C); "
        "writes fit.json beside it.",
    )
    p.add_argument("file")
    p.add_argument(
        "--law",
        choices=("chinchilla", "kaplan", "isoflop"),
        default="chinchilla",
        help="chinchilla: approach 3, L(N,D); kaplan: L(N), L(D), L(C) power "
        "laws; isoflop: approach 2 parabolas (needs IsoFLOP budgets)",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument(
        "--n-column",
        default="N",
        help="the parameter count to fit (e.g. N_non_embedding, Kaplan's choice)",
    )
    p.add_argument("--bootstrap", type=int, default=100, help="bootstrap refits for intervals")
    p.add_argument("--level", type=float, default=0.95, help="interval coverage, in (0, 1)")
    args = p.parse_args(argv[1:])
    if args.bootstrap < 0:
        raise UsageError(f"--bootstrap must be >= 0 (got {args.bootstrap})")
    if not 0 < args.level < 1:
        raise UsageError(f"--level must be in (0, 1), e.g. 0.95 (got {args.level})")
    points = fit_lib.load_points(args.file, args.n_column)
    fit = fit_lib.run_law(points, args.law, n_boot=args.bootstrap, level=args.level)
    # The result is printed before fit.json is touched: a write problem (or stdout being
    # redirected onto fit.json itself) never loses a finished fit.
    if args.json:
        _print(json.dumps(results_io.jsonable(fit)))
    else:
        _print(fit_lib.format_fit(args.law, fit))
    path = Path(args.file)
    out_path = (path if path.is_dir() else path.parent) / results_io.FIT_JSON
    try:
        fit_lib.update_fit_json(out_path, args.law, fit)
    except (OSError, UserError) as e:
        raise UserError(
            f"the fit is printed above but could not be stored in {out_path}: {e}"
        ) from e
    if not args.json:
        _print(f"wrote {out_path}")
    return 0


def _print(text: str) -> None:
    """Print, surviving a reader that closed the pipe (`| head`): the fit is still stored."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
