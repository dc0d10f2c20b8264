"""Shared by the HF and eval tests: a GPT-2-style byte-level BPE trained here, offline.

Not a test module. `byte_level_bpe(folder)` trains a small tokenizers-library BPE (the
pre-tokenizer and decoder GPT-2 and Llama 3 use) on a few of the embedded Shakespeare
plays and saves it as an HF tokenizer directory (tokenizer.json, tokenizer_config.json).
"""

from __future__ import annotations

import json
from pathlib import Path

from llm_jax import corpus

EOS = "<|endoftext|>"


def shakespeare_texts(n_files: int = 3) -> list[str]:
    """The first `n_files` plays of the embedded corpus, as text."""
    files = sorted(Path(corpus.shakespeare_dir()).rglob("*.md"))[:n_files]
    return [f.read_text(encoding="utf-8") for f in files]


def byte_level_bpe(folder: Path, vocab_size: int = 300) -> Path:
    """Train and save a byte-level BPE with `vocab_size` tokens (EOS included)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(shakespeare_texts(), trainer)
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    config = {"eos_token": EOS, "bos_token": EOS, "tokenizer_class": "PreTrainedTokenizerFast"}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder
