"""Before you rent the pod: compile the real train step for a TPU topology, on a CPU.

`llm-jax plan --config <file> --topology v5p-256` answers "does this run fit, and
how fast could it go?" without a TPU. With the `libtpu` wheel installed, JAX
describes any TPU slice as compile-only devices; we build the config's mesh over
them, compile the very train step `llm-jax train` runs (from `llm_jax.train`) on
abstract state and batch (ShapeDtypeStructs: no memory is allocated), and read
XLA's per-device memory and FLOP analysis.

Pieces, top to bottom:
- `CHIPS`, `TOPOLOGIES`, `get_topology`: the names users rent (`v5p-256`) mapped
  to libtpu's topology strings, chip configs, HBM and peak rates.
- `topology_devices`, `topology_mesh`: compile-only devices and the config's mesh
  over them (data across slices on multi-slice; physical axes split if needed).
- `plan(config, topology)`: compile and measure -> `PlanReport`.
- `format_report(report)`: the text the CLI prints (`dataclasses.asdict` for JSON).

Create no real arrays while a topology mesh is current: these devices cannot
hold data (`jax.random.key` under `jax.set_mesh(topology_mesh)` fails).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import time

import jax
import ml_collections

from llm_jax import config as config_lib
from llm_jax import flops as flops_lib
from llm_jax import metrics as metrics_lib
from llm_jax import sharding as sharding_lib
from llm_jax import storage, tpu_env
from llm_jax import train as train_lib
from llm_jax.chips import CHIPS, Chip, GiB
from llm_jax.config import ConfigError

DEFAULT_MFU = 0.4
LIBTPU_HINT = (
    "llm-jax plan compiles for TPU topologies with the libtpu wheel, which is not "
    "installed. Install it with:  pip install -e .[tpu]   (pulls jax[tpu] and libtpu; "
    "works on any machine, no TPU needed)"
)


class LibtpuMissing(RuntimeError):
    """libtpu is not installed; the message says how to install it."""


# --- chips and topologies ------------------------------------------------------------------


# Physical chip layouts of the common slice sizes, by chip count.
_TORUS_3D = {  # v4, v5p
    4: "2x2x1",
    8: "2x2x2",
    16: "2x2x4",
    32: "2x4x4",
    64: "4x4x4",
    128: "4x4x8",
    256: "4x8x8",
    512: "8x8x8",
    1024: "8x8x16",
    2048: "8x16x16",
    4096: "16x16x16",
}
_GRID_2D = {  # v5e, v6e
    1: "1x1",
    4: "2x2",
    8: "2x4",
    16: "4x4",
    32: "4x8",
    64: "8x8",
    128: "8x16",
    256: "16x16",
}
_MAX_CHIPS = {"v4": 2048, "v5p": 4096, "v5e": 256, "v6e": 256}
# Chips per host VM: single-host v5e/v6e slices hold 1 or 8 chips; every other host 2x2.
_HOST_BOUNDS = {1: (1, 1, 1), 8: (2, 4, 1)}


@dataclasses.dataclass(frozen=True)
class Topology:
    """A TPU slice (or several, over the data-center network) by the name users rent."""

    name: str
    chip: Chip
    topology_name: str  # libtpu's, e.g. 'v5:4x4x8'
    chips_per_host: tuple[int, int, int]
    chips_per_slice: int
    num_slices: int = 1

    @property
    def num_chips(self) -> int:
        """Chips (= JAX devices) over all slices."""
        return self.chips_per_slice * self.num_slices


def _build_topologies() -> dict[str, Topology]:
    table = {}
    for chip in CHIPS.values():
        layouts = _TORUS_3D if chip.topology_prefix in ("v4", "v5") else _GRID_2D
        for chips, layout in layouts.items():
            if chips > _MAX_CHIPS[chip.generation]:
                continue
            single_host_grid = layouts is _GRID_2D and chips in _HOST_BOUNDS
            name = f"{chip.generation}-{chips * chip.cores_per_chip}"
            table[name] = Topology(
                name=name,
                chip=chip,
                topology_name=f"{chip.topology_prefix}:{layout}",
                chips_per_host=_HOST_BOUNDS[chips] if single_host_grid else (2, 2, 1),
                chips_per_slice=chips,
            )
    return table


TOPOLOGIES: dict[str, Topology] = _build_topologies()


def get_topology(name: str, num_slices: int = 1) -> Topology:
    """The named slice (`v5p-256`, `v5e-8`, ...), `num_slices` times over DCN."""
    key = name.strip().lower().replace("v5litepod", "v5e")
    if key not in TOPOLOGIES:
        raise ConfigError(f"unknown TPU topology {name!r}; known: {', '.join(TOPOLOGIES)}")
    if num_slices < 1:
        raise ConfigError(f"--num-slices must be >= 1 (got {num_slices})")
    return dataclasses.replace(TOPOLOGIES[key], num_slices=num_slices)


def compile_only_process() -> None:
    """Keep this process off any real accelerator and quiet libtpu's probing.

    Call before JAX's backends start. Planning only compiles for a described topology,
    so the local backend stays CPU (also on a TPU VM whose chips a training job holds).
    libtpu still looks for its own TPU when it loads: naming one stops its warnings
    (`tpu_env.quiet_libtpu`), and ALLOW_MULTIPLE_LIBTPU_LOAD lets several plans (a sweep)
    load it side by side and beside a running job instead of failing on
    /tmp/libtpu_lockfile.
    """
    tpu_env.quiet_libtpu()
    os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
    jax.config.update("jax_platforms", "cpu")


def require_libtpu() -> None:
    """Raise LibtpuMissing with the install hint unless the libtpu wheel imports."""
    try:
        import libtpu  # noqa: F401
    except ImportError as e:
        raise LibtpuMissing(LIBTPU_HINT) from e


def topology_devices(topology: Topology) -> list[jax.Device]:
    """The compile-only devices of `topology` (one per chip; needs libtpu, not a TPU)."""
    require_libtpu()
    from jax.experimental import topologies

    desc = topologies.get_topology_desc(
        platform="tpu",
        topology_name=topology.topology_name,
        chip_config_name=topology.chip.chip_config,
        chips_per_host_bounds=topology.chips_per_host,
        num_slices=topology.num_slices,
    )
    return list(desc.devices)


def topology_mesh(mesh_cfg: ml_collections.ConfigDict, topology: Topology) -> jax.sharding.Mesh:
    """The config's (data, fsdp, tensor) mesh over the topology's compile-only devices.

    Built by `sharding.make_mesh`, as `llm-jax train` builds it on the pod: devices
    follow the physical torus, and over several slices the data axis spans them.
    """
    try:
        return sharding_lib.make_mesh(mesh_cfg, devices=topology_devices(topology))
    except ValueError as e:
        raise ConfigError(
            f"config.mesh on {topology.num_chips} {topology.chip.generation} chips: {e}"
        ) from e


# --- the report ----------------------------------------------------------------------------


@dataclasses.dataclass
class Memory:
    """Per-device bytes from XLA's memory analysis.

    Out of memory, XLA stops before the analysis: then only `total` (what its error
    said was needed) is known and the other fields are 0.
    """

    arguments: int
    outputs: int
    aliased: int  # outputs that reuse donated argument buffers
    temporaries: int
    generated_code: int
    total: int  # arguments + outputs - aliased + temporaries + code
    hbm: int  # the chip's HBM
    fits: bool


@dataclasses.dataclass
class PlanReport:
    """Everything `llm-jax plan` prints; `dataclasses.asdict` gives the --json form."""

    topology: str
    num_slices: int
    chip: str
    devices: int
    mesh: dict[str, int]
    params_total: int  # llm_jax.flops.param_counts: real vocabulary rows
    params_allocated: int  # the arrays: total + vocabulary padding rows
    params_per_device: int  # the parameter shards on one device
    state_bytes_per_device: int  # params + optimizer state on one device
    global_batch: int
    seq_len: int
    tokens_per_step: int
    memory: Memory
    message: str  # one line: fits, or what to change
    model_flops_per_step: float  # llm_jax.flops: the count MFU is quoted against
    xla_flops_per_step: float | None  # XLA's per device x devices (misses Pallas kernels)
    peak_flops: float  # the slice's dense bf16 peak, FLOP/s
    step_seconds_at_peak: float
    tokens_per_second_at_peak: float
    assumed_mfu: float
    step_seconds_at_mfu: float
    tokens_per_second_at_mfu: float
    compile_seconds: float
    executable_path: str = ""
    notes: list[str] = dataclasses.field(default_factory=list)


_OOM = re.compile(r"RESOURCE_EXHAUSTED: Ran out of memory")
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([KMGT])i?B?\b")
_UNIT = {"K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


def _oom_needed_bytes(message: str) -> int | None:
    """Bytes XLA said it needed, from 'Ran out of memory ... required ... (20.93G) ...'."""
    after = message.split("Ran out of memory", 1)[-1]
    sizes = [float(value) * _UNIT[unit] for value, unit in _SIZE.findall(after)]
    return int(sizes[0]) if sizes else None


def _memory(stats, hbm: int) -> Memory:
    total = (
        stats.argument_size_in_bytes
        + stats.output_size_in_bytes
        - stats.alias_size_in_bytes
        + stats.temp_size_in_bytes
        + stats.generated_code_size_in_bytes
    )
    return Memory(
        arguments=stats.argument_size_in_bytes,
        outputs=stats.output_size_in_bytes,
        aliased=stats.alias_size_in_bytes,
        temporaries=stats.temp_size_in_bytes,
        generated_code=stats.generated_code_size_in_bytes,
        total=total,
        hbm=hbm,
        fits=total <= hbm,
    )


def _gib(n: float) -> str:
    return f"{n / GiB:.2f} GiB"


def _size(n: float) -> str:
    return _gib(n) if abs(n) >= GiB / 10 else f"{n / 2**20:.1f} MiB"


def _does_not_fit(needed: int, hbm: int, devices: int, mesh: dict[str, int], remat: str) -> str:
    """The one-line verdict with the changes that cut memory, those already made left out."""
    need = _gib(needed) if needed else "more than the HBM"
    full_fsdp = devices // mesh["tensor"]
    fixes = []
    if mesh["fsdp"] < full_fsdp:
        fixes.append(
            f"shard more (--config.mesh.data=1 --config.mesh.fsdp={full_fsdp} spreads "
            "parameters and optimizer state over every device)"
        )
    if remat != "full":
        fixes.append("enable remat (--config.model.remat=full)")
    fixes.append(
        "raise --config.train.microbatches (or lower --config.train.batch_size) to cut activations"
    )
    return f"does not fit: needs {need} of {_gib(hbm)} per device. To fit, {', or '.join(fixes)}."


def format_report(report: PlanReport) -> str:
    """The human-readable report the CLI prints."""
    r, m = report, report.memory
    slices = f" x {r.num_slices} slices" if r.num_slices > 1 else ""
    mesh = " x ".join(f"{name} {size}" for name, size in r.mesh.items())
    lines = [
        f"topology  {r.topology}{slices}: {r.devices} {r.chip} chips, {_gib(m.hbm)} HBM and "
        f"{r.peak_flops / r.devices / 1e12:.0f} TFLOP/s (bf16) each",
        f"mesh      {mesh}",
        f"params    {r.params_total / 1e6:,.1f} M ({r.params_allocated / 1e6:,.1f} M with vocab "
        f"padding); {r.params_per_device / 1e6:,.1f} M per device",
        f"state     params + optimizer state: {_size(r.state_bytes_per_device)} per device",
        f"batch     {r.global_batch} x {r.seq_len} = {r.tokens_per_step:,} tokens per step",
    ]
    if m.arguments:  # out of memory, XLA reports only the total it needed
        lines += [
            "memory per device",
            f"  arguments    {_size(m.arguments):>11}  state and batch",
            f"  outputs      {_size(m.outputs):>11}",
            f"  aliased      {_size(-m.aliased):>11}  outputs written into the donated state",
            f"  temporaries  {_size(m.temporaries):>11}  activations, gradients, buffers",
            f"  code         {_size(m.generated_code):>11}",
            f"  total        {_size(m.total):>11}  of {_gib(m.hbm)} HBM "
            f"({100 * m.total / m.hbm:.0f}%)",
        ]
    lines.append(f"fits      {'yes' if m.fits else 'NO'}: {r.message}")
    xla = (
        f" (XLA: {r.xla_flops_per_step:.3e}, {r.xla_flops_per_step / r.model_flops_per_step:.2f}x)"
        if r.xla_flops_per_step
        else ""
    )
    lines += [
        f"flops     {r.model_flops_per_step:.3e} model FLOPs per step{xla}",
        f"speed     at 100% of peak: {metrics_lib.duration(r.step_seconds_at_peak)} per step, "
        f"{r.tokens_per_second_at_peak:,.0f} tokens/s",
        f"          at {100 * r.assumed_mfu:.0f}% MFU: "
        f"{metrics_lib.duration(r.step_seconds_at_mfu)} per step, "
        f"{r.tokens_per_second_at_mfu:,.0f} tokens/s",
        f"compiled  in {r.compile_seconds:.1f} s"
        + (f"; executable saved to {r.executable_path}" if r.executable_path else ""),
    ]
    lines += [f"note      {note}" for note in r.notes]
    return "\n".join(lines)


# --- compile and measure -------------------------------------------------------------------


def _per_device(leaves) -> tuple[int, int]:
    """(elements, bytes) of the largest shard of these abstract arrays on one device."""
    elements = bytes_ = 0
    for leaf in leaves:
        n = math.prod(leaf.sharding.shard_shape(leaf.shape))
        elements += n
        bytes_ += n * leaf.dtype.itemsize
    return elements, bytes_


def _xla_flops(compiled) -> float | None:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost["flops"]) if cost and cost.get("flops") else None


def _compile(
    setup: train_lib.TrainSetup, hbm: int, executable_path: str
) -> tuple[Memory, float | None, bool]:
    """Compile the train step: (memory per device, XLA FLOPs per device, saved?).

    XLA's RESOURCE_EXHAUSTED at compile time becomes a Memory that does not fit.
    """
    with setup.context():
        lowered = setup.train_step.lower(
            setup.abstract_state, setup.abstract_batch, setup.schedule_args
        )
    try:
        compiled = lowered.compile()
    except jax.errors.JaxRuntimeError as e:
        if not _OOM.search(str(e)):
            raise
        needed = _oom_needed_bytes(str(e)) or 0
        return Memory(0, 0, 0, 0, 0, total=needed, hbm=hbm, fits=False), None, False
    if executable_path:
        _save_executable(compiled, executable_path)
    return _memory(compiled.memory_analysis(), hbm), _xla_flops(compiled), bool(executable_path)


def _save_executable(compiled, path: str) -> None:
    """Pickle (serialized executable, in_tree, out_tree); load it on the pod with
    `jax.experimental.serialize_executable.deserialize_and_load(*pickle.load(f))`."""
    import pickle

    from jax.experimental import serialize_executable

    storage.write_bytes(path, pickle.dumps(serialize_executable.serialize(compiled)))


def _notes(config: ml_collections.ConfigDict, have_xla_flops: bool) -> list[str]:
    notes = []
    if config.model.dtype != "bfloat16":
        notes.append(
            f"model.dtype={config.model.dtype}: the bf16 peak overstates the speed; "
            "TPU runs use --config.model.dtype=bfloat16"
        )
    if have_xla_flops and (config.model.scan_layers or config.train.microbatches > 1):
        notes.append(
            "XLA counts a loop body once (scan_layers, microbatches), so its FLOPs "
            "are low here; the model count is the one to trust"
        )
    return notes


def _validated(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A validated copy. The data source is not checked: plan reads no data, so a pod
    config whose `data.path` is given only on the pod still plans."""
    checked = ml_collections.ConfigDict(config.to_dict())
    checked.data.source = "shakespeare"
    config_lib.validate(checked)
    return ml_collections.ConfigDict(config.to_dict())


def plan(
    config: ml_collections.ConfigDict,
    topology: Topology,
    mfu: float = DEFAULT_MFU,
    executable_path: str = "",
) -> PlanReport:
    """Compile `llm-jax train`'s step for `topology` on abstract state; report fit and speed.

    Out of memory is a result (`report.memory.fits` False, `report.message` says what
    to change), not an exception. With `executable_path`, the compiled executable is
    serialized there.
    """
    config = _validated(config)
    mesh = topology_mesh(config.mesh, topology)
    setup = train_lib.make_train(config, mesh)
    params = jax.tree.leaves(setup.abstract_state["params"])
    params_per_device, _ = _per_device(params)
    _, state_bytes = _per_device(jax.tree.leaves(setup.abstract_state))
    mesh_sizes = {name: int(size) for name, size in mesh.shape.items()}

    start = time.perf_counter()
    memory, xla_flops, saved = _compile(setup, topology.chip.hbm_bytes, executable_path)
    compile_seconds = time.perf_counter() - start

    seq_len, batch = config.data.seq_len, config.train.batch_size
    tokens = batch * seq_len
    model_flops = float(flops_lib.flops_per_token(config.model, seq_len).detailed * tokens)
    peak = topology.chip.peak_flops * topology.num_chips
    at_peak = model_flops / peak
    return PlanReport(
        topology=topology.name,
        num_slices=topology.num_slices,
        chip=topology.chip.generation,
        devices=topology.num_chips,
        mesh=mesh_sizes,
        params_total=flops_lib.param_counts(config.model).total,
        params_allocated=sum(leaf.size for leaf in params),
        params_per_device=params_per_device,
        state_bytes_per_device=state_bytes,
        global_batch=batch,
        seq_len=seq_len,
        tokens_per_step=tokens,
        memory=memory,
        message=(
            f"{_size(memory.total)} of {_gib(memory.hbm)} per device"
            if memory.fits
            else _does_not_fit(
                memory.total, memory.hbm, topology.num_chips, mesh_sizes, config.model.remat
            )
        ),
        model_flops_per_step=model_flops,
        xla_flops_per_step=xla_flops * topology.num_chips if xla_flops else None,
        peak_flops=peak,
        step_seconds_at_peak=at_peak,
        tokens_per_second_at_peak=tokens / at_peak,
        assumed_mfu=mfu,
        step_seconds_at_mfu=at_peak / mfu,
        tokens_per_second_at_mfu=tokens * mfu / at_peak,
        compile_seconds=compile_seconds,
        executable_path=executable_path if saved else "",
        notes=_notes(config, xla_flops is not None),
    )
