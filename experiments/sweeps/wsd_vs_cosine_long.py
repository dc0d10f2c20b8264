"""`wsd_vs_cosine.py` at 8x the horizon: does the gap between WSD and cosine shrink?

The same base config, 10-step warmup and 20% linear cooldowns, branched at 768, 1536 and
3072 steps of 16 x 64 tokens (ending at 922, 1843 and 3686 steps: 0.35 to 1.4 passes
over Shakespeare's training split), for the smaller model at the two rates that were best
in the short study (0.5x and 1x the SizeRules rate). A third design, cosine decaying to a
tenth of the peak (`min_lr_ratio` 0.1, the common practice), packs with the cosine runs
to zero at little extra cost. Seeds 1 and 2 repeat the longest cell at 1x, for an error
bar on the gap where it is smallest:

    llm-jax sweep experiments/sweeps/wsd_vs_cosine_long.py --workdir runs/wsd_vs_cosine_long
    python experiments/sweeps/wsd_vs_cosine_long.py runs/wsd_vs_cosine_long   # the tables
"""

import sys
from pathlib import Path

from llm_jax.config import load_python_file

study = load_python_file(Path(__file__).with_name("wsd_vs_cosine.py"), ("get_sweep",), "sweep")

SIZES = [3e4]
TOKENS = [768 * 1024, 1536 * 1024, 3072 * 1024]
LR_MULTIPLIERS = [0.5, 1]
COSINE_FLOORS = (0.0, 0.1)
DESIGNS = ("cosine", "wsd", "cosine-0.1")
SEEDS = (1, 2)
PARALLEL = 1
get_config = study.get_config


def get_sweep():
    """Per rate: the WSD parent and its cooldowns, cosine runs to zero and to 0.1x; then
    per extra seed, the longest cell's WSD branch (and parent) and cosine run at 1x."""
    base = get_config()
    trials = [
        t
        for m in LR_MULTIPLIERS
        for t in study.design_trials(base, SIZES, TOKENS, m, cosine_floors=COSINE_FLOORS)
    ]
    for seed in SEEDS:
        trials += study.design_trials(base, SIZES, TOKENS[-1:], 1, prefix=f"seed{seed}-", seed=seed)
    return trials


if __name__ == "__main__":
    rows = study.read_rows(sys.argv[1])
    seed0 = [r for r in rows if not r.get("train.seed")]
    best = study.best_per_design(seed0)
    print(study.format_table(best, DESIGNS, epochs=study.epochs_per_tokens(seed0)))
    print(f"\nWSD design's compute / cosine design's: {study.compute_fraction(seed0):.0%}\n")
    longest = max(int(r["D"]) for r in rows)
    print(
        study.seed_table(
            [r for r in rows if int(r["D"]) == longest and float(r["lr_multiplier"]) == 1]
        )
    )
