"""Checkpoints with Orbax: save, restore (onto any mesh), shape checks, preemption.

A checkpoint of step s lives in `workdir/checkpoints/<s>/` and holds two items:
`state` (the train state pytree: step, params, optimizer state, rng; saved by every
host, each writing its own shards) and `meta` (JSON: the global data position, the
model config, the step). Saves are asynchronous: `save` returns
once the arrays are copied off the device, and the files are committed in the
background; a half-written checkpoint is never visible as the latest one.

Every checkpoint's `meta` also holds a fingerprint of each saved array (a position-weighted
sum of its bits, computed on the device), verified on restore: `restore_latest` walks the
checkpoints newest first and takes the first that reads and verifies, saying in one line
which it skipped and why (a truncated, zero-filled, partly deleted or bit-flipped one) and
moving those aside into `<workdir>/corrupt_checkpoints/`.

Restoring takes an abstract target (`jax.ShapeDtypeStruct`s carrying the new
shardings), so a checkpoint written on one mesh restores onto another. Before
reading any array the saved shapes are compared with the target's; a checkpoint
of another model shape is refused with a `CheckpointError` naming the config keys
that differ.

Keep policy: the `keep` latest checkpoints, plus every multiple of `keep_every` steps
forever (Orbax preservation policies), so later work can branch from them.

`PreemptionGuard` turns SIGTERM/SIGINT (a preemptible TPU VM being reclaimed, a
SLURM time limit, Ctrl-C) into a flag the train loop polls, so it can save and
exit cleanly between steps. `train` installs it at process start, so a signal during
data preparation or compilation is a clean stop too. On multi-host runs the loop also
asks JAX's preemption sync point, fed by the runtime's own SIGTERM notice, at every step.
"""

from __future__ import annotations

import functools
import gc
import json
import logging
import os
import sys
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from orbax.checkpoint.checkpoint_managers import preservation_policy as policies

from llm_jax import storage, trees
from llm_jax.errors import UserError
from llm_jax.preemption import PreemptionGuard

__all__ = ["Checkpointer", "CheckpointError", "PreemptionGuard", "any_host", "fingerprints"]


class CheckpointError(UserError, RuntimeError):
    """A checkpoint cannot be used for this run; the message names the fix."""


CORRUPT_DIR = "corrupt_checkpoints"  # next to checkpoints/: those that failed to restore
log = logging.getLogger(__name__)


def _leaf_fingerprint(x: jax.Array, offset: jax.Array) -> jax.Array:
    """A uint32 that any single flipped bit of `x` changes: sum of bits x odd weights.

    `offset` is the position of `x`'s first bits in its whole array, when `x` is a block
    of leading rows of it (the block sums then add up to the array's fingerprint).
    """
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    if x.dtype == jnp.bool_:
        bits_N = x.astype(jnp.uint32).reshape(-1)
    else:
        width = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint32}[x.dtype.itemsize]
        bits_N = jax.lax.bitcast_convert_type(x, width).astype(jnp.uint32).reshape(-1)
    index_N = jnp.arange(bits_N.size, dtype=jnp.uint32) + offset
    return jnp.sum(bits_N * (index_N * jnp.uint32(2 * 2654435761 % 2**32) + 1), dtype=jnp.uint32)


# XLA materialises the uint32 products before summing them (4 bytes per element, twice a
# bf16 array): above this many elements a leaf is fingerprinted in blocks of leading rows,
# and smaller leaves go together in one program of at most this many elements.
_FINGERPRINT_BLOCK = 1 << 22


def _fingerprint_blocks(fingerprint: Callable, x: Any) -> int:
    """`fingerprint` of a large `x`, summed over blocks of its leading rows."""
    row = int(np.size(x)) // x.shape[0] * (2 if x.dtype.itemsize == 8 else 1)  # uint32 words
    rows = max(1, _FINGERPRINT_BLOCK // row)
    total = 0
    for start in range(0, x.shape[0], rows):
        offset = jnp.uint32(start * row % 2**32)
        total += int(jax.device_get(fingerprint(x[start : start + rows], offset)))
    return total % 2**32


def _many_fingerprints(xs: list) -> list:
    """`_leaf_fingerprint` of each of `xs`, in one program."""
    return [_leaf_fingerprint(x, jnp.uint32(0)) for x in xs]


@functools.lru_cache(maxsize=4)
def _fingerprinters(mesh: jax.sharding.Mesh | None) -> tuple[Callable, Callable]:
    """(one leaf, many small leaves) jitted for a mesh, results replicated (readable on every
    host)."""
    out = None if mesh is None else jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    return jax.jit(_leaf_fingerprint, out_shardings=out), jax.jit(
        _many_fingerprints, out_shardings=out
    )


def _small_groups(leaves: list) -> list[list[int]]:
    """Indices of the small leaves, in groups of at most `_FINGERPRINT_BLOCK` elements that
    live on one set of devices: one program per group, not one per leaf shape."""
    groups: dict[Any, list[list[int]]] = {}
    sizes: dict[Any, int] = {}
    for i, x in enumerate(leaves):
        size = int(np.size(x))
        if size > _FINGERPRINT_BLOCK:
            continue
        sharding = getattr(x, "sharding", None)
        devices = None if sharding is None else frozenset(sharding.device_set)
        runs = groups.setdefault(devices, [[]])
        if sizes.get(devices, 0) + size > _FINGERPRINT_BLOCK:
            runs.append([])
            sizes[devices] = 0
        runs[-1].append(i)
        sizes[devices] = sizes.get(devices, 0) + size
    return [run for runs in groups.values() for run in runs]


def fingerprints(state: Any) -> dict[str, int]:
    """Path -> fingerprint of every array of `state` (a collective on multi-host runs).

    Small leaves go a group at a time, large ones a block of rows at a time: temporaries of
    a few million elements, not of the whole state (an 8B import must fit its host).
    """
    flat = jax.tree_util.tree_flatten_with_path(state)[0]
    leaves = [x for _, x in flat]
    sharding = getattr(leaves[0], "sharding", None) if leaves else None
    one, many = _fingerprinters(
        sharding.mesh if isinstance(sharding, jax.sharding.NamedSharding) else None
    )
    values: dict[int, int] = {}
    for group in _small_groups(leaves):
        got = jax.device_get(many([leaves[i] for i in group]))
        values.update({i: int(v) for i, v in zip(group, got, strict=True)})
    for i, x in enumerate(leaves):
        if i not in values:
            values[i] = _fingerprint_blocks(one, x)
    return {trees.path_str(path): values[i] for i, (path, _) in enumerate(flat)}


def _shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {trees.path_str(p): tuple(getattr(x, "shape", ())) for p, x in leaves}


def _differences(saved: dict, current: dict) -> list[str]:
    keys = sorted(set(saved) | set(current))
    return [
        f"{k}: checkpoint {saved.get(k)!r}, config {current.get(k)!r}"
        for k in keys
        if saved.get(k) != current.get(k)
    ]


class Checkpointer:
    """An Orbax `CheckpointManager` for train states plus their JSON metadata."""

    def __init__(
        self,
        directory: str,
        every: int = 1,
        keep: int = 2,
        async_save: bool = True,
        read_only: bool = False,
        keep_every: int = 0,
        save_concurrent_gb: int = 96,
    ):
        """`save_concurrent_gb`: Orbax's cap on bytes being written at once (its default);
        a lower one bounds the save's host buffers (an import's peak memory), but must
        exceed the largest array."""
        self.directory = directory if storage.is_gcs(directory) else os.path.abspath(directory)
        keep_policies = [policies.LatestN(n=keep)]
        if keep_every:
            keep_policies.append(policies.EveryNSteps(interval_steps=keep_every))
        options = ocp.CheckpointManagerOptions(
            save_interval_steps=every,
            preservation_policy=policies.AnyPreservationPolicy(keep_policies),
            create=not read_only,
            enable_async_checkpointing=async_save,
            read_only=read_only,
        )
        self._options = options
        handler = ocp.StandardCheckpointHandler(save_concurrent_gb=save_concurrent_gb)
        self._manager = self._make_manager(handler)

    def _make_manager(self, state_handler) -> ocp.CheckpointManager:
        handlers = {"state": state_handler, "meta": ocp.JsonCheckpointHandler()}
        return ocp.CheckpointManager(
            storage.path(self.directory), options=self._options, item_handlers=handlers
        )

    def latest_step(self) -> int | None:
        """The newest fully written checkpoint's step, or None."""
        return self._manager.latest_step()

    def steps(self) -> list[int]:
        """Steps of all fully written checkpoints, oldest first."""
        return sorted(self._manager.all_steps())

    def save(self, step: int, state: Any, meta: dict[str, Any], force: bool = False) -> bool:
        """Start saving `state` and `meta` at `step` (every host must call this).

        Without `force`, only steps on the `every` interval are saved. Returns
        whether a save was started.
        """
        if not force and not self._manager.should_save(step):
            return False
        if step in self._manager.all_steps():
            return False
        meta = {**meta, "checksums": fingerprints(state)}
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
        return self._manager.save(step, args=args, force=True)

    def read_meta(self, step: int) -> dict[str, Any]:
        """The JSON metadata of the checkpoint at `step`."""
        return json.loads(
            storage.read_text(storage.join(self.directory, str(step), "meta", "metadata"))
        )

    def check_shapes(self, step: int, target: Any, model: dict[str, Any] | None = None) -> None:
        """Raise CheckpointError unless the saved `state` has the shapes of `target`.

        `target` may be a subtree of the state (e.g. `{'params': ...}`): only the
        saved entries under its keys are compared. `model` (this run's model
        config) lets the message name the keys that differ.
        """
        saved_tree = self._manager.item_metadata(step)["state"]
        if isinstance(target, dict):
            saved_tree = {k: saved_tree[k] for k in target if k in saved_tree}
        saved, wanted = _shapes(saved_tree), _shapes(target)
        if saved == wanted:
            return
        where = os.path.join(self.directory, str(step))
        if model is not None:
            old_model = self.read_meta(step).get("model", {})
            diffs = _differences(old_model, model)
            if diffs:
                raise CheckpointError(
                    f"the checkpoint {where} is of another model shape ({'; '.join(diffs)}); "
                    "use a new --workdir, or rerun with the checkpoint's model config"
                )
        diffs = _differences(saved, wanted)[:5]
        raise CheckpointError(
            f"the checkpoint {where} does not match this run's state ({'; '.join(diffs)}); "
            "use a new --workdir, or rerun with the config the checkpoint was written with"
        )

    def restore(
        self, step: int, abstract_state: Any, model: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        """Restore (state, meta) at `step` onto the shardings carried by `abstract_state`."""
        self.check_shapes(step, abstract_state, model)
        args = ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()
        )
        try:
            restored = self._manager.restore(step, args=args)
        except ValueError as e:  # e.g. an optimizer state of another structure
            raise CheckpointError(
                f"cannot restore {self.directory}/{step}: {str(e).splitlines()[0][:300]}; "
                "the optimizer settings may differ from the run that wrote it"
            ) from e
        return restored["state"], restored["meta"]

    def restore_latest(
        self, abstract_state: Any, model: dict[str, Any] | None = None
    ) -> tuple[int, Any, dict[str, Any]] | None:
        """(step, state, meta) of the newest checkpoint that restores and verifies.

        None when there is no checkpoint. Newer ones that fail are moved to
        `corrupt_checkpoints/` next to the checkpoints, with one warning line each. When
        none restores, CheckpointError lists them all (nothing is moved then). A
        checkpoint of another model shape is refused at once (see `check_shapes`).
        """
        failures: list[tuple[int, str]] = []
        _quiet_abandoned_reads()
        for step in reversed(self.steps()):
            state, meta, why = self._read(step, abstract_state, model)
            # Hosts agree before the next collective (a fingerprint, another restore).
            if any_host(bool(why)):
                failures.append((step, why or "failed on another host"))
                continue
            why = _checksum_mismatch(state, meta)  # replicated values: the same on every host
            if why:
                failures.append((step, why))
                continue
            for bad, reason in failures:
                self._move_aside(bad, reason, step)
            if failures:
                self._manager.reload()
            return step, state, meta
        if not failures:
            return None
        found = "; ".join(f"step {s}: {why}" for s, why in failures)
        raise CheckpointError(
            f"none of the {len(failures)} checkpoints in {self.directory} restores ({found}); "
            "move that directory aside to start over"
        )

    def _read(self, step: int, abstract_state: Any, model: dict | None) -> tuple[Any, Any, str]:
        """(state, meta, '') read from `step`, else (None, None, why not)."""
        args = ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()
        )
        try:
            self.check_shapes(step, abstract_state, model)
            restored = self._manager.restore(step, args=args)
        except CheckpointError:  # another model shape: the user's to fix, not a fallback
            raise
        except Exception as e:  # noqa: BLE001 - any read failure means this one is unusable
            gc.collect()  # finalize the abandoned reads now, not in a later phase
            return None, None, _first_line(e)
        return restored["state"], restored["meta"], ""

    def _move_aside(self, step: int, why: str, fallback: int) -> None:
        """Move a failed checkpoint out of the manager's sight (kept for inspection)."""
        source = os.path.join(self.directory, str(step))
        target = os.path.join(
            os.path.dirname(self.directory), CORRUPT_DIR, f"{step}-{int(time.time())}"
        )
        if jax.process_index() == 0 and storage.exists(source):
            storage.move(source, target)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices(f"checkpoint-aside-{step}")
        log.warning(
            "warning: checkpoint %s does not restore (%s); moved to %s, resuming from step %d",
            source,
            why,
            target,
            fallback,
        )

    def restore_subtree(
        self, step: int, abstract: dict[str, Any], model: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Restore only the top-level entries of the state named in `abstract` (e.g. params)."""
        self.check_shapes(step, abstract, model)
        restore_args = ocp.checkpoint_utils.construct_restore_args(abstract)
        args = ocp.args.Composite(
            state=ocp.args.PyTreeRestore(abstract, restore_args=restore_args, partial_restore=True)
        )
        # Same files, read through the PyTree handler, which can skip entries.
        manager = self._make_manager(ocp.PyTreeCheckpointHandler())
        try:
            return manager.restore(step, args=args)["state"]
        finally:
            manager.close()

    def restore_verified_subtree(
        self, abstract: dict[str, Any], model: dict[str, Any] | None = None, step: int | None = None
    ) -> tuple[int, dict[str, Any]]:
        """(step, entries) of `abstract` (e.g. params) from the newest checkpoint that reads
        and matches its fingerprints, or from `step` only. Read-only: nothing is moved.
        """
        steps = self.steps()
        if not steps:
            raise CheckpointError(f"no checkpoint in {self.directory} yet")
        if step is not None and step not in steps:
            raise CheckpointError(
                f"no checkpoint at step {step} in {self.directory}; saved steps: "
                f"{', '.join(map(str, steps))}"
            )
        failures: list[str] = []
        _quiet_abandoned_reads()
        for candidate in [step] if step is not None else reversed(steps):
            try:
                entries = self.restore_subtree(candidate, abstract, model)
                why = _checksum_mismatch(entries, self.read_meta(candidate), partial=True)
            except CheckpointError:  # another model shape: the user's to fix
                raise
            except Exception as e:  # noqa: BLE001 - any read failure makes it unusable
                gc.collect()  # finalize the abandoned reads now (_quiet_abandoned_reads)
                why = _first_line(e)
            if not why:
                if failures:
                    log.warning("warning: skipped newer checkpoints (%s)", "; ".join(failures))
                return candidate, entries
            failures.append(f"step {candidate}: {why}")
        raise CheckpointError(f"no checkpoint in {self.directory} restores ({'; '.join(failures)})")

    def wait(self) -> None:
        """Block until pending asynchronous saves are committed."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Finish pending saves and release the manager."""
        self._manager.wait_until_finished()
        self._manager.close()


def _checksum_mismatch(state: Any, meta: Any, partial: bool = False) -> str:
    """'' if the restored arrays match the fingerprints saved with them (or none were).

    `partial`: `state` holds only some entries (e.g. the params); only those are checked.
    """
    expected = meta.get("checksums") if isinstance(meta, dict) else None
    if expected is None:  # a checkpoint from before fingerprints
        return ""
    got = fingerprints(state)
    bad = [k for k in expected if got.get(k) != expected[k] and (k in got or not partial)]
    return f"checksum mismatch in {', '.join(bad[:3])}" if bad else ""


def _is_abandoned_read(unraisable: Any) -> bool:
    """Whether an unraisable exception is the echo of a read Orbax gave up on."""
    code = getattr(unraisable.object, "cr_code", None)
    if code is not None and code.co_name == "_read_array_index_and_device_put":
        return True  # a read coroutine of the failed restore, finalized unawaited
    # Its reads still in flight finish on TensorStore's threads, into a closed event loop.
    error = unraisable.exc_value
    return isinstance(error, RuntimeError) and str(error) == "Event loop is closed"


def _quiet_abandoned_reads() -> None:
    """Keep the echoes of a failed restore off stderr (once per process).

    When one array of a checkpoint fails to read, Orbax's restore raises and leaves its
    other reads behind; their errors reach Python as 'unraisable' exceptions, which it
    prints as tracebacks (1,160 lines for a tiny model's truncated file). The failure is
    reported once, by the caller; everything else goes to the previous hook.
    """
    previous = sys.unraisablehook
    if getattr(previous, "_llm_jax_quiet", False):
        return

    def hook(unraisable: Any) -> None:
        if _is_abandoned_read(unraisable):
            log.debug("dropped an abandoned checkpoint read: %s", unraisable.exc_value)
        else:
            previous(unraisable)

    hook._llm_jax_quiet = True  # type: ignore[attr-defined]
    sys.unraisablehook = hook


def _first_line(e: BaseException) -> str:
    text = str(e).strip().split(" See full TensorStore details")[0]
    return f"{type(e).__name__}: {text.splitlines()[0][:200] if text else ''}".rstrip(": ")


# --- per-host data-iterator state -----------------------------------------------------------


def gather_host_states(state: dict[str, Any]) -> list[dict[str, Any]]:
    """Every host's JSON-able `state`, in process order (a collective: all hosts call it)."""
    if jax.process_count() == 1:
        return [state]
    encoded = np.frombuffer(json.dumps(state).encode(), dtype=np.uint8)
    lengths = multihost_utils.process_allgather(np.array([encoded.size], np.int32))
    padded = np.zeros(int(lengths.max()), np.uint8)
    padded[: encoded.size] = encoded
    gathered = multihost_utils.process_allgather(padded)
    return [
        json.loads(bytes(row[: int(n)]).decode())
        for row, n in zip(gathered, lengths.reshape(-1), strict=True)
    ]


def any_host(flag: bool) -> bool:
    """True on every host when `flag` is true on any (a collective: all hosts call it)."""
    if jax.process_count() == 1:
        return flag
    return bool(multihost_utils.process_allgather(np.array([flag], np.int32)).max())
