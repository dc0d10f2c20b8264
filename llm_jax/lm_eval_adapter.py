"""lm-evaluation-harness on an llm_jax workdir: the `llm_jax` model type (the `eval` extra).

    llm-jax lm-eval --model llm_jax --model_args workdir=runs/gpt2 --tasks hellaswag
    python -m llm_jax.lm_eval_adapter --model llm_jax ...   (the same)

lm_eval finds models only in its own registry, with no plugin hook (no entry points, no
`module:Class` for --model), so these commands register `llm_jax` and then run lm_eval's
command line unchanged (every lm_eval flag works). From Python,
`import llm_jax.lm_eval_adapter` before
`lm_eval.simple_evaluate(model="llm_jax", model_args="workdir=...")`.

model_args: workdir (required), step, fsdp and tensor (mesh sizes; data parallel over
the rest), max_gen_toks (default 256), max_length (scored tokens, default as
`llm-jax eval`); lm_eval's --batch_size sets the rows per batch. Scoring goes through
`llm_jax.evaluate.Scorer`, the same code as `llm-jax eval`; generation is greedy
through `llm_jax.sample`.
"""

from __future__ import annotations

import sys

import ml_collections
from lm_eval.api.model import LM
from lm_eval.api.registry import register_model

from llm_jax import evaluate, sample
from llm_jax import sharding as sharding_lib
from llm_jax import workdir as workdir_lib
from llm_jax.model import ModelConfig


def _cut_at_stops(text: str, stops: list[str]) -> str:
    """`text` up to the first occurrence of any stop string."""
    for stop in stops:
        if stop and stop in text:
            text = text[: text.index(stop)]
    return text


@register_model("llm_jax")
class LlmJaxLM(LM):
    """An llm_jax workdir's latest (or given) checkpoint, as lm_eval's LM interface."""

    def __init__(
        self,
        workdir: str,
        step: int | None = None,
        batch_size: int | str = 8,
        fsdp: int = 1,
        tensor: int = 1,
        max_gen_toks: int = 256,
        max_length: int | None = None,
        **_lm_eval_options,  # device, max_batch_size...: meaningless here
    ):
        super().__init__()
        mesh_cfg = ml_collections.ConfigDict(dict(data=-1, fsdp=int(fsdp), tensor=int(tensor)))
        self.mesh = sharding_lib.make_mesh(mesh_cfg)
        step = None if step in (None, "") else int(step)
        self.config, self.params = workdir_lib.restore_params(workdir, mesh=self.mesh, step=step)
        self.tokenizer = workdir_lib.load_run_tokenizer(workdir, self.config)
        rows = 8 if str(batch_size).startswith("auto") else int(batch_size)
        self.scorer = evaluate.Scorer(
            self.config.model, self.params, self.mesh, rows, int(max_length or 0) or None
        )
        self.max_gen_toks = int(max_gen_toks)

    def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
        """(log P(continuation | context), is greedy) per (context, continuation) request."""
        pairs = [evaluate.encode_pair(self.tokenizer, *r.args) for r in requests]
        return self.scorer.loglikelihood(pairs)

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """log P(text) of each whole text, after an end-of-sequence token."""
        token_lists = self.tokenizer.encode_batch([r.args[0] for r in requests])
        return self.scorer.loglikelihood_rolling(token_lists, self.tokenizer.eos_id)

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Greedy continuation of each context, cut at the request's `until` strings."""
        cfg = ModelConfig.from_config(self.config.model)
        outputs = []
        for request in requests:
            context, options = request.args
            stops = options.get("until") or []
            stops = [stops] if isinstance(stops, str) else list(stops)
            prompt = [self.tokenizer.eos_id, *self.tokenizer.encode(context)]
            max_new = int(options.get("max_gen_toks", self.max_gen_toks))
            max_new = max(1, min(max_new, cfg.max_seq_len - 1))
            (new,) = sample.generate(
                self.params,
                cfg,
                [prompt],
                max_new_tokens=max_new,
                sampling=sample.SamplingConfig(temperature=0.0),
                eos_id=self.tokenizer.eos_id,
                truncate=True,
            )[0]
            outputs.append(_cut_at_stops(self.tokenizer.decode(new), stops))
        return outputs


def run_cli(args: list[str]) -> None:
    """lm_eval's command line on `args` (its flags), with the `llm_jax` model registered."""
    from lm_eval.__main__ import cli_evaluate

    saved, sys.argv = sys.argv, ["lm_eval", *args]  # its parser reads sys.argv
    try:
        cli_evaluate()
    finally:
        sys.argv = saved


def main() -> None:
    """`python -m llm_jax.lm_eval_adapter ...`: lm_eval's command line, `llm_jax` registered."""
    run_cli(sys.argv[1:])


if __name__ == "__main__":
    main()
