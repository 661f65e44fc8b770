"""Text backbones as plain modules: a Hugging Face encoder with pooling, and a bag of word vectors.

Both take one int64 tensor ``(B, 2, L)``: row 0 the token ids, row 1 the attention mask (1 = real
token). Packing ids and mask into one tensor lets the image training loop, the feature cache and the
checkpoints handle text unchanged. Each batch is trimmed to its longest real sequence first, so
padding costs nothing once batches are grouped by length (see :func:`sort_by_length`).
"""
from __future__ import annotations

import re
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from headstart.encoders.base import Stage
from headstart.errors import BackboneError
from headstart.storage import atomic_path

POOLINGS = ("mean", "cls", "max", "tfidf")


def trim(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask) of a packed batch, cut to the longest real sequence in it."""
    x = x.long()
    ids, mask = x[:, 0], x[:, 1]
    longest = max(int(mask.sum(1).max()), 1) if len(x) else 1
    return ids[:, :longest], mask[:, :longest]


def pool(hidden: torch.Tensor, mask: torch.Tensor, how: str) -> torch.Tensor:
    """Sentence embedding from token states (B, L, D) — as sentence-transformers' Pooling module does."""
    if how == "cls":
        return hidden[:, 0]
    m = mask.unsqueeze(-1).to(hidden.dtype)
    if how == "max":
        return hidden.masked_fill(m == 0, torch.finfo(hidden.dtype).min).amax(1)
    return (hidden * m).sum(1) / m.sum(1).clamp(min=1.0)


class HFEncoder(nn.Module):
    """A Hugging Face encoder (``AutoModel``) followed by pooling: (B, 2, L) → (B, hidden).

    With ``window`` set (long texts, :class:`HFTokenizer` ``windows > 1``) a row holds K windows of
    ``window`` positions side by side, (B, 2, K * window): each window is encoded on its own (it carries
    its own [CLS] ... [SEP]) and the text's embedding pools over all of them — for mean pooling the mean
    over every real token of every window, for max the max, for cls the mean of the windows' [CLS].
    """

    def __init__(self, model: nn.Module, pooling: str = "mean", normalize: bool = False, window: int = 0):
        super().__init__()
        if pooling not in ("mean", "cls", "max"):
            raise BackboneError(f"pooling {pooling!r} is not available for hf: backbones; use mean, cls or max.")
        self.model = model
        self.pooling = pooling
        self.normalize = normalize
        self.window = window  # 0: one window (texts truncated to the tokenizer's max_length)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.window and x.shape[-1] > self.window:
            return self.forward_windows(x.long())
        return self.forward_ids(*trim(x))

    def forward_windows(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, (0, (-x.shape[-1]) % self.window))  # padded wider by a caller (the hybrid): whole windows
        b, _, width = x.shape
        k = width // self.window
        win = x.view(b, 2, k, self.window).permute(0, 2, 1, 3).reshape(b * k, 2, self.window)
        used = win[:, 1].sum(1) > 0  # texts shorter than the longest leave empty windows: skip them
        ids, mask = trim(win[used])
        hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
        owner = torch.arange(b, device=x.device).repeat_interleave(k)[used]
        m = mask.unsqueeze(-1).to(hidden.dtype)
        out = hidden.new_zeros(b, hidden.shape[-1])
        if self.pooling == "max":
            per = hidden.masked_fill(m == 0, torch.finfo(hidden.dtype).min).amax(1)
            out = out.fill_(torch.finfo(hidden.dtype).min).index_reduce_(0, owner, per, "amax")
        elif self.pooling == "cls":
            out.index_add_(0, owner, hidden[:, 0])
            out = out / torch.bincount(owner, minlength=b).clamp(min=1).unsqueeze(1).to(out.dtype)
        else:  # token-weighted: a window of 200 real tokens counts 200 times one of 20
            out.index_add_(0, owner, (hidden * m).sum(1))
            count = hidden.new_zeros(b).index_add_(0, owner, m.sum((1, 2)))
            out = out / count.clamp(min=1.0).unsqueeze(1)
        return F.normalize(out.float(), dim=-1) if self.normalize else out

    def forward_ids(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, L) ids and mask → (B, hidden); no data-dependent trimming, so it exports as one graph."""
        hidden = self.model(input_ids=ids, attention_mask=mask).last_hidden_state
        out = pool(hidden, mask, self.pooling)
        return F.normalize(out.float(), dim=-1) if self.normalize else out


class BagOfVectors(nn.Module):
    """Word vectors averaged over a text (mean, or tf-idf weighted): (B, 2, L) → (B, dim).

    Index 0 is padding and unknown words (mask 0), so they never count. ``idf`` is a buffer fitted on
    the training texts (:meth:`fit_idf`) and saved with the weights; it stays 1 for plain means.
    """

    def __init__(self, num_words: int, dim: int, pooling: str = "mean"):
        super().__init__()
        if pooling not in ("mean", "tfidf"):
            raise BackboneError(f"pooling {pooling!r} is not available for vectors: backbones; use mean or tfidf.")
        self.embeddings = nn.Embedding(num_words, dim, padding_idx=0)
        self.register_buffer("idf", torch.ones(num_words))
        self.pooling = pooling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_ids(*trim(x))

    def forward_ids(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, L) ids and mask → (B, dim); padding (mask 0) adds nothing, so any padded width gives the same."""
        weights = mask.float() * self.idf[ids]
        vectors = self.embeddings(ids)
        return (vectors * weights.unsqueeze(-1)).sum(1) / weights.sum(1, keepdim=True).clamp(min=1e-6)

    @torch.no_grad()
    def fit_idf(self, x: torch.Tensor) -> None:
        """Smoothed idf of each word over the training texts (scikit-learn's formula)."""
        if self.pooling != "tfidf":
            return
        ids, mask = trim(x)
        df = torch.zeros_like(self.idf)
        for row, m in zip(ids, mask):  # each word counts once per text
            df[row[m.bool()].unique()] += 1
        self.idf.copy_(torch.log((1 + len(ids)) / (1 + df)) + 1)


def transformer_stages(encoder: HFEncoder) -> list[Stage]:
    """Embeddings, each transformer layer, then whatever follows (pooler / final norm), in order.

    The layers are the longest ``nn.ModuleList`` of identical blocks: that finds BERT's
    ``encoder.layer``, DistilBERT's ``transformer.layer`` and RoBERTa/XLM-R alike.
    """
    lists = [(n, m) for n, m in encoder.named_modules()
             if isinstance(m, nn.ModuleList) and len(m) and len({type(c) for c in m}) == 1]
    if not lists:
        return [Stage("encoder", tuple(n for n, _ in encoder.named_parameters()))]
    prefix, layers = max(lists, key=lambda nm: len(nm[1]))
    before, after, per_layer = [], [], [[] for _ in layers]
    for name, _ in encoder.named_parameters():
        if name.startswith(prefix + "."):
            per_layer[int(name[len(prefix) + 1:].split(".")[0])].append(name)
        elif not any(per_layer):
            before.append(name)
        else:
            after.append(name)
    stages = [Stage("embeddings", tuple(before))] if before else []
    stages += [Stage(f"layer.{i}", tuple(p)) for i, p in enumerate(per_layer) if p]
    if after:
        stages.append(Stage(_top_name(after), tuple(after)))
    return stages


def _top_name(params: list[str]) -> str:
    tops = dict.fromkeys(p.split(".")[1] if p.startswith("model.") else p.split(".")[0] for p in params)
    return "+".join(tops)


# ----------------------------------------------------------------------------- tokenizers
class HFTokenizer:
    """A ``transformers`` tokenizer that returns packed (N, 2, L) tensors.

    ``windows > 1``: a text longer than ``max_length`` tokens becomes up to ``windows`` overlapping windows
    (``stride`` tokens shared by neighbours, each with its own special tokens), laid side by side:
    (N, 2, K * max_length), K the most windows any text in the call needs (:class:`HFEncoder` pools them).
    """

    def __init__(self, tokenizer, max_length: int, windows: int = 1, stride: int = 0):
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.windows, self.stride = windows, stride

    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        if self.windows > 1:
            return self._windows(texts)
        enc = self.tokenizer(list(texts), truncation=True, max_length=self.max_length, padding="longest",
                             return_tensors="pt")
        return torch.stack([enc["input_ids"], enc["attention_mask"]], 1).long()

    def _windows(self, texts: Sequence[str]) -> torch.Tensor:
        enc = self.tokenizer(list(texts), truncation=True, max_length=self.max_length, stride=self.stride,
                             return_overflowing_tokens=True, padding="max_length", return_tensors="pt")
        owner = enc["overflow_to_sample_mapping"].tolist()
        packed = torch.stack([enc["input_ids"], enc["attention_mask"]], 1).long()  # (windows, 2, W)
        rows: list[list[torch.Tensor]] = [[] for _ in texts]
        for w, i in enumerate(owner):
            if len(rows[i]) < self.windows:  # the text's first `windows` windows; the rest is cut
                rows[i].append(packed[w])
        k = max([len(r) for r in rows] + [1])
        out = torch.zeros(len(texts), 2, k * self.max_length, dtype=torch.long)
        for i, r in enumerate(rows):
            if r:
                out[i, :, : len(r) * self.max_length] = torch.cat(r, dim=-1)
        return out

    def n_tokens(self, texts: Sequence[str]) -> list[int]:
        """Tokens of each text without truncation (special tokens included)."""
        # A max_length beyond any text instead of truncation=False: the same counts, without transformers'
        # "sequence length is longer than the specified maximum" warning.
        enc = self.tokenizer(list(texts), truncation=True, max_length=1 << 30)
        return [len(ids) for ids in enc["input_ids"]]

    def save(self, directory) -> None:
        self.tokenizer.save_pretrained(directory)


_WORD = re.compile(r"n't|'\w+|\w+|[^\w\s]")


class WordTokenizer:
    """Words → rows of a word-vector table, split the way GloVe's corpus was (``don't`` → do n't)."""

    def __init__(self, words: Sequence[str], max_length: int, lowercase: bool):
        # Row 0 is reserved for padding and unknown words: the table is shifted by one.
        self.index = {w: i + 1 for i, w in enumerate(words)}
        self.words = list(words)
        self.max_length = max_length
        self.lowercase = lowercase

    def tokens(self, text: str) -> list[str]:
        text = text.lower() if self.lowercase else text
        return _WORD.findall(re.sub(r"(\w)n't\b", r"\1 n't", text))

    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        rows = [[self.index.get(t, 0) for t in self.tokens(s)][: self.max_length] for s in texts]
        width = max([len(r) for r in rows] + [1])
        out = torch.zeros(len(rows), 2, width, dtype=torch.long)
        for i, r in enumerate(rows):
            out[i, 0, : len(r)] = torch.tensor(r, dtype=torch.long)
            out[i, 1, : len(r)] = (out[i, 0, : len(r)] > 0).long()  # unknown words carry no weight
        return out

    def coverage(self, texts: Sequence[str]) -> float:
        """Fraction of word tokens found in the vocabulary (reported: low coverage = wrong vectors)."""
        seen = known = 0
        for s in texts:
            toks = self.tokens(s)
            seen += len(toks)
            known += sum(t in self.index for t in toks)
        return known / max(seen, 1)

    def save(self, directory) -> None:
        from pathlib import Path


        with atomic_path(Path(directory) / "vocab.txt") as tmp:
            tmp.write_text("\n".join(self.words) + "\n", encoding="utf-8")


def pad_to(x: torch.Tensor, width: int) -> torch.Tensor:
    return F.pad(x, (0, width - x.shape[-1])) if x.shape[-1] < width else x


def tokenize(tokenizer, texts: Sequence[str], batch_size: int = 2048) -> torch.Tensor:
    """All texts as one packed (N, 2, L) tensor, L = the longest; tokenised in chunks to bound memory."""
    parts = [tokenizer(texts[i:i + batch_size]) for i in range(0, len(texts), batch_size)]
    if not parts:
        return torch.zeros(0, 2, 1, dtype=torch.long)
    width = max(p.shape[-1] for p in parts)
    return torch.cat([pad_to(p, width) for p in parts])


def sort_by_length(tokens: torch.Tensor) -> torch.Tensor:
    """Order (longest first) that groups texts of similar length into the same batch."""
    return torch.argsort(tokens[:, 1].sum(1), descending=True, stable=True)


def padding_waste(tokens: torch.Tensor, batch_size: int) -> float:
    """Fraction of computed positions that are padding when batched in this order (for the docs/tests)."""
    lengths = tokens[:, 1].sum(1)
    total = real = 0
    for i in range(0, len(lengths), batch_size):
        chunk = lengths[i:i + batch_size]
        total += int(chunk.max()) * len(chunk) if len(chunk) else 0
        real += int(chunk.sum())
    return 1.0 - real / max(total, 1)

