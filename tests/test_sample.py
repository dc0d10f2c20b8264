"""Sampling: the filters' distributions, KV-cache decoding against full forwards, stopping."""

import functools
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tiny_run import init_params, tiny_flags, tiny_model, write_corpus

from llm_jax import sample
from llm_jax.model import ModelConfig, Transformer, init_cache
from llm_jax.sample import SamplingConfig

VOCAB = 8  # real tokens of the small-vocabulary tests; 8 more columns are padding
DRAWS = 40_000


def _draw(logits_V: np.ndarray, sampling: SamplingConfig, draws: int = DRAWS) -> np.ndarray:
    """`draws` independent tokens from one row of logits, with the library's sampler."""
    keys_B = jax.random.split(jax.random.key(0), draws)
    logits_BxV = jnp.broadcast_to(jnp.asarray(logits_V), (draws, logits_V.shape[0]))
    return np.asarray(jax.jit(sample.sample_tokens, static_argnums=2)(keys_B, logits_BxV, sampling))


def _reference_probs(logits_V: np.ndarray, temperature: float, top_k: int, top_p: float):
    """The distribution the sampler should draw from, computed independently in numpy."""
    z = np.asarray(logits_V[:VOCAB], np.float64) / temperature
    order = np.argsort(-z)
    keep = np.zeros(VOCAB, bool)
    keep[order[: top_k or VOCAB]] = True
    probs = np.where(keep, np.exp(z - z.max()), 0.0)
    probs /= probs.sum()
    if top_p < 1.0:  # smallest prefix of the ranking whose mass reaches top_p
        cumulative = np.cumsum(probs[order])
        n_kept = int(np.searchsorted(cumulative, top_p) + 1)
        keep = np.zeros(VOCAB, bool)
        keep[order[:n_kept]] = True
        probs = np.where(keep, probs, 0.0) / probs[keep].sum()
    return probs


def _small_logits() -> np.ndarray:
    logits_V = np.full(2 * VOCAB, -1e9, np.float32)  # padding columns, as the model writes them
    logits_V[:VOCAB] = [2.0, 1.5, 1.1, 0.7, 0.2, -0.4, -1.0, -2.0]
    return logits_V


@pytest.mark.parametrize(
    "temperature,top_k,top_p",
    [(1.0, 0, 1.0), (0.6, 0, 1.0), (1.7, 0, 1.0), (1.0, 3, 1.0), (1.0, 0, 0.8), (1.3, 5, 0.9)],
)
def test_frequencies_match_the_filtered_softmax(temperature, top_k, top_p):
    """Tolerance: every token's frequency within 5 standard errors of its probability (a false
    failure has probability < 1e-5 per test), and filtered-out tokens are never drawn."""
    logits_V = _small_logits()
    tokens = _draw(logits_V, SamplingConfig(temperature, top_k, top_p))
    freq = np.bincount(tokens, minlength=2 * VOCAB) / DRAWS
    probs = _reference_probs(logits_V, temperature, top_k, top_p)
    assert freq[VOCAB:].sum() == 0.0
    stderr = np.sqrt(probs * (1 - probs) / DRAWS)
    np.testing.assert_array_less(np.abs(freq[:VOCAB] - probs), 5 * stderr + 1e-12)


def test_top_k_draws_only_the_k_most_likely():
    logits_BxV = jax.random.normal(jax.random.key(1), (4, 64)) * 3
    k = 5
    keys_B = jax.random.split(jax.random.key(2), 4 * 2000).reshape(4, 2000)
    draw = jax.vmap(
        lambda keys, logits: sample.sample_tokens(
            keys, jnp.broadcast_to(logits, (2000, 64)), SamplingConfig(top_k=k)
        )
    )
    tokens_BxN = np.asarray(draw(keys_B, logits_BxV))
    for row in range(4):
        top_k = set(np.argsort(-np.asarray(logits_BxV[row]))[:k].tolist())
        assert set(tokens_BxN[row].tolist()) == top_k  # inside, and all of it reachable


def test_top_p_draws_only_inside_the_nucleus():
    logits_V = np.asarray(jax.random.normal(jax.random.key(3), (VOCAB,)), np.float32) * 2
    probs = _reference_probs(logits_V, 1.0, 0, 1.0)
    order = np.argsort(-probs)
    nucleus = set(order[: np.searchsorted(np.cumsum(probs[order]), 0.7) + 1].tolist())
    assert 1 < len(nucleus) < VOCAB  # the check below means something
    tokens = _draw(logits_V, SamplingConfig(top_p=0.7), draws=5000)
    assert set(tokens.tolist()) == nucleus


@pytest.mark.parametrize(
    "kwargs", [dict(temperature=-1.0), dict(top_k=-2), dict(top_p=0.0), dict(top_p=1.5)]
)
def test_bad_sampling_settings_are_refused(kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        SamplingConfig(**kwargs)


def test_prompt_longer_than_the_context():
    with pytest.raises(sample.PromptTooLongError, match="truncate"):
        sample.fit_prompt(list(range(30)), max_seq_len=32, max_new_tokens=8)
    with pytest.warns(UserWarning, match="truncated from the left: 30 -> 24"):
        kept = sample.fit_prompt(list(range(30)), max_seq_len=32, max_new_tokens=8, truncate=True)
    assert kept == list(range(6, 30))
    with pytest.raises(sample.PromptTooLongError, match="fewer than 32"):
        sample.fit_prompt([1], max_seq_len=32, max_new_tokens=32)


# --- with a tiny model ------------------------------------------------------------------------


@functools.cache
def _tiny(**overrides):
    """A 2-layer d_model 32 model config and its random params (shared between tests)."""
    m = tiny_model(**{**dict(vocab_size=61, vocab_multiple=32, d_ff=0), **overrides})
    return m, init_params(Transformer(ModelConfig.from_config(m)), jnp.zeros((1, 4), jnp.int32))


PROMPTS = [[5, 9, 2, 33, 7, 1, 40], [12, 3], [60, 8, 8, 19]]
ROPE_GQA = dict(positions="rope", n_kv_heads=2)


@pytest.mark.parametrize(
    "overrides",
    [dict(positions="learned"), dict(positions="sinusoidal", n_kv_heads=1), ROPE_GQA],
    ids=["learned-mha", "sinusoidal-mqa", "rope-gqa"],
)
def test_cached_logits_equal_full_forward(overrides):
    """A left-padded batch: prefill the prompts, then feed 5 more tokens one at a time; each
    row's logits equal those of a full forward over that row alone, at every position."""
    m, params = _tiny(**overrides)
    model = Transformer(ModelConfig.from_config(m))
    continuation_BxT = np.array([[3, 4, 5, 6, 7], [50, 1, 2, 2, 9], [0, 11, 22, 33, 44]])
    tokens_BxL, lengths_B = sample.left_pad(PROMPTS)
    positions_BxL, segment_ids_BxL = sample.left_pad_layout(lengths_B, tokens_BxL.shape[1])
    decode = jax.jit(functools.partial(model.apply, decode=True, mutable=["cache"]))
    cache = init_cache(
        ModelConfig.from_config(m), len(PROMPTS), tokens_BxL.shape[1] + continuation_BxT.shape[1]
    )
    logits, variables = decode(
        {"params": params, "cache": cache},
        tokens_BxL,
        positions_BxL=positions_BxL,
        segment_ids_BxL=segment_ids_BxL,
    )
    cached = [logits]
    for t in range(continuation_BxT.shape[1]):
        logits, variables = decode(
            {"params": params, "cache": variables["cache"]},
            continuation_BxT[:, t : t + 1],
            positions_BxL=(lengths_B + t)[:, None],
            segment_ids_BxL=np.ones((3, 1), np.int32),
        )
        cached.append(logits)
    cached_BxLxV = np.asarray(jnp.concatenate(cached, axis=1))

    # The full forwards: each row alone from position 0, right-padded (causal attention keeps
    # the padding out of the real positions) so that one compiled program serves all rows.
    sequences = [p + c for p, c in zip(PROMPTS, continuation_BxT.tolist(), strict=True)]
    right_padded_BxL = sample.left_pad([s[::-1] for s in sequences])[0][:, ::-1]
    full_BxLxV = np.asarray(jax.jit(model.apply)({"params": params}, right_padded_BxL))
    for row, sequence in enumerate(sequences):
        pad = tokens_BxL.shape[1] - len(PROMPTS[row])
        np.testing.assert_allclose(
            cached_BxLxV[row, pad:, : m.vocab_size],
            full_BxLxV[row, : len(sequence), : m.vocab_size],
            atol=2e-5,
            rtol=1e-5,
        )


GREEDY = SamplingConfig(temperature=0.0)
NUCLEUS = SamplingConfig(temperature=1.0, top_k=20, top_p=0.95)


def _generate(prompts, sampling=GREEDY, eos_id=None, seed=0, num_samples=1, new_tokens=8):
    m, params = _tiny(**ROPE_GQA)
    return sample.generate(
        params,
        ModelConfig.from_config(m),
        prompts,
        max_new_tokens=new_tokens,
        sampling=sampling,
        eos_id=eos_id,
        seed=seed,
        num_samples=num_samples,
    )


def test_greedy_is_the_argmax_of_a_full_forward_and_deterministic():
    m, params = _tiny(**ROPE_GQA)
    out = [samples[0] for samples in _generate(PROMPTS)]
    assert out == [samples[0] for samples in _generate(PROMPTS)]
    full = jax.jit(Transformer(ModelConfig.from_config(m)).apply)
    for prompt, new in zip(PROMPTS, out, strict=True):
        assert len(new) == 8
        logits_LxV = np.asarray(full({"params": params}, np.array([prompt + new])))[0]
        chosen = logits_LxV[np.arange(len(prompt) - 1, len(prompt) + 7), new]
        best = logits_LxV[len(prompt) - 1 : -1].max(axis=-1)  # ties are harmless: up to 1e-5
        np.testing.assert_allclose(chosen, best, atol=1e-5)
        assert (np.argmax(logits_LxV[len(prompt) - 1 : -1], -1) == new).mean() > 0.8


def test_rows_stop_independently_at_eos():
    free = [samples[0] for samples in _generate(PROMPTS)]
    eos = free[0][2]  # row 0's third token becomes the end of sequence
    stopped = [samples[0] for samples in _generate(PROMPTS, eos_id=eos)]
    for free_row, row in zip(free, stopped, strict=True):
        expected = free_row[: free_row.index(eos)] if eos in free_row else free_row
        assert row == expected
    assert len(stopped[0]) == free[0].index(eos) <= 2
    assert any(len(row) == 8 for row in stopped)  # at least one row ran on: the stop is per row


def test_padding_does_not_change_a_sampled_continuation():
    """The short prompt (5 padding tokens in the batch) continues as it does alone, sampling
    included, since each row's randomness depends only on (seed, prompt, sample)."""
    m, params = _tiny(**ROPE_GQA)
    together = _generate(PROMPTS, NUCLEUS, seed=3, num_samples=2, new_tokens=10)
    alone = sample.sampler_for(ModelConfig.from_config(m), NUCLEUS, None).stream(
        params, [PROMPTS[1]] * 2, sample.row_keys(3, [1, 1], [0, 1]), 10
    )
    assert list(alone)[-1] == together[1]


def test_seed_and_samples():
    run = functools.partial(_generate, PROMPTS, NUCLEUS, num_samples=2, new_tokens=10)
    first = run(seed=3)
    assert first == run(seed=3)
    assert first != run(seed=4)
    assert len(first) == 3 and all(len(samples) == 2 for samples in first)
    assert all(samples[0] != samples[1] for samples in first)  # a prompt's samples differ


def test_streaming_yields_growing_prefixes_of_the_same_result():
    m, params = _tiny(**ROPE_GQA)
    rows = [(p, s) for p in range(3) for s in range(2)]
    keys_B = sample.row_keys(3, [p for p, _ in rows], [s for _, s in rows])
    chunks = list(
        sample.sampler_for(ModelConfig.from_config(m), NUCLEUS, None).stream(
            params, [PROMPTS[p] for p, _ in rows], keys_B, 10, chunk_size=4
        )
    )
    assert [len(c[0]) for c in chunks] == [4, 8, 10]
    whole = _generate(PROMPTS, NUCLEUS, seed=3, num_samples=2, new_tokens=10)
    assert chunks[-1] == [whole[p][s] for p, s in rows]
    for earlier, later in zip(chunks, chunks[1:], strict=False):
        assert all(b[: len(a)] == a for a, b in zip(earlier, later, strict=True))


def test_generate_refuses_a_prompt_that_does_not_fit():
    with pytest.raises(sample.PromptTooLongError, match="at most 22 fit"):
        _generate([list(range(25))], new_tokens=10)


def test_llm_jax_generate_prints_samples_of_a_trained_workdir(tmp_path, capsys):
    """Train the tiny config for 2 steps with `llm-jax train`, then sample from its workdir:
    batched (not a terminal) and streamed output hold the same text."""
    from llm_jax import cli

    workdir = str(tmp_path / "run")
    corpus = write_corpus(tmp_path / "corpus")
    flags = tiny_flags(workdir, corpus, tmp_path / "cache", train__steps=2, checkpoint__every=2)
    assert cli.run(flags) == 0
    # The workdir carries its tokenizer: sampling neither reads nor rebuilds the data cache.
    config_path = Path(workdir) / "config.json"
    config = json.loads(config_path.read_text())
    config["data"]["cache_dir"] = str(tmp_path / "no_cache")
    config_path.write_text(json.dumps(config))
    args = [
        "generate",
        "--workdir",
        workdir,
        "--prompt",
        "the king",
        "--prompt",
        "my lord\ngood",
        "--max-new-tokens",
        "12",
        "--num-samples",
        "2",
        "--seed",
        "1",
    ]
    capsys.readouterr()
    assert cli.run(args) == 0  # captured stdout is not a terminal: one batch
    batched = capsys.readouterr().out
    assert cli.run([*args, "--stream"]) == 0
    assert capsys.readouterr().out == batched

    blocks = batched.split("--- prompt ")[1:]
    assert [b.split(" ---\n")[0] for b in blocks] == [
        "1, sample 1",
        "1, sample 2",
        "2, sample 1",
        "2, sample 2",
    ]
    texts = [b.split(" ---\n", 1)[1] for b in blocks]
    prompts = ["the king", "the king", "my lord\ngood", "my lord\ngood"]
    assert all(t.startswith(p) for t, p in zip(texts, prompts, strict=True))
    continuations = [t[len(p) :].strip() for t, p in zip(texts, prompts, strict=True)]
    assert sum(bool(c) for c in continuations) >= 3  # the model wrote text
    assert continuations[0] != continuations[1]  # two samples, not one printed twice
    assert not (tmp_path / "no_cache").exists()
