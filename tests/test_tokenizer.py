"""The SentencePiece tokenizer: lossless round trips, special ids, save/load, clear errors."""

import pytest

from llm_jax import corpus
from llm_jax.tokenizer import DataError, load_tokenizer, train_tokenizer


@pytest.fixture(scope="session")
def plays():
    root = corpus.shakespeare_dir()
    return [p.read_text(encoding="utf-8") for p in sorted(root.rglob("*.md"))]


@pytest.fixture(scope="session")
def tokenizer(plays):
    # 1M characters train a 512-piece BPE in well under a second on one core.
    return train_tokenizer(plays, vocab_size=512, model_type="bpe", max_chars=1_000_000)


def test_round_trip_whole_embedded_corpus(tokenizer, plays):
    assert len(plays) == 38
    ids = tokenizer.encode_batch(plays)
    assert [tokenizer.decode(i) for i in ids] == plays
    # Merges must actually compress: far fewer tokens than bytes.
    assert sum(map(len, ids)) < 0.7 * sum(len(p.encode()) for p in plays)


AWKWARD = [
    "",
    "\n\n\nblank lines\n\n\n",
    "\ttabs\tinside\t\t\n\t",
    "trailing spaces   \n  leading and  double  spaces  ",
    "Windows\r\nline ends\r\n",
    "Русский текст, ελληνικά, 中文字符, العربية, हिन्दी",
    "emoji 🎉👍🏽 and a family 👨‍👩‍👧 and flags 🇫🇷",
    "SentencePiece's own space symbol \u2581 and \u2581\u2581 twice",
    "control \x00\x01\x7f and combining e\u0301 and \ufeffBOM",
    "numbers 3.14159 and 1,000,000",
]


@pytest.mark.parametrize("text", AWKWARD)
def test_round_trip_awkward_text(tokenizer, text):
    assert tokenizer.decode(tokenizer.encode(text)) == text


def test_special_ids_and_digits(tokenizer):
    assert (tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id) == (1, 2, 3)
    assert tokenizer.vocab_size == 512
    ids = tokenizer.encode("Exit, pursued by a bear.\n")
    assert tokenizer.eos_id not in ids and tokenizer.bos_id not in ids
    text = tokenizer.decode([tokenizer.bos_id, *ids, tokenizer.eos_id])
    assert text == "Exit, pursued by a bear.\n"
    # split_digits: a number is one token per digit, never a merged "20" or "024".
    assert [tokenizer.decode([i]) for i in tokenizer.encode("2024")] == ["2", "0", "2", "4"]


def test_unigram_is_lossless_too(plays):
    unigram = train_tokenizer(plays, vocab_size=400, model_type="unigram", max_chars=150_000)
    assert unigram.vocab_size == 400
    for text in AWKWARD:
        assert unigram.decode(unigram.encode(text)) == text


def test_save_then_load_gives_the_same_model(tokenizer, tmp_path):
    path = tmp_path / "sub" / "spm.model"
    tokenizer.save(path)
    assert [p.name for p in path.parent.iterdir()] == ["spm.model"]  # no temporary left
    loaded = load_tokenizer(path, vocab_size=512)
    assert loaded.sha256 == tokenizer.sha256
    assert loaded.encode("To be, or not to be") == tokenizer.encode("To be, or not to be")


def test_loaded_vocab_mismatch_names_the_flag(tokenizer, tmp_path):
    tokenizer.save(tmp_path / "spm.model")
    with pytest.raises(DataError, match=r"--config\.model\.vocab_size=512$"):
        load_tokenizer(tmp_path / "spm.model", vocab_size=1024)


def test_missing_or_corrupt_model_file(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        load_tokenizer(tmp_path / "nope.model")
    (tmp_path / "junk.model").write_bytes(b"not a protobuf")
    with pytest.raises(DataError, match="not a SentencePiece model"):
        load_tokenizer(tmp_path / "junk.model")


def test_vocab_size_the_corpus_cannot_support():
    text = ["To be, or not to be, that is the question.\n" * 3]
    with pytest.raises(DataError, match=r"at most \d+ tokens.*--config\.model\.vocab_size=\d+"):
        train_tokenizer(text, vocab_size=4000)
    with pytest.raises(DataError, match=r"too small.*--config\.model\.vocab_size=\d+ or more"):
        train_tokenizer(text, vocab_size=270)


def test_no_text_is_a_clear_error():
    with pytest.raises(DataError, match="no training text"):
        train_tokenizer(["", ""], vocab_size=512)
