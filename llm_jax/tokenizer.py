"""A lossless SentencePiece tokenizer: train one on a corpus, or load a `.model` file.

Public API:
  - `DataError(ValueError)`: bad data input; the message ends with the fix.
  - `Tokenizer(model_proto: bytes, path: str = "")` with `encode(text) -> list[int]`,
    `encode_batch(texts) -> list[list[int]]`, `decode(ids) -> str`, `vocab_size`,
    `bos_id`, `eos_id`, `pad_id`, `sha256` (of the model bytes: the tokenizer's identity)
    and `save(path)` (atomic).
  - `train_tokenizer(texts, vocab_size, model_type="bpe", max_chars=20_000_000) -> Tokenizer`.
  - `load_tokenizer(path, vocab_size=None) -> Tokenizer`.

Training is lossless: `decode(encode(text)) == text` for any text. SentencePiece's
normalizer is turned off (identity rule, no whitespace squeezing, no dummy prefix), a
newline is its own piece, and characters missing from the vocab fall back to bytes.
The one character SentencePiece cannot round trip on its own is U+2581 ('▁'), its
internal symbol for a space: `encode` spells a literal U+2581 with its three byte
pieces, which decode back to the character (not to a space).

Ids: 0 unk, 1 bos, 2 eos (the document separator in token caches), 3 pad.
Caching (which corpus and settings a tokenizer belongs to) is `llm_jax.data`'s job.
"""

from __future__ import annotations

import hashlib
import io
import os
import re
from collections.abc import Iterable, Iterator, Sequence

import sentencepiece as spm

from llm_jax import storage
from llm_jax.errors import UserError

META = "\u2581"  # SentencePiece's stand-in for a space inside pieces
UNK_ID, BOS_ID, EOS_ID, PAD_ID = 0, 1, 2, 3
_CHUNK_CHARS = 4096  # long lines are cut before training: SentencePiece skips long sentences


class DataError(UserError, ValueError):
    """Bad data input (path, text, tokenizer, split size); the message names the fix."""


class Tokenizer:
    """A SentencePiece model with lossless `encode`/`decode` and its special ids."""

    def __init__(self, model_proto: bytes, path: str = ""):
        self._sp = spm.SentencePieceProcessor(model_proto=model_proto)
        self.model_proto = model_proto
        self.path = path
        self.sha256 = hashlib.sha256(model_proto).hexdigest()
        byte_ids = [self._sp.piece_to_id(f"<0x{b:02X}>") for b in META.encode()]
        # A model without byte pieces (one not trained here) cannot spell U+2581 exactly.
        self._meta_ids = byte_ids if UNK_ID not in byte_ids else None

    @property
    def vocab_size(self) -> int:
        """Number of pieces, special ones included."""
        return self._sp.vocab_size()

    @property
    def bos_id(self) -> int:
        """Beginning-of-sequence id (-1 if the model has none)."""
        return self._sp.bos_id()

    @property
    def eos_id(self) -> int:
        """End-of-sequence id; separates documents in token caches."""
        return self._sp.eos_id()

    @property
    def pad_id(self) -> int:
        """Padding id (-1 if the model has none)."""
        return self._sp.pad_id()

    def encode(self, text: str) -> list[int]:
        """Token ids of `text` (no bos/eos added)."""
        return self.encode_batch([text])[0]

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text; SentencePiece encodes the batch on several threads."""
        if self._meta_ids is None or not any(META in t for t in texts):
            return self._sp.encode(list(texts))
        return [self._encode_with_meta(t) for t in texts]

    def _encode_with_meta(self, text: str) -> list[int]:
        parts = self._sp.encode(text.split(META))
        ids = list(parts[0])
        for part in parts[1:]:
            ids += self._meta_ids + part
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`; control ids (bos, eos, pad) decode to nothing."""
        return self._sp.decode([int(i) for i in ids])

    def id_to_piece(self, token_id: int) -> str:
        """The piece string of one id (for inspection)."""
        return self._sp.id_to_piece(int(token_id))

    def save(self, path: str | os.PathLike) -> None:
        """Write the model atomically: a reader never sees a partial file."""
        storage.write_bytes(path, self.model_proto)
        self.path = str(path)


def _training_sentences(texts: Iterable[str], max_chars: int) -> Iterator[str]:
    """Lines of the first `max_chars` characters, cut to a length SentencePiece accepts."""
    budget = max_chars
    for text in texts:
        # Newlines are a user-defined piece and never merge, so lines lose nothing;
        # a literal U+2581 would be read as a space, which is what encode() does with it.
        for line in text.replace(META, " ").split("\n"):
            for start in range(0, len(line), _CHUNK_CHARS):
                chunk = line[start : start + _CHUNK_CHARS][:budget]
                budget -= len(chunk)
                yield chunk
                if budget <= 0:
                    return


def train_tokenizer(
    texts: Iterable[str], vocab_size: int, model_type: str = "bpe", max_chars: int = 20_000_000
) -> Tokenizer:
    """Train a lossless SentencePiece model on the first `max_chars` characters of `texts`."""
    model = io.BytesIO()
    sentences = _training_sentences(texts, max_chars)
    try:
        spm.SentencePieceTrainer.train(
            sentence_iterator=sentences,
            model_writer=model,
            vocab_size=vocab_size,
            model_type=model_type,
            # Lossless: no normalization, whitespace kept as is, no space added in front.
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            add_dummy_prefix=False,
            allow_whitespace_only_pieces=True,  # runs of spaces (indentation) become pieces
            user_defined_symbols=["\n"],
            byte_fallback=True,  # any character outside the vocab is spelled in bytes
            character_coverage=0.9995,  # rare characters go to bytes instead of the vocab
            split_digits=True,  # numbers tokenized digit by digit: arithmetic-friendly
            max_sentence_length=4 * _CHUNK_CHARS,  # bytes; chunks above always fit
            unk_id=UNK_ID,
            bos_id=BOS_ID,
            eos_id=EOS_ID,
            pad_id=PAD_ID,
            num_threads=os.cpu_count() or 1,
            minloglevel=2,
        )
    except RuntimeError as e:
        raise _vocab_error(str(e), vocab_size) from None
    return Tokenizer(model.getvalue())


def _vocab_error(message: str, vocab_size: int) -> DataError:
    """Turn SentencePiece's training failure into a message that names the fix."""
    too_high = re.search(r"Vocabulary size too high \((\d+)\).*<= (\d+)", message)
    if too_high:
        return DataError(
            f"the training text supports at most {too_high.group(2)} tokens, fewer than "
            f"config.model.vocab_size={vocab_size}; set --config.model.vocab_size="
            f"{too_high.group(2)} (or less), or train on more text "
            "(config.data.tokenizer_max_chars, a bigger corpus)"
        )
    too_low = re.search(r"Vocabulary size is smaller than required_chars. (\d+) vs (\d+)", message)
    if too_low:
        return DataError(
            f"config.model.vocab_size={vocab_size} is too small for this corpus's "
            f"{too_low.group(2)} required pieces (characters, bytes, specials); set "
            f"--config.model.vocab_size={64 * -(-int(too_low.group(2)) // 64)} or more"
        )
    if "sentence" in message.lower() or "empty" in message.lower():
        return DataError(
            f"SentencePiece found no training text ({message.strip()}); check config.data "
            "(source, path) points at a non-empty corpus"
        )
    return DataError(
        f"SentencePiece training failed: {message.strip()}; check config.model.vocab_size "
        "and config.data.tokenizer_type"
    )


def load_tokenizer(path: str | os.PathLike, vocab_size: int | None = None) -> Tokenizer:
    """Load a `.model` file; if `vocab_size` is given it must match the model's.

    A path 'hf:DIR' is a Hugging Face tokenizer directory (llm_jax.hf.tokenizer).
    """
    if str(path).startswith("hf:"):
        from llm_jax.hf.tokenizer import load_hf_tokenizer

        return load_hf_tokenizer(path, vocab_size)
    path = storage.path(path)
    if not path.is_file():
        raise DataError(
            f"tokenizer file {str(path)!r} does not exist; fix config.data.tokenizer_path, or "
            "set it to '' to train one on the corpus"
        )
    try:
        tokenizer = Tokenizer(path.read_bytes(), str(path))
    except RuntimeError as e:
        raise DataError(
            f"{str(path)!r} is not a SentencePiece model ({str(e).strip()}); point "
            "config.data.tokenizer_path at a .model file"
        ) from None
    if vocab_size is not None and tokenizer.vocab_size != vocab_size:
        raise DataError(
            f"tokenizer {str(path)!r} has {tokenizer.vocab_size} tokens but "
            f"config.model.vocab_size={vocab_size}; set --config.model.vocab_size="
            f"{tokenizer.vocab_size}"
        )
    return tokenizer
