"""Checkpoints with Orbax: save, restore (onto any mesh), shape checks, preemption.

A checkpoint of step s lives in `workdir/checkpoints/<s>/` and holds two items:
`state` (the train state pytree: step, params, optimizer state, rng; saved by every
host, each writing its own shards) and `meta` (JSON: the data-iterator state of
every host, the model config, the step). Saves are asynchronous: `save` returns
once the arrays are copied off the device, and the files are committed in the
background; a half-written checkpoint is never visible as the latest one.

Restoring takes an abstract target (`jax.ShapeDtypeStruct`s carrying the new
shardings), so a checkpoint written on one mesh restores onto another. Before
reading any array the saved shapes are compared with the target's; a checkpoint
of another model shape is refused with a `CheckpointError` naming the config keys
that differ.

`PreemptionGuard` turns SIGTERM/SIGINT (a preemptible TPU VM being reclaimed, a
SLURM time limit, Ctrl-C) into a flag the train loop polls, so it can save and
exit cleanly between steps.
"""

from __future__ import annotations

import json
import os
import signal
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from llm_jax.errors import UserError


class CheckpointError(UserError, RuntimeError):
    """A checkpoint cannot be used for this run; the message names the fix."""


def _path_str(path) -> str:
    return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def _shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {_path_str(p): tuple(getattr(x, "shape", ())) for p, x in leaves}


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
    ):
        self.directory = os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(
            save_interval_steps=every,
            max_to_keep=keep,
            create=not read_only,
            enable_async_checkpointing=async_save,
            read_only=read_only,
        )
        self._options = options
        self._manager = self._make_manager(ocp.StandardCheckpointHandler())

    def _make_manager(self, state_handler) -> ocp.CheckpointManager:
        handlers = {"state": state_handler, "meta": ocp.JsonCheckpointHandler()}
        return ocp.CheckpointManager(self.directory, options=self._options, item_handlers=handlers)

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
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
        return self._manager.save(step, args=args, force=True)

    def read_meta(self, step: int) -> dict[str, Any]:
        """The JSON metadata of the checkpoint at `step`."""
        path = os.path.join(self.directory, str(step), "meta", "metadata")
        with open(path) as f:
            return json.load(f)

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

    def wait(self) -> None:
        """Block until pending asynchronous saves are committed."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Finish pending saves and release the manager."""
        self._manager.wait_until_finished()
        self._manager.close()


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


class PreemptionGuard:
    """While active, SIGTERM and SIGINT set `requested` instead of killing the process.

    A second SIGINT restores the default behaviour (so Ctrl-C twice still stops a
    stuck run). Use as a context manager; the previous handlers come back on exit.
    """

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.requested: str | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum, _frame) -> None:
        if self.requested and signum == signal.SIGINT:
            signal.signal(signal.SIGINT, signal.default_int_handler)
        self.requested = signal.Signals(signum).name

    def __enter__(self) -> PreemptionGuard:
        for sig in self.SIGNALS:
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: signals stay as they are
                pass
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
