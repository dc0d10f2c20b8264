"""Supervised fine-tuning on the plays: the cue line and next speaker -> their first line.

    llm-jax train --config experiments/configs/shakespeare_tiny.py --workdir runs/tiny
    llm-jax train --config experiments/configs/shakespeare_sft.py \
        --config.init.workdir=runs/tiny --workdir runs/sft

Prompt 'THESEUS: <his last line>\\nHIPPOLYTA:', completion ' <her first line>' (plus eos);
the loss counts completion tokens only; val pairs come from the held-out plays. Your own
data: --config.task.path=train.jsonl with prompt/completion (or messages) rows.
"""

from llm_jax.config import default_config


def get_config():
    """Examples packed into 128-token rows, 300 steps of 16 rows, a fine-tuning rate."""
    config = default_config()
    config.task.name = "sft"
    config.task.max_val_examples = 256
    config.data.seq_len = 128
    config.train.update(
        steps=300,
        batch_size=16,
        lr=1e-3,  # a third of shakespeare_tiny's pre-training rate
        warmup_steps=10,
        weight_decay=0.0,
        log_every=20,
        eval_every=100,
    )
    config.checkpoint.every = 300
    return config
