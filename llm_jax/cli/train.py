"""`llm-jax train --config FILE --workdir DIR [--config.a.b=v ...]`."""

from __future__ import annotations

from collections.abc import Sequence

from llm_jax.cli import args as args_lib

PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: checkpoint saved, rerun the same command to resume


def main(argv: Sequence[str]) -> int:
    """Train (or resume) a run; exit 75 when stopped by a signal after saving."""
    p = args_lib.parser(
        argv[0],
        "Train a model, resuming from the workdir's latest checkpoint. "
        "Exit code 75: stopped by SIGTERM/SIGINT after saving; rerun to resume.",
        config="required",
    )
    p.add_argument(
        "--workdir", required=True, help="run directory: config.json, metrics.jsonl, checkpoints/"
    )
    args, config = args_lib.parse_with_config(p, argv[1:])
    from llm_jax import trainer  # heavy: JAX and the data pipeline

    result = trainer.train_and_evaluate(config, args.workdir)
    return PREEMPTED_EXIT_CODE if result["preempted"] else 0
