"""Next-token prediction (causal-LM pre-training), the default task.

Batches are packed token windows from `llm_jax.data` (`inputs`, `targets`, optionally
`segment_ids`, 0 on padding); the loss is the mean token cross-entropy, plus
`train.z_loss` * log(Z)^2. Its evaluation (val/loss, val/bpb) is the trainer's own.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from llm_jax.tasks import Objective, apply_model, target_logit


def weights(batch: dict) -> jax.Array:
    """Float32 [B, L]: 1 on tokens that count in the loss, 0 on padding (segment id 0)."""
    if "segment_ids" in batch:
        return (batch["segment_ids"] > 0).astype(jnp.float32)
    return jnp.ones(batch["targets"].shape, jnp.float32)


def token_losses(model, params, batch: dict, rng, deterministic: bool):
    """Per-token (cross-entropy, log Z) [B, L] and weights (0 on padding)."""
    logits_BxLxV = apply_model(model, params, batch, rng, deterministic)
    log_z_BxL = jax.nn.logsumexp(logits_BxLxV, axis=-1)
    target_logit_BxL = target_logit(logits_BxLxV, batch["targets"])
    return log_z_BxL - target_logit_BxL, log_z_BxL, weights(batch)


def objective(config: ml_collections.ConfigDict) -> Objective:
    """Summed token cross-entropy (+ z-loss); eval adds up (loss, weight)."""
    z_loss = float(config.train.z_loss)

    def sums(model, params, batch, rng, deterministic):
        ce_BxL, log_z_BxL, w_BxL = token_losses(model, params, batch, rng, deterministic)
        ce_sum = (ce_BxL * w_BxL).sum()
        return ce_sum + z_loss * (jnp.square(log_z_BxL) * w_BxL).sum(), ce_sum

    def eval_sums(model, params, batch):
        ce_BxL, _, w_BxL = token_losses(model, params, batch, None, deterministic=True)
        return (ce_BxL * w_BxL).sum(), w_BxL.sum()

    def batch_shapes(config):
        names = ["inputs", "targets"] + (["segment_ids"] if config.data.segment_ids else [])
        shape = (config.train.batch_size, config.data.seq_len)
        return {n: (shape, jnp.int32) for n in names}

    return Objective(weights, sums, eval_sums, batch_shapes)
