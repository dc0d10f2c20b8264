"""`llm-jax train-pack --config FILE [--config.a.b=v ...] --trial DIR [--config.a.b=v ...] ...`

K trials that differ only in learning rate, min_lr_ratio, seed or init scale, trained as
one vmapped program (llm_jax/pack.py). Flags before the first `--trial` apply to every
trial; each `--trial DIR` is followed by that trial's own overrides. Each DIR ends up as
`llm-jax train --config FILE --workdir DIR <its overrides>` would have left it, and
rerunning the command resumes the group. The sweep runner builds this command for
`llm-jax sweep --pack K`.
"""

from __future__ import annotations

from collections.abc import Sequence

from llm_jax.cli.train import die_with_parent
from llm_jax.preemption import PREEMPTED_EXIT_CODE, PreemptionGuard


def split_trials(argv: Sequence[str]) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """(the shared arguments, [(trial workdir, its arguments)]) of a train-pack argv."""
    from llm_jax.errors import UsageError

    shared: list[str] = []
    trials: list[tuple[str, list[str]]] = []
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg == "--trial" or arg.startswith("--trial="):
            workdir = arg.partition("=")[2] if "=" in arg else (args.pop(0) if args else "")
            if not workdir or workdir.startswith("--"):
                raise UsageError("--trial needs a workdir (--trial DIR)")
            trials.append((workdir, []))
        elif trials:
            trials[-1][1].append(arg)
        else:
            shared.append(arg)
    return shared, trials


def main(argv: Sequence[str]) -> int:
    """Train (or resume) a pack; exit 75 when stopped by a signal (after saving)."""
    with PreemptionGuard() as guard:
        die_with_parent()
        from llm_jax.cli import args as args_lib  # after the guard: config imports take time
        from llm_jax.errors import UsageError

        p = args_lib.parser(
            argv[0],
            "Train K trials of one shape (differing only in train.lr, train.min_lr_ratio, "
            "train.seed, model.init_std) as one vmapped program, each in its own workdir: "
            "--trial DIR [its --config.k=v ...], repeated. Exit code 75: stopped by "
            "SIGTERM/SIGINT (after saving); rerun to resume.",
            config="required",
        )
        p.add_argument(
            "--trial",
            metavar="DIR",
            action="append",
            help="a trial's workdir, followed by its own --config.k=v overrides (repeated)",
        )
        shared, trials = split_trials(argv[1:])
        if not trials:
            p.parse_args(shared)  # --help, or a usage error naming a bad flag
            raise UsageError(f"{argv[0]}: give at least one --trial DIR (see --help)")
        configs = []
        for workdir, own in trials:
            overrides, rest = args_lib.split_overrides(own)
            if rest:
                raise UsageError(
                    f"--trial {workdir}: only --config.k=v overrides may follow a trial, "
                    f"not {rest[0]!r}"
                )
            own_flags = [f"--config.{k}={v}" for k, v in overrides.items()]
            configs.append(args_lib.parse_with_config(p, [*shared, *own_flags])[1])
        from llm_jax import pack  # heavy: JAX and the data pipeline
        from llm_jax.trainer import TrainError

        result = pack.train_packed(configs, [w for w, _ in trials], guard)
        if result["failed"]:
            names = ", ".join(result["failed"])
            raise TrainError(
                f"{len(result['failed'])} of {len(trials)} trials diverged ({names}); the "
                "others trained on (see each trial's lines above)"
            )
        return PREEMPTED_EXIT_CODE if result["preempted"] else 0
