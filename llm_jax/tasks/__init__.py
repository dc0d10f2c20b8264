"""Training tasks (`config.task.name`): what a batch holds, the loss, the evaluation.

Each task is one module: `lm` (next-token pre-training, the default), `classify`
(a label per text, a classification head), `mlm` (masked-LM pre-training, BERT) and
`sft` (prompt -> completion, loss on the completion only). A task module provides

  - `objective(config) -> Objective`: what the jitted train and eval steps compute
    (`llm_jax/train.py` takes it; the step itself is the same for every task);
  - `resolve(config) -> config` (optional): settles what the task decides from its data,
    e.g. classify's label set and `model.num_classes`, before the model is built;
  - `make_data(config, prepared) -> TaskData` (every task but lm, whose batches,
    evaluation and bits per byte live in `llm_jax/data.py` and the trainer).

`resolve_config` and `make_data` below dispatch on `config.task.name`.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

TASKS = ("lm", "classify", "mlm", "sft")


@dataclasses.dataclass(frozen=True)
class Objective:
    """A task's loss as the train step uses it (all functions jittable).

    weights(batch) -> array: what the loss is a mean over (tokens or rows that count);
        summed over the whole batch before micro-batching.
    sums(model, params, batch, rng, deterministic) -> (objective_sum, loss_sum): the summed
        objective that is differentiated and the summed loss logged as train/loss.
    eval_sums(model, params, batch) -> dict of arrays: what evaluation adds up or keeps.
    batch_shapes(config) -> {name: (shape, dtype)}: the global batch.
    """

    weights: Callable[[dict], jax.Array]
    sums: Callable[..., tuple[jax.Array, jax.Array]]
    eval_sums: Callable[..., dict]
    batch_shapes: Callable[[ml_collections.ConfigDict], dict[str, tuple[tuple[int, ...], Any]]]


class TaskData(Protocol):
    """A non-lm task's data and evaluation, as the trainer drives them."""

    iterator: Iterator[dict[str, np.ndarray]]  # with get_state/set_state/epoch
    val_batches: list[dict[str, np.ndarray]]  # this process's rows of each val batch

    def evaluate(self, outputs: list[dict[str, np.ndarray]], workdir: str, final: bool) -> dict:
        """Scores (val/...) from the eval step's outputs on `val_batches`; `final`: the
        run's last evaluation (write figures)."""


def _module(name: str):
    return importlib.import_module(f"llm_jax.tasks.{name}")


def objective(config: ml_collections.ConfigDict) -> Objective:
    """The train step's objective for `config.task.name`."""
    return _module(config.task.name).objective(config)


def resolve_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """A copy of `config` with the init source's model and what the task reads off its data
    filled in (llm_jax/finetune.py, the task's `resolve`); validated again."""
    from llm_jax import config as config_lib
    from llm_jax import finetune

    config = finetune.resolve_init(ml_collections.ConfigDict(config.to_dict()))
    resolve = getattr(_module(config.task.name), "resolve", None)
    if resolve is not None:
        config = resolve(config)
    return config_lib.validate(config)


def make_data(config: ml_collections.ConfigDict, prepared) -> TaskData | None:
    """The task's batches and evaluation; None for lm (the trainer's own path)."""
    if config.task.name == "lm":
        return None
    return _module(config.task.name).make_data(config, prepared)


def apply_model(model, params, batch: dict, rng, deterministic: bool) -> jax.Array:
    """The model's output on a batch's inputs (and segment ids); dropout from `rng`."""
    return model.apply(
        {"params": params},
        batch["inputs"],
        segment_ids_BxL=batch.get("segment_ids"),
        deterministic=deterministic,
        rngs=None if deterministic else {"dropout": rng},
    )


def target_logit(logits_BxLxV: jax.Array, targets_BxL: jax.Array) -> jax.Array:
    """Each token's logit of its target, [B, L]."""
    # A gather, whose gradient is a scatter. A masked sum over the vocabulary (a select
    # in the gradient) measured 0-17% slower steps on CPU at vocabularies 512-8192.
    return jnp.take_along_axis(logits_BxLxV, targets_BxL[..., None], -1)[..., 0]


def token_cross_entropy(logits_BxLxV: jax.Array, targets_BxL: jax.Array) -> jax.Array:
    """Per-token cross-entropy [B, L] in float32."""
    return jax.nn.logsumexp(logits_BxLxV, axis=-1) - target_logit(logits_BxLxV, targets_BxL)


class ExampleIterator:
    """Batches of fixed-shape examples, reshuffled each epoch, per host, resumable.

    `examples`: arrays sharing their first axis (one row per example). Epoch e visits the
    rows in the order numpy's default_rng([seed, e]) permutes them; the stream runs on
    across epochs, so batch b holds stream rows [b*batch_size, (b+1)*batch_size) and
    process p reads the p-th contiguous `batch_size // process_count` of them.
    """

    def __init__(
        self,
        examples: dict[str, np.ndarray],
        batch_size: int,
        seed: int,
        process_index: int | None = None,
        process_count: int | None = None,
    ):
        from llm_jax.data import DataError

        self.examples, self.batch_size, self.seed = examples, batch_size, seed
        self.rows = len(next(iter(examples.values())))
        if self.rows == 0:
            raise DataError("the task's train split has no examples; check config.task.path")
        index = jax.process_index() if process_index is None else process_index
        count = jax.process_count() if process_count is None else process_count
        self.local = batch_size // count
        self.first = index * self.local
        self._epoch, self._position = 0, 0

    @property
    def epoch(self) -> float:
        """Epochs seen, with the fraction of this one."""
        return self._epoch + self._position / self.rows

    def __iter__(self) -> ExampleIterator:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        stream = self._position + self.first + np.arange(self.local)
        epochs, index = self._epoch + stream // self.rows, stream % self.rows
        rows = np.empty(self.local, np.int64)
        for epoch in np.unique(epochs):
            order = np.random.default_rng([self.seed, int(epoch)]).permutation(self.rows)
            rows[epochs == epoch] = order[index[epochs == epoch]]
        consumed = self._position + self.batch_size
        self._epoch += consumed // self.rows
        self._position = consumed % self.rows
        return {k: v[rows] for k, v in self.examples.items()}

    def get_state(self) -> dict:
        """A JSON-able position: restoring it yields exactly the batches that come next."""
        return {
            "seed": self.seed,
            "epoch": self._epoch,
            "position": self._position,
            "rows": self.rows,
        }

    def set_state(self, state: dict) -> None:
        """Continue from a `get_state()` dict of an iterator over the same examples."""
        from llm_jax.data import DataError

        if state.get("rows") != self.rows:
            raise DataError(
                f"the saved data position is for {state.get('rows')} task examples, this run "
                f"has {self.rows}; resume with the task data of the saved run"
            )
        self.seed, self._epoch, self._position = state["seed"], state["epoch"], state["position"]


def fixed_batches(
    examples: dict[str, np.ndarray],
    batch_size: int,
    process_index: int | None = None,
    process_count: int | None = None,
) -> list[dict[str, np.ndarray]]:
    """This process's rows of the whole batches `examples` fill, in order (a tail of fewer
    than `batch_size` rows is left out)."""
    index = jax.process_index() if process_index is None else process_index
    count = jax.process_count() if process_count is None else process_count
    local = batch_size // count
    rows = len(next(iter(examples.values())))
    return [
        {k: v[b + index * local : b + (index + 1) * local] for k, v in examples.items()}
        for b in range(0, rows - batch_size + 1, batch_size)
    ]


def read_rows(path: str, what: str) -> list[dict]:
    """The rows of a .jsonl (one JSON object a line) or .csv (with a header) file."""
    import csv
    import io
    import json

    from llm_jax import storage
    from llm_jax.data import DataError

    if not path.endswith((".jsonl", ".json", ".csv")):
        raise DataError(f"{what}={path!r}: give a .jsonl or .csv file")
    try:
        text = storage.read_text(path)  # local or gs://
        if path.endswith(".csv"):
            return list(csv.DictReader(io.StringIO(text, newline="")))
        return [json.loads(line) for line in text.split("\n") if line.strip()]
    except OSError as e:
        raise DataError(f"{what}={path!r} cannot be read ({e.strerror}); fix the path") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise DataError(f"{what}={path!r} is not valid {path.rsplit('.', 1)[1]}: {e}") from None


def split_rows(task_cfg: ml_collections.ConfigDict) -> tuple[list[dict], list[dict]]:
    """(train, val) rows of `task.path`; val from `task.val_path`, else every 10th row."""
    rows = read_rows(task_cfg.path, "config.task.path")
    if task_cfg.val_path:
        return rows, read_rows(task_cfg.val_path, "config.task.val_path")
    return [r for i, r in enumerate(rows) if i % 10 != 9], rows[9::10]
