"""Llama-2-7B shape on your own files, bf16, FSDP over all chips, full remat: a TPU pod run.

Check it fits before renting the pod (compiles on this machine, no TPU needed):
    llm-jax plan --config experiments/configs/llama2_7b.py --topology v5p-256
Then on the pod:
    llm-jax train --config experiments/configs/llama2_7b.py \
        --config.data.path='gs://bucket/corpus/*.parquet' --workdir runs/llama2_7b
"""

from llm_jax.config import apply_preset, default_config


def get_config():
    """llama2-7b shape, 4096 context, 1M-token batches, fully sharded, full remat."""
    config = apply_preset(default_config(), "llama2-7b")
    config.model.update(dtype="bfloat16", remat="full")
    config.data.update(source="files", path="", seq_len=4096, num_val_batches=20)
    config.train.update(
        tokens=100_000_000_000,
        steps=0,
        batch_size=256,
        lr=3e-4,
        warmup_steps=2000,
        z_loss=1e-4,
        log_every=50,
        eval_every=2000,
    )
    config.checkpoint.update(every=1000, keep=3)
    config.mesh.update(data=1, fsdp=-1, tensor=1)
    return config
