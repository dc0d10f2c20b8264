"""How the validation split is made: a separate val_path, the tiny-split warning, and
`llm-jax data inspect`."""

import os

from tiny_run import write_corpus

from llm_jax import cli
from llm_jax import config as config_lib
from llm_jax import corpus as corpus_lib


def _files_config(path, cache_dir, **data):
    c = config_lib.default_config()
    c.data.update(source="files", path=str(path), cache_dir=str(cache_dir), **data)
    return config_lib.validate(c)


def test_val_path_is_the_validation_split_and_nothing_is_held_out(tmp_path):
    glob = write_corpus(tmp_path / "train")
    (tmp_path / "val.txt").write_text("a separate validation text\n")
    c = _files_config(glob, tmp_path, val_path=str(tmp_path / "val.txt"))
    corpus = corpus_lib.Corpus(c.data, tmp_path / "hf")
    assert list(corpus.documents("val")) == ["a separate validation text\n"]
    assert len(list(corpus.documents("train"))) == 8  # every training file, none held out
    assert corpus.identity["val_files"][0][0] == str((tmp_path / "val.txt").resolve())
    # Without val_path the cache key is what it was before the option existed.
    plain = corpus_lib.Corpus(_files_config(glob, tmp_path).data, tmp_path / "hf")
    assert "val_files" not in plain.identity


def test_val_path_needs_a_files_corpus(capsys):
    assert cli.run(["data", "prepare", "--config.data.val_path=/tmp/v.txt"]) == 2
    assert "val_path needs data.source='files'" in capsys.readouterr().err


def test_data_inspect_warns_of_a_tiny_split_and_decodes_a_sample(tmp_path, capsys, caplog):
    # Two one-line files with val_fraction 0.25: fewer than 4 documents, so validation is
    # the last quarter of the last file (cut inside its only line), a few kB.
    glob = write_corpus(tmp_path / "c")
    for name in sorted(os.listdir(tmp_path / "c"))[2:]:
        os.remove(tmp_path / "c" / name)
    flags = [
        "--config.data.source=files",
        f"--config.data.path={glob}",
        f"--config.data.cache_dir={tmp_path / 'cache'}",
        "--config.data.val_fraction=0.25",
        "--config.data.seq_len=16",
        "--config.model.vocab_size=320",
    ]
    assert cli.run(["data", "inspect", "--tokens", "12", *flags]) == 0
    out, err = capsys.readouterr().out, caplog.text
    assert "validation split is" in err and "the last 25% of the last document" in err
    assert "--config.data.val_path" in err
    assert "vocab 320" in out and "bytes/token" in out
    sample = out.split("first 12 tokens of val, decoded:\n")[1].split("\n")[1]
    assert sample.split()[0] in (open(sorted((tmp_path / "c").iterdir())[-1]).read())
