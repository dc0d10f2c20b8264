"""`llm-jax plan`: will this config fit on that TPU pod, and how fast could it go?

    llm-jax plan --config experiments/configs/llama2_7b.py --topology v5p-256 \
        [--num-slices 2] [--config.mesh.fsdp=-1 ...] [--mfu 0.4] [--json] \
        [--save-executable step.pkl]

Runs on any machine with the libtpu wheel (`pip install -e .[tpu]`); no TPU is used.
Exit code 0: it fits; 1: it does not fit (the report says what to change) or libtpu
is missing; 2: a config error.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Sequence

from llm_jax.cli import args as args_lib
from llm_jax.errors import UsageError


def main(argv: Sequence[str]) -> int:
    """`llm-jax plan --config FILE --topology NAME [...]`; returns the exit code."""
    from llm_jax import plan as plan_lib

    p = args_lib.parser(argv[0], __doc__.split("\n\n")[0], config="required")
    known = ", ".join(plan_lib.TOPOLOGIES)
    p.add_argument(
        "--topology", required=True, help=f"TPU slice as rented, e.g. v5p-256; known: {known}"
    )
    p.add_argument(
        "--num-slices",
        type=int,
        default=1,
        help="slices joined over the data-center network; the data axis spans them",
    )
    p.add_argument(
        "--mfu",
        type=float,
        default=plan_lib.DEFAULT_MFU,
        help="assumed model FLOPs utilization for the step-time estimate",
    )
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.add_argument(
        "--save-executable",
        default="",
        metavar="PATH",
        help="write the compiled executable here (serialized, pickled)",
    )
    args, config = args_lib.parse_with_config(p, argv[1:])
    if not 0 < args.mfu <= 1:
        raise UsageError(f"--mfu must be in (0, 1] (got {args.mfu})")
    topology = plan_lib.get_topology(args.topology, args.num_slices)
    plan_lib.compile_only_process()
    try:
        report = plan_lib.plan(config, topology, mfu=args.mfu, executable_path=args.save_executable)
    except plan_lib.LibtpuMissing as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(dataclasses.asdict(report), indent=2))
    else:
        print(plan_lib.format_report(report))
    return 0 if report.memory.fits else 1
