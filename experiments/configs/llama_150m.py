"""A 150M Llama-style model (RoPE, RMSNorm, SwiGLU, GQA) on your own files, bfloat16.

    llm-jax train --config experiments/configs/llama_150m.py \
        --config.data.path='/data/corpus/*.parquet' --workdir runs/llama_150m

3B tokens (Chinchilla-optimal is ~20 tokens per parameter) at 0.5M tokens per step,
warmup-stable-decay schedule so the run can be extended from a stable-phase checkpoint.
"""

from llm_jax.config import apply_preset, default_config


def get_config():
    """llama-150m shape, 2048 context, AdamW 3e-3 WSD, 0.5M-token batches, z-loss."""
    config = apply_preset(default_config(), "llama-150m")
    config.model.update(dtype="bfloat16", max_seq_len=2048)
    config.data.update(source="files", path="", seq_len=2048, num_val_batches=20)
    config.train.update(
        tokens=3_000_000_000,
        steps=0,
        batch_size=256,
        lr=3e-3,
        schedule="wsd",
        decay_fraction=0.2,
        warmup_steps=1000,
        min_lr_ratio=0.0,
        z_loss=1e-4,
        log_every=50,
        eval_every=1000,
    )
    config.checkpoint.update(every=1000, keep=3)
    return config
