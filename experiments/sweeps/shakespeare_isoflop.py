"""A small IsoFLOP study on the embedded Shakespeare corpus, its points WSD cooldowns.

Five compute budgets (1e11 to 1.6e12 FLOPs, doubling) x five to seven model sizes (2
layers, d_model 8 to 80, 5.7K to 195K parameters). Per size, one run at a constant
learning rate keeps a checkpoint where each budget's cooldown starts, and a 20% linear
cooldown branched from there ends on the tokens that budget buys at that size, to within
2.5% (`isoflop_branches`, built on `sweep.wsd_branches`). A size's runs thus cost about
its largest budget alone, so the study affords more budgets and sizes than one cosine run
per point would, and every point is a finished schedule: approach 1 reads the cooldown
ends, approach 2 fits each budget's parabola through them and approach 3 fits all of them
(its cost on 2 CPU cores is measured in the README):

    llm-jax sweep experiments/sweeps/shakespeare_isoflop.py --workdir runs/shakespeare_isoflop
"""

import dataclasses

from llm_jax import flops as flops_lib
from llm_jax.config import default_config
from llm_jax.scaling import sweep

BUDGETS = [1e11, 2e11, 4e11, 8e11, 1.6e12]  # training FLOPs, as the trainer counts them
# d_model of the sizes trained at each budget: its optimum moves up with the budget, and
# each profile spans about 3x on either side of it, finer near the optimum.
WIDTHS = {
    1e11: [8, 16, 24, 32, 40],
    2e11: [8, 16, 24, 32, 40, 48],
    4e11: [16, 24, 32, 40, 48, 64],
    8e11: [24, 32, 40, 48, 56, 64, 80],
    1.6e12: [32, 40, 48, 56, 64, 80],
}
N_LAYERS, HEAD_DIM = 2, 8  # one depth for every size: width alone sets N
COOLDOWN = 0.2
WARMUP = 30  # steps, the same for every size (every run sees the same 16 x 64-token batches)
# lr ∝ N^-1/2 (non-embedding N): the best WSD rates wsd_vs_cosine.py measured (1e-2 at
# 16K, 3e-3 at 87K non-embedding parameters, 1 layer) fall about that fast; 1.5e-2 (the
# cap) at the smallest size here, 2.6e-3 at the largest.
RULES = sweep.SizeRules(
    lr_ref=6e-3, n_ref=3e4, lr_exponent=0.5, lr_max=1.5e-2, warmup_fraction=0.0, min_warmup=WARMUP
)
# The shape search returns the 2-layer shape of each width's exact parameter count.
SHAPE = dict(head_dim=HEAD_DIM, max_layers=N_LAYERS, aspect=1, tolerance=0.01)
PARALLEL = 2  # two single-threaded trials at once on 2 cores


def get_config():
    """The base: a Llama-style block on Shakespeare, 16 x 64-token batches."""
    config = default_config()
    # A GELU MLP of 4 d_model: SwiGLU's width is rounded up to a multiple of 64, which at
    # these widths spaces the sizes unevenly.
    config.model.update(vocab_size=512, max_seq_len=64, tie_embeddings=True, mlp="gelu")
    config.model.scan_layers = False  # 2 layers: unrolled trials finish ~15% sooner on a CPU
    config.data.seq_len = 64
    config.data.num_val_batches = 16
    config.train.update(batch_size=16, log_every=10, warmup_steps=WARMUP)
    config.checkpoint.every = 1000
    return config


def size_of(base, d_model: int) -> int:
    """Total parameters of the N_LAYERS-layer model of width `d_model`."""
    shape = {"model.d_model": d_model, "model.n_layers": N_LAYERS}
    model = sweep.apply_overrides(base, {**shape, "model.n_heads": d_model // HEAD_DIM}).model
    return flops_lib.param_counts(model).total


def isoflop_branches(base, budgets, sizes, *, cooldown_fraction, rules, **shape):
    """IsoFLOP points as WSD cooldowns: per size, one constant-LR run and a branch per budget.

    `sizes[C]`: the target parameter counts trained at budget C; a size's budgets must be
    whole multiples of its smallest (e.g. doublings). Its branch for budget C starts at
    step p_C = p_0 C / C_0, p_0 a multiple of 8 (so `wsd_branches` rounds none, and the
    parent keeps a checkpoint every p_0 steps), and ends (1 + cooldown_fraction) p_C steps
    in, on the tokens C buys at that size to within p_0's rounding (4 / p_0). Each branch
    carries its `budget` tag; the constant-LR parents carry none, and the fits leave them
    out.
    """
    trials = []
    for n in sorted({n for ns in sizes.values() for n in ns}):
        mine = sorted(c for c in budgets if n in sizes[c])
        if any(c % mine[0] for c in mine):
            raise sweep.SweepError(f"size {n:.3g}: budgets {mine} are not multiples of the first")
        first = sweep.sized_trial(base, n, budget=mine[0], rules=rules, **shape).overrides
        tokens_per_step = first["train.batch_size"] * base.data.seq_len
        steps = first["train.tokens"] / tokens_per_step / (1 + cooldown_fraction)
        p0 = 8 * max(1, round(steps / 8))
        points = [p0 * round(c / mine[0]) * tokens_per_step for c in mine]
        branched = sweep.wsd_branches(
            base, [n], points, cooldown_fraction=cooldown_fraction, rules=rules, **shape
        )
        by_step = {p // tokens_per_step: c for p, c in zip(points, mine, strict=True)}
        trials += [
            dataclasses.replace(t, tags={**t.tags, "budget": by_step[t.tags["branch_step"]]})
            if t.parent
            else t
            for t in branched
        ]
    return trials


def get_sweep():
    """Every budget x its sizes, as cooldowns branched from one run per size."""
    base = get_config()
    sizes = {c: [size_of(base, d) for d in widths] for c, widths in WIDTHS.items()}
    return isoflop_branches(base, BUDGETS, sizes, cooldown_fraction=COOLDOWN, rules=RULES, **SHAPE)
