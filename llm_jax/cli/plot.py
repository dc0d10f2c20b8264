"""`llm-jax plot DIR`: redraw a sweep's plots from its results.csv and fit.json."""

from __future__ import annotations

from collections.abc import Sequence

from llm_jax.cli import args as args_lib


def main(argv: Sequence[str]) -> int:
    """Draw the plots of a sweep directory and list the files written."""
    from llm_jax.scaling import plot as plot_lib  # matplotlib

    p = args_lib.parser(argv[0], __doc__.split(": ", 1)[1])
    p.add_argument("dir", help="a sweep directory (holding results.csv)")
    args = p.parse_args(argv[1:])
    paths = plot_lib.plot_sweep(args.dir)
    for path in paths:
        print(f"wrote {path}")
    if not paths:
        print("nothing to plot yet: no finished trials")
    return 0
