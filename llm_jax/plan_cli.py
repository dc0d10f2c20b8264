"""`llm-jax plan`: will this config fit on that TPU pod, and how fast could it go?

    llm-jax plan --config experiments/configs/llama2_7b.py --topology v5p-256 \
        [--num_slices 2] [--config.mesh.fsdp=-1 ...] [--mfu 0.4] [--json] \
        [--save_executable step.pkl]

Runs on any machine with the libtpu wheel (`pip install -e .[tpu]`); no TPU is used.
Exit code 0: it fits; 1: it does not fit (the report says what to change) or libtpu
is missing; 2: a config error.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from collections.abc import Sequence


def plan_main(argv: Sequence[str]) -> int:
    """`llm-jax plan --config FILE --topology NAME [...]`; returns the exit code."""
    from absl import flags
    from ml_collections import config_flags

    from llm_jax import plan as plan_lib

    flag_values = flags.FlagValues()
    # sys_argv: find the --config.* overrides in argv, also when called in-process.
    config_flags.DEFINE_config_file("config", None, "experiment config file (a get_config() "
                                    "Python file)", flag_values=flag_values, lock_config=True,
                                    sys_argv=list(argv))
    flags.DEFINE_string("topology", None, "TPU slice as rented, e.g. v5p-256, v5e-8, v4-8, "
                        f"v6e-256; known: {', '.join(plan_lib.TOPOLOGIES)}",
                        flag_values=flag_values)
    flags.DEFINE_integer("num_slices", 1, "slices joined over the data-center network "
                         "(multi-slice); the data axis spans them", flag_values=flag_values)
    flags.DEFINE_float("mfu", plan_lib.DEFAULT_MFU, "assumed model FLOPs utilization for "
                       "the step-time estimate", flag_values=flag_values)
    flags.DEFINE_bool("json", False, "print the report as JSON", flag_values=flag_values)
    flags.DEFINE_string("save_executable", "", "write the compiled executable here "
                        "(pickled jax serialize_executable output)", flag_values=flag_values)
    flag_values(list(argv))
    if flag_values.config is None or not flag_values.topology:
        raise flags.Error("--config and --topology are required (llm-jax plan --help)")
    if not 0 < flag_values.mfu <= 1:
        raise flags.Error(f"--mfu must be in (0, 1] (got {flag_values.mfu})")

    topology = plan_lib.get_topology(flag_values.topology, flag_values.num_slices)
    plan_lib.compile_only_process()
    try:
        report = plan_lib.plan(flag_values.config, topology, mfu=flag_values.mfu,
                               executable_path=flag_values.save_executable)
    except plan_lib.LibtpuMissing as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    if flag_values.json:
        print(json.dumps(dataclasses.asdict(report), indent=2))
    else:
        print(plan_lib.format_report(report))
    return 0 if report.memory.fits else 1
