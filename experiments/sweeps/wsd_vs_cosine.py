"""WSD branches against one cosine run per token count, each at its own best learning rate.

Two model sizes x three token counts on the embedded Shakespeare corpus, two designs,
each at every learning rate of a small grid (multiples of `sweep.SizeRules`' rate for the
size): one cosine run per (size, tokens), and `sweep.wsd_branches` (one constant-LR run
per size, a 20% linear cooldown branched at each token count, ending at the cosine runs'
token counts). Every run warms up over the same 10 steps and decays to zero, and all are
evaluated on the same validation batches. One shared rate would favour whichever design
it suits (Hägele et al. 2024 compare each schedule at its own best rate), so the table
compares each design's best loss over the grid:

    llm-jax sweep experiments/sweeps/wsd_vs_cosine.py --workdir runs/wsd_vs_cosine
    python experiments/sweeps/wsd_vs_cosine.py runs/wsd_vs_cosine   # the table
"""

import csv
import dataclasses
import sys
from collections import defaultdict

from llm_jax.config import default_config
from llm_jax.scaling import sweep

SIZES = [3e4, 1.2e5]
# Branch points at 96, 192 and 384 steps of 16 x 64 tokens: the constant-LR run keeps a
# checkpoint every 96 steps (their common divisor), not every few.
TOKENS = [96 * 1024, 192 * 1024, 384 * 1024]
COOLDOWN = 0.2
LR_MULTIPLIERS = [0.25, 0.5, 1, 2]  # x the SizeRules rate: 1e-2 and 6e-3 at these sizes
WARMUP = 10
SHAPE = dict(aspect=32, head_dim=16, tolerance=0.1)
DESIGNS = ("cosine", "wsd")
PARALLEL = 2


def get_config():
    """The demo's base: a Llama-style block on Shakespeare, 16 x 64-token batches."""
    config = default_config()
    config.model.update(vocab_size=512, max_seq_len=64, tie_embeddings=True, scan_layers=False)
    config.data.seq_len = 64
    config.data.num_val_batches = 4
    # Both designs decay to zero (WSD cooldowns always do), so only the schedule's shape
    # differs.
    config.train.update(batch_size=16, log_every=10, warmup_steps=WARMUP, min_lr_ratio=0.0)
    config.checkpoint.every = 250
    return config


def _rules(multiplier: float) -> sweep.SizeRules:
    """SizeRules' rate x `multiplier`, and the same fixed warmup for every run."""
    rules = sweep.SizeRules(warmup_fraction=0.0, min_warmup=WARMUP)
    return dataclasses.replace(
        rules, lr_ref=rules.lr_ref * multiplier, lr_max=rules.lr_max * multiplier
    )


def _tagged(trials, multiplier):
    """Trials tagged with their rate multiplier."""
    return [dataclasses.replace(t, tags={**t.tags, "lr_multiplier": multiplier}) for t in trials]


def get_sweep():
    """Per rate: the WSD parents and their cooldowns, then cosine runs at the branches' ends."""
    base = get_config()
    trials = []
    for m in LR_MULTIPLIERS:
        kwargs = dict(rules=_rules(m), name_prefix=f"lr{m}x-", **SHAPE)
        wsd = sweep.wsd_branches(base, SIZES, TOKENS, cooldown_fraction=COOLDOWN, **kwargs)
        ends = sorted({t.overrides["train.tokens"] for t in wsd if t.parent})
        cosine = sweep.nd_grid(base, SIZES, ends, **{**kwargs, "name_prefix": f"lr{m}x-cosine-"})
        trials += _tagged(wsd, m) + _tagged(cosine, m)
    return trials


def best_per_design(rows):
    """{(N, D): {design: (loss, lr)}}: each design's lowest final loss over the rate grid.

    `rows`: results.csv rows (dicts of strings); constant-LR parents and unfinished trials
    are left out.
    """
    best = defaultdict(dict)
    for r in rows:
        if r["status"] != "done" or r.get("wsd_role") == "parent":
            continue
        key, loss, lr = (int(r["N"]), int(r["D"])), float(r["loss"]), float(r["train.lr"])
        design = "wsd" if r.get("wsd_role") == "branch" else "cosine"
        if design not in best[key] or loss < best[key][design][0]:
            best[key][design] = (loss, lr)
    return dict(best)


def format_table(best):
    """A markdown table: each design's best loss (and rate) per (N, D), WSD vs cosine in %."""
    head = "| N | D (tokens) | " + " | ".join(f"{d}: loss (lr)" for d in DESIGNS)
    lines = [head + " | WSD vs cosine |", "|---" * (len(DESIGNS) + 3) + "|"]
    for (n, d), by_design in sorted(best.items()):
        cells = [f"{by_design[k][0]:.3f} ({by_design[k][1]:.2g})" for k in DESIGNS]
        cosine = by_design["cosine"][0]
        diffs = [f"{100 * (by_design[k][0] / cosine - 1):+.1f}%" for k in DESIGNS[1:]]
        lines.append(f"| {n / 1e3:.1f}K | {d / 1e3:.0f}K | " + " | ".join(cells + diffs) + " |")
    return "\n".join(lines)


def compute_fraction(rows):
    """The WSD design's training FLOPs over the cosine design's, at one rate.

    A branch's C counts its parent's prefix, which the parent already paid for: the WSD
    design costs its parents' C plus each branch's C beyond its branch point.
    """
    wsd = cosine = 0.0
    for r in rows:
        c = float(r["C"])
        if r.get("wsd_role") == "parent":
            wsd += c
        elif r.get("wsd_role") == "branch":
            wsd += c * (1 - float(r["branch_tokens"]) / float(r["D"]))
        else:
            cosine += c
    return wsd / cosine


if __name__ == "__main__":
    with open(f"{sys.argv[1]}/results.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["status"] == "done"]
    print(format_table(best_per_design(rows)))
    print(f"\nWSD design's compute / cosine design's: {compute_fraction(rows):.0%}")
