"""Sampling text from a trained model: KV-cache decoding with greedy, temperature, top-k, top-p.

A decoder-only model writes text one token at a time: it reads the prompt, predicts a
distribution over the vocabulary for the next token, a sampling strategy picks one, the token is
appended, and the loop repeats until an end-of-sequence token or a length limit.

Here the prompt is read once (prefill, which fills the KV cache), then each step feeds only the
last token through the model's decode path; the loop is a `lax.while_loop` inside `jax.jit`, so a
step costs one small forward and no Python. Prompts of different lengths share a batch by LEFT
padding: padding has segment id 0 (attended by nobody) and each row's real tokens have positions
0..n-1, so every position scheme sees a row exactly as it would see it alone.

Streaming: the loop runs in chunks of `chunk_size` steps; the decode state (cache included) is
carried from one jitted chunk to the next and the host prints between chunks. The chunk's end is a
traced value, so any chunk size reuses one compiled loop. We chose this over `jax.debug.callback`
inside the loop: a callback syncs device and host at every token, its ordering is only guaranteed
with `ordered=True` (which then blocks the loop), and it ties printing to the compiled program;
chunks keep the loop pure, cost one sync per chunk, and a non-streaming call is simply one chunk.

Randomness: row r of a call draws step t's token with `fold_in(fold_in(key_r), t)`, where key_r
depends only on (seed, prompt index, sample index). A sample therefore does not depend on what
else is in the batch: streaming samples one by one gives the same text as a batched call.

Letters: B batch (prompts x samples), L prompt length (padded), T new tokens, V padded vocab.
"""

from __future__ import annotations

import dataclasses
import functools
import warnings
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from llm_jax.errors import UserError
from llm_jax.model import ModelConfig, Transformer, init_cache, unstack_layers

NEG_INF = -jnp.inf  # filtered-out logits; `categorical` and `argmax` never pick them


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
    """How the next token is picked from the logits.

    Applied in this order (the usual one): temperature, then top-k, then top-p on what is left.
    """

    temperature: float = 1.0  # 0: greedy (argmax); <1 sharper, >1 flatter
    top_k: int = 0  # keep the k most likely tokens; 0: off
    top_p: float = 1.0  # keep the smallest set of top tokens with probability >= p; 1: off

    def __post_init__(self):
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 is greedy), got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 turns it off), got {self.top_k}")
        if not 0.0 < self.top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1] (1 turns it off), got {self.top_p}")

    @property
    def greedy(self) -> bool:
        """True when the argmax is taken: temperature 0."""
        return self.temperature == 0.0


# --- filters: pure functions on logits_BxV ---------------------------------------------------


def apply_temperature(logits_BxV: jax.Array, temperature: float) -> jax.Array:
    """Divide by the temperature (> 0): below 1 sharpens the distribution, above 1 flattens it."""
    return logits_BxV / temperature


def top_k_filter(logits_BxV: jax.Array, k: int) -> jax.Array:
    """Keep the k largest logits of each row (ties with the k-th are kept too); 0 keeps all."""
    if k <= 0 or k >= logits_BxV.shape[-1]:
        return logits_BxV
    kth_largest_Bx1 = jax.lax.top_k(logits_BxV, k)[0][..., -1:]
    return jnp.where(logits_BxV < kth_largest_Bx1, NEG_INF, logits_BxV)


def top_p_filter(logits_BxV: jax.Array, p: float) -> jax.Array:
    """Nucleus: keep the smallest set of most likely tokens whose probability reaches p.

    A token is kept when the probability of the tokens ranked above it is still below p, so the
    most likely token is always kept; ties with the least likely kept token are kept too.
    """
    if p >= 1.0:
        return logits_BxV
    sorted_BxV = -jnp.sort(-logits_BxV, axis=-1)  # descending
    probs_BxV = jax.nn.softmax(sorted_BxV, axis=-1)
    mass_above_BxV = jnp.cumsum(probs_BxV, axis=-1) - probs_BxV
    n_kept_B = jnp.sum(mass_above_BxV < p, axis=-1)
    threshold_Bx1 = jnp.take_along_axis(sorted_BxV, n_kept_B[:, None] - 1, axis=-1)
    return jnp.where(logits_BxV < threshold_Bx1, NEG_INF, logits_BxV)


def filter_logits(logits_BxV: jax.Array, sampling: SamplingConfig) -> jax.Array:
    """The logits the sampler draws from: temperature, then top-k, then top-p.

    Vocabulary padding needs nothing here: the model writes PAD_LOGIT there (model.py).
    """
    logits_BxV = logits_BxV.astype(jnp.float32)
    if sampling.greedy:
        return logits_BxV
    logits_BxV = apply_temperature(logits_BxV, sampling.temperature)
    logits_BxV = top_k_filter(logits_BxV, sampling.top_k)
    return top_p_filter(logits_BxV, sampling.top_p)


def sample_tokens(keys_B: jax.Array, logits_BxV: jax.Array, sampling: SamplingConfig) -> jax.Array:
    """One token per row (int32 [B]); row b draws with its own key keys_B[b]."""
    logits_BxV = filter_logits(logits_BxV, sampling)
    if sampling.greedy:
        return jnp.argmax(logits_BxV, axis=-1).astype(jnp.int32)
    draw = jax.vmap(jax.random.categorical)
    return draw(keys_B, logits_BxV).astype(jnp.int32)


def row_keys(seed: int, prompt_ids: Sequence[int], sample_ids: Sequence[int]) -> jax.Array:
    """The key of each row, from (seed, prompt index, sample index) only."""
    fold_in = jax.vmap(jax.random.fold_in)
    prompt_ids_B, sample_ids_B = jnp.asarray(prompt_ids), jnp.asarray(sample_ids)
    base_B = jnp.broadcast_to(jax.random.key(seed), prompt_ids_B.shape)
    return fold_in(fold_in(base_B, prompt_ids_B), sample_ids_B)


# --- prompts ----------------------------------------------------------------------------------


class PromptTooLongError(UserError, ValueError):
    """A prompt plus the tokens to generate does not fit in the model's context."""


def fit_prompt(
    prompt: Sequence[int], max_seq_len: int, max_new_tokens: int, truncate: bool = False
) -> list[int]:
    """Check that prompt + max_new_tokens fits in the context; optionally drop its left part.

    Positions run 0..len(prompt)+max_new_tokens-1 and the cache holds them all, so both must fit
    in max_seq_len (the size of learned position tables and of the KV cache).
    """
    prompt = [int(t) for t in prompt]
    if not prompt:
        raise ValueError("empty prompt: give at least one token (e.g. the tokenizer's BOS)")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    room = max_seq_len - max_new_tokens
    if room < 1:
        raise PromptTooLongError(
            f"max_new_tokens={max_new_tokens} leaves no room for a prompt in the context of "
            f"{max_seq_len} tokens; ask for fewer than {max_seq_len} new tokens"
        )
    if len(prompt) <= room:
        return prompt
    if not truncate:
        raise PromptTooLongError(
            f"the prompt has {len(prompt)} tokens; with max_new_tokens={max_new_tokens} at most "
            f"{room} fit in the context of {max_seq_len}. Shorten it, lower max_new_tokens, or "
            "truncate it from the left (truncate=True, --truncate)"
        )
    warnings.warn(
        f"prompt truncated from the left: {len(prompt)} -> {room} tokens (context {max_seq_len}, "
        f"max_new_tokens {max_new_tokens})",
        stacklevel=2,
    )
    return prompt[-room:]


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Prompts as one left-padded int32 [B, L] array, and their lengths [B]."""
    lengths_B = np.array([len(p) for p in prompts], np.int32)
    tokens_BxL = np.full((len(prompts), int(lengths_B.max())), pad_id, np.int32)
    for row, prompt in enumerate(prompts):
        tokens_BxL[row, tokens_BxL.shape[1] - len(prompt) :] = prompt
    return tokens_BxL, lengths_B


def left_pad_layout(lengths_B: jax.Array, length: int) -> tuple[jax.Array, jax.Array]:
    """Positions and segment ids of a left-padded batch: padding is segment 0 at position 0,
    a row's n real tokens are segment 1 at positions 0..n-1."""
    pad_B = length - jnp.asarray(lengths_B, jnp.int32)
    index_L = jnp.arange(length, dtype=jnp.int32)
    segment_ids_BxL = (index_L[None, :] >= pad_B[:, None]).astype(jnp.int32)
    positions_BxL = jnp.maximum(index_L[None, :] - pad_B[:, None], 0)
    return positions_BxL, segment_ids_BxL


# --- the decode loop -----------------------------------------------------------------------


class DecodeState(NamedTuple):
    """What one decode chunk hands to the next."""

    cache: Any  # the model's `cache` collection
    tokens_BxT: jax.Array  # new tokens; after a row's EOS, the EOS id again
    next_token_B: jax.Array  # the last sampled token, not yet in the cache
    positions_B: jax.Array  # its position
    done_B: jax.Array  # the row has emitted EOS
    step: jax.Array  # tokens written so far (scalar)
    keys_B: jax.Array  # each row's key; step t draws with fold_in(key, t)


class Sampler:
    """Compiled prefill and decode loop for one model config, sampling setting and EOS id.

    Calls with the same batch size, longest prompt and max_new_tokens reuse the compiled
    programs; `sampler_for` shares one Sampler per setting across callers.
    """

    def __init__(
        self,
        cfg: ModelConfig,
        sampling: SamplingConfig,
        eos_id: int | None,
    ):
        # Decoding runs unscanned (see model.unstack_layers); params are converted per call.
        self.cfg = dataclasses.replace(cfg, scan_layers=False)
        self._unstack = jax.jit(functools.partial(unstack_layers, n_layers=cfg.n_layers))
        self.sampling = sampling
        self.eos_id = -1 if eos_id is None or eos_id < 0 else int(eos_id)
        self.model = Transformer(self.cfg)
        self._prefill = jax.jit(self._prefill_impl, static_argnames=("max_new_tokens",))
        self._decode = jax.jit(self._decode_impl, donate_argnames=("state",))

    def _sample(self, keys_B: jax.Array, step: jax.Array, logits_BxV: jax.Array) -> jax.Array:
        step_keys_B = jax.vmap(jax.random.fold_in, in_axes=(0, None))(keys_B, step)
        return sample_tokens(step_keys_B, logits_BxV, self.sampling)

    def _prefill_impl(self, params, tokens_BxL, lengths_B, keys_B, max_new_tokens: int):
        batch, length = tokens_BxL.shape
        positions_BxL, segment_ids_BxL = left_pad_layout(lengths_B, length)
        cache = init_cache(self.cfg, batch, length + max_new_tokens)
        logits_BxLxV, variables = self.model.apply(
            {"params": params, "cache": cache},
            tokens_BxL,
            positions_BxL=positions_BxL,
            segment_ids_BxL=segment_ids_BxL,
            decode=True,
            mutable=["cache"],
        )
        token_B = self._sample(keys_B, jnp.int32(0), logits_BxLxV[:, -1])
        tokens_BxT = jnp.full((batch, max_new_tokens), max(self.eos_id, 0), jnp.int32)
        return DecodeState(
            cache=variables["cache"],
            tokens_BxT=tokens_BxT.at[:, 0].set(token_B),
            next_token_B=token_B,
            positions_B=lengths_B,
            done_B=token_B == self.eos_id,
            step=jnp.int32(1),
            keys_B=keys_B,
        )

    def _decode_impl(self, params, state: DecodeState, stop_step: jax.Array) -> DecodeState:
        max_new_tokens = state.tokens_BxT.shape[1]

        def running(s: DecodeState) -> jax.Array:
            return (s.step < jnp.minimum(stop_step, max_new_tokens)) & ~jnp.all(s.done_B)

        def step(s: DecodeState) -> DecodeState:
            logits_Bx1xV, variables = self.model.apply(
                {"params": params, "cache": s.cache},
                s.next_token_B[:, None],
                positions_BxL=s.positions_B[:, None],
                segment_ids_BxL=jnp.ones_like(s.next_token_B)[:, None],
                decode=True,
                mutable=["cache"],
            )
            token_B = self._sample(s.keys_B, s.step, logits_Bx1xV[:, 0])
            token_B = jnp.where(s.done_B, max(self.eos_id, 0), token_B)
            tokens_BxT = jax.lax.dynamic_update_slice(s.tokens_BxT, token_B[:, None], (0, s.step))
            return DecodeState(
                cache=variables["cache"],
                tokens_BxT=tokens_BxT,
                next_token_B=token_B,
                positions_B=s.positions_B + 1,
                done_B=s.done_B | (token_B == self.eos_id),
                step=s.step + 1,
                keys_B=s.keys_B,
            )

        return jax.lax.while_loop(running, step, state)

    def stream(
        self,
        params,
        prompts: Sequence[Sequence[int]],
        keys_B: jax.Array,
        max_new_tokens: int,
        chunk_size: int = 0,
        truncate: bool = False,
    ) -> Iterator[list[list[int]]]:
        """Generate for a batch of prompts (token ids), yielding each row's new tokens so far.

        Yields after every `chunk_size` decode steps (0: once, at the end). A row's tokens stop
        before its EOS; the last yield is the result.
        """
        prompts = [fit_prompt(p, self.cfg.max_seq_len, max_new_tokens, truncate) for p in prompts]
        tokens_BxL, lengths_B = left_pad(prompts)
        params = self._unstack(params)  # a copy of scanned params, for this call's duration
        state = self._prefill(params, tokens_BxL, lengths_B, keys_B, max_new_tokens=max_new_tokens)
        chunk_size = chunk_size if chunk_size > 0 else max_new_tokens
        stop_step = chunk_size  # the prefill wrote the first token of the first chunk
        while True:
            state = self._decode(params, state, stop_step)
            tokens_BxT, done_B, step = jax.device_get((state.tokens_BxT, state.done_B, state.step))
            yield [self._cut(row, int(step)) for row in tokens_BxT]
            if step >= max_new_tokens or done_B.all():
                return
            stop_step += chunk_size

    def _cut(self, tokens_T: np.ndarray, step: int) -> list[int]:
        tokens = tokens_T[:step].tolist()
        return tokens[: tokens.index(self.eos_id)] if self.eos_id in tokens else tokens


@functools.lru_cache(maxsize=8)
def sampler_for(cfg: ModelConfig, sampling: SamplingConfig, eos_id: int | None) -> Sampler:
    """The `Sampler` shared by every caller with this model shape, setting and EOS id."""
    return Sampler(cfg, sampling, eos_id)


def generate(
    params,
    cfg: ModelConfig,
    prompts: Sequence[Sequence[int]],
    *,
    max_new_tokens: int,
    sampling: SamplingConfig = SamplingConfig(),
    eos_id: int | None = None,
    seed: int = 0,
    num_samples: int = 1,
    truncate: bool = False,
) -> list[list[list[int]]]:
    """Continue each prompt (token ids) num_samples times; result[prompt][sample] = new ids.

    All prompts x samples run as one batch. Each continuation stops before its first `eos_id` or
    after max_new_tokens. Calls with the same model shape and setting share compiled code.
    """
    rows = [(p, s) for p in range(len(prompts)) for s in range(num_samples)]
    keys_B = row_keys(seed, [p for p, _ in rows], [s for _, s in rows])
    sampler = sampler_for(cfg, sampling, eos_id)
    *_, new_tokens = sampler.stream(
        params, [prompts[p] for p, _ in rows], keys_B, max_new_tokens, truncate=truncate
    )
    return [new_tokens[p * num_samples : (p + 1) * num_samples] for p in range(len(prompts))]
