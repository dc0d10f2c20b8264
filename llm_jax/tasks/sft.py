"""Supervised fine-tuning: prompt -> completion, the loss on the completion tokens only.

Data: `task.path` (.jsonl; val from `task.val_path` or every 10th row) with rows
`{"prompt": ..., "completion": ...}` or `{"messages": [{"role": ..., "content": ...}, ...]}`.
A messages list is rendered with a plain template: each message but the last as a line
`<role>: <content>`, then `<last role>:` ends the prompt and ` <last content>` is the
completion. By default the embedded Shakespeare task (`shakespeare_pairs`): the prompt is
a speaker's cue line and the next speaker's name, the completion the first line of the
next speech (train plays for training, the held-out plays for validation).

An example is its prompt's tokens, then its completion's and eos; it is packed whole into
rows of `data.seq_len` (its own segment id: no attention across examples, positions
restart), never split across rows. An example longer than a row loses the start of its
prompt first, then the end of its completion (the count is logged). Loss weights are 1 on
the completion's tokens (eos included) and 0 on the prompt's and on padding.

Metrics on the first `task.max_val_examples` val examples: val/completion_loss (mean
per completion token) and val/exact_match, the share of completions greedy decoding
reproduces exactly (through eos). Greedy decoding emits the target completion exactly
when, fed the target prefix, the argmax is the target at every completion position, so
this is read off one teacher-forced pass.
"""

from __future__ import annotations

import logging
import re

import jax.numpy as jnp
import ml_collections
import numpy as np

from llm_jax import tasks as tasks_lib
from llm_jax.data import DataError
from llm_jax.tasks import Objective, apply_model

log = logging.getLogger(__name__)


def render_messages(messages: list[dict]) -> tuple[str, str]:
    """(prompt, completion) of a messages list (see the module docstring)."""
    if not messages or any("role" not in m or "content" not in m for m in messages):
        raise DataError("a messages row needs a non-empty list of {role, content} objects")
    *context, last = messages
    prompt = "".join(f"{m['role']}: {m['content']}\n" for m in context) + f"{last['role']}:"
    return prompt, " " + str(last["content"])


def _pair(row: dict, where: str) -> tuple[str, str]:
    if "messages" in row:
        return render_messages(row["messages"])
    if "prompt" in row and "completion" in row:
        return str(row["prompt"]), str(row["completion"])
    raise DataError(f"{where}: a row has neither prompt/completion nor messages ({sorted(row)})")


_SPEAKER = re.compile(r"^\*\*(.+?)\*\*\s*$")


def _speeches(play_text: str) -> list[list[tuple[str, list[str]]]]:
    """The (speaker, lines) of each scene's speeches, stage directions left out."""
    scenes: list[list[tuple[str, list[str]]]] = [[]]
    for block in re.split(r"\n\s*\n", play_text):
        lines = [line.strip() for line in block.strip().splitlines()]
        lines = [x for x in lines if x and not x.startswith("_")]
        if not lines:
            continue
        if lines[0].startswith("#"):
            scenes.append([])
        elif match := _SPEAKER.match(lines[0]):
            scenes[-1].append((match.group(1), lines[1:]))
        elif scenes[-1]:  # a speech continued after a stage direction
            scenes[-1][-1][1].extend(lines)
    return scenes


def shakespeare_pairs(split: str) -> list[tuple[str, str]]:
    """(prompt, completion) pairs of consecutive speeches in the plays of `split`."""
    from llm_jax import corpus as corpus_lib
    from llm_jax.tasks import genre

    root, pairs = corpus_lib.shakespeare_dir(), []
    for play in genre.plays(split):
        for scene in _speeches((root / play).read_text(encoding="utf-8")):
            for (cue_speaker, cue), (speaker, speech) in zip(scene, scene[1:], strict=False):
                if cue and speech:
                    pairs.append((f"{cue_speaker}: {cue[-1]}\n{speaker}:", " " + speech[0]))
    return pairs


def encode_example(tokenizer, prompt: str, completion: str, seq_len: int):
    """(token ids, prompt length, truncated?) of one example, at most seq_len + 1 ids."""
    prompt_ids = tokenizer.encode(prompt)
    completion_ids = tokenizer.encode(completion) + [tokenizer.eos_id]
    budget = seq_len + 1
    if len(prompt_ids) + len(completion_ids) <= budget:
        return prompt_ids + completion_ids, len(prompt_ids), False
    completion_ids = completion_ids[: budget - 1]  # keep at least one prompt token
    prompt_ids = prompt_ids[len(prompt_ids) - (budget - len(completion_ids)) :]
    return prompt_ids + completion_ids, len(prompt_ids), True


def pack(examples, seq_len: int) -> dict[str, np.ndarray]:
    """Rows [R, seq_len] of whole examples: inputs, targets, segment_ids, weights."""
    rows: list[list[tuple[list[int], int]]] = [[]]
    room = seq_len
    for ids, n_prompt in examples:
        if len(ids) - 1 > room:
            rows.append([])
            room = seq_len
        rows[-1].append((ids, n_prompt))
        room -= len(ids) - 1
    out = {
        k: np.zeros((len(rows), seq_len), np.int32) for k in ("inputs", "targets", "segment_ids")
    }
    out["weights"] = np.zeros((len(rows), seq_len), np.float32)
    for r, row in enumerate(rows):
        at = 0
        for segment, (ids, n_prompt) in enumerate(row, start=1):
            n = len(ids) - 1
            out["inputs"][r, at : at + n] = ids[:-1]
            out["targets"][r, at : at + n] = ids[1:]
            out["segment_ids"][r, at : at + n] = segment
            out["weights"][r, at + n_prompt - 1 : at + n] = 1.0  # targets in the completion
            at += n
    return out


def _encode_all(tokenizer, pairs, seq_len: int, split: str):
    encoded, truncated = [], 0
    for prompt, completion in pairs:
        ids, n_prompt, cut = encode_example(tokenizer, prompt, completion, seq_len)
        encoded.append((ids, n_prompt))
        truncated += cut
    if truncated:
        log.info(
            "sft %s: %d of %d examples truncated to fit data.seq_len", split, truncated, len(pairs)
        )
    return encoded


class SFTData:
    """Packed train rows, packed val rows and the completion metrics."""

    def __init__(self, config: ml_collections.ConfigDict, tokenizer):
        task, t, seq_len = config.task, config.train, config.data.seq_len
        if task.path:
            train_rows, val_rows = tasks_lib.split_rows(task)
            train = [_pair(r, task.path) for r in train_rows]
            val = [_pair(r, task.val_path or task.path) for r in val_rows]
        else:
            train, val = shakespeare_pairs("train"), shakespeare_pairs("val")
        val = val[: task.max_val_examples]
        if not train or not val:
            raise DataError(f"the sft task has {len(train)} train and {len(val)} val examples")
        packed = pack(_encode_all(tokenizer, train, seq_len, "train"), seq_len)
        log.info(
            "sft: %d train examples in %d rows, %d val", len(train), len(packed["inputs"]), len(val)
        )
        self.iterator = tasks_lib.ExampleIterator(packed, t.batch_size, t.seed)
        val_rows = pack(_encode_all(tokenizer, val, seq_len, "val"), seq_len)
        batch = config.data.val_batch_size or t.batch_size
        fill = -len(val_rows["inputs"]) % batch  # empty rows (weight 0) complete the last batch
        val_rows = {
            k: np.concatenate([v, np.zeros((fill, seq_len), v.dtype)]) for k, v in val_rows.items()
        }
        self.val_batches = tasks_lib.fixed_batches(val_rows, batch)

    def evaluate(self, outputs: list[dict], workdir: str | None, final: bool) -> dict:
        """Completion loss per token and the greedy exact-match share."""
        exact, total = 0, 0
        for o in outputs:
            for wrong_L, segment_L, weight_L in zip(
                o["wrong"], o["segment_ids"], o["weights"], strict=True
            ):
                scored = weight_L > 0
                for segment in np.unique(segment_L[scored]):
                    total += 1
                    exact += not wrong_L[scored & (segment_L == segment)].any()
        weight = max(float(sum(o["weight"] for o in outputs)), 1.0)
        return {
            "val/completion_loss": float(sum(o["ce_sum"] for o in outputs)) / weight,
            "val/exact_match": exact / max(total, 1),
        }


def make_data(config: ml_collections.ConfigDict, prepared) -> SFTData:
    """The task's data, tokenized with the run's tokenizer."""
    return SFTData(config, prepared.tokenizer)


def _token_ce(model, params, batch, rng, deterministic):
    logits_BxLxV = apply_model(model, params, batch, rng, deterministic)
    return tasks_lib.token_cross_entropy(logits_BxLxV, batch["targets"]), logits_BxLxV


def objective(config: ml_collections.ConfigDict) -> Objective:
    """Cross-entropy on completion tokens; eval keeps which of them greedy gets wrong."""

    def weights(batch):
        return batch["weights"]

    def sums(model, params, batch, rng, deterministic):
        ce_BxL, _ = _token_ce(model, params, batch, rng, deterministic)
        ce_sum = (ce_BxL * batch["weights"]).sum()
        return ce_sum, ce_sum

    def eval_sums(model, params, batch):
        ce_BxL, logits_BxLxV = _token_ce(model, params, batch, None, True)
        return {
            "ce_sum": (ce_BxL * batch["weights"]).sum(),
            "weight": batch["weights"].sum(),
            "wrong": jnp.argmax(logits_BxLxV, -1) != batch["targets"],
            "segment_ids": batch["segment_ids"],
            "weights": batch["weights"],
        }

    def batch_shapes(config):
        shape = (config.train.batch_size, config.data.seq_len)
        shapes = {k: (shape, jnp.int32) for k in ("inputs", "targets", "segment_ids")}
        return dict(shapes, weights=(shape, jnp.float32))

    return Objective(weights, sums, eval_sums, batch_shapes)
