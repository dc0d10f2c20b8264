"""The device mesh, the logical -> mesh axis rules, and shardings for params and batches.

The model names every parameter and activation axis logically (`embed`, `heads`, ...);
`LOGICAL_RULES` is the one table that maps those names onto the mesh axes
`('data', 'fsdp', 'tensor')`. Changing the parallelism changes the mesh shape in
`config.mesh` (or this table), never the model.

Also here: `initialize_distributed`, which must run before the mesh is built.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import ml_collections
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from llm_jax.config import ConfigError

MESH_AXES = ("data", "fsdp", "tensor")

# Parameters and activations use separate logical names (`embed` vs `activation_embed`),
# so each rule stands alone: no entry depends on its place in the table.
LOGICAL_RULES: tuple[tuple[str, Any], ...] = (
    # Activations. Data parallelism: examples split over every replica group, fsdp
    # included (ZeRO-3 shards params over fsdp but still feeds each shard its own examples).
    ("activation_batch", ("data", "fsdp")),
    # Megatron-style tensor parallelism: attention heads, MLP hidden units and vocab
    # columns split over `tensor`, so each matmul's output (or input) dim is local.
    ("activation_heads", "tensor"),
    ("activation_kv_heads", "tensor"),
    ("activation_mlp", "tensor"),
    ("activation_vocab", "tensor"),
    # Replicated: d_model of the residual stream, the head width, the sequence (no
    # context parallelism).
    ("activation_embed", None),
    ("activation_kv", None),
    ("activation_length", None),
    # Parameters: the same tensor-parallel split, and FSDP: d_model rows split over `fsdp`,
    # gathered just before use.
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("mlp", "tensor"),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    # Replicated: the head width (too small to split) and the scanned layer axis (each step
    # of the scan needs its whole layer).
    ("kv", None),
    ("layers", None),
)


def make_mesh(
    mesh_cfg: ml_collections.ConfigDict, devices: Sequence[jax.Device] | None = None
) -> Mesh:
    """A ('data', 'fsdp', 'tensor') mesh with sizes from `config.mesh`; -1 = the rest.

    Axes are `AxisType.Auto`: Linen's logical sharding needs the compiler to propagate
    shardings, which an Explicit-axes mesh forbids.
    """
    devices = list(jax.devices() if devices is None else devices)
    sizes = [int(mesh_cfg[axis]) for axis in MESH_AXES]
    named = ", ".join(f"mesh.{a}={s}" for a, s in zip(MESH_AXES, sizes, strict=True))
    if sizes.count(-1) > 1:
        raise ValueError(f"at most one mesh axis may be -1 ({named}); set the others")
    if any(s == 0 or s < -1 for s in sizes):
        raise ValueError(f"mesh sizes must be positive or -1 ({named})")
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if len(devices) % known:
            raise ValueError(
                f"{len(devices)} devices cannot be split as {named}: "
                f"{len(devices)} is not a multiple of {known}"
            )
        sizes[sizes.index(-1)] = len(devices) // known
    if math.prod(sizes) != len(devices):
        raise ValueError(
            f"{named} needs {math.prod(sizes)} devices but {len(devices)} are "
            "available; make the product match or set one axis to -1"
        )
    return Mesh(
        _device_grid(sizes, devices),
        MESH_AXES,
        axis_types=(jax.sharding.AxisType.Auto,) * len(MESH_AXES),
    )


def _device_grid(sizes: list[int], devices: list[jax.Device]) -> np.ndarray:
    """The devices arranged as the mesh: in the given order on CPU, along the physical
    torus on TPU (a mesh axis may span part of a physical axis), and with `data` across
    slices on a multi-slice pod, so only the gradient all-reduce crosses the slower
    data-center network (jax.make_mesh rejects multi-slice device sets)."""
    num_slices = len({getattr(d, "slice_index", 0) for d in devices})
    if num_slices == 1:
        return mesh_utils.create_device_mesh(sizes, devices, allow_split_physical_axes=True)
    if sizes[0] % num_slices:
        raise ValueError(
            f"{num_slices} slices need mesh.data to be a multiple of "
            f"{num_slices} (data spans the slices); got data={sizes[0]}"
        )
    per_slice = (sizes[0] // num_slices, *sizes[1:])
    return mesh_utils.create_hybrid_device_mesh(
        per_slice, (num_slices, 1, 1), devices, allow_split_physical_axes=True
    )


def _fit_spec(spec: PartitionSpec, shape: Sequence[int], mesh: Mesh) -> PartitionSpec:
    # A dimension that the mesh axes do not divide (25 heads on tensor=2, one MQA kv
    # head) stays replicated instead of failing: correct, merely less sharded.
    fitted = []
    for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec)), strict=True):
        names = (axes,) if isinstance(axes, str) else tuple(axes or ())
        fitted.append(axes if dim % math.prod(mesh.shape[a] for a in names) == 0 else None)
    return PartitionSpec(*fitted)


def _is_boxed(x: Any) -> bool:
    return isinstance(x, nn.LogicallyPartitioned)


def _is_spec(x: Any) -> bool:
    return isinstance(x, PartitionSpec)


def logical_to_sharding(
    mesh: Mesh,
    logical_tree: Any,
    shapes: Any = None,
    rules: Sequence[tuple[str, Any]] = LOGICAL_RULES,
) -> Any:
    """NamedShardings for a tree of logical PartitionSpecs or of boxed params.

    Boxed (LogicallyPartitioned) leaves carry their own shapes; for a tree of specs pass
    `shapes` (matching arrays or ShapeDtypeStructs). Where a shape is known, a dimension
    the mesh axes do not divide is replicated.
    """
    if any(_is_boxed(x) for x in jax.tree.leaves(logical_tree, is_leaf=_is_boxed)):
        shapes = nn.meta.unbox(logical_tree)
        logical_tree = nn.get_partition_spec(logical_tree)
    mesh_specs = nn.logical_to_mesh(logical_tree, rules)
    if shapes is not None:
        mesh_specs = jax.tree.map(
            lambda s, a: _fit_spec(s, a.shape, mesh), mesh_specs, shapes, is_leaf=_is_spec
        )
    return jax.tree.map(lambda s: NamedSharding(mesh, s), mesh_specs, is_leaf=_is_spec)


def batch_sharding(mesh: Mesh, rules: Sequence[tuple[str, Any]] = LOGICAL_RULES) -> NamedSharding:
    """Sharding of an int [batch, length] array (tokens, targets, segment ids)."""
    return NamedSharding(
        mesh, nn.logical_to_mesh_axes(("activation_batch", "activation_length"), rules)
    )


# --- processes ------------------------------------------------------------------------------


def _cluster_detected() -> bool:
    """True in a multi-host TPU slice or a multi-task SLURM job."""
    tpu_hosts = os.environ.get("TPU_WORKER_HOSTNAMES", "")
    if "," in tpu_hosts or os.environ.get("MEGASCALE_COORDINATOR_ADDRESS"):
        return True
    return "SLURM_JOB_ID" in os.environ and int(os.environ.get("SLURM_NTASKS", "1")) > 1


def initialize_distributed(mesh_cfg: ml_collections.ConfigDict) -> None:
    """`jax.distributed.initialize()` when configured (`on`) or detected (`auto`).

    Must run before anything touches a JAX device. Explicit `mesh.coordinator_address`,
    `num_processes`, `process_id` serve clusters JAX does not detect by itself.
    """
    mode = mesh_cfg.distributed
    if jax.distributed.is_initialized() or mode == "off":
        return
    if mode == "auto" and not _cluster_detected():
        return
    kwargs = {}
    if mesh_cfg.coordinator_address:
        if not 0 <= mesh_cfg.process_id < mesh_cfg.num_processes:
            raise ConfigError(
                "config.mesh.coordinator_address needs mesh.num_processes > 0 and "
                f"0 <= mesh.process_id < num_processes (got {mesh_cfg.num_processes}, "
                f"{mesh_cfg.process_id})"
            )
        kwargs = dict(
            coordinator_address=mesh_cfg.coordinator_address,
            num_processes=mesh_cfg.num_processes,
            process_id=mesh_cfg.process_id,
        )
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU-only clusters
    jax.distributed.initialize(**kwargs)
