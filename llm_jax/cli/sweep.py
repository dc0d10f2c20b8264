"""`llm-jax sweep SWEEP.py --workdir DIR [...]` or `llm-jax sweep --collect DIR`."""

from __future__ import annotations

from collections.abc import Sequence

from llm_jax import storage
from llm_jax.cli import args as args_lib
from llm_jax.errors import UsageError


def main(argv: Sequence[str]) -> int:
    """Run (or collect) a sweep; exit 1 when a trial did not finish, 130 on Ctrl-C."""
    from llm_jax.scaling import collect as collect_lib
    from llm_jax.scaling import runner

    p = args_lib.parser(
        argv[0],
        (
            "Run a sweep file's trials (one `llm-jax train` each), resuming unfinished ones and "
            "skipping finished ones; then write DIR/results.csv, fit.json and plots/."
        ),
    )
    p.add_argument("sweep", nargs="?", help="a sweep file: get_config() and get_sweep()")
    p.add_argument("--workdir", help="the sweep directory: one subdirectory per trial")
    p.add_argument(
        "--parallel",
        type=int,
        help="trials at once (local; slurm: the array's "
        "limit); default: the sweep file's PARALLEL, else 1",
    )
    p.add_argument(
        "--pack",
        type=int,
        help="train up to K trials that differ only in lr, min_lr_ratio, seed or init_std "
        "as one program (llm-jax train-pack); default 16, spread over --parallel programs; "
        "1 trains each trial in its own process",
    )
    p.add_argument("--only", help="run only trials matching these glob patterns (comma-separated)")
    p.add_argument("--dry-run", action="store_true", help="list the trials and commands")
    p.add_argument(
        "--launcher",
        choices=("local", "slurm", "tpu"),
        default="local",
        help="local: run here; slurm/tpu: write launch scripts into the workdir",
    )
    p.add_argument("--collect", metavar="DIR", help="only (re)write results, fits and plots")
    p.add_argument("--bootstrap", type=int, default=100, help="bootstrap refits for intervals")
    args = p.parse_args(argv[1:])
    if args.bootstrap < 0:
        raise UsageError(f"--bootstrap must be >= 0 (got {args.bootstrap})")
    if args.collect:
        if not storage.path(args.collect).is_dir():
            raise UsageError(f"--collect {args.collect}: no such sweep directory")
        collect_lib.collect(args.collect, args.bootstrap)
        return 0
    if not args.sweep or not args.workdir:
        raise UsageError("give a sweep file and --workdir (or --collect DIR)")
    if args.parallel is not None and args.parallel < 1:
        raise UsageError("--parallel must be >= 1")
    if args.pack is not None and args.pack < 1:
        raise UsageError("--pack must be >= 1")
    try:
        return runner.run_sweep(
            args.sweep,
            args.workdir,
            parallel=args.parallel,
            only=args.only,
            dry_run=args.dry_run,
            launcher=args.launcher,
            n_boot=args.bootstrap,
            pack=args.pack,
            fork=True,  # this process's JAX config is a fresh one's: trials may fork from it
        )
    except KeyboardInterrupt:
        return 130
