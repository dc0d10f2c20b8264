"""HF tokenizers ('hf:DIR') wherever a SentencePiece model works: round trip, data caches."""

import pytest

pytest.importorskip("tokenizers")

from hf_tokenizers import EOS, byte_level_bpe, shakespeare_texts
from tiny_run import write_corpus

from llm_jax import config as config_lib
from llm_jax import data as data_lib
from llm_jax import workdir as workdir_lib
from llm_jax.hf.tokenizer import (
    HFTokenizer,
    TokenizerFileError,
    from_sentencepiece,
    load_hf_tokenizer,
)
from llm_jax.tokenizer import load_tokenizer


@pytest.fixture(scope="module")
def bpe_dir(tmp_path_factory):
    return byte_level_bpe(tmp_path_factory.mktemp("bpe"))


def test_byte_level_bpe_round_trips_the_corpus(bpe_dir):
    tokenizer = load_tokenizer(f"hf:{bpe_dir}")
    assert isinstance(tokenizer, HFTokenizer)
    assert tokenizer.eos_id == tokenizer._tok.token_to_id(EOS)
    texts = shakespeare_texts(4) + ["tabs\tand  spaces \n\n", "naïve café — ☃ 😀", "▁x"]
    for text, ids in zip(texts, tokenizer.encode_batch(texts), strict=True):
        assert tokenizer.decode(ids) == text
    assert tokenizer.decode([tokenizer.eos_id]) == ""  # control ids decode to nothing


def test_data_prepare_uses_it_and_counts_bytes_per_token(bpe_dir, tmp_path):
    config = config_lib.default_config()
    config.data.update(
        source="files",
        path=write_corpus(tmp_path / "corpus"),
        val_fraction=0.25,
        tokenizer_path=f"hf:{bpe_dir}",
        cache_dir=str(tmp_path / "cache"),
    )
    config.model.vocab_size = 300
    prepared = data_lib.prepare(config)
    assert prepared.tokenizer.sha256 == load_hf_tokenizer(bpe_dir).sha256
    assert prepared.manifest["eos_id"] == prepared.tokenizer.eos_id
    docs = list(data_lib.Corpus(config.data, tmp_path / "hf").documents("val"))
    n_bytes = sum(len(d.encode()) for d in docs)
    n_tokens = sum(len(ids) + 1 for ids in prepared.tokenizer.encode_batch(docs))  # + eos each
    assert prepared.val_bytes_per_token == pytest.approx(n_bytes / n_tokens)
    assert prepared.val_tokens == n_tokens


def test_workdir_copy_loads_back(bpe_dir, tmp_path):
    tokenizer = load_hf_tokenizer(bpe_dir)
    workdir_lib.save_run_tokenizer(str(tmp_path), tokenizer)
    again = workdir_lib.load_run_tokenizer(str(tmp_path))
    assert again.sha256 == tokenizer.sha256
    assert again.encode("Exeunt omnes") == tokenizer.encode("Exeunt omnes")


def test_errors_name_the_fix(bpe_dir, tmp_path):
    with pytest.raises(TokenizerFileError, match="tokenizer.json"):
        load_tokenizer(f"hf:{tmp_path}")
    with pytest.raises(TokenizerFileError, match="set --config.model.vocab_size=300"):
        load_tokenizer(f"hf:{bpe_dir}", vocab_size=256)


AWKWARD = ["tabs\tand  spaces \n\n", " lead", "naïve café — ☃ 😀", "x 12345 y"]
SPECIAL_TEXT = "<s> is text, </s> too"  # SentencePiece encodes a control token's name as text


@pytest.fixture(scope="module", params=["bpe", "unigram"])
def sentencepiece(request):
    from llm_jax.tokenizer import train_tokenizer

    plays = shakespeare_texts(40)
    model = train_tokenizer(plays, vocab_size=400, model_type=request.param, max_chars=500_000)
    return request.param, model


def _auto_tokenizer(sentencepiece, folder):
    transformers = pytest.importorskip("transformers")
    from_sentencepiece(sentencepiece.model_proto).save(folder)
    return transformers.AutoTokenizer.from_pretrained(folder)


def test_sentencepiece_as_autotokenizer_same_ids_lossless(sentencepiece, tmp_path):
    """transformers encodes like llm_jax's SentencePiece model and decodes back exactly."""
    model_type, sentencepiece = sentencepiece
    auto = _auto_tokenizer(sentencepiece, tmp_path)
    texts = shakespeare_texts(2) + AWKWARD
    got = auto(texts, add_special_tokens=False)["input_ids"]
    want = sentencepiece.encode_batch(texts)
    assert sum(map(len, want)) > 10_000
    assert got == want
    assert [auto.decode(ids, skip_special_tokens=True) for ids in got] == texts
    assert (auto.bos_token_id, auto.eos_token_id) == (sentencepiece.bos_id, sentencepiece.eos_id)
    again = load_hf_tokenizer(tmp_path)  # and llm_jax reads it back ('hf:DIR') the same
    assert again.encode_batch(texts) == want
    # Where they differ: llm_jax spells a literal U+2581 in bytes, tokenizers reads a space;
    # a Unigram model may match a control token's name in text as that token.
    assert auto.decode(auto("a\u2581b", add_special_tokens=False)["input_ids"]) == "a b"
    special = auto(SPECIAL_TEXT, add_special_tokens=False)["input_ids"]
    assert (special == sentencepiece.encode(SPECIAL_TEXT)) == (model_type == "bpe")


@pytest.mark.slow  # the whole corpus: ~3.5M tokens through both tokenizers
def test_sentencepiece_as_autotokenizer_whole_corpus(sentencepiece, tmp_path):
    model_type, sentencepiece = sentencepiece
    auto = _auto_tokenizer(sentencepiece, tmp_path)
    texts = shakespeare_texts(40)  # all of them
    if model_type == "unigram":
        # SentencePiece's Viterbi sums scores in float32: tens of thousands of tokens into
        # a play, near-ties between two segmentations fall either way (8 plays of 38 differ
        # in a few tokens). Line by line, as documents this long rarely come, all agree.
        texts = [line for play in texts for line in play.split("\n")]
    got = auto(texts, add_special_tokens=False)["input_ids"]
    assert got == sentencepiece.encode_batch(texts)
    assert [auto.decode(ids) for ids in got] == texts
