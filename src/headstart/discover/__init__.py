"""Discover the groups in an unlabelled pool (unsupervised transfer).

>>> g = discover("photos/", backbone="timm:tf_efficientnet_lite0")   # K estimated
>>> g.k_, g.labels_[:5], g.groups[0]["size"]
>>> g.save("runs/groups"); g.export_folders("sorted/")               # then: headstart train sorted/

The pipeline: read the pool (``embed``: the modality's reader, no labels), embed it with the
backbone's features (image pools: a few stage/size candidates, the most cohesive kept), group the
embeddings with K estimated by internal criteria (``group``), describe each group (typical and
borderline members; distinctive terms for texts), and run the same grouping on the raw inputs --
pixels, or TF-IDF for texts -- so the user sees what the pretrained features bought.
"""
from __future__ import annotations

import logging
import math
import time
from typing import Any

import numpy as np

from headstart.discover.cluster import GroupFit, group
from headstart.discover.embedding import (
    Embeddings,
    choose,
    embed,
    open_encoder,
    representation_table,
)
from headstart.discover.grouping import BORDERLINE, TYPICAL, Grouping, read_grouping
from headstart.encoders import DEFAULT_BACKBONE
from headstart.modalities import read_pool

__all__ = ["Grouping", "discover", "read_grouping"]

log = logging.getLogger("headstart")
TERMS = 8


def discover(pool, *, backbone: str = DEFAULT_BACKBONE, k: int | None = None, k_min: int = 2, k_max: int = 30,
             stage: str = "auto", seed: int = 0, baseline: bool = True, text_column: str | None = None,
             path_column: str = "path", precision: str = "auto", pretrained: bool = True) -> Grouping:
    """Group ``pool`` -- a folder of images (flat or nested), a CSV of paths, image arrays, or for a
    text backbone (``hf:``/``vectors:``) a text table or a list of texts -- without labels.

    ``k`` forces the number of groups; otherwise it is estimated in ``[k_min, k_max]``. ``backbone``
    may also be a run directory written by ``headstart train`` (its fine-tuned backbone). ``stage``
    ("auto", "pooled" or a stage name) picks the image representation. ``pretrained=False`` groups
    with random weights (a control: what the pretraining bought).
    """
    t0 = time.perf_counter()
    encoder = open_encoder(backbone, pretrained=pretrained, seed=seed)
    examples = read_pool(encoder.modality, pool, text_column=text_column, path_column=path_column)
    candidates = embed(encoder, examples, stage=stage, precision=precision)
    # Candidates at one input size come from one pass and share its time: count each size once.
    features_seconds = round(sum({c.input_size: c.seconds for c in candidates}.values()), 2)
    t1 = time.perf_counter()
    chosen = choose(candidates, seed=seed)
    fit = group(chosen.features, k=k, k_min=k_min, k_max=k_max, seed=seed)
    grouping_seconds = round(time.perf_counter() - t1, 2)
    base, base_labels = _baseline(encoder.modality.name, examples, chosen.index, k=k, k_min=k_min, k_max=k_max,
                                  seed=seed) if baseline else (None, None)
    summary = _summary(fit, encoder.spec, chosen, candidates, base)
    summary["seconds"] = {"features": features_seconds, "grouping": grouping_seconds,
                          "baseline": base.pop("seconds") if base else None,
                          "total": round(time.perf_counter() - t0, 2)}
    grouping = _assemble(fit, chosen, examples, summary)
    if base_labels is not None:
        grouping.baseline_labels_ = np.full(len(examples), -1, dtype=int)
        grouping.baseline_labels_[np.asarray(chosen.index)] = base_labels
    return grouping


def _summary(fit: GroupFit, spec: str, chosen: Embeddings, candidates, base) -> dict[str, Any]:
    runner = fit.runner_up()
    return {
        "backbone": spec, "representation": chosen.name,
        "representations": representation_table(candidates, chosen),
        "method": fit.method, "reducer": fit.reducer, "structure": fit.structure, "forced_k": fit.forced,
        "runner_up": runner.to_dict() if runner else None,
        "criteria": {"silhouette": _chosen_silhouette(fit), "null_silhouette": _round(fit.null_silhouette),
                     "eigengap_k": fit.eigengap_k},
        "candidates": [c.to_dict() for c in fit.candidates],
        "reasons": fit.reasons,
        "baseline": base,
    }


def _chosen_silhouette(fit: GroupFit) -> float | None:
    for c in fit.candidates:
        if (c.method, c.k) == (fit.method, fit.k):
            return round(c.silhouette, 4)
    return None


def _round(v: float) -> float | None:
    return None if math.isnan(v) else round(float(v), 4)  # NaN (not measured) -> null in JSON


def _assemble(fit: GroupFit, chosen: Embeddings, examples, summary: dict) -> Grouping:
    n = len(examples)
    labels = np.full(n, -1, dtype=int)
    confidence = np.zeros(n)
    outlier = np.zeros(n, dtype=bool)
    idx = np.asarray(chosen.index)
    labels[idx], confidence[idx], outlier[idx] = fit.labels, fit.confidence, fit.outlier
    texts = list(examples.texts) if hasattr(examples, "texts") else None
    items = list(examples.ids) if texts is not None else [examples.name(i) for i in range(n)]
    groups = _describe(fit, idx, texts)
    prototypes = np.stack([chosen.features[fit.labels == g].mean(0) for g in range(fit.k)])
    return Grouping(labels, fit.k, confidence, outlier, prototypes, items, groups, summary, texts,
                    list(chosen.skipped), examples, embeddings_=chosen.features)


def _describe(fit: GroupFit, idx: np.ndarray, texts: list[str] | None) -> list[dict[str, Any]]:
    terms = _distinctive_terms([texts[i] for i in idx], fit.labels, fit.k) if texts is not None else None
    out = []
    width = len(str(fit.k))
    for g in range(fit.k):
        m = np.flatnonzero(fit.labels == g)
        by_conf = m[np.argsort(-fit.confidence[m], kind="stable")]
        info = {"id": g, "name": f"group_{g + 1:0{max(2, width)}d}", "size": len(m),
                "cohesion": round(float(np.nanmean(fit.silhouette[m])), 4),
                "confidence": round(float(fit.confidence[m].mean()), 4),
                "outliers": int(fit.outlier[m].sum()),
                "typical": idx[by_conf[:TYPICAL]].tolist(), "borderline": idx[by_conf[::-1][:BORDERLINE]].tolist()}
        if terms is not None:
            info["terms"] = terms[g]
            info["examples"] = [texts[i] for i in info["typical"][:3]]
        out.append(info)
    return out


def _distinctive_terms(texts: list[str], labels: np.ndarray, k: int) -> list[list[str]]:
    """Class-based TF-IDF (as BERTopic's c-TF-IDF): a term's frequency in the group, weighted by how
    rare it is across groups. Stop words are dropped so groups are named by content."""
    from sklearn.feature_extraction.text import CountVectorizer

    try:
        vec = CountVectorizer(stop_words="english", min_df=2 if len(texts) >= 50 else 1)
        counts = vec.fit_transform(texts)
    except ValueError:  # nothing but stop words
        return [[] for _ in range(k)]
    words = np.asarray(vec.get_feature_names_out())
    per_group = np.vstack([np.asarray(counts[labels == g].sum(0)).ravel() for g in range(k)]).astype(float)
    tf = per_group / np.maximum(per_group.sum(1, keepdims=True), 1)
    idf = np.log(1 + per_group.sum(1).mean() / np.maximum(per_group.sum(0), 1))
    score = tf * idf
    return [[str(w) for w in words[np.argsort(-row, kind="stable")[:TERMS]] if row.max() > 0] for row in score]


def _baseline(modality: str, examples, index: list[int], **kw) -> tuple[dict[str, Any], np.ndarray]:
    """The same grouping on the raw inputs: pixels (at most 32 px) or TF-IDF reduced by SVD."""
    t0 = time.perf_counter()
    if modality == "text":
        x, name = _tfidf([examples.texts[i] for i in index]), "tf-idf"
    else:
        x, name = _raw_pixels(examples.subset(index)), "raw pixels"
    fit = group(x, **kw)
    return ({"name": name, "k": fit.k, "method": fit.method, "silhouette": _chosen_silhouette(fit),
             "structure": fit.structure, "seconds": round(time.perf_counter() - t0, 2)}, fit.labels)


def _raw_pixels(examples) -> np.ndarray:
    from headstart.data import decode_all
    from headstart.data.preprocess import PreprocessConfig
    from headstart.discover.embedding import native_side

    side = min(32, native_side(examples))
    decoded = decode_all(examples, PreprocessConfig(input_size=side, crop_pct=1.0))
    return decoded.pixels.reshape(len(decoded.pixels), -1).numpy().astype(np.float32) / 255.0


def _tfidf(texts: list[str]) -> np.ndarray:
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer

    x = TfidfVectorizer(sublinear_tf=True, min_df=2 if len(texts) >= 50 else 1).fit_transform(texts)
    dims = min(100, x.shape[1] - 1, len(texts) - 1)
    return TruncatedSVD(dims, random_state=0).fit_transform(x) if dims >= 2 else x.toarray()
