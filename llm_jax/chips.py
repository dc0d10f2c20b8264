"""Accelerator specs: HBM and dense bf16 peak FLOP/s, from the vendors' public sheets.

The one table behind MFU in training metrics and the bench (`peak_flops`) and behind
`llm-jax plan`'s TPU topologies (`CHIPS`). No JAX import.
"""

from __future__ import annotations

import dataclasses

GiB = 2**30


@dataclasses.dataclass(frozen=True)
class Chip:
    """One TPU generation, as libtpu and the price list see it."""

    generation: str  # the name users write: v4, v5e, v5p, v6e
    topology_prefix: str  # libtpu's: 'v5:4x4x8' is a v5p slice
    chip_config: str  # megacore: the chip's two TensorCores form one JAX device
    cores_per_chip: int  # v4/v5p names count TensorCores (v5p-8 = 4 chips), v5e/v6e chips
    hbm_bytes: int
    peak_flops: float  # dense bf16 FLOP/s per chip


CHIPS: dict[str, Chip] = {
    "v4": Chip("v4", "v4", "megacore", 2, 32 * GiB, 275e12),
    "v5e": Chip("v5e", "v5e", "default", 1, 16 * GiB, 197e12),
    "v5p": Chip("v5p", "v5", "megacore", 2, 95 * GiB, 459e12),
    "v6e": Chip("v6e", "v6e", "default", 1, 32 * GiB, 918e12),
}

# Dense bf16 peak FLOP/s per device, matched as a substring of `device.device_kind`,
# most specific first.
PEAK_FLOPS: tuple[tuple[str, float], ...] = (
    ("h200", 989e12),
    ("h100 pcie", 756e12),
    ("h100", 989e12),
    ("a100", 312e12),
    ("tpu v6", CHIPS["v6e"].peak_flops),  # v6e ("TPU v6 lite")
    ("tpu v5 lite", CHIPS["v5e"].peak_flops),
    ("tpu v5e", CHIPS["v5e"].peak_flops),
    ("tpu v5", CHIPS["v5p"].peak_flops),
    ("tpu v4", CHIPS["v4"].peak_flops),
)


def peak_flops(device_kind: str) -> float | None:
    """Peak dense bf16 FLOP/s of one device of this kind, or None when unknown."""
    kind = device_kind.lower()
    for key, value in PEAK_FLOPS:
        if key in kind:
            return value
    return None
