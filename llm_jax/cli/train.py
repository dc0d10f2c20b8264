"""`llm-jax train --config FILE --workdir DIR [--config.a.b=v ...]`."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Sequence

from llm_jax.cli import args as args_lib
from llm_jax.preemption import PreemptionGuard

PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: checkpoint saved, rerun the same command to resume
PARENT_ENV = "LLM_JAX_DIE_WITH_PARENT"  # set by the sweep runner to its pid
_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """If the sweep runner started us, get SIGTERM when it dies (Linux), else exit now.

    SIGTERM is a clean stop (checkpoint, exit 75), so an orphaned trial does not go on
    writing a workdir that a rerun of the sweep would start again.
    """
    parent = os.environ.get(PARENT_ENV)
    if not parent or not sys.platform.startswith("linux"):
        return
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    if os.getppid() != int(parent):  # the runner died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def main(argv: Sequence[str]) -> int:
    """Train (or resume) a run; exit 75 when stopped by a signal (after saving if it stepped)."""
    # From the first second: a signal during data preparation or compilation is a clean stop.
    with PreemptionGuard() as guard:
        die_with_parent()
        p = args_lib.parser(
            argv[0],
            "Train a model, resuming from the workdir's latest checkpoint. "
            "Exit code 75: stopped by SIGTERM/SIGINT (after saving); rerun to resume.",
            config="required",
        )
        p.add_argument(
            "--workdir",
            required=True,
            help="run directory: config.json, metrics.jsonl, checkpoints/",
        )
        args, config = args_lib.parse_with_config(p, argv[1:])
        from llm_jax import trainer  # heavy: JAX and the data pipeline

        result = trainer.train_and_evaluate(config, args.workdir, guard)
        return PREEMPTED_EXIT_CODE if result["preempted"] else 0
