"""Masked-LM pre-training (BERT, Devlin et al. 2019) on the packed token windows.

Each window's tokens are both the input and the target; `task.mask_rate` (15%) of them
are chosen, and of those 80% are replaced by the mask token, 10% by a random token and
10% left as they are. The loss (mean cross-entropy) and `val/mlm_accuracy` count the
chosen tokens only. The model must be bidirectional (`model.causal=False`); the mask
token is an embedding row past the vocabulary (`model.mask_token`, set here), id
`model.vocab_size`, never a prediction (its logit is PAD_LOGIT).

Masks are drawn on the host from numpy's default_rng([seed, batch index, process]), so
a resumed run masks exactly as an uninterrupted one; the val batches are masked once,
with a fixed seed.
"""

from __future__ import annotations

import jax.numpy as jnp
import ml_collections
import numpy as np

from llm_jax import tasks as tasks_lib
from llm_jax.tasks import Objective, apply_model

_VAL_SEED = 20190524  # val masks: fixed, whatever train.seed is
MASKED, RANDOM = 0.8, 0.1  # shares of the chosen tokens; the rest stay unchanged


def resolve(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
    """Reserve the mask token's embedding row."""
    config.model.mask_token = True
    return config


def mask_tokens(tokens_BxL: np.ndarray, rng, rate: float, vocab_size: int) -> dict:
    """`inputs` (masked), `targets` (the tokens) and `weights` (1 on chosen tokens)."""
    chosen_BxL = rng.random(tokens_BxL.shape) < rate
    draw_BxL = rng.random(tokens_BxL.shape)
    inputs_BxL = tokens_BxL.copy()
    inputs_BxL[chosen_BxL & (draw_BxL < MASKED)] = vocab_size  # the mask token's id
    swap_BxL = chosen_BxL & (draw_BxL >= MASKED) & (draw_BxL < MASKED + RANDOM)
    inputs_BxL[swap_BxL] = rng.integers(0, vocab_size, int(swap_BxL.sum()))
    return {
        "inputs": inputs_BxL.astype(np.int32),
        "targets": tokens_BxL.astype(np.int32),
        "weights": chosen_BxL.astype(np.float32),
    }


class MaskedBatches:
    """The packed LM batches with masks drawn per batch; resumable like the LM iterator."""

    def __init__(self, base, rate: float, vocab_size: int, seed: int, process_index: int):
        self.base, self.rate, self.vocab_size = base, rate, vocab_size
        self.seed, self.process_index, self.count = seed, process_index, 0

    @property
    def epoch(self) -> float:
        """Epochs of the token windows seen."""
        return self.base.epoch

    def __iter__(self) -> MaskedBatches:
        return self

    def __next__(self) -> dict[str, np.ndarray]:
        batch = next(self.base)
        rng = np.random.default_rng([self.seed, self.count, self.process_index])
        self.count += 1
        masked = mask_tokens(batch["inputs"], rng, self.rate, self.vocab_size)
        if "segment_ids" in batch:
            masked["segment_ids"] = batch["segment_ids"]
        return masked

    def get_state(self) -> dict:
        """The windows' position and the number of batches masked."""
        return {**self.base.get_state(), "masked_batches": self.count}

    def set_state(self, state: dict) -> None:
        """Continue from a `get_state()` dict."""
        self.base.set_state(state)
        self.count = state["masked_batches"]


class MLMData:
    """Masked train batches, masked val batches and the masked-token metrics."""

    def __init__(self, config: ml_collections.ConfigDict, prepared):
        import jax

        from llm_jax import data as data_lib

        t, d = config.train, config.data
        vocab, rate = config.model.vocab_size, config.task.mask_rate
        base = data_lib.BatchIterator(
            prepared, t.batch_size, d.seq_len, seed=t.seed, segment_ids=d.segment_ids
        )
        self.iterator = MaskedBatches(base, rate, vocab, t.seed, jax.process_index())
        rng = np.random.default_rng([_VAL_SEED, jax.process_index()])
        self.val_batches = []
        for batch in data_lib.val_batches(
            prepared,
            d.val_batch_size or t.batch_size,
            d.seq_len,
            d.num_val_batches,
            segment_ids=d.segment_ids,
        ):
            self.val_batches.append(dict(batch, **mask_tokens(batch["inputs"], rng, rate, vocab)))

    def evaluate(self, outputs: list[dict], workdir: str | None, final: bool) -> dict:
        """Mean loss and accuracy over the chosen val tokens."""
        weight = max(float(sum(o["weight"] for o in outputs)), 1.0)
        return {
            "val/mlm_loss": float(sum(o["ce_sum"] for o in outputs)) / weight,
            "val/mlm_accuracy": float(sum(o["correct"] for o in outputs)) / weight,
        }


def make_data(config: ml_collections.ConfigDict, prepared) -> MLMData:
    """The task's data over the run's token caches."""
    return MLMData(config, prepared)


def objective(config: ml_collections.ConfigDict) -> Objective:
    """Cross-entropy on the chosen tokens; eval also counts the correct ones."""

    def weights(batch):
        return batch["weights"]

    def sums(model, params, batch, rng, deterministic):
        logits_BxLxV = apply_model(model, params, batch, rng, deterministic)
        ce_sum = (
            tasks_lib.token_cross_entropy(logits_BxLxV, batch["targets"]) * batch["weights"]
        ).sum()
        return ce_sum, ce_sum

    def eval_sums(model, params, batch):
        logits_BxLxV = apply_model(model, params, batch, None, True)
        w_BxL = batch["weights"]
        correct_BxL = (jnp.argmax(logits_BxLxV, -1) == batch["targets"]).astype(jnp.float32)
        return {
            "ce_sum": (tasks_lib.token_cross_entropy(logits_BxLxV, batch["targets"]) * w_BxL).sum(),
            "correct": (correct_BxL * w_BxL).sum(),
            "weight": w_BxL.sum(),
        }

    def batch_shapes(config):
        shape = (config.train.batch_size, config.data.seq_len)
        shapes = {"inputs": (shape, jnp.int32), "targets": (shape, jnp.int32)}
        shapes["weights"] = (shape, jnp.float32)
        if config.data.segment_ids:
            shapes["segment_ids"] = (shape, jnp.int32)
        return shapes

    return Objective(weights, sums, eval_sums, batch_shapes)
