"""TF-IDF as a torch module, so the simple text model is a run like any other.

``--strategy auto`` fits TF-IDF + logistic regression with scikit-learn (the recipe every text
classifier is measured against) and, when it wins, saves it as the run. To predict, evaluate, serve
and resume like a neural run it becomes a :class:`~headstart.encoders.model.TransferModel`:

* :class:`TfidfTokenizer` splits texts exactly as the fitted ``TfidfVectorizer`` did (its own
  analyzer: lowercase, ``\\b\\w\\w+\\b`` words, word 1..n-grams) and returns the vocabulary row of every
  term occurrence, packed ``(N, 2, L)`` like the other text tokenizers (row 0 ids, row 1 mask).
* :class:`TfidfEncoder` counts the terms of each text, applies sublinear tf and the fitted idf, and
  L2-normalises: the same vector scikit-learn computes. The logistic-regression weights become the
  linear head.
* :class:`HybridEncoder` concatenates that vector with a pretrained sentence embedding (the "hybrid"
  candidate): ``[tf-idf, weight * embedding / ||embedding||]``.

Row 0 of the vocabulary is padding (idf 0): it never adds to a text's vector.
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from headstart.storage import atomic_path

VOCAB_FILE = "tfidf_vocab.txt"
MAX_TERMS = 4096  # term occurrences kept per text (word uni- and bigrams: about 2,000 words)


def analyzer(ngrams: int, lowercase: bool = True):
    """scikit-learn's own word analyzer (token pattern, lowercasing, n-grams): one source of truth."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    return TfidfVectorizer(ngram_range=(1, ngrams), lowercase=lowercase).build_analyzer()


class TfidfTokenizer:
    """Texts → vocabulary rows of their terms (unknown terms dropped, as scikit-learn drops them)."""

    def __init__(self, terms: Sequence[str], ngrams: int, lowercase: bool = True, max_length: int = MAX_TERMS):
        self.terms = list(terms)
        self.index = {t: i + 1 for i, t in enumerate(self.terms)}  # row 0 is padding
        self.ngrams, self.lowercase, self.max_length = ngrams, lowercase, max_length
        self._analyze = analyzer(ngrams, lowercase)

    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        rows = [[self.index[t] for t in self._analyze(s) if t in self.index][: self.max_length] for s in texts]
        width = max([len(r) for r in rows] + [1])
        out = torch.zeros(len(rows), 2, width, dtype=torch.long)
        for i, r in enumerate(rows):
            if r:
                out[i, 0, : len(r)] = torch.tensor(r, dtype=torch.long)
                out[i, 1, : len(r)] = 1
        return out

    def save(self, directory) -> None:
        with atomic_path(Path(directory) / VOCAB_FILE) as tmp:
            tmp.write_text("\n".join(self.terms) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, directory, ngrams: int, lowercase: bool, max_length: int) -> "TfidfTokenizer":
        path = Path(directory) / VOCAB_FILE
        terms = path.read_text(encoding="utf-8").split("\n")[:-1]
        return cls(terms, ngrams, lowercase, max_length)


class TfidfEncoder(nn.Module):
    """Packed term rows (B, 2, L) → L2-normalised sublinear tf-idf vectors (B, vocabulary + 1)."""

    def __init__(self, num_terms: int):
        super().__init__()
        self.register_buffer("idf", torch.zeros(num_terms + 1))  # fitted values are loaded or copied in
        self.num_features = num_terms + 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.long()
        return self.forward_ids(x[:, 0], x[:, 1])

    def forward_ids(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # the batch size read from the tensor's shape, not len(): an exported graph keeps it dynamic
        counts = mask.new_zeros((ids.shape[0], self.num_features), dtype=torch.float32)
        counts = counts.scatter_add(1, ids, mask.float())
        tf = torch.where(counts > 0, 1.0 + torch.log(counts.clamp(min=1.0)), torch.zeros_like(counts))
        return F.normalize(tf * self.idf, dim=1)

    @property
    def vocab_size(self) -> int:
        return self.num_features


class HybridTokenizer:
    """Both tokenisations of each text in one packed tensor: rows 0-1 the encoder's, rows 2-3 the tf-idf terms."""

    def __init__(self, neural, tfidf: TfidfTokenizer):
        self.neural, self.tfidf = neural, tfidf
        self.max_length = getattr(neural, "max_length", None)

    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        a, b = self.neural(texts), self.tfidf(texts)
        width = max(a.shape[-1], b.shape[-1])
        return torch.cat([F.pad(a, (0, width - a.shape[-1])), F.pad(b, (0, width - b.shape[-1]))], 1)

    def save(self, directory) -> None:
        self.neural.save(directory)
        self.tfidf.save(directory)


class HybridEncoder(nn.Module):
    """``[tf-idf vector, weight * unit-length embedding]`` of each text: (B, 4, L) → (B, V + 1 + D)."""

    def __init__(self, neural: nn.Module, tfidf: TfidfEncoder, neural_features: int, weight: float = 1.0):
        super().__init__()
        self.neural, self.tfidf = neural, tfidf
        self.register_buffer("weight", torch.tensor(float(weight)))
        self.num_features = tfidf.num_features + neural_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.long()
        return torch.cat([self.tfidf(x[:, 2:]), self.embed(x[:, :2])], 1)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The weighted unit-length sentence embedding (the encoder trims its own padding)."""
        return self.weight * F.normalize(self.neural(x).float(), dim=1)
