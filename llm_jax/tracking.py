"""Weights & Biases tracking (optional: `pip install -e '.[wandb]'`).

Set `config.tracking.wandb_project` and the primary host logs every metrics.jsonl row to a
W&B run too (metrics.jsonl stays the source of truth). The run's id is kept in
`workdir/wandb_id.txt`, so a resumed run continues the same W&B run
(`resume='allow'`); the sweep runner puts its trials in one group named after the sweep
(`tracking.wandb_group`). `tracking.wandb_mode` ('' = the WANDB_MODE environment variable,
else online) may be 'offline': the run is written under the workdir (or WANDB_DIR for a
gs:// workdir) for a later `wandb sync`.
"""

from __future__ import annotations

import os
import secrets
from typing import Any

from llm_jax import storage
from llm_jax.errors import UserError

ID_FILE = "wandb_id.txt"


class TrackingError(UserError):
    """A tracker cannot start (W&B: not logged in, unreachable, a bad project)."""


def run_id(workdir: str) -> str:
    """The workdir's W&B run id: the stored one, else a new one, stored at once (so a run
    killed before its first checkpoint still resumes the same W&B run)."""
    path = storage.join(workdir, ID_FILE)
    if storage.exists(path):
        return storage.read_text(path).strip()
    new = secrets.token_hex(4)  # 8 characters of [0-9a-f], as W&B's own ids
    storage.write_text(path, new + "\n")
    return new


class WandbWriter:
    """One W&B run per workdir, fed the scalars of each logged row at the row's step."""

    def __init__(self, config: Any, workdir: str):
        import wandb

        t = config.tracking
        try:
            self._run = wandb.init(
                project=t.wandb_project,
                entity=t.wandb_entity or None,
                group=t.wandb_group or None,
                mode=t.wandb_mode or None,
                name=os.path.basename(workdir.rstrip("/")),
                id=run_id(workdir),
                resume="allow",
                dir=None if storage.is_gcs(workdir) else workdir,
                config=config.to_dict(),
            )
        except wandb.errors.Error as e:  # no login, no network, a bad entity...
            first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise TrackingError(
                f"W&B cannot start the run of {workdir}: {first_line}; run `wandb login`, "
                "or set --config.tracking.wandb_mode=offline (or unset wandb_project)"
            ) from e

    def log(self, step: int, scalars: dict[str, float]) -> None:
        """Log `scalars` at `step`. A step below the run's own (one an earlier attempt
        logged after its last checkpoint, recomputed by this one) is skipped: W&B keeps a
        run's steps increasing and would drop it with a warning."""
        if step >= self._run.step:
            self._run.log(scalars, step=step)

    def close(self) -> None:
        """Finish the run (uploads what is left, or closes the offline files)."""
        self._run.finish()
