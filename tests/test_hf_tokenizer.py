"""HF tokenizers ('hf:DIR') wherever a SentencePiece model works: round trip, data caches."""

import pytest

pytest.importorskip("tokenizers")

from hf_tokenizers import EOS, byte_level_bpe, shakespeare_texts
from tiny_run import write_corpus

from llm_jax import config as config_lib
from llm_jax import data as data_lib
from llm_jax import workdir as workdir_lib
from llm_jax.hf.tokenizer import HFTokenizer, TokenizerFileError, load_hf_tokenizer
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
