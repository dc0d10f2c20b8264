"""Evaluation on local task files: perplexity / bits per byte, and multiple choice.

Task files (the name of a task is its file's stem):
  - `*.txt`: one document; `*.jsonl` with a `text` field: one document per row. Scored
    as `loss` (nats per token), `perplexity` and `bits_per_byte` (loss over the UTF-8
    bytes, comparable across tokenizers). Each document starts after an end-of-sequence
    token (as in training) and is cut into windows of max_seq_len predicted tokens.
  - `*.jsonl` with `context`, `choices` (list of strings) and `label` (index): multiple
    choice by log-likelihood, as lm-evaluation-harness computes it: `acc` picks the
    choice with the highest summed log-probability, `acc_norm` divides it by the
    choice's length in characters first.

Everything reduces to one request type, (context ids, continuation ids) -> (summed
log-probability of the continuation, whether greedy decoding would produce it), which
`Scorer` runs in fixed-shape batches (rows padded to a multiple of the mesh's batch
split, lengths to a power of two) so a handful of compilations serve a whole task. The
lm-evaluation-harness adapter (llm_jax/lm_eval_adapter.py) uses the same `Scorer`.

`run_tasks(config, workdir, params, mesh)` is the hook the trainer calls at the end of a
run with `config.eval.tasks`; it writes `workdir/eval.json` (llm_jax/eval_results.py),
which sweep collection turns into results.csv columns `eval/<task>/<metric>`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from llm_jax import sharding as sharding_lib
from llm_jax import storage
from llm_jax.errors import UserError
from llm_jax.eval_results import columns, write_results
from llm_jax.model import ModelConfig, Transformer

# Longest window scored by default: Llama 3's 128k context would make one window's
# attention mask alone tens of GB; pass max_len to go further.
DEFAULT_MAX_LEN = 4096
_MIN_BUCKET = 16  # shortest padded length: fewer distinct shapes, fewer compilations


class EvalError(UserError, ValueError):
    """A task file or eval setting that cannot be used; the message names the fix."""


# --- scoring ---------------------------------------------------------------------------------


def _score_fn(model: Transformer):
    def score(params, inputs_BxL, targets_BxL, segments_BxL, weights_BxL):
        logits_BxLxV = model.apply({"params": params}, inputs_BxL, segment_ids_BxL=segments_BxL)
        logp_BxLxV = jax.nn.log_softmax(logits_BxLxV, axis=-1)
        target_BxL = jnp.take_along_axis(logp_BxLxV, targets_BxL[..., None], -1)[..., 0]
        greedy_BxL = jnp.argmax(logits_BxLxV, axis=-1) == targets_BxL
        logprob_B = (target_BxL * weights_BxL).sum(axis=1)
        return logprob_B, jnp.all(greedy_BxL | (weights_BxL == 0), axis=1)

    return score


def _batch_rows(mesh: jax.sharding.Mesh) -> int:
    """How many ways the batch axis is split on `mesh` (rows come in multiples of it)."""
    axes = sharding_lib.batch_sharding(mesh).spec[0]
    axes = (axes,) if isinstance(axes, str) else axes or ()
    return math.prod(mesh.shape[a] for a in axes)


def _bucket(length: int, max_len: int) -> int:
    return min(max_len, max(_MIN_BUCKET, 1 << (length - 1).bit_length()))


class Scorer:
    """Log-likelihoods of continuations under one model, batched on a mesh.

    Sequences are at most `max_len` tokens (default: max_seq_len, up to DEFAULT_MAX_LEN).
    """

    def __init__(
        self,
        model_cfg: ml_collections.ConfigDict,
        params: Any,
        mesh: jax.sharding.Mesh,
        batch_size: int = 8,
        max_len: int | None = None,
    ):
        self.model_cfg = ModelConfig.from_config(model_cfg)
        self.params, self.mesh = params, mesh
        split = _batch_rows(mesh)
        self.batch_size = split * math.ceil(max(batch_size, 1) / split)
        self.max_len = min(max_len or DEFAULT_MAX_LEN, self.model_cfg.max_seq_len)
        self._score = jax.jit(
            _score_fn(Transformer(self.model_cfg)),
            out_shardings=jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec()),
        )

    def _run(self, rows: list[tuple[list[int], int]]) -> tuple[np.ndarray, np.ndarray]:
        """rows: (tokens, how many trailing tokens to score), at most max_len + 1 tokens."""
        length = _bucket(max(len(t) - 1 for t, _ in rows), self.max_len)
        arrays = np.zeros((4, self.batch_size, length), np.int32)
        for r, (tokens, n_scored) in enumerate(rows):
            n = len(tokens) - 1
            arrays[0, r, :n], arrays[1, r, :n], arrays[2, r, :n] = tokens[:-1], tokens[1:], 1
            arrays[3, r, n - n_scored : n] = 1
        sharding = sharding_lib.batch_sharding(self.mesh)
        inputs, targets, segments, weights = (jax.device_put(a, sharding) for a in arrays)
        with jax.set_mesh(self.mesh), nn.logical_axis_rules(sharding_lib.LOGICAL_RULES):
            logprob, greedy = self._score(
                self.params, inputs, targets, segments, weights.astype(jnp.float32)
            )
        return np.asarray(logprob)[: len(rows)], np.asarray(greedy)[: len(rows)]

    def loglikelihood(
        self, requests: Sequence[tuple[Sequence[int], Sequence[int]]]
    ) -> list[tuple[float, bool]]:
        """(summed log-probability of the continuation, is it the greedy one) per request.

        A request is (context ids, continuation ids), the context non-empty; too long a
        pair keeps its last max_seq_len + 1 tokens (the context is cut from the left).
        """
        rows = []
        for context, continuation in requests:
            if not context or not continuation:
                raise EvalError("every request needs a non-empty context and continuation")
            if len(continuation) > self.max_len:
                raise EvalError(
                    f"a continuation of {len(continuation)} tokens exceeds the "
                    f"{self.max_len}-token window; score it with loglikelihood_rolling"
                )
            rows.append(([*context, *continuation][-(self.max_len + 1) :], len(continuation)))
        order = sorted(range(len(rows)), key=lambda i: -len(rows[i][0]))  # similar lengths
        results: list[tuple[float, bool]] = [(0.0, False)] * len(rows)
        for start in range(0, len(order), self.batch_size):
            chunk = order[start : start + self.batch_size]
            logprob, greedy = self._run([rows[i] for i in chunk])
            for i, lp, g in zip(chunk, logprob, greedy, strict=True):
                results[i] = (float(lp), bool(g))
        return results

    def rolling_requests(self, tokens: Sequence[int], eos_id: int) -> list[tuple[list, list]]:
        """Requests that score every token of `tokens` once, after an eos, in windows."""
        stream = [eos_id, *tokens]
        return [
            (stream[start : start + 1], stream[start + 1 : start + 1 + self.max_len])
            for start in range(0, len(stream) - 1, self.max_len)
        ]

    def loglikelihood_rolling(self, token_lists: Sequence[Sequence[int]], eos_id: int) -> list:
        """Summed log-probability of each whole token list (no context but an eos)."""
        requests, owner = [], []
        for i, tokens in enumerate(token_lists):
            windows = self.rolling_requests(tokens, eos_id)
            requests += windows
            owner += [i] * len(windows)
        totals = [0.0] * len(token_lists)
        for i, (logprob, _) in zip(owner, self.loglikelihood(requests), strict=True):
            totals[i] += logprob
        return totals


# --- tasks -----------------------------------------------------------------------------------


@dataclasses.dataclass
class Task:
    """A task file read into memory: documents to score, or multiple-choice rows."""

    name: str
    kind: str  # perplexity | multiple_choice
    documents: list[str] = dataclasses.field(default_factory=list)
    rows: list[dict] = dataclasses.field(default_factory=list)


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").split("\n"), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except ValueError as e:
                raise EvalError(f"{path} line {number} is not JSON ({e})") from None
    return rows


def _check_choice_row(path: Path, number: int, row: dict) -> None:
    choices, label = row.get("choices"), row.get("label")
    ok = (
        isinstance(row.get("context"), str)
        and isinstance(choices, list)
        and len(choices) >= 2
        and all(isinstance(c, str) and c for c in choices)
        and isinstance(label, int)
        and 0 <= label < len(choices)
    )
    if not ok:
        raise EvalError(
            f"{path} row {number}: a multiple-choice row needs 'context' (text), 'choices' "
            "(two or more non-empty texts) and 'label' (the index of the right one)"
        )


def load_task(path: str | os.PathLike) -> Task:
    """Read a task file (see the module docstring); EvalError if it is neither kind."""
    path = storage.path(path)  # local or gs://
    if not storage.exists(path) or path.is_dir():
        raise EvalError(f"task file {path} not found")
    if path.suffix == ".txt":
        return Task(path.stem, "perplexity", documents=[path.read_text(encoding="utf-8")])
    if path.suffix != ".jsonl":
        raise EvalError(f"task file {path}: use a .txt or .jsonl file")
    rows = _read_jsonl(path)
    if not rows:
        raise EvalError(f"task file {path} is empty")
    if "choices" in rows[0]:
        for number, row in enumerate(rows, 1):
            _check_choice_row(path, number, row)
        return Task(path.stem, "multiple_choice", rows=rows)
    if all(isinstance(r.get("text"), str) for r in rows):
        return Task(path.stem, "perplexity", documents=[r["text"] for r in rows])
    raise EvalError(
        f"task file {path}: rows need 'text' (perplexity) or 'context', 'choices' and "
        "'label' (multiple choice)"
    )


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Context and continuation ids as lm-evaluation-harness splits them.

    The context's trailing spaces move to the continuation, the pair is encoded whole
    (so tokens that span the boundary tokenize as in running text) and split where the
    context's own encoding ends; the context follows an end-of-sequence token.
    """
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = tokenizer.encode(context + continuation)
    n_context = len(tokenizer.encode(context))
    return [tokenizer.eos_id, *whole[:n_context]], whole[n_context:]


def multiple_choice(scorer: Scorer, tokenizer, rows: list[dict]) -> dict[str, float]:
    """acc and acc_norm (log-likelihood per character) over multiple-choice rows."""
    requests = [encode_pair(tokenizer, r["context"], c) for r in rows for c in r["choices"]]
    logprobs = [lp for lp, _ in scorer.loglikelihood(requests)]
    correct = correct_norm = 0
    start = 0
    for row in rows:
        choices = row["choices"]
        ll = np.array(logprobs[start : start + len(choices)])
        start += len(choices)
        correct += int(np.argmax(ll)) == row["label"]
        correct_norm += int(np.argmax(ll / np.array([len(c) for c in choices]))) == row["label"]
    return {"acc": correct / len(rows), "acc_norm": correct_norm / len(rows), "n": len(rows)}


def perplexity(scorer: Scorer, tokenizer, documents: list[str]) -> dict[str, float]:
    """Loss per token, perplexity and bits per UTF-8 byte over the documents."""
    token_lists = tokenizer.encode_batch(documents)
    total = -sum(scorer.loglikelihood_rolling(token_lists, tokenizer.eos_id))
    n_tokens = sum(map(len, token_lists))
    n_bytes = sum(len(d.encode("utf-8")) for d in documents)
    if not n_tokens:
        raise EvalError("the perplexity task holds no text")
    loss = total / n_tokens
    return {
        "loss": loss,
        "perplexity": math.exp(loss),
        "bits_per_byte": total / math.log(2) / n_bytes,
        "tokens": n_tokens,
        "bytes": n_bytes,
    }


def evaluate(scorer: Scorer, tokenizer, tasks: Sequence[Task]) -> dict[str, dict[str, float]]:
    """Metrics of each task by name."""
    results = {}
    for task in tasks:
        if task.kind == "multiple_choice":
            results[task.name] = multiple_choice(scorer, tokenizer, task.rows)
        else:
            results[task.name] = perplexity(scorer, tokenizer, task.documents)
    return results


def run_tasks(
    config: ml_collections.ConfigDict,
    workdir: str,
    params: Any,
    mesh: jax.sharding.Mesh,
    step: int | None = None,
) -> dict[str, float]:
    """Evaluate `config.eval.tasks` at the end of training; returns the eval/... columns.

    Writes `workdir/eval.json`; does nothing (returns {}) without tasks.
    """
    if not config.eval.tasks:
        return {}
    from llm_jax import workdir as workdir_lib

    tasks = [load_task(path) for path in config.eval.tasks]
    tokenizer = workdir_lib.load_run_tokenizer(workdir, config)
    results = evaluate(Scorer(config.model, params, mesh, config.eval.batch_size), tokenizer, tasks)
    if jax.process_index() == 0:
        write_results(workdir, step, results)
    return columns(results)
