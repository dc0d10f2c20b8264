"""Sweep files and the helpers that build their trials.

A sweep file is a Python file with two functions:

    def get_config():  # the base config, as in experiments/configs/*.py
        ...
    def get_sweep():   # the trials: a list of Trial(name, overrides, tags)
        return sweep.isoflop(get_config(), budgets=[1e17, 1e18], sizes=[...])
    PARALLEL = 2       # optional: trials run at once when --parallel is not given

Each trial is the base config plus `overrides` ({"model.d_model": 256, ...}), run as

    llm-jax train --config SWEEP.py --workdir DIR/<name> --config.model.d_model=256 ...

`tags` are values reported in the results table that are not config keys (the IsoFLOP
`budget`). The designs:

- `isoflop(base, budgets, sizes)`: Chinchilla approach 2. For each compute budget C and
  model size N, D = C / (FLOPs per token) tokens, the schedule length matched to D.
- `model_sizes(base, sizes, tokens)` (Kaplan L(N)), `data_sizes(base, tokens, size)` (L(D)),
  `nd_grid(base, sizes, tokens)` (the parametric L(N, D) fit).
- `ablation(grid, seeds=, lrs=)`: config fields x values x seeds, optionally x learning rates.
- `wsd_branches(base, sizes, token_counts, cooldown_fraction=)`: L(N, D) at every token
  count from one constant-LR run per size plus a short cooldown branched from each
  token count (Hägele et al. 2024), instead of one run per D.
- `finetune_each(trials, config_path, name=)`: a second stage after each trial, a
  fine-tune (e.g. experiments/configs/genre_classify.py) from its final params, run in
  DIR/<trial>/finetune/<name>; its metrics become columns of the trial's results row.

Model shapes come from a target parameter count (`shape_for_params`), and learning rate,
warmup and batch size from `SizeRules`; a sweep file passes its own rules to change them.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import re
import types
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import ml_collections

from llm_jax import config as config_lib
from llm_jax import flops as flops_lib
from llm_jax.errors import UserError
from llm_jax.scaling import results as results_io

_NAME_OK = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._=+-]*$")


@dataclasses.dataclass(frozen=True)
class Trial:
    """One run of a sweep: its directory name, config overrides and reported tags.

    `parent`: the trial this one starts from, with init.workdir set to the parent's
    directory; the runner starts it once the parent's checkpoint at `init.step` exists
    (init.step -1, the default: once the parent is done). `config`: the config file the
    trial runs ('' = the sweep file's get_config()), e.g. a fine-tuning task's.
    """

    name: str
    overrides: dict[str, Any]
    tags: dict[str, Any] = dataclasses.field(default_factory=dict)
    parent: str = ""
    config: str = ""


class SweepError(UserError, ValueError):
    """A sweep file is malformed; the message names the trial or function to fix."""


# --- configs of trials ----------------------------------------------------------------------


def apply_overrides(
    base: ml_collections.ConfigDict, overrides: Mapping[str, Any]
) -> ml_collections.ConfigDict:
    """A copy of `base` with dotted-key overrides applied; unknown keys raise SweepError."""
    try:
        return config_lib.apply_overrides(base, overrides)
    except config_lib.ConfigError as err:
        raise SweepError(f"override: {err}") from err


def format_value(value: Any) -> str:
    """A config value as the command line spells it (`--config.key=<this>`)."""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def override_args(overrides: Mapping[str, Any]) -> list[str]:
    """`--config.key=value` arguments for `llm-jax train`."""
    return [f"--config.{k}={format_value(v)}" for k, v in overrides.items()]


def _short(x: float) -> str:
    """1e+11 -> '1e11', 3.2e-3 -> '3.2e-3': compact numbers for trial names."""
    mantissa, exponent = f"{x:.2g}".split("e") if "e" in f"{x:.2g}" else (f"{x:.2g}", None)
    return mantissa if exponent is None else f"{mantissa}e{int(exponent)}"


# --- shapes and per-size hyperparameters ----------------------------------------------------


def _shape_config(
    base_model: Mapping[str, Any], d_model: int, n_layers: int, head_dim: int
) -> types.SimpleNamespace:
    # A plain namespace, not a ConfigDict: the shape search counts parameters thousands of
    # times, and the counting functions only read attributes.
    return types.SimpleNamespace(
        **{
            **base_model,
            "d_model": d_model,
            "n_layers": n_layers,
            "n_heads": d_model // head_dim,
            "n_kv_heads": 0,
            "head_dim": 0,
            "d_ff": 0,
        }
    )


def shape_for_params(
    target: float,
    base: ml_collections.ConfigDict,
    *,
    aspect: float = 64.0,
    head_dim: int = 64,
    tolerance: float = 0.05,
    count: str = "total",
    max_layers: int = 128,
) -> dict[str, Any]:
    """A model shape with about `target` parameters, from a fixed depth-to-width family.

    The rule: d_model is a multiple of `head_dim` (so n_heads = d_model / head_dim, plain
    multi-head attention), d_ff is the config's derived width (4 d_model, or 8/3 d_model for
    SwiGLU), and the family is d_model = aspect x n_layers. Among the shapes whose
    parameter count (`count`: "total" or "non_embedding", per llm_jax/flops.py) lies within
    `tolerance` of the target, the one nearest the family line (in log d_model / n_layers)
    is chosen; when none is that close (tiny targets, where widths are coarse), the shape
    nearest the target is. Vocabulary, norms, positions etc. come from `base.model`.

    Returns the `model.*` overrides plus `N` (the actual count), `N_total` and
    `N_non_embedding`.
    """
    base_model = base.model.to_dict()
    candidates = []
    for n_layers in range(1, max_layers + 1):

        def count_at(k: int, n_layers: int = n_layers) -> int:
            m = _shape_config(base_model, k * head_dim, n_layers, head_dim)
            return getattr(flops_lib.param_counts(m), count)

        if count_at(1) > target * (1 + tolerance) and candidates:
            break
        lo, hi = 1, 2
        while count_at(hi) < target:  # exponential then binary search: N grows with width
            lo, hi = hi, hi * 2
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if count_at(mid) < target else (lo, mid)
        for k in {lo, hi}:
            n = count_at(k)
            candidates.append(
                (
                    abs(math.log(n / target)),
                    abs(math.log(k * head_dim / n_layers / aspect)),
                    k,
                    n_layers,
                )
            )
    within = [c for c in candidates if c[0] <= math.log1p(tolerance)]
    _, _, k, n_layers = (
        min(within, key=lambda c: c[1]) if within else min(candidates, key=lambda c: c[0])
    )
    m = _shape_config(base_model, k * head_dim, n_layers, head_dim)
    counts = flops_lib.param_counts(m)
    return {
        "model.d_model": m.d_model,
        "model.n_layers": n_layers,
        "model.n_heads": m.n_heads,
        "model.n_kv_heads": 0,
        "model.head_dim": 0,
        "model.d_ff": 0,
        "N": getattr(counts, count),
        "N_total": counts.total,
        "N_non_embedding": counts.non_embedding,
    }


@dataclasses.dataclass(frozen=True)
class SizeRules:
    """Per-size hyperparameters; a sweep file passes its own instance to change any.

    - Peak learning rate: lr = lr_ref * (n_ref / N)^lr_exponent
      * (tokens_ref / D)^lr_tokens_exponent, capped at lr_max, N the non-embedding
      parameter count and D the run's tokens. The defaults follow GPT-3's table (Brown et
      al. 2020, table 2.1: 6e-4 at GPT-3 Small, N = 85M non-embedding, falling about as
      N^-1/3 to 175B; no D term). `lr_ref=None` keeps config.train.lr for every size.
    - Warmup: warmup_fraction of the run's steps, at least min_warmup.
    - Batch: batch_tokens_ref * (N / n_ref)^batch_exponent * (D / tokens_ref)^
      batch_tokens_exponent tokens, rounded to a power of two sequences (GPT-3's batch
      grows about as N^0.25). `batch_tokens_ref=0` keeps config.train.batch_size.
    - `from_fit` builds the lr and batch laws from a fitted hyperparameter law
      (llm_jax/scaling/hparams.py).
    - µP mode (`mup_base_width` > 0): every size trains under µP relative to that width
      (llm_jax/mup.py) at one learning rate, lr_ref (or config.train.lr when None), tuned
      once at the base width: µP's per-tensor multipliers do the width scaling (the
      ladder adds heads of a fixed size, so trials set mup_base_head_dim = head_dim). µP
      covers width only; the ladder's depth grows too, which µP does not correct.
    """

    lr_ref: float | None = 6e-4
    n_ref: float = 8.5e7
    lr_exponent: float = 1 / 3
    lr_max: float = 1e-2
    warmup_fraction: float = 0.05
    min_warmup: int = 10
    batch_tokens_ref: int = 0
    batch_exponent: float = 0.25
    tokens_ref: float = 1e9
    lr_tokens_exponent: float = 0.0
    batch_tokens_exponent: float = 0.0
    mup_base_width: int = 0

    def batch_size(
        self, config: ml_collections.ConfigDict, n_non_embedding: float, tokens: float | None = None
    ) -> int:
        """Global batch in sequences for a model of this size (trained on `tokens`)."""
        if not self.batch_tokens_ref:
            return config.train.batch_size
        batch_tokens = self.batch_tokens_ref * (n_non_embedding / self.n_ref) ** self.batch_exponent
        if tokens and self.batch_tokens_exponent:
            batch_tokens *= (tokens / self.tokens_ref) ** self.batch_tokens_exponent
        return 2 ** max(0, round(math.log2(batch_tokens / config.data.seq_len)))

    def lr(
        self, config: ml_collections.ConfigDict, n_non_embedding: float, tokens: float | None = None
    ) -> float:
        """Peak learning rate for a model of this size (trained on `tokens`)."""
        if self.lr_ref is None or self.mup_base_width:
            return config.train.lr if self.lr_ref is None else self.lr_ref
        lr = self.lr_ref * (self.n_ref / n_non_embedding) ** self.lr_exponent
        if tokens and self.lr_tokens_exponent:
            lr *= (self.tokens_ref / tokens) ** self.lr_tokens_exponent
        return min(self.lr_max, lr)

    def warmup(self, steps: int) -> int:
        """Warmup steps of a run of `steps` steps."""
        return min(steps, max(self.min_warmup, round(self.warmup_fraction * steps)))

    @classmethod
    def from_fit(
        cls,
        laws: Mapping[str, Any] | str | Path,
        *,
        seq_len: int | None = None,
        variant: str = "",
        **fields,
    ) -> SizeRules:
        """Rules whose lr (and batch, where a batch law was fitted) follow fitted laws.

        `laws`: what `llm-jax fit --law hparams` stores (fit.json's "hparams" entry, or the
        fit.json / sweep directory holding it). The laws' reference point (the geometric
        mean N and D of their optima) becomes n_ref and tokens_ref; a fitted law is not
        capped (lr_max = inf) unless `fields` say so. A batch law is fitted in sequences:
        `seq_len` converts it to tokens. `variant` picks the laws of one variant of the
        sweep (e.g. "[model.parametrization=sp]"). `fields` override any other field.
        """
        from llm_jax.scaling import hparams  # numpy-only; kept out of sweep-file imports

        if not isinstance(laws, Mapping):
            laws = hparams.load_laws(laws)
        lr_law = laws.get("train.lr" + variant)
        batch_law = laws.get("train.batch_size" + variant)
        if lr_law is None and batch_law is None:
            raise SweepError("SizeRules.from_fit: no train.lr or train.batch_size law to use")
        ref = (lr_law or batch_law)["reference"]
        out: dict[str, Any] = {"n_ref": ref["N"], "tokens_ref": ref["D"], "lr_max": math.inf}
        if lr_law:
            out.update(
                lr_ref=hparams.predict(lr_law, ref["N"], ref["D"]),
                lr_exponent=-lr_law["exponents"].get("N", 0.0),
                lr_tokens_exponent=-lr_law["exponents"].get("D", 0.0),
            )
        if batch_law:
            if not seq_len:
                raise SweepError("SizeRules.from_fit: a batch-size law needs seq_len=")
            out.update(
                batch_tokens_ref=round(seq_len * hparams.predict(batch_law, ref["N"], ref["D"])),
                batch_exponent=batch_law["exponents"].get("N", 0.0),
                batch_tokens_exponent=batch_law["exponents"].get("D", 0.0),
            )
        return cls(**{**out, **fields})


def sized_trial(
    base: ml_collections.ConfigDict,
    target_n: float,
    *,
    tokens: float | None = None,
    budget: float | None = None,
    rules: SizeRules = SizeRules(),
    flops: str = "detailed",
    evals: int = 4,
    name_prefix: str = "",
    **shape_kwargs,
) -> Trial:
    """One trial of a size sweep: the shape for `target_n`, trained on `tokens` tokens or on
    the tokens a FLOP `budget` buys (D = budget / flops_per_token[`flops`]).

    The steps (hence the schedule length) follow D; warmup, lr and batch follow `rules`;
    evaluation runs `evals` times along the run (the last at the end).
    """
    shape = shape_for_params(target_n, base, **shape_kwargs)
    overrides = {k: v for k, v in shape.items() if k.startswith("model.")}
    config = apply_overrides(base, overrides)
    if budget is not None:
        tokens = budget / getattr(
            flops_lib.flops_per_token(config.model, config.data.seq_len), flops
        )
    batch = rules.batch_size(config, shape["N_non_embedding"], tokens)
    tokens_per_step = batch * config.data.seq_len
    steps = max(1, round(tokens / tokens_per_step))
    overrides.update(
        {
            "train.batch_size": batch,
            "train.tokens": steps * tokens_per_step,
            "train.lr": rules.lr(config, shape["N_non_embedding"], steps * tokens_per_step),
            "train.warmup_steps": rules.warmup(steps),
            "train.eval_every": math.ceil(steps / evals),
        }
    )
    d, n_layers = overrides["model.d_model"], overrides["model.n_layers"]
    if rules.mup_base_width:
        overrides.update(  # the ladder adds heads of a fixed size: the base's are the same
            {
                "model.parametrization": "mup",
                "model.mup_base_width": rules.mup_base_width,
                "model.mup_base_head_dim": d // overrides["model.n_heads"],
            }
        )
    tags = {"target_N": target_n}
    name = f"{name_prefix}d{d}-L{n_layers}"
    if budget is not None:
        tags["budget"] = budget
        name = f"{name_prefix}C{_short(budget)}-d{d}-L{n_layers}"
    elif tokens is not None:
        name += f"-D{_short(steps * tokens_per_step)}"
    return Trial(name, overrides, tags)


# --- designs ----------------------------------------------------------------------------------


def isoflop(
    base: ml_collections.ConfigDict,
    budgets: Sequence[float],
    sizes: Sequence[float] | Mapping[float, Sequence[float]],
    **kwargs,
) -> list[Trial]:
    """IsoFLOP profiles: every budget C x every size N (or `sizes[C]` when a mapping)."""
    trials = []
    for budget in budgets:
        per_budget = sizes[budget] if isinstance(sizes, Mapping) else sizes
        trials += [sized_trial(base, n, budget=budget, **kwargs) for n in per_budget]
    return _unique(trials)


def model_sizes(
    base: ml_collections.ConfigDict, sizes: Sequence[float], tokens: float, **kwargs
) -> list[Trial]:
    """Kaplan L(N): each size trained on the same number of tokens."""
    return _unique([sized_trial(base, n, tokens=tokens, **kwargs) for n in sizes])


def data_sizes(
    base: ml_collections.ConfigDict, tokens: Sequence[float], size: float, **kwargs
) -> list[Trial]:
    """Kaplan L(D): one size trained on each number of tokens (each with its own schedule)."""
    return _unique([sized_trial(base, size, tokens=t, **kwargs) for t in tokens])


def nd_grid(
    base: ml_collections.ConfigDict, sizes: Sequence[float], tokens: Sequence[float], **kwargs
) -> list[Trial]:
    """Every size x every token count: the points of the parametric L(N, D) fit."""
    return _unique([sized_trial(base, n, tokens=t, **kwargs) for n in sizes for t in tokens])


def ablation(
    grid: Mapping[str, Sequence[Any]],
    *,
    seeds: Sequence[int] = (0,),
    lrs: Sequence[float] | None = None,
    prefix: str = "",
    overrides: Mapping[str, Any] | None = None,
) -> list[Trial]:
    """Every combination of the `grid` values (config key -> values) x seeds (x lrs).

    `overrides` are applied to every trial (e.g. a model size); `prefix` starts each name.
    """
    axes = dict(grid)
    if lrs is not None:
        axes["train.lr"] = lrs
    axes["train.seed"] = seeds
    trials = []
    for values in itertools.product(*axes.values()):
        swept = dict(zip(axes, values, strict=True))
        parts = [
            f"{k.split('.')[-1]}={_short(v) if isinstance(v, float) else v}"
            for k, v in swept.items()
        ]
        trials.append(Trial(prefix + "-".join(parts), {**(overrides or {}), **swept}))
    return _unique(trials)


def wsd_branches(
    base: ml_collections.ConfigDict,
    sizes: Sequence[float],
    token_counts: Sequence[float],
    *,
    cooldown_fraction: float = 0.2,
    decay: str = "linear",
    rules: SizeRules = SizeRules(),
    **shape_kwargs,
) -> list[Trial]:
    """Per size, a constant-LR parent run and one cooldown branch per token count.

    The parent (`<shape>-wsd`) warms up as the shortest run would, then holds its
    learning rate to the largest token count, keeping a checkpoint at every token count
    (`checkpoint.keep_every`, the steps' greatest common divisor; token counts are rounded
    to a grid of an eighth of the shortest run's steps). The branch at token
    count D_k (`<shape>-wsd-D<D_k>`) restores the parent's whole train state there
    (`init.state`: params, optimizer, step, data position) and decays the rate linearly
    to zero over `cooldown_fraction` x the steps so far (the `wsd` schedule, `decay`
    linear or 1-sqrt), so it ends
    at D_k (1 + cooldown_fraction) tokens. Its tags record the branch point; its C in
    results.csv counts the shared prefix too. Parents are tagged wsd_role=parent:
    their constant-LR losses are not cooled down, and fits leave them out.
    """
    if not 0 < cooldown_fraction <= 1:
        raise SweepError(f"cooldown_fraction must be in (0, 1] (got {cooldown_fraction})")
    trials = []
    for target_n in sizes:
        shape = sized_trial(base, target_n, tokens=min(token_counts), rules=rules, **shape_kwargs)
        tokens_per_step = shape.overrides["train.batch_size"] * base.data.seq_len
        # Branch points on a grid of an eighth of the shortest run, so the parent keeps
        # a checkpoint every `grid` steps rather than at every step.
        grid = max(1, round(min(token_counts) / tokens_per_step) // 8)
        points = sorted({max(1, round(t / tokens_per_step / grid)) * grid for t in token_counts})
        shared = {
            k: v
            for k, v in shape.overrides.items()
            if k.startswith("model.") or k in ("train.batch_size", "train.warmup_steps")
        }
        n_non_embedding = flops_lib.param_counts(apply_overrides(base, shared).model).non_embedding
        shared["train.lr"] = rules.lr(base, n_non_embedding, points[-1] * tokens_per_step)
        parent = f"{shape.name.rsplit('-D', 1)[0]}-wsd"
        keep = math.gcd(*points)
        trials.append(
            Trial(
                parent,
                {
                    **shared,
                    "train.tokens": points[-1] * tokens_per_step,
                    "train.schedule": "constant",
                    "train.eval_every": points[0],
                    "checkpoint.every": keep,
                    "checkpoint.keep_every": keep,
                },
                {"target_N": target_n, "wsd_role": "parent"},
            )
        )
        for step in points:
            cooldown = max(1, round(cooldown_fraction * step))
            total = step + cooldown
            trials.append(
                Trial(
                    f"{parent}-D{_short(total * tokens_per_step)}",
                    {
                        **shared,
                        "train.tokens": total * tokens_per_step,
                        "train.schedule": "wsd",
                        "train.decay_fraction": cooldown / total,
                        "train.decay_shape": decay,
                        "train.min_lr_ratio": 0.0,
                        "train.eval_every": total,
                        "init.step": step,
                        "init.state": True,
                    },
                    {
                        "target_N": target_n,
                        "wsd_role": "branch",
                        "branch_step": step,
                        "branch_tokens": step * tokens_per_step,
                    },
                    parent=parent,
                )
            )
    return _unique(trials)


def finetune_each(
    trials: Sequence[Trial],
    config_path: str | Path,
    *,
    name: str = "ft",
    overrides: Mapping[str, Any] | None = None,
) -> list[Trial]:
    """`trials`, then a fine-tune of each: the second stage of a downstream-scaling sweep.

    The fine-tune of trial T is the trial `T/finetune/<name>`: `config_path`'s
    get_config() plus `overrides`, started from T's final params (`parent` = T, so the
    runner sets init.workdir to T's directory and starts it once T is done), run in
    DIR/T/finetune/<name>. Its model shape and tokenizer come from T (model keys the
    fine-tuning config leaves at their default, as `llm-jax train` does). Its val/...
    metrics become columns `ft/<name>/val/...` of T's row in results.csv. Trials that are
    themselves fine-tunes get none (call it again with another `name` for a second task),
    nor do WSD parents (`wsd_role` parent: constant-LR runs stopped mid-schedule, whose
    cooldown branches are the points of the study).
    """
    if not _NAME_OK.match(name):
        raise SweepError(f"finetune_each name {name!r} must be letters, digits and ._=+-")
    stages = [
        Trial(
            finetune_name(t.name, name),
            dict(overrides or {}),
            {"stage": "finetune"},
            parent=t.name,
            config=str(config_path),
        )
        for t in trials
        if not is_finetune(t) and t.tags.get("wsd_role") != "parent"
    ]
    return _unique([*trials, *stages])


def finetune_name(trial: str, name: str) -> str:
    """The trial name (a path under the sweep directory) of `trial`'s fine-tune `name`."""
    return f"{trial}/{results_io.FINETUNE_DIR}/{name}"


def is_finetune(trial: Trial) -> bool:
    """Whether a trial is a second stage (`finetune_each`), run inside its parent's dir."""
    return f"/{results_io.FINETUNE_DIR}/" in trial.name


def _unique(trials: list[Trial]) -> list[Trial]:
    seen: dict[str, Trial] = {}
    for t in trials:
        if t.name in seen and seen[t.name].overrides != t.overrides:
            raise SweepError(
                f"two different trials are both named {t.name!r}; give one a name_prefix"
            )
        seen[t.name] = t
    return list(seen.values())


# --- loading a sweep file -------------------------------------------------------------------


def plan(config: ml_collections.ConfigDict) -> dict[str, float]:
    """What a trial will cost: N (total, non-embedding), steps, tokens, C (6ND and detailed)."""
    counts = flops_lib.param_counts(config.model)
    steps = config_lib.train_steps(config)
    tokens = steps * config.train.batch_size * config.data.seq_len
    per_token = flops_lib.flops_per_token(config.model, config.data.seq_len).detailed
    return {
        "N": counts.total,
        "N_non_embedding": counts.non_embedding,
        "steps": steps,
        "tokens": tokens,
        "C": flops_lib.training_flops(counts.total, tokens),
        "C_detailed": float(per_token * tokens),
    }


class LoadedSweep(NamedTuple):
    """A sweep file's base config, its validated trials, and its `PARALLEL` (default 1):
    the trials to run at once when `--parallel` is not given."""

    config: ml_collections.ConfigDict
    trials: list[Trial]
    parallel: int


def load_sweep(path: str | Path) -> LoadedSweep:
    """Import a sweep file; return its base config, validated trials and parallelism."""
    try:  # a sweep file defines get_config() (the base) and get_sweep() (the trials)
        module = config_lib.load_python_file(path, ("get_config", "get_sweep"), "sweep file")
    except config_lib.ConfigError as err:
        raise SweepError(str(err)) from err
    base = module.get_config()
    trials = [t if isinstance(t, Trial) else Trial(**t) for t in module.get_sweep()]
    if not trials:
        raise SweepError(f"{path}: get_sweep() returned no trials")
    _unique(trials)
    loaded = LoadedSweep(base, trials, int(getattr(module, "PARALLEL", 1)))
    for t in trials:
        # A fine-tune's name is a path: DIR/<trial>/finetune/<name>.
        if not all(_NAME_OK.match(part) for part in t.name.split("/")):
            raise SweepError(
                f"trial name {t.name!r} must be letters, digits and ._=+- (it names a directory)"
            )
        _ancestors(loaded, t)
        try:
            config_lib.validate(trial_config(loaded, t))
        except config_lib.ConfigError as err:
            raise SweepError(f"trial {t.name}: {err}") from err
    return loaded


def _ancestors(loaded: LoadedSweep, trial: Trial) -> list[Trial]:
    """The chain of parents of `trial`, nearest first; SweepError if one is missing or
    the chain loops."""
    by_name = {t.name: t for t in loaded.trials}
    chain, t = [], trial
    while t.parent:
        if t.parent not in by_name or by_name[t.parent] in (trial, *chain):
            raise SweepError(f"trial {t.name}: its parent {t.parent!r} is not another trial")
        t = by_name[t.parent]
        chain.append(t)
    return chain


def trial_config(loaded: LoadedSweep, trial: Trial) -> ml_collections.ConfigDict:
    """The config `trial` runs, as far as it is known before any trial has run: its config
    file (the sweep's base when it names none) plus its overrides; with a parent, init.workdir
    (the parent's name; the runner passes its directory) and the parent's model keys where
    this config leaves them at their default, as `llm-jax train` takes them from the
    parent's workdir (llm_jax/finetune.py)."""
    if trial.config:
        try:
            base = config_lib.load_config_file(trial.config)
        except config_lib.ConfigError as err:
            raise SweepError(f"trial {trial.name}: {err}") from err
    else:
        base = loaded.config
    config = apply_overrides(base, trial.overrides)
    if trial.parent:
        from llm_jax import finetune  # imports JAX: only sweeps with parents pay for it

        parent = _ancestors(loaded, trial)[0]
        config.init.workdir = trial.parent
        finetune.inherit_model(config, trial_config(loaded, parent).model)
    return config
