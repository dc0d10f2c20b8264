"""Hugging Face tokenizers (a directory with `tokenizer.json`) behind llm_jax's Tokenizer API.

`config.data.tokenizer_path = 'hf:DIR'` selects one: `llm_jax.tokenizer.load_tokenizer`
hands such paths to `load_hf_tokenizer`, so data preparation, bytes-per-token, generation
and the workdir copy work as with a SentencePiece model. Byte-level BPE (GPT-2, Llama 3)
decodes back to exactly the text it encoded.

The special tokens come from `tokenizer_config.json` (`eos_token`, `bos_token`,
`pad_token`, as transformers writes them), else from the usual names. `save(folder)`
writes `tokenizer.json` and a `tokenizer_config.json` naming them, which is also what
`transformers.AutoTokenizer` reads. `from_sentencepiece` turns a SentencePiece model
trained by llm_jax into such a tokenizer (export-hf writes one for SentencePiece runs).
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

    def __init__(
        self,
        tokenizer_json: str,
        special: dict[str, str | None],
        path: str = "",
        split_special_tokens: bool = False,
    ):
        from tokenizers import Tokenizer as _Tokenizer

        self._tok = _Tokenizer.from_str(tokenizer_json)
        # True: a special token's text in the input is plain text (as in SentencePiece).
        self._tok.encode_special_tokens = split_special_tokens
        self.tokenizer_json = tokenizer_json
        self.special = special
        self.split_special_tokens = split_special_tokens
        self.path = path
        identity = [tokenizer_json, special] + (["split_special_tokens"] * split_special_tokens)
        self.sha256 = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()

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
        if self.split_special_tokens:  # transformers reads this key too
            config["split_special_tokens"] = True
        storage.write_bytes(folder / TOKENIZER_CONFIG, json.dumps(config, indent=1).encode())
        self.path = HF_PREFIX + str(folder)


def _read_config(folder: epath.Path) -> dict:
    config_path = folder / TOKENIZER_CONFIG
    return json.loads(config_path.read_text()) if config_path.is_file() else {}


def _special_tokens(config: dict, tokenizer_json: str) -> dict[str, str | None]:
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
    config = _read_config(folder)
    try:
        tokenizer = HFTokenizer(
            text,
            _special_tokens(config, text),
            HF_PREFIX + str(folder),
            split_special_tokens=bool(config.get("split_special_tokens")),
        )
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


# --- SentencePiece models as tokenizers files -------------------------------------------------


def from_sentencepiece(model_proto: bytes) -> HFTokenizer:
    """A SentencePiece model trained by llm_jax as a `tokenizers` file encoding the same ids.

    The pieces, ids and scores carry over; BPE merges are rebuilt from the pieces (each
    pair whose concatenation is a piece, ranked by that piece's id, as transformers'
    converter does); byte fallback, the user-defined pieces (the newline) and the control
    tokens (as special tokens that text cannot spell) keep their meaning. Spaces become
    U+2581 before the model and come back on decoding. The one text it encodes
    differently: a literal U+2581, which llm_jax spells in bytes and this reads as a space.
    Raises TokenizerFileError for a model with another normalizer (not llm_jax's).
    """
    from sentencepiece import sentencepiece_model_pb2
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers

    proto = sentencepiece_model_pb2.ModelProto.FromString(model_proto)
    norm, trainer = proto.normalizer_spec, proto.trainer_spec
    if norm.name != "identity" or norm.add_dummy_prefix or norm.remove_extra_whitespaces:
        raise TokenizerFileError(
            "only SentencePiece models trained by llm_jax (identity normalizer, no dummy "
            "prefix) convert to tokenizer.json; copy tokenizer.model instead"
        )
    kinds = proto.SentencePiece
    pieces = [(p.piece, p.score, p.type) for p in proto.pieces]
    unk_id = trainer.unk_id
    if trainer.model_type == trainer.BPE:
        model = models.BPE(
            vocab={piece: i for i, (piece, _, _) in enumerate(pieces)},
            merges=_bpe_merges(pieces, kinds.NORMAL),
            unk_token=pieces[unk_id][0],
            byte_fallback=True,
            fuse_unk=True,
        )
    else:
        model = models.Unigram([(p, s) for p, s, _ in pieces], unk_id, byte_fallback=True)
    tok = Tokenizer(model)
    tok.normalizer = normalizers.Replace(" ", "\u2581")
    tok.decoder = decoders.Sequence(
        [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
    )
    controls = [p for p, _, kind in pieces if kind in (kinds.CONTROL, kinds.UNKNOWN)]
    tok.add_special_tokens([AddedToken(p, special=True, normalized=False) for p in controls])
    user = [p for p, _, kind in pieces if kind == kinds.USER_DEFINED]
    tok.add_tokens([AddedToken(p, special=False, normalized=False) for p in user])
    names = dict(bos_token=trainer.bos_id, eos_token=trainer.eos_id, pad_token=trainer.pad_id)
    special = {k: pieces[i][0] if i >= 0 else None for k, i in names.items()}
    special["unk_token"] = pieces[unk_id][0]
    return HFTokenizer(tok.to_str(), special, split_special_tokens=True)


def _bpe_merges(pieces: list[tuple[str, float, int]], normal: int) -> list[tuple[str, str]]:
    """Every (left, right) whose concatenation is a normal piece, the lowest piece id first.

    SentencePiece's BPE merges the adjacent pair whose result scores highest, and its
    scores fall with the id: ranking merges by the result's id does the same.
    """
    ids = {piece: i for i, (piece, _, _) in enumerate(pieces)}
    merges = []
    for i, (piece, _, kind) in enumerate(pieces):
        if kind != normal:
            continue
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in ids and right in ids:
                merges.append((i, ids[left], ids[right], left, right))
    return [(left, right) for *_, left, right in sorted(merges)]
