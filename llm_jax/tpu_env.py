"""Keep libtpu quiet on machines without TPU chips.

The `tpu` extra installs libtpu, which probes for TPU chips whenever JAX starts and,
on a machine without them (a laptop, CI, a GPU host), prints a screen of warnings about
the accelerator type and worker hostnames before falling back to the CPU or GPU. Naming
a TPU type and host in the environment stops the probe's complaints; nothing else
changes, since there are no chips to find. On a TPU VM (whose chips appear as
/dev/accel* or /dev/vfio/*) nothing is set. No JAX import here: call before JAX starts.
"""

from __future__ import annotations

import glob
import importlib.util
import os


def has_tpu_chips() -> bool:
    """Whether this machine exposes TPU chips (v2-v4: /dev/accel*; v5e/v5p/v6e: /dev/vfio)."""
    return bool(glob.glob("/dev/accel*") or glob.glob("/dev/vfio/*"))


def quiet_libtpu() -> None:
    """Name a TPU type and host for libtpu's probe (unless the environment already does)."""
    os.environ.setdefault("TPU_ACCELERATOR_TYPE", "v5p-8")
    os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")


def quiet_libtpu_without_tpu() -> None:
    """`quiet_libtpu()` when libtpu is installed and this machine has no TPU chips."""
    if importlib.util.find_spec("libtpu") is not None and not has_tpu_chips():
        quiet_libtpu()
