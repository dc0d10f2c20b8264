"""GPT-2 small (124M) on your own text files, bfloat16 compute.

    llm-jax train --config experiments/configs/gpt2_small.py \
        --config.data.path='/data/corpus/*.jsonl' --workdir runs/gpt2_small

A 32k-token SentencePiece tokenizer is trained on your data (GPT-2's own 50257-token
BPE is not used); 10B tokens at 0.5M tokens per step.
"""

from llm_jax.config import apply_preset, default_config


def get_config():
    """GPT-2 small shape, 1024 context, AdamW 6e-4 cosine, 0.5M-token batches."""
    config = apply_preset(default_config(), "gpt2-small")
    config.model.update(vocab_size=32000, dtype="bfloat16")
    config.data.update(source="files", path="", seq_len=1024, num_val_batches=20)
    config.train.update(
        tokens=10_000_000_000,
        steps=0,
        batch_size=512,
        lr=6e-4,
        warmup_steps=2000,
        min_lr_ratio=0.1,
        weight_decay=0.1,
        log_every=50,
        eval_every=2000,
    )
    config.checkpoint.update(every=2000, keep=3)
    return config
