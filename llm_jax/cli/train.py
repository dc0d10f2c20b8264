"""`llm-jax train --config FILE --workdir DIR [--config.a.b=v ...]`."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Sequence

from llm_jax.preemption import PREEMPTED_EXIT_CODE, PreemptionGuard

PARENT_ENV = "LLM_JAX_DIE_WITH_PARENT"  # set by the sweep runner to its pid
_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """If the sweep runner started us, SIGTERM ourselves when it dies.

    SIGTERM is a clean stop (checkpoint, exit 75), so an orphaned trial does not go on
    writing a workdir that a rerun of the sweep would start again. Linux: the kernel's
    parent-death signal; elsewhere a thread watches the parent pid.
    """
    parent = os.environ.get(PARENT_ENV)
    if not parent:
        return
    if sys.platform.startswith("linux"):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    else:
        threading.Thread(target=_watch_parent, args=(int(parent),), daemon=True).start()
    if os.getppid() != int(parent):  # the runner died before we started watching
        os.kill(os.getpid(), signal.SIGTERM)


def _watch_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(1.0)
    os.kill(os.getpid(), signal.SIGTERM)


def main(argv: Sequence[str]) -> int:
    """Train (or resume) a run; exit 75 when stopped by a signal (after saving if it stepped)."""
    # From the first second: a signal during data preparation or compilation is a clean stop.
    with PreemptionGuard() as guard:
        die_with_parent()
        from llm_jax.cli import args as args_lib  # after the guard: config imports take time

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
