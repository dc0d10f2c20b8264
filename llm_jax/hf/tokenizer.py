"""Hugging Face tokenizers (a directory with `tokenizer.json`) behind llm_jax's Tokenizer API.

`config.data.tokenizer_path = 'hf:DIR'` selects one: `llm_jax.tokenizer.load_tokenizer`
hands such paths to `load_hf_tokenizer`, so data preparation, bytes-per-token, generation
and the workdir copy work as with a SentencePiece model. Byte-level BPE (GPT-2, Llama 3)
decodes back to exactly the text it encoded.

The special tokens come from `tokenizer_config.json` (`eos_token`, `bos_token`,
`pad_token`, as transformers writes them), else from the usual names. `save(folder)`
writes `tokenizer.json` and a `tokenizer_config.json` naming them, which is also what
`transformers.AutoTokenizer` reads.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence

from etils import epath

from llm_jax import storage
from llm_jax.errors import UserError

HF_PREFIX = "hf:"
TOKENIZER_JSON = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
# End-of-text tokens of the common byte-level BPE vocabularies (GPT-2, Llama 3, Llama 2).
_EOS_NAMES = ("<|endoftext|>", "<|end_of_text|>", "</s>")


class TokenizerFileError(UserError, ValueError):
    """An HF tokenizer directory that cannot be used; the message names the fix."""


def _token_name(value) -> str | None:
    """A special token as tokenizer_config.json writes it: a string or {'content': ...}."""
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


class HFTokenizer:
    """A `tokenizers.Tokenizer` with the methods and ids llm_jax's pipeline uses."""

    def __init__(self, tokenizer_json: str, special: dict[str, str | None], path: str = ""):
        from tokenizers import Tokenizer as _Tokenizer

        self._tok = _Tokenizer.from_str(tokenizer_json)
        self.tokenizer_json = tokenizer_json
        self.special = special
        self.path = path
        identity = json.dumps([tokenizer_json, special], sort_keys=True).encode()
        self.sha256 = hashlib.sha256(identity).hexdigest()

    def _id(self, name: str) -> int:
        token = self.special.get(name)
        token_id = self._tok.token_to_id(token) if token else None
        return -1 if token_id is None else token_id

    @property
    def vocab_size(self) -> int:
        """Number of tokens, added (special) ones included."""
        return self._tok.get_vocab_size(with_added_tokens=True)

    @property
    def bos_id(self) -> int:
        """Beginning-of-sequence id (-1 if none)."""
        return self._id("bos_token")

    @property
    def eos_id(self) -> int:
        """End-of-sequence id; separates documents in token caches."""
        return self._id("eos_token")

    @property
    def pad_id(self) -> int:
        """Padding id (-1 if none)."""
        return self._id("pad_token")

    def encode(self, text: str) -> list[int]:
        """Token ids of `text` (no bos/eos added)."""
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of each text, encoded on several threads."""
        encoded = self._tok.encode_batch(list(texts), add_special_tokens=False)
        return [e.ids for e in encoded]

    def decode(self, ids: Iterable[int]) -> str:
        """Text of `ids`; special tokens (bos, eos, pad) decode to nothing."""
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=True)

    def id_to_piece(self, token_id: int) -> str:
        """The token string of one id (for inspection)."""
        return self._tok.id_to_token(int(token_id))

    def save(self, folder: str | os.PathLike) -> None:
        """Write tokenizer.json and tokenizer_config.json into `folder`, atomically each."""
        folder = storage.path(folder)
        storage.makedirs(folder)
        storage.write_bytes(folder / TOKENIZER_JSON, self.tokenizer_json.encode())
        config = {k: v for k, v in self.special.items() if v is not None}
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
        storage.write_bytes(folder / TOKENIZER_CONFIG, json.dumps(config, indent=1).encode())
        self.path = HF_PREFIX + str(folder)


def _special_tokens(folder: epath.Path, tokenizer_json: str) -> dict[str, str | None]:
    config_path = folder / TOKENIZER_CONFIG
    config = json.loads(config_path.read_text()) if config_path.is_file() else {}
    special = {k: _token_name(config.get(k)) for k in ("bos_token", "eos_token", "pad_token")}
    if not special["eos_token"]:
        vocab = json.loads(tokenizer_json)
        added = {t["content"] for t in vocab.get("added_tokens", [])}
        known = added | set(vocab.get("model", {}).get("vocab", {}) or ())
        special["eos_token"] = next((n for n in _EOS_NAMES if n in known), None)
    return special


def load_hf_tokenizer(path: str | os.PathLike, vocab_size: int | None = None) -> HFTokenizer:
    """The tokenizer in directory `path` ('hf:' prefix allowed); must fit in `vocab_size`."""
    folder = storage.path(str(path).removeprefix(HF_PREFIX))
    file = folder / TOKENIZER_JSON
    if not file.is_file():
        raise TokenizerFileError(
            f"{file} not found; point the 'hf:' path at a directory holding tokenizer.json "
            "(transformers writes one with AutoTokenizer.from_pretrained(d).save_pretrained(d))"
        )
    try:
        import tokenizers  # noqa: F401
    except ImportError:
        raise TokenizerFileError(
            "HF tokenizers need the tokenizers package: pip install 'llm_jax[hf]'"
        ) from None
    text = file.read_text(encoding="utf-8")
    try:
        tokenizer = HFTokenizer(text, _special_tokens(folder, text), HF_PREFIX + str(folder))
    except Exception as e:  # noqa: BLE001 - tokenizers raises plain Exceptions on bad files
        raise TokenizerFileError(f"{file} is not a tokenizers file ({e})") from None
    if tokenizer.eos_id < 0:
        raise TokenizerFileError(
            f'{folder} names no end-of-text token; add "eos_token" to its {TOKENIZER_CONFIG}'
        )
    if vocab_size is not None and tokenizer.vocab_size > vocab_size:
        raise TokenizerFileError(
            f"tokenizer {folder} has {tokenizer.vocab_size} tokens but config.model.vocab_size="
            f"{vocab_size}; set --config.model.vocab_size={tokenizer.vocab_size}"
        )
    return tokenizer
