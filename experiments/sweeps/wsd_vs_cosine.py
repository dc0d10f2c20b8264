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

`wsd_vs_cosine_long.py` (8x longer runs) and `wsd_vs_cosine_seeds.py` (two more seeds of
the best cells) reuse this file's base config, trials and table.
"""

import csv
import dataclasses
import statistics
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


def design_trials(base, sizes, tokens, multiplier, *, prefix="", cosine_floors=(0.0,), seed=0):
    """At one rate (`multiplier` x SizeRules'): per size a WSD parent and its cooldowns
    branched at `tokens`, and per floor (`min_lr_ratio`, 0: decay to zero) a cosine run
    ending at each cooldown's end; tagged with the multiplier (and seed, when not 0)."""
    kwargs = dict(rules=_rules(multiplier), name_prefix=f"{prefix}lr{multiplier}x-", **SHAPE)
    trials = sweep.wsd_branches(base, sizes, tokens, cooldown_fraction=COOLDOWN, **kwargs)
    ends = sorted({t.overrides["train.tokens"] for t in trials if t.parent})
    for floor in cosine_floors:
        name = f"{prefix}lr{multiplier}x-cosine-" + (f"min{floor}-" if floor else "")
        cosine = sweep.nd_grid(base, sizes, ends, **{**kwargs, "name_prefix": name})
        floor_key = {"train.min_lr_ratio": floor} if floor else {}
        trials += [dataclasses.replace(t, overrides={**t.overrides, **floor_key}) for t in cosine]
    tags = {"lr_multiplier": multiplier}
    seed_key = {"train.seed": seed} if seed else {}
    return [
        dataclasses.replace(t, overrides={**t.overrides, **seed_key}, tags={**t.tags, **tags})
        for t in trials
    ]


def get_sweep():
    """Per rate: the WSD parents and their cooldowns, then cosine runs at the branches' ends."""
    base = get_config()
    return [t for m in LR_MULTIPLIERS for t in design_trials(base, SIZES, TOKENS, m)]


def design_of(row) -> str | None:
    """A results.csv row's design: 'wsd' (a cooldown branch), 'cosine' (decaying to zero),
    'cosine-<floor>' (to floor x the peak), or None for a constant-LR parent."""
    role, floor = row.get("wsd_role"), row.get("train.min_lr_ratio") or "0"
    if role == "parent":
        return None
    if role == "branch":
        return "wsd"
    return "cosine" if float(floor) == 0 else f"cosine-{float(floor):g}"


def read_rows(*workdirs):
    """The finished trials' rows of each sweep directory's results.csv."""
    rows = []
    for workdir in workdirs:
        with open(f"{workdir}/results.csv") as f:
            rows += [r for r in csv.DictReader(f) if r["status"] == "done"]
    return rows


def best_per_design(rows):
    """{(N, D): {design: (loss, lr)}}: each design's lowest final loss over the rate grid.

    `rows`: results.csv rows (dicts of strings); constant-LR parents and unfinished trials
    are left out.
    """
    best = defaultdict(dict)
    for r in rows:
        design = design_of(r)
        if design is None or r["status"] != "done":
            continue
        key, loss, lr = (int(r["N"]), int(r["D"])), float(r["loss"]), float(r["train.lr"])
        if design not in best[key] or loss < best[key][design][0]:
            best[key][design] = (loss, lr)
    return dict(best)


def format_table(best, designs=DESIGNS, epochs=None):
    """A markdown table: each design's best loss (and rate) per (N, D), the others vs
    cosine in %, '-' where a design did not run; with `epochs` ({D: passes over the
    training split}), an epochs column."""
    head = "| N | D (tokens) | " + ("epochs | " if epochs else "")
    head += " | ".join(f"{d}: loss (lr)" for d in designs)
    head += " | " + " | ".join(f"{d} vs cosine" for d in designs[1:]) + " |"
    columns = 2 + bool(epochs) + 2 * len(designs) - 1
    lines = [head, "|---" * columns + "|"]
    for (n, d), by_design in sorted(best.items()):
        cells = [f"{n / 1e3:.1f}K", f"{d / 1e3:.0f}K"] + ([f"{epochs[d]:.2f}"] if epochs else [])
        cells += [
            f"{by_design[k][0]:.3f} ({by_design[k][1]:.2g})" if k in by_design else "-"
            for k in designs
        ]
        cosine = by_design["cosine"][0]
        cells += [
            f"{100 * (by_design[k][0] / cosine - 1):+.1f}%" if k in by_design else "-"
            for k in designs[1:]
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def epochs_per_tokens(rows):
    """{D: epochs}: the passes over the training split that a run of D tokens makes."""
    return {int(r["D"]): float(r["epochs"]) for r in rows}


def seed_table(rows, designs=DESIGNS):
    """A markdown table: per (N, D), each design's final loss for every seed at one rate,
    their mean ± sd, and the gap (WSD - cosine) per seed as mean ± sd, in nats.

    `rows`: one finished run per (N, D, design, seed)."""
    losses = defaultdict(dict)  # (N, D, design) -> {seed: loss}
    for r in rows:
        design = design_of(r)
        if design in designs:
            seed = int(r.get("train.seed") or 0)
            losses[int(r["N"]), int(r["D"]), design][seed] = float(r["loss"])
    lines = [
        "| N | D (tokens) | "
        + " | ".join(f"{d}: loss per seed, mean ± sd" for d in designs)
        + " | WSD - cosine (nats), mean ± sd |",
        "|---" * (3 + len(designs)) + "|",
    ]
    for n, d in sorted({(n, d) for n, d, _ in losses}):
        cells = [f"{n / 1e3:.1f}K", f"{d / 1e3:.0f}K"]
        for design in designs:
            values = [v for _, v in sorted(losses[n, d, design].items())]
            cells.append(" / ".join(f"{v:.3f}" for v in values) + f", {_mean_sd(values)}")
        wsd, cosine = losses[n, d, "wsd"], losses[n, d, "cosine"]
        gaps = [wsd[s] - cosine[s] for s in sorted(wsd.keys() & cosine.keys())]
        lines.append("| " + " | ".join(cells + [_mean_sd(gaps)]) + " |")
    return "\n".join(lines)


def _mean_sd(values) -> str:
    """'mean ± sd' of `values` (sd over them, n - 1 in the denominator)."""
    sd = statistics.stdev(values) if len(values) > 1 else float("nan")
    return f"{statistics.mean(values):.3f} ± {sd:.3f}"


def compute_fraction(rows):
    """The WSD design's training FLOPs over the cosine design's (decaying to zero).

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
        elif design_of(r) == "cosine":
            cosine += c
    return wsd / cosine


if __name__ == "__main__":
    rows = read_rows(sys.argv[1])
    print(format_table(best_per_design(rows)))
    print(f"\nWSD design's compute / cosine design's: {compute_fraction(rows):.0%}")
