"""Masked-LM pre-training (BERT-style) of shakespeare_tiny's shape on the embedded corpus.

llm-jax train --config experiments/configs/shakespeare_mlm.py --workdir runs/mlm

A bidirectional encoder: 15% of tokens chosen (80% masked, 10% random, 10% kept), the
loss on those only; val/mlm_accuracy is the share of chosen val tokens recovered. Its
params start a classifier as a causal run's do:
    llm-jax train --config experiments/configs/genre_classify.py \
        --config.init.workdir=runs/mlm --workdir runs/genre_from_mlm
"""

from llm_jax.config import default_config


def get_config():
    """shakespeare_tiny with bidirectional attention and the masked-LM objective."""
    config = default_config()
    config.task.name = "mlm"
    config.model.update(d_model=64, n_layers=2, n_heads=4, vocab_size=512, max_seq_len=128)
    config.model.causal = False
    config.model.scan_layers = False  # 2 layers: unrolled steps run ~1.5x faster on a CPU
    config.data.seq_len = 64
    config.data.num_val_batches = 4
    config.train.update(
        steps=400, batch_size=16, lr=3e-3, warmup_steps=20, log_every=20, eval_every=100
    )
    config.checkpoint.every = 100
    return config
