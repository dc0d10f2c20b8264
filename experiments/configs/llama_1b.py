"""Llama-3.2-1B shape on your own files, bf16, FSDP over all devices (a TPU pod or 8 GPUs).

    llm-jax train --config experiments/configs/llama_1b.py \
        --config.data.path='gs://bucket/corpus/*.parquet' --workdir runs/llama_1b
"""

from llm_jax.config import apply_preset, default_config


def get_config():
    """llama-1b shape, 2048 context, 1M-token batches, fully sharded, full remat."""
    config = apply_preset(default_config(), "llama-1b")
    config.model.update(dtype="bfloat16", max_seq_len=2048, remat="full", vocab_size=32000)
    config.data.update(source="files", path="", seq_len=2048, num_val_batches=20)
    config.train.update(
        tokens=20_000_000_000,
        steps=0,
        batch_size=512,
        lr=1e-3,
        warmup_steps=2000,
        z_loss=1e-4,
        log_every=50,
        eval_every=2000,
    )
    config.checkpoint.update(every=1000, keep=3)
    config.mesh.update(data=1, fsdp=-1, tensor=1)
    return config
