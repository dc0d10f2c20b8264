"""Text classification: a label per text, a linear head on the pooled final hidden state.

Data: `task.path` (.jsonl or .csv rows with `task.text_field` and `task.label_field`;
val from `task.val_path` or every 10th row), or by default the embedded Shakespeare
genre task (llm_jax/tasks/genre.py). The label set is the train split's (sorted),
stored in `task.labels`; it sizes the head (`model.num_classes`). Texts are cut to
`data.seq_len` tokens (the count cut is logged) and right-padded, segment id 0 on
padding; `model.pool` picks the last real token's hidden state or the mean over real
tokens (llm_jax/model.py `pool_hidden`), with a causal or a bidirectional model.

Loss: mean cross-entropy over rows. Metrics: val/accuracy, val/macro_f1 (mean F1 over
the classes present in val labels or predictions), val/majority_accuracy (always
answering the train split's most frequent label), val/ce; at the last evaluation
`confusion_matrix.png` in the workdir.
"""

from __future__ import annotations

import logging
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from llm_jax import storage
from llm_jax import tasks as tasks_lib
from llm_jax.data import DataError
from llm_jax.tasks import Objective, apply_model, genre

log = logging.getLogger(__name__)
CONFUSION_PNG = "confusion_matrix.png"


def resolve(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Fill `task.labels` (from the train rows, or the genres) and `model.num_classes`."""
    task = config.task
    if not task.labels:
        if task.path:
            train, _ = tasks_lib.split_rows(task)
            task.labels = tuple(
                sorted({str(_field(r, task.label_field, task.path)) for r in train})
            )
        else:
            task.labels = genre.GENRES
    if len(task.labels) < 2:
        raise DataError(f"config.task.path has {len(task.labels)} label(s); classify needs 2+")
    config.model.num_classes = len(task.labels)
    return config


def _field(row: dict, name: str, where: str):
    if name not in row:
        raise DataError(
            f"{where}: a row has no field {name!r} (fields: {sorted(row)}); set "
            "config.task.text_field / label_field"
        )
    return row[name]


def encode_texts(tokenizer, texts, seq_len: int) -> dict[str, np.ndarray]:
    """`inputs` and `segment_ids` [N, seq_len]: texts cut to seq_len tokens, right-padded."""
    ids = tokenizer.encode_batch(list(texts))
    inputs = np.zeros((len(ids), seq_len), np.int32)
    segment_ids = np.zeros((len(ids), seq_len), np.int32)
    cut = 0
    for i, row in enumerate(ids):
        row = row[:seq_len] or [tokenizer.eos_id]  # an empty text still has a last token
        cut += len(ids[i]) > seq_len
        inputs[i, : len(row)] = row
        segment_ids[i, : len(row)] = 1
    if cut:
        log.info("%d of %d texts cut to data.seq_len=%d tokens", cut, len(ids), seq_len)
    return {"inputs": inputs, "segment_ids": segment_ids}


def _examples(config, tokenizer, rows: list[dict], where: str) -> dict[str, np.ndarray]:
    task = config.task
    index = {label: i for i, label in enumerate(task.labels)}
    labels = [str(_field(r, task.label_field, where)) for r in rows]
    unknown = sorted(set(labels) - set(index))
    if unknown:
        raise DataError(f"{where}: labels {unknown[:5]} are not in the train labels {task.labels}")
    texts = [str(_field(r, task.text_field, where)) for r in rows]
    examples = encode_texts(tokenizer, texts, config.data.seq_len)
    return dict(examples, labels=np.asarray([index[x] for x in labels], np.int32))


def _genre_examples(tokenizer, seq_len: int, split: str) -> dict[str, np.ndarray]:
    tokens, labels = genre.passages(tokenizer, seq_len, split)
    return {"inputs": tokens, "segment_ids": np.ones_like(tokens), "labels": labels}


class ClassifyData:
    """The train iterator, fixed val batches and metrics of a classification task."""

    def __init__(self, config: ml_collections.ConfigDict, tokenizer):
        task, t = config.task, config.train
        if task.path:
            train_rows, val_rows = tasks_lib.split_rows(task)
            train = _examples(config, tokenizer, train_rows, task.path)
            val = _examples(config, tokenizer, val_rows, task.val_path or task.path)
        else:
            train = _genre_examples(tokenizer, config.data.seq_len, "train")
            val = _genre_examples(tokenizer, config.data.seq_len, "val")
        self.labels = tuple(task.labels)
        counts = np.bincount(train["labels"], minlength=len(self.labels))
        self.majority = int(np.argmax(counts))
        log.info(
            "classify: %d train / %d val examples; train labels %s",
            len(train["labels"]),
            len(val["labels"]),
            dict(zip(self.labels, counts.tolist(), strict=True)),
        )
        self.iterator = tasks_lib.ExampleIterator(train, t.batch_size, t.seed)
        val_batch = config.data.val_batch_size or t.batch_size
        self.val_batches = tasks_lib.fixed_batches(val, val_batch)
        if not self.val_batches:
            raise DataError(
                f"the val split has {len(val['labels'])} examples, fewer than one batch of "
                f"{val_batch}; lower config.data.val_batch_size"
            )

    def evaluate(self, outputs: list[dict], workdir: str | None, final: bool) -> dict:
        """Accuracy, macro F1, the majority baseline and the mean CE; the confusion matrix
        PNG when `final`."""
        pred = np.concatenate([o["pred"] for o in outputs])
        label = np.concatenate([o["label"] for o in outputs])
        confusion = np.zeros((len(self.labels),) * 2, np.int64)
        np.add.at(confusion, (label, pred), 1)
        scores = {
            "val/accuracy": float(np.mean(pred == label)),
            "val/macro_f1": macro_f1(confusion),
            "val/majority_accuracy": float(np.mean(label == self.majority)),
            "val/ce": float(sum(o["ce_sum"] for o in outputs) / len(label)),
        }
        if final and workdir is not None:
            plot_confusion(confusion, self.labels, os.path.join(workdir, CONFUSION_PNG), scores)
        return scores


def macro_f1(confusion: np.ndarray) -> float:
    """Mean F1 over the classes that occur as a label or a prediction."""
    true_pos = np.diag(confusion).astype(float)
    labelled, predicted = confusion.sum(1), confusion.sum(0)
    present = (labelled + predicted) > 0
    f1 = 2 * true_pos / np.maximum(labelled + predicted, 1)
    return float(f1[present].mean())


def plot_confusion(confusion: np.ndarray, labels, path: str, scores: dict) -> None:
    """Counts of (true label, predicted label) as an annotated heat map."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(1.6 + 1.1 * len(labels), 1.2 + 1.0 * len(labels)))
    ax.imshow(confusion, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=30)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    peak = confusion.max() or 1
    for (i, j), n in np.ndenumerate(confusion):
        ax.text(j, i, str(n), ha="center", va="center", color="white" if n > peak / 2 else "black")
    ax.set_title(
        f"accuracy {scores['val/accuracy']:.3f} (majority {scores['val/majority_accuracy']:.3f})"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def make_data(config: ml_collections.ConfigDict, prepared) -> ClassifyData:
    """The task's data, tokenized with the run's tokenizer."""
    return ClassifyData(config, prepared.tokenizer)


def _class_ce(model, params, batch, rng, deterministic):
    logits_BxC = apply_model(model, params, batch, rng, deterministic)
    label_logit_B = jnp.take_along_axis(logits_BxC, batch["labels"][:, None], -1)[:, 0]
    return jax.nn.logsumexp(logits_BxC, axis=-1) - label_logit_B, logits_BxC


def objective(config: ml_collections.ConfigDict) -> Objective:
    """Cross-entropy of the label per row; eval keeps each row's prediction."""

    def weights(batch):
        return jnp.ones(batch["labels"].shape, jnp.float32)

    def sums(model, params, batch, rng, deterministic):
        ce_B, _ = _class_ce(model, params, batch, rng, deterministic)
        return ce_B.sum(), ce_B.sum()

    def eval_sums(model, params, batch):
        ce_B, logits_BxC = _class_ce(model, params, batch, None, True)
        return {"ce_sum": ce_B.sum(), "pred": jnp.argmax(logits_BxC, -1), "label": batch["labels"]}

    def batch_shapes(config):
        rows, seq_len = config.train.batch_size, config.data.seq_len
        return {
            "inputs": ((rows, seq_len), jnp.int32),
            "segment_ids": ((rows, seq_len), jnp.int32),
            "labels": ((rows,), jnp.int32),
        }

    return Objective(weights, sums, eval_sums, batch_shapes)


def read_texts(path: str, text_field: str) -> list[str]:
    """Texts to classify: a .txt (one a line) or .jsonl/.csv rows' `text_field`."""
    if path.endswith(".txt"):
        try:
            text = storage.read_text(path)  # local or gs://
        except OSError as e:
            raise DataError(f"--input {path!r} cannot be read ({e.strerror})") from None
        return [line for line in text.splitlines() if line.strip()]
    return [str(_field(r, text_field, path)) for r in tasks_lib.read_rows(path, "--input")]


def require_classifier(config: ml_collections.ConfigDict, workdir: str) -> None:
    """Raise UsageError unless `config` (a run's) is a classify run's."""
    from llm_jax.errors import UsageError

    if config.task.name != "classify" or not config.model.num_classes:
        raise UsageError(
            f"{workdir} was trained with task.name={config.task.name!r}; predict needs a "
            "classify run (train one with --config.task.name=classify)"
        )


def predict(workdir: str, texts: list[str], batch_size: int = 32, step: int | None = None):
    """(label names, class probabilities [N, C]) of a classify run's model on `texts`."""
    from llm_jax import workdir as workdir_lib
    from llm_jax.model import ModelConfig, Transformer

    require_classifier(workdir_lib.load_config(workdir), workdir)
    config, params = workdir_lib.restore_params(workdir, step=step)
    tokenizer = workdir_lib.load_run_tokenizer(workdir, config)
    model = Transformer(ModelConfig.from_config(config.model))
    apply = jax.jit(
        lambda p, b: jax.nn.softmax(
            model.apply({"params": p}, b["inputs"], segment_ids_BxL=b["segment_ids"]), -1
        )
    )
    probs = []
    for start in range(0, len(texts), batch_size):
        chunk = texts[start : start + batch_size]
        rows = encode_texts(tokenizer, chunk, config.data.seq_len)
        fill = ((0, batch_size - len(chunk)), (0, 0))  # one shape for every batch: one compile
        batch = {k: np.pad(v, fill) for k, v in rows.items()}
        probs.append(np.asarray(apply(params, batch))[: len(chunk)])
    probs = np.concatenate(probs) if probs else np.zeros((0, len(config.task.labels)))
    return tuple(config.task.labels), probs
