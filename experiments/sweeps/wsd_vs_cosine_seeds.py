"""Two more seeds (init and data order) of `wsd_vs_cosine.py`'s best cells: an error bar.

Each design at each (size, tokens) reruns at the rate that was best for it in the
seed-0 grid (`BEST_MULTIPLIER`), with seeds 1 and 2; a WSD branch reruns with its own
seed's constant-LR parent. The table puts seed 0 (the grid's directory) beside them:

    llm-jax sweep experiments/sweeps/wsd_vs_cosine_seeds.py --workdir runs/wsd_vs_cosine_seeds
    python experiments/sweeps/wsd_vs_cosine_seeds.py runs/wsd_vs_cosine_seeds runs/wsd_vs_cosine

Seed 0's entries were picked as the lowest of four rates, so they lean low (for both
designs alike); seeds 1 and 2 were not.
"""

import sys
from pathlib import Path

from llm_jax.config import load_python_file

study = load_python_file(Path(__file__).with_name("wsd_vs_cosine.py"), ("get_sweep",), "sweep")

SEEDS = (1, 2)
# The best rate multiplier of seed 0 (runs/wsd_vs_cosine) per (size, design), at each of
# the study's three token counts in turn.
BEST_MULTIPLIER = {
    (3e4, "cosine"): (2, 1, 1),
    (3e4, "wsd"): (2, 0.5, 1),
    (1.2e5, "cosine"): (1, 0.5, 0.5),
    (1.2e5, "wsd"): (0.5, 0.5, 0.5),
}
PARALLEL = 1
get_config = study.get_config


def _is_best(trial, size, multiplier, ends) -> bool:
    """Whether `trial` (a cosine run or WSD branch) is its design's best-rate run there."""
    design = "wsd" if trial.parent else "cosine"
    index = ends.index(trial.overrides["train.tokens"])
    return BEST_MULTIPLIER[size, design][index] == multiplier


def get_sweep():
    """Per seed and size: the best-rate cosine runs, the best-rate branches and their
    parents."""
    base = get_config()
    trials = []
    for seed in SEEDS:
        for size in study.SIZES:
            multipliers = sorted(
                {m for (s, _), ms in BEST_MULTIPLIER.items() if s == size for m in ms}
            )
            for m in multipliers:
                grid = study.design_trials(
                    base, [size], study.TOKENS, m, prefix=f"seed{seed}-", seed=seed
                )
                ends = sorted({t.overrides["train.tokens"] for t in grid if t.parent})
                kept = [
                    t
                    for t in grid
                    if t.tags.get("wsd_role") != "parent" and _is_best(t, size, m, ends)
                ]
                parents = {t.parent for t in kept}
                trials += [t for t in grid if t.name in parents] + kept
    return trials


def best_rate_rows(rows):
    """The rows of each design's best-rate runs (seed 0's grid holds every rate)."""
    ends = sorted({int(r["D"]) for r in rows if study.design_of(r)})
    return [
        r
        for r in rows
        if study.design_of(r) in ("cosine", "wsd")
        and float(r["lr_multiplier"])
        == BEST_MULTIPLIER[float(r["target_N"]), study.design_of(r)][ends.index(int(r["D"]))]
    ]


if __name__ == "__main__":
    print(study.seed_table(best_rate_rows(study.read_rows(*sys.argv[1:]))))
