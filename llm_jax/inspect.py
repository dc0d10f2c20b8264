"""Looking inside a trained model: attention maps, next-token probabilities, logit lens,
embedding neighbours.

`inspect_tokens(params, cfg, tokens)` runs one text through the model's inspect mode
(`Transformer.__call__(..., inspect=True)`: attention written out, weights and residual
stream sown) and returns an `Inspection` of numpy arrays; the functions below turn it into
tables (strings) and PNGs. `llm-jax inspect` (llm_jax/cli/inspect.py) drives them.

Tensor-name letters: Y layers, H query heads, L tokens of the text (queries and keys),
S keys, V real vocabulary (padding columns dropped), D d_model, P plotted pieces.
"""

from __future__ import annotations

import dataclasses
import functools
import io
import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from llm_jax import storage
from llm_jax.model import ModelConfig, Transformer

_SPECIAL_PIECES = ("<unk>", "<s>", "</s>", "<pad>")
_WORD_MARKERS = ("▁", "Ġ")  # a piece that starts a word: SentencePiece, GPT-2 byte-level BPE


@dataclasses.dataclass(frozen=True)
class Inspection:
    """One text through the model, on the host; all probabilities over the real vocabulary."""

    tokens_L: np.ndarray  # int ids, as fed to the model
    logits_LxV: np.ndarray  # float32 next-token logits at each position
    attention_YxHxLxL: np.ndarray  # float32 weights; each query's row sums to 1
    lens_logits_YxLxV: np.ndarray  # logit lens: the residual stream after each layer, read out

    @property
    def log_probs_LxV(self) -> np.ndarray:
        """Next-token log-probabilities at each position (float64)."""
        return _log_softmax(self.logits_LxV)

    @property
    def surprise_L1(self) -> np.ndarray:
        """Loss (nats) of each actual next token: -log p(token[t + 1] | tokens[:t + 1])."""
        log_probs_LxV = self.log_probs_LxV
        return -log_probs_LxV[np.arange(len(self.tokens_L) - 1), self.tokens_L[1:]]

    @property
    def entropy_L(self) -> np.ndarray:
        """Entropy (nats) of the next-token distribution at each position."""
        log_probs_LxV = self.log_probs_LxV
        return -(np.exp(log_probs_LxV) * log_probs_LxV).sum(-1)


def _log_softmax(logits_xV: np.ndarray) -> np.ndarray:
    z = logits_xV.astype(np.float64)
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def stacked_attention(intermediates: dict, n_layers: int) -> jax.Array:
    """Attention weights [Y, B, H, L, S] from the 'intermediates' of an inspect call."""
    if "layers" in intermediates:  # scanned layers sow one array stacked over layers
        return intermediates["layers"]["attn"]["attention_weights"][0]
    return jnp.stack(
        [intermediates[f"layer_{i}"]["attn"]["attention_weights"][0] for i in range(n_layers)]
    )


@functools.cache
def _inspect_fn(cfg: ModelConfig):
    model = Transformer(cfg)

    @jax.jit
    def run(params, tokens_1xL):
        logits_1xLxV, state = model.apply(
            {"params": params}, tokens_1xL, inspect=True, mutable=["intermediates"]
        )
        sown = state["intermediates"]
        attention_YxHxLxL = stacked_attention(sown, cfg.n_layers)[:, 0]
        lens_YxLxV = sown["logit_lens"][0][:, 0, :, : cfg.vocab_size]
        return logits_1xLxV[0, :, : cfg.vocab_size], attention_YxHxLxL, lens_YxLxV

    return run


def inspect_tokens(params, cfg: ModelConfig, tokens: Sequence[int]) -> Inspection:
    """Run `tokens` (one text, at most cfg.max_seq_len of them) through the model."""
    logits, attention, lens = _inspect_fn(cfg)(
        nn.meta.unbox(params), jnp.asarray([list(tokens)], jnp.int32)
    )
    return Inspection(
        tokens_L=np.asarray(tokens),
        logits_LxV=np.asarray(logits),
        attention_YxHxLxL=np.asarray(attention),
        lens_logits_YxLxV=np.asarray(lens),
    )


# --- pieces -------------------------------------------------------------------------------


def display_pieces(tokenizer, vocab_size: int) -> list[str]:
    """Every id's piece as printed and plotted: whitespace made visible, '▁' kept."""
    return [
        tokenizer.id_to_piece(i).replace("\n", "\\n").replace("\t", "\\t")
        for i in range(vocab_size)
    ]


def _as_written_or_word(piece: str) -> tuple[str, ...]:
    """`piece` as written, and as the start of a word in running text ('▁' + piece)."""
    return (piece, *(marker + piece for marker in _WORD_MARKERS))


def find_piece(pieces: Sequence[str], word: str) -> list[int]:
    """Ids to look up for `word`: the piece itself, or as a word in running text ('▁' + word)."""
    return [i for name in _as_written_or_word(word) for i, p in enumerate(pieces) if p == name]


def frequent_pieces(pieces: Sequence[str], count: int) -> list[int]:
    """Ids of the first `count` ordinary pieces in the tokenizer's ranking.

    SentencePiece ranks its BPE merges by the frequency of the merged pair in the text it
    was trained on (single characters follow, also by frequency), so the first merges are
    the most frequent multi-character pieces; special and byte pieces are skipped.
    """
    ordinary = [
        i
        for i, p in enumerate(pieces)
        if p not in _SPECIAL_PIECES and not (p.startswith("<0x") and p.endswith(">"))
    ]
    return ordinary[:count]


# --- tables ----------------------------------------------------------------------------------


def _top(probs_V: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-probs_V, kind="stable")[:k]


def next_token_table(insp: Inspection, pieces: Sequence[str], k: int) -> str:
    """Per position: the token, the actual next one with its probability and loss, the
    entropy, and the top-k predictions."""
    probs_LxV = np.exp(insp.log_probs_LxV)
    surprise, entropy = insp.surprise_L1, insp.entropy_L
    rows = [["pos", "token", "next", "p(next)", "loss", "entropy", f"top {k} predictions"]]
    for t, token in enumerate(insp.tokens_L):
        last = t == len(insp.tokens_L) - 1
        nxt = None if last else int(insp.tokens_L[t + 1])
        top = "  ".join(f"{pieces[i]} {probs_LxV[t, i]:.2f}" for i in _top(probs_LxV[t], k))
        rows.append(
            [
                str(t),
                pieces[token],
                "" if last else pieces[nxt],
                "" if last else f"{probs_LxV[t, nxt]:.3f}",
                "" if last else f"{surprise[t]:.2f}",
                f"{entropy[t]:.2f}",
                top,
            ]
        )
    return _format_rows(rows)


def logit_lens_table(insp: Inspection, pieces: Sequence[str]) -> str:
    """Per position (rows) and layer (columns): the top next-token prediction read from the
    residual stream after that layer, with its probability; the last column is the model's."""
    probs_YxLxV = np.exp(_log_softmax(insp.lens_logits_YxLxV))
    top_YxL = probs_YxLxV.argmax(-1)
    rows = [["pos", "token", *[f"layer {y + 1}" for y in range(len(top_YxL))]]]
    for t, token in enumerate(insp.tokens_L):
        cells = [f"{pieces[i]} {probs_YxLxV[y, t, i]:.2f}" for y, i in enumerate(top_YxL[:, t])]
        rows.append([str(t), pieces[token], *cells])
    return _format_rows(rows)


def head_summary_table(insp: Inspection) -> str:
    """Per layer and head: the mean weight a token gives to itself, to the token before it
    and to the first token, over every token but the first (which can only see itself).

    A head near 1 in one column is that kind of head (e.g. a previous-token head)."""
    L = len(insp.tokens_L)
    t_T = np.arange(1, L)
    rows = [["layer", "head", "itself", "previous", "first"]]
    for y, weights_HxLxL in enumerate(insp.attention_YxHxLxL):
        for h, weights_LxL in enumerate(weights_HxLxL):
            itself, previous = weights_LxL[t_T, t_T].mean(), weights_LxL[t_T, t_T - 1].mean()
            first = weights_LxL[t_T, 0].mean()
            rows.append([str(y + 1), str(h + 1), *(f"{m:.2f}" for m in (itself, previous, first))])
    return _format_rows(rows)


def resolve_query(query: str, pieces_L: Sequence[str]) -> int:
    """Position of `--query-token`: an index (negative counts from the end) or a piece,
    matched as written or as a word ('▁' + piece); the last occurrence wins."""
    try:
        index = int(query)
    except ValueError:
        matches = [t for t, p in enumerate(pieces_L) if p in _as_written_or_word(query)]
        if not matches:
            raise ValueError(
                f"{query!r} is not one of the text's pieces: {' '.join(pieces_L)}"
            ) from None
        return matches[-1]
    if not -len(pieces_L) <= index < len(pieces_L):
        raise ValueError(f"token index {index} is outside the text's {len(pieces_L)} tokens")
    return index % len(pieces_L)


def query_table(insp: Inspection, pieces: Sequence[str], query: int, k: int) -> str:
    """Per layer and head: the `k` tokens position `query` attends to most, with weights."""
    rows = [["layer", "head", f"top {k} attended (position:token weight)"]]
    weights_YxHxS = insp.attention_YxHxLxL[:, :, query, : query + 1]
    for y, weights_HxS in enumerate(weights_YxHxS):
        for h, weights_S in enumerate(weights_HxS):
            top = "  ".join(
                f"{s}:{pieces[insp.tokens_L[s]]} {weights_S[s]:.2f}" for s in _top(weights_S, k)
            )
            rows.append([str(y + 1), str(h + 1), top])
    return _format_rows(rows)


def _format_rows(rows: list[list[str]]) -> str:
    """Columns left-aligned to their widest cell; the last column is not padded."""
    widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]) - 1)]
    return "\n".join(
        "  ".join([*(cell.ljust(w) for cell, w in zip(row, widths, strict=False)), row[-1]])
        for row in rows
    )


# --- embeddings ------------------------------------------------------------------------------


def embedding_tables(params, cfg: ModelConfig) -> dict[str, np.ndarray]:
    """The vocabulary's vectors [V, D]: 'input' (token embedding), and 'output' (the output
    layer's columns) when the embeddings are untied."""
    params = nn.meta.unbox(params)
    vocab = cfg.vocab_size
    tables = {"input": np.asarray(params["token_embed"], np.float32)[:vocab]}
    if not cfg.tie_embeddings:
        tables["output"] = np.asarray(params["lm_head"], np.float32).T[:vocab]
    return tables


def neighbours(table_VxD: np.ndarray, piece: int, k: int) -> list[tuple[int, float]]:
    """The `k` pieces nearest to `piece` by cosine similarity: itself first (at 1, even when
    another piece points the same way), then the others, most similar first."""
    unit_VxD = table_VxD / np.maximum(np.linalg.norm(table_VxD, axis=-1, keepdims=True), 1e-12)
    similarity_V = unit_VxD @ unit_VxD[piece]
    others = [int(i) for i in _top(similarity_V, k + 1) if i != piece]
    return [(i, float(similarity_V[i])) for i in [piece, *others][:k]]


def neighbours_table(
    tables: dict[str, np.ndarray], pieces: Sequence[str], piece: int, k: int
) -> str:
    """`neighbours` of `piece` in each embedding table, one line per table."""
    lines = []
    for name, table_VxD in tables.items():
        near = "  ".join(f"{pieces[i]} {sim:.2f}" for i, sim in neighbours(table_VxD, piece, k))
        lines.append(f"{name:<6} {near}")
    return "\n".join(lines)


def pca_2d(vectors_PxD: np.ndarray) -> np.ndarray:
    """Coordinates [P, 2] of the vectors on their two principal axes."""
    centred_PxD = vectors_PxD - vectors_PxD.mean(0)
    _, _, axes_DxD = np.linalg.svd(centred_PxD, full_matrices=False)
    return centred_PxD @ axes_DxD[:2].T


# --- plots -------------------------------------------------------------------------------------


def plot_attention(weights_HxLxL: np.ndarray, labels: Sequence[str], title: str, path) -> None:
    """One layer's heads as small multiples: queries down, keys across, pieces as ticks.

    The colour scale is the same for every head (0 to 1) and stretched at the low end
    (square root), so weak but structured patterns stay visible next to strong ones.
    """
    H, L = weights_HxLxL.shape[:2]
    cols = math.ceil(math.sqrt(H))
    rows = math.ceil(H / cols)
    panel = max(2.5, 0.15 * L + 0.8)  # inches: room for one tick label per token
    fig, axes = plt.subplots(
        rows,
        cols,
        figsize=(panel * cols + 1.2, panel * rows + 0.5),
        squeeze=False,
        layout="constrained",
    )
    font = max(5, min(9, 260 // max(L, 1)))
    norm = matplotlib.colors.PowerNorm(gamma=0.5, vmin=0.0, vmax=1.0)
    for h, ax in enumerate(axes.flat):
        if h >= H:
            ax.axis("off")
            continue
        image = ax.imshow(weights_HxLxL[h], cmap="Blues", norm=norm)
        ax.set_title(f"head {h + 1}", fontsize=10)
        ax.set_xticks(range(L), labels, rotation=90, fontsize=font)
        ax.set_yticks(range(L), labels, fontsize=font)
        ax.tick_params(length=0)
    fig.colorbar(image, ax=axes, shrink=0.5, label="attention weight")
    fig.suptitle(f"{title}: each row is a token, its colours where it attends", fontsize=11)
    _save(fig, path)


def plot_surprise(surprise_L1: np.ndarray, labels: Sequence[str], path) -> None:
    """Loss of each actual next token along the text: where the model is surprised."""
    L1 = len(surprise_L1)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.22 * L1 + 1.5), 3.6), layout="constrained")
    ax.bar(range(L1), surprise_L1, color="tab:red", alpha=0.75)
    ax.set_xticks(range(L1), labels, rotation=90, fontsize=max(6, min(10, 320 // max(L1, 1))))
    ax.set_xlim(-0.6, L1 - 0.4)
    ax.set_ylabel("loss of the token (nats)")
    ax.set_title(f"surprise: -log p(token | text before it); mean {surprise_L1.mean():.2f} nats")
    ax.grid(axis="y", alpha=0.3)
    _save(fig, path)


def plot_embedding(coords_Px2: np.ndarray, labels: Sequence[str], title: str, path) -> None:
    """Pieces placed at their 2-D PCA coordinates, each written as its text."""
    fig, ax = plt.subplots(figsize=(9, 9), layout="constrained")
    ax.scatter(coords_Px2[:, 0], coords_Px2[:, 1], s=4, color="tab:gray")
    for (x, y), label in zip(coords_Px2, labels, strict=True):
        ax.annotate(label, (x, y), fontsize=8, xytext=(2, 2), textcoords="offset points")
    ax.set_xlabel("principal axis 1")
    ax.set_ylabel("principal axis 2")
    ax.set_title(title)
    _save(fig, path)


def _save(fig, path) -> None:
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=110)
    plt.close(fig)
    storage.write_bytes(path, png.getvalue())


def save_attention(insp: Inspection, labels: Sequence[str], path) -> None:
    """The raw weights as .npz: attention [Y, H, L, L] (layer, head, query, key), tokens,
    pieces."""
    npz = io.BytesIO()
    np.savez(npz, attention=insp.attention_YxHxLxL, tokens=insp.tokens_L, pieces=np.array(labels))
    storage.write_bytes(path, npz.getvalue())
