"""The text candidates: TF-IDF + logistic regression, and the hybrid of TF-IDF and the pretrained embedding.

Both are fitted with scikit-learn (logistic regression, C by 5-fold cross-validation on the training
texts only) and then written into a :class:`TransferModel` (:mod:`headstart.encoders.tfidf`), so the
run saves, loads, predicts and serves like a neural one.
"""
from __future__ import annotations

import dataclasses
import time
from collections import Counter
from typing import Any, Sequence

import numpy as np
import torch

from headstart.candidates import Candidate
from headstart.encoders.base import tensors_sha256
from headstart.encoders.model import TransferModel
from headstart.encoders.text import sort_by_length, tokenize
from headstart.encoders.tfidf import (
    MAX_TERMS,
    HybridEncoder,
    HybridTokenizer,
    TfidfEncoder,
    TfidfTokenizer,
)

C_GRID = (0.1, 1.0, 10.0, 100.0)
HYBRID_WEIGHTS = (1.0, 2.0)  # the embedding block's length beside the unit-length tf-idf vector
TFIDF_WHAT = "TF-IDF (word 1-2 grams) + logistic regression"


def _head_weights(lr, classes: list, num_features: int, offset: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Logistic-regression coefficients as a linear head over ``classes`` (the run's order).

    Binary scikit-learn models keep one row (the second class's log-odds): the first class gets 0, so the
    softmax of the two logits is the same sigmoid. ``offset``: feature columns before the model's own
    (row 0 of the tf-idf vector is padding and stays 0)."""
    where = {str(c): i for i, c in enumerate(classes)}
    weight = torch.zeros(len(classes), num_features)
    bias = torch.zeros(len(classes))
    coef = torch.as_tensor(np.asarray(lr.coef_), dtype=torch.float32)
    intercept = torch.as_tensor(np.asarray(lr.intercept_), dtype=torch.float32)
    rows = [lr.classes_[1]] if len(lr.classes_) == 2 else list(lr.classes_)
    for k, c in enumerate(rows):
        weight[where[str(c)], offset:offset + coef.shape[1]] = coef[k]
        bias[where[str(c)]] = intercept[k]
    return weight, bias


def _set_head(model: TransferModel, weight: torch.Tensor, bias: torch.Tensor) -> TransferModel:
    with torch.no_grad():
        model.head[-1].weight.copy_(weight)
        model.head[-1].bias.copy_(bias)
    return model.eval()


def tfidf_encoder(vectorizer) -> tuple[TfidfEncoder, TfidfTokenizer]:
    """The fitted ``TfidfVectorizer`` as a module and a tokenizer (columns in the vectorizer's order)."""
    terms = [str(t) for t in vectorizer.get_feature_names_out()]
    encoder = TfidfEncoder(len(terms))
    encoder.idf[1:] = torch.as_tensor(vectorizer.idf_, dtype=torch.float32)
    tokenizer = TfidfTokenizer(terms, ngrams=vectorizer.ngram_range[1], lowercase=vectorizer.lowercase,
                               max_length=MAX_TERMS)
    return encoder, tokenizer


def tfidf_candidate(pipe, classes: list, seconds: float) -> Candidate:
    """The fitted TF-IDF + logistic-regression pipeline as a TransferModel (not yet scored)."""
    from headstart.data.preprocess import TextPreprocess

    vec, lr = pipe.named_steps["tfidfvectorizer"], pipe.named_steps["logisticregression"]
    encoder, tokenizer = tfidf_encoder(vec)
    preprocess = TextPreprocess(kind="tfidf", max_length=MAX_TERMS, pooling="mean", lowercase=vec.lowercase,
                                ngrams=vec.ngram_range[1])
    model = _set_head(TransferModel(encoder, encoder.num_features, len(classes), preprocess),
                      *_head_weights(lr, classes, encoder.num_features, offset=1))
    info = {"spec": "tfidf", "architecture": "tfidf", "weights_sha256": tensors_sha256(encoder.state_dict()),
            "num_features": encoder.num_features, "num_params": 0, "stages": [],
            "notes": [f"{TFIDF_WHAT}, C = {lr.C:g} chosen by 5-fold CV on the training texts; "
                      f"{encoder.num_features - 1:,} terms"]}
    return Candidate("tfidf_logreg", TFIDF_WHAT, np.zeros(0, bool), seconds, model=model, preprocess=preprocess,
                     tokenizer=tokenizer, backbone_info=info, details={"C": lr.C, "terms": encoder.num_features - 1})


@torch.no_grad()
def embed(module: torch.nn.Module, tokenizer, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
    """Unit-length sentence embeddings in text order (frozen encoder, eval mode, fp32)."""
    tokens = tokenize(tokenizer, list(texts))
    order = sort_by_length(tokens)
    out = None
    was_training = module.training
    module.eval()
    for i in range(0, len(order), batch_size):
        idx = order[i:i + batch_size]
        z = torch.nn.functional.normalize(module(tokens[idx]).float(), dim=1)
        out = torch.empty(len(texts), z.shape[1]) if out is None else out
        out[idx] = z
    module.train(was_training)
    return (out if out is not None else torch.zeros(0, 1)).numpy()


def hybrid_candidate(clf, pipe, texts: Sequence[str], labels: Sequence, seed: int = 0) -> Candidate:
    """TF-IDF (the candidate's fitted vectorizer) and the transfer model's frozen embedding, concatenated,
    under one logistic regression; C and the embedding's weight by 5-fold CV on the training texts."""
    from scipy import sparse
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    t0 = time.perf_counter()
    vec = pipe.named_steps["tfidfvectorizer"]
    y = np.asarray([str(v) for v in labels])
    x_tfidf = vec.transform(list(texts))
    emb = embed(clf.model_.backbone, clf.tokenizer_, texts)

    def features(weight: float):
        return sparse.hstack([x_tfidf, sparse.csr_matrix(weight * emb)], format="csr")

    folds = min(5, min(Counter(y).values()))
    scores: dict[tuple[float, float], float] = {}
    if folds >= 2:
        split = list(StratifiedKFold(folds, shuffle=True, random_state=seed).split(emb, y))
        for w in HYBRID_WEIGHTS:
            x = features(w)
            for c in C_GRID:
                acc = [np.mean(LogisticRegression(C=c, max_iter=2000).fit(x[a], y[a]).predict(x[b]) == y[b])
                       for a, b in split]
                scores[(w, c)] = float(np.mean(acc))
        weight, c = max(scores, key=lambda k: (scores[k], -k[0], -k[1]))  # ties: the smaller weight and C
    else:  # too few per class to cross-validate
        weight, c = 1.0, 1.0
    lr = LogisticRegression(C=c, max_iter=2000).fit(features(weight), y)

    tfidf, tfidf_tok = tfidf_encoder(vec)
    neural_features = emb.shape[1]
    encoder = HybridEncoder(clf.model_.backbone, tfidf, neural_features, weight=weight)
    preprocess = dataclasses.replace(clf.preprocess_, ngrams=vec.ngram_range[1])
    model = TransferModel(encoder, encoder.num_features, len(clf.classes_), preprocess)
    w_head, b_head = _head_weights(lr, clf.classes_, encoder.num_features, offset=1)  # tf-idf row 0 is padding
    model = _set_head(model, w_head, b_head)
    info = {**clf.backbone_info_, "spec": f"hybrid:{clf.backbone_info_['spec']}",
            "num_features": encoder.num_features, "stages": [],
            "notes": list(clf.backbone_info_.get("notes") or []) + [
                f"hybrid: TF-IDF (word 1-2 grams, {tfidf.num_features - 1:,} terms) concatenated with the frozen "
                f"embedding (weight {weight:g}), logistic regression C = {c:g}; both chosen by 5-fold CV"]}
    details: dict[str, Any] = {"C": c, "embedding_weight": weight,
                               "cv_accuracy": {f"w={k[0]:g},C={k[1]:g}": round(v, 5) for k, v in scores.items()}}
    return Candidate("hybrid", "hybrid (TF-IDF + pretrained embedding, logistic regression)", np.zeros(0, bool),
                     time.perf_counter() - t0, model=model, preprocess=preprocess,
                     tokenizer=HybridTokenizer(clf.tokenizer_, tfidf_tok), backbone_info=info, details=details)
