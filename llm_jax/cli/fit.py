"""`llm-jax fit FILE [--law chinchilla|kaplan|isoflop|hparams] [--holdout-largest] [--json]`:
fit a results table."""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Sequence

from llm_jax import storage
from llm_jax.cli import args as args_lib
from llm_jax.errors import UsageError, UserError
from llm_jax.scaling import fit as fit_lib
from llm_jax.scaling import results as results_io

log = logging.getLogger(__name__)


def _parser(prog: str):
    p = args_lib.parser(
        prog,
        "Fit a scaling law to a results table (a sweep's results.csv, "
        "its directory, or any CSV with columns N, D, loss and optionally C); "
        "writes fit.json beside it.",
    )
    p.add_argument("file")
    p.add_argument(
        "--law",
        choices=("chinchilla", "kaplan", "isoflop", "hparams"),
        default="chinchilla",
        help="chinchilla: approach 3, L(N,D); kaplan: L(N), L(D), L(C) power "
        "laws; isoflop: approach 2 parabolas (needs IsoFLOP budgets); hparams: the optimal "
        "train.lr (and train.batch_size) as a power law in N and D, from an LR sweep",
    )
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument(
        "--n-column",
        default=None,
        help="the parameter count to fit (default N; N_non_embedding for --law hparams, as "
        "SizeRules uses)",
    )
    p.add_argument("--bootstrap", type=int, default=100, help="bootstrap refits for intervals")
    p.add_argument("--level", type=float, default=0.95, help="interval coverage, in (0, 1)")
    holdout = p.add_mutually_exclusive_group()
    holdout.add_argument(
        "--holdout-largest",
        action="store_true",
        help="backtest: fit L(N, D) without the largest budget, then predict its points",
    )
    holdout.add_argument(
        "--holdout-above",
        type=float,
        metavar="C",
        help="backtest: fit L(N, D) on the points with compute <= C, predict the rest",
    )
    return p


def _fit(args) -> tuple[str, dict, str]:
    """The fit.json key, the result and its printed table."""
    if args.law == "hparams":
        from llm_jax.scaling import hparams

        laws = hparams.fit_hyperparameters(
            results_io.read_results(args.file),
            n_column=args.n_column or "N_non_embedding",
            level=args.level,
        )
        return "hparams", laws, hparams.format_laws(laws)
    points = fit_lib.load_points(args.file, args.n_column or "N")
    if args.holdout_largest or args.holdout_above is not None:
        if args.law != "chinchilla":
            raise UsageError("a backtest (--holdout-*) fits L(N, D): use it with --law chinchilla")
        held_out = fit_lib.holdout_mask(points, above=args.holdout_above)
        result = fit_lib.backtest(points, held_out, n_boot=args.bootstrap, level=args.level)
        return "backtest", result, fit_lib.format_backtest(result)
    fit = fit_lib.run_law(points, args.law, n_boot=args.bootstrap, level=args.level)
    return args.law, fit, fit_lib.format_fit(args.law, fit)


def main(argv: Sequence[str]) -> int:
    """Fit, print the law (or JSON), then store it in fit.json beside the table."""
    args = _parser(argv[0]).parse_args(argv[1:])
    if args.bootstrap < 0:
        raise UsageError(f"--bootstrap must be >= 0 (got {args.bootstrap})")
    if not 0 < args.level < 1:
        raise UsageError(f"--level must be in (0, 1), e.g. 0.95 (got {args.level})")
    key, fit, table = _fit(args)
    # The result is printed before fit.json is touched: a write problem (or stdout being
    # redirected onto fit.json itself) never loses a finished fit.
    _print(json.dumps(results_io.jsonable(fit)) if args.json else table)
    path = storage.path(args.file)
    folder = path if path.is_dir() else path.parent
    out_path = folder / results_io.FIT_JSON
    try:
        fit_lib.update_fit_json(out_path, key, fit)
    except (OSError, UserError) as e:
        raise UserError(
            f"the fit is printed above but could not be stored in {out_path}: {e}"
        ) from e
    if not args.json:
        _print(f"wrote {out_path}")
    if key == "backtest":
        from llm_jax.scaling import plot as plot_lib  # matplotlib: only backtests pay it

        plot = plot_lib.plot_backtest(fit, folder / results_io.PLOTS_DIR / "backtest.png")
        if not args.json:
            _print(f"wrote {plot}")
    return 0


def _print(text: str) -> None:
    """Print, surviving a reader that closed the pipe (`| head`): the fit is still stored."""
    try:
        print(text, flush=True)
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
