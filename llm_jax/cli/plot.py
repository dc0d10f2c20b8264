"""`llm-jax plot DIR`: redraw a sweep's plots, or draw one training run's curves."""

from __future__ import annotations

from collections.abc import Sequence

from llm_jax import storage
from llm_jax.cli import args as args_lib
from llm_jax.errors import UsageError
from llm_jax.scaling import results as results_io


def main(argv: Sequence[str]) -> int:
    """Draw the plots of a sweep directory or a training workdir; list the files written."""
    from llm_jax.scaling import plot as plot_lib  # matplotlib

    p = args_lib.parser(
        argv[0],
        "Redraw a sweep's plots from its results.csv and fit.json into DIR/plots/, or, for "
        "a training workdir (holding metrics.jsonl), draw its loss, learning-rate and "
        "gradient-norm curves into DIR/plots/run.png.",
    )
    p.add_argument("dir", help="a sweep directory (holding results.csv) or a training workdir")
    args = p.parse_args(argv[1:])
    folder = storage.path(args.dir)
    if (folder / "metrics.jsonl").exists() and not (folder / results_io.RESULTS_CSV).exists():
        print(f"wrote {plot_lib.plot_run(folder)}")
        return 0
    if not folder.is_dir():
        raise UsageError(f"{folder} is not a directory: pass a sweep directory or a workdir")
    paths = plot_lib.plot_sweep(folder)
    for path in paths:
        print(f"wrote {path}")
    if not paths:
        print("nothing to plot yet: no finished trials")
    return 0
