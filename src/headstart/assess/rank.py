"""Which pretrained backbone suits *this* data? Rank candidates by transferability, in seconds.

Each candidate's frozen features are computed once (through the feature cache), then scored with
LogME, LEEP, NCE, H-score and cross-validated k-NN / linear-probe accuracy, with bootstrap
uncertainty, beside its cost (parameters, images/s). No fine-tuning happens.
"""
from __future__ import annotations

import time
from typing import Any, Sequence

import numpy as np
import torch

from headstart.assess import transferability as T
from headstart.data import (
    as_examples,
    check_duplicates,
    class_list,
    decode_all,
    stratified_split,
)
from headstart.data.texts import load_texts
from headstart.device import default_device, resolve_precision
from headstart.encoders import get_backbone, source_modality
from headstart.encoders.model import TransferModel
from headstart.encoders.text import tokenize
from headstart.errors import DataError
from headstart.features.cache import cached_features


def rank(data, backbones: Sequence[str], *, y=None, max_images: int = 1000, bootstrap_rounds: int = 10,
         precision: str = "auto", seed: int = 0, pretrained: bool = True) -> list[dict[str, Any]]:
    """Score every backbone in ``backbones`` on labelled ``data``; rows sorted best first (by LogME).

    Image backbones score images; text backbones (``hf:``, ``vectors:``) score texts, from any table
    the text loader reads. LEEP and NCE need the source task's classifier, so only image rows have them.
    """
    kinds = {source_modality(b) for b in backbones}
    if len(kinds) > 1:
        raise DataError(f"Rank image and text backbones separately; got both kinds in {list(backbones)}.")
    if kinds == {"text"}:
        return _rank_text(data, backbones, y=y, max_examples=max_images, rounds=bootstrap_rounds,
                          precision=precision, seed=seed)
    ex = check_duplicates(as_examples(data, y))
    if ex.labels is None:
        raise DataError("Ranking needs labelled data: class folders, a CSV with labels, or y.")
    class_list(ex.labels)
    if len(ex) > max_images:  # a stratified subsample keeps ranking to seconds
        keep, _ = stratified_split(ex.labels, 1.0 - max_images / len(ex), seed)
        ex = ex.subset(keep)
    rows = [_score_backbone(spec, ex, precision=precision, rounds=bootstrap_rounds, seed=seed,
                            pretrained=pretrained) for spec in backbones]
    rows.sort(key=lambda r: -r["logme"])
    return rows


def _rank_text(data, backbones, *, y, max_examples: int, rounds: int, precision: str, seed: int) -> list[dict]:
    ex = load_texts(data, y, require_labels=True)
    class_list(ex.labels)
    if len(ex) > max_examples:
        keep, _ = stratified_split(ex.labels, 1.0 - max_examples / len(ex), seed)
        ex = ex.subset(keep)
    labels = np.asarray([str(v) for v in ex.labels])
    rows = []
    for spec in backbones:
        bb = get_backbone(spec)
        device = default_device()
        model = TransferModel(bb.module, bb.num_features, 2, bb.preprocess, stages=bb.stages).to(device)
        tokens = tokenize(bb.tokenizer, ex.texts)
        t0 = time.perf_counter()
        feats, hit = cached_features(model, tokens, preprocess=bb.preprocess, device=device,
                                     precision=resolve_precision(precision, device))
        rate = None if hit else round(len(tokens) / (time.perf_counter() - t0), 1)
        row = {"backbone": spec, "params_m": round(bb.num_params / 1e6, 2), "features": bb.num_features,
               "n_images": len(tokens), "images_per_s": rate}
        rows.append({**row, **_scores(feats.numpy().astype(np.float64), labels, None, rounds, seed)})
    rows.sort(key=lambda r: -r["logme"])
    return rows


def _score_backbone(spec: str, ex, *, precision: str, rounds: int, seed: int, pretrained: bool) -> dict:
    bb = get_backbone(spec, pretrained=pretrained)
    device = default_device()
    model = TransferModel(bb.module, bb.num_features, 2, bb.preprocess, stages=bb.stages).to(device)
    decoded = decode_all(ex, bb.preprocess)
    labels = np.asarray([str(ex.labels[i]) for i in decoded.index])
    prec = resolve_precision(precision, device)
    t0 = time.perf_counter()
    feats, hit = cached_features(model, decoded.pixels, preprocess=bb.preprocess, precision=prec, device=device)
    seconds = time.perf_counter() - t0
    f = feats.numpy().astype(np.float64)
    row: dict[str, Any] = {"backbone": spec, "params_m": round(bb.num_params / 1e6, 2),
                           "features": bb.num_features, "input_size": bb.preprocess.input_size,
                           "n_images": len(f), "images_per_s": None if hit else round(len(f) / seconds, 1)}
    probs = None
    if bb.source_head is not None:
        with torch.no_grad():
            probs = torch.softmax(bb.source_head(feats.to(device)).float(), 1).cpu().numpy()
    return {**row, **_scores(f, labels, probs, rounds, seed)}


def _scores(f: np.ndarray, labels: np.ndarray, source_probs, rounds: int, seed: int) -> dict[str, Any]:
    """Every transferability score of features ``f``, with bootstrap uncertainty where it is cheap."""
    row: dict[str, Any] = {}
    row["logme"], row["logme_std"] = T.bootstrap(lambda i: T.logme(f[i], labels[i]), len(f), rounds, seed)
    row["hscore"], row["hscore_std"] = T.bootstrap(lambda i: T.hscore(f[i], labels[i], shrinkage="auto"), len(f), rounds, seed)
    if source_probs is not None:
        probs = source_probs
        row["leep"], row["leep_std"] = T.bootstrap(lambda i: T.leep(probs[i], labels[i]), len(f), rounds, seed)
        hard = probs.argmax(1)
        row["nce"], row["nce_std"] = T.bootstrap(lambda i: T.nce(hard[i], labels[i]), len(f), rounds, seed)
    row["knn_acc"] = T.knn_accuracy(f, labels, seed=seed)
    row["linear_acc"] = T.linear_probe_accuracy(f, labels, seed=seed)
    return row


def recommendation(rows: list[dict]) -> str:
    """One plain sentence: the best candidate by LogME, and whether the other scores agree."""
    if not rows:
        return "No candidates."
    best = rows[0]
    text = f"Recommended: {best['backbone']} (highest LogME {best['logme']:.3f} ± {best['logme_std']:.3f})"
    if len(rows) > 1:
        second = rows[1]
        gap = best["logme"] - second["logme"]
        if gap < best["logme_std"] + second["logme_std"]:
            cheaper = min(rows[:2], key=lambda r: r["params_m"])
            text += (f"; it is within the uncertainty of {second['backbone']}, so the cheaper "
                     f"{cheaper['backbone']} ({cheaper['params_m']}M parameters) is as good a choice")
        by_linear = max(rows, key=lambda r: r["linear_acc"])
        if by_linear is not best:
            text += f"; note: cross-validated linear-probe accuracy prefers {by_linear['backbone']}"
    return text + "."
