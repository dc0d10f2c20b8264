"""Ablation: LR sensitivity with and without qk-norm and z-loss, at two model sizes.

The design of Wortsman et al. 2023, "Small-scale proxies for large-scale Transformer
training instabilities": train the same model over a wide learning-rate range (here
3e-4 to 3e-1) and compare the final loss per variant. Without qk-layernorm, attention
logits grow and training diverges at high learning rates; without z-loss (1e-4 x log^2 Z)
the output logits drift. Their "LR sensitivity" is the mean, over the LR range, of the
loss gap to the best LR: read it off DIR/plots/lr_sensitivity.png (final loss vs LR,
one line per variant and size). Instability grows with size, so two widths are swept.
"""

from llm_jax.config import default_config
from llm_jax.scaling import sweep

LRS = [3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1, 3e-1]
WIDTHS = [128, 256]  # d_model; n_layers = d_model / 64, 64-wide heads


def get_config():
    """A Llama-style model on Shakespeare, 2,000 steps of 32 x 128 tokens, AdamW."""
    config = default_config()
    config.model.update(vocab_size=512, max_seq_len=128)
    config.data.seq_len = 128
    config.train.update(
        steps=2000,
        batch_size=32,
        warmup_steps=100,
        eval_every=500,
        weight_decay=1e-4,
        grad_clip=1.0,
    )
    config.checkpoint.every = 1000
    return config


def get_sweep():
    """qk_norm x z_loss x 7 learning rates, for each width."""
    trials = []
    for d in WIDTHS:
        shape = {"model.d_model": d, "model.n_layers": d // 64, "model.n_heads": d // 64}
        trials += sweep.ablation(
            {"model.qk_norm": [False, True], "train.z_loss": [0.0, 1e-4]},
            lrs=LRS,
            prefix=f"d{d}-",
            overrides=shape,
        )
    return trials
