"""Domain adaptation (``headstart adapt RUN TARGET``, ``clf.adapt(target)``): a trained run and unlabelled
examples of where it will be used in, an adapted run out — or the source model, kept on purpose.

Read it top to bottom: draw and encode the target, embed source and target once with the source
model, build every candidate the run's modality allows (:mod:`headstart.adapt.methods`), score each
without target labels (:mod:`headstart.adapt.select`), keep one. Target labels are never read here:
``headstart evaluate`` measures the result when some exist.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from headstart.adapt.config import ADAPT_METHODS, IMAGE_ONLY, AdaptConfig
from headstart.adapt.methods import (
    adabn,
    batchnorms,
    coral_head,
    self_trained_head,
    shot_im,
)
from headstart.adapt.select import (
    MAX_DOMAIN_ACC,
    MIN_ESS,
    decide,
    domain_weights,
    scores,
)
from headstart.config import TrainConfig
from headstart.encoders.model import TransferModel
from headstart.errors import DataError, HeadstartError
from headstart.features.cache import cached_features
from headstart.semi.methods import Feats, head_probs

log = logging.getLogger("headstart")
__all__ = ["Adapted", "adapt", "applicable", "compare_trained", "draw_examples"]
HEAD_ONLY = ("coral", "self-training")  # the backbone is unchanged: the source model's features serve


@dataclass
class Adapted:
    model: TransferModel  # the model kept (the source model itself when source-only wins)
    report: dict[str, Any]
    models: dict[str, TransferModel] = field(default_factory=dict)  # every candidate, in memory only


def applicable(modality_name: str, model: TransferModel) -> dict[str, str | None]:
    """Each method (but auto) -> None when it applies to this model, else why not."""
    out: dict[str, str | None] = {m: None for m in ADAPT_METHODS if m != "auto"}
    if modality_name != "image":
        for m in IMAGE_ONLY:
            out[m] = "images only (text encoders have no BatchNorm and train on token ids)"
    elif not batchnorms(model.backbone):
        out["adabn"] = "the backbone has no BatchNorm layers"
    return out


def adapt(model: TransferModel, modality, encoder, train_ex, val_ex, target, cfg: AdaptConfig,
          train_cfg: TrainConfig, *, classes: list, precision: str) -> Adapted:
    """Adapt ``model`` (trained on ``train_ex``; ``val_ex`` its validation split) to ``target``."""
    t0 = time.perf_counter()
    methods = _methods(cfg.method, modality.name, model)
    target, n_target = draw_examples(target, cfg.max_images, cfg.seed)
    device = next(model.parameters()).device
    tgt = modality.encode(target, encoder)
    src = modality.encode(train_ex, encoder)
    if not len(tgt.index):
        raise DataError(f"None of the {n_target} target {modality.noun} could be read.")
    y_src = _labels(train_ex, src.index, classes)
    val = modality.encode(val_ex, encoder) if val_ex is not None and len(val_ex) else None
    y_val = _labels(val_ex, val.index, classes) if val is not None else None

    embed = _embedder(encoder, precision, device)

    f_src, f_tgt = embed(model, src.x), embed(model, tgt.x)
    f_val = embed(model, val.x) if val is not None else None
    base = Feats(train=f_src, y_train=y_src, pool=f_tgt)
    weights, overlap, abstain = _overlap(f_src, f_tgt, f_val, cfg.seed)

    models, info = {"source-only": model}, {}
    for name in methods:
        log.info("adapt: %s on %d target %s", name, len(tgt.index), modality.noun)
        t = time.perf_counter()
        if name == "adabn":
            models[name] = adabn(model, tgt.x)
        elif name == "coral":
            models[name] = coral_head(model, base, train_cfg)
        elif name == "self-training":
            models[name], info[name] = self_trained_head(model, base, train_cfg)
        elif name == "shot-im":
            models[name], info[name] = shot_im(model, tgt.x, cfg)
        info.setdefault(name, {})["seconds"] = round(time.perf_counter() - t, 2)

    rows = _score_all(models, embed, tgt.x, f_tgt, val.x if val is not None else None, f_val, y_val, weights,
                      cfg.seed, same_features=("source-only", *HEAD_ONLY))
    if cfg.method == "auto":
        winner, why, votes = decide(rows, abstain=tuple(abstain))
    else:
        winner, votes = cfg.method, {}
        why = f"--method {cfg.method} was asked for (the label-free scores are reported, not used)"
    log.info("adapt: %s", why)
    report = {
        "requested": cfg.method, "method": winner, "reason": why, "votes": votes, "scores": rows,
        "abstained": abstain, "overlap": overlap,
        "methods": info, "not_applicable": {m: w for m, w in applicable(modality.name, model).items() if w},
        "n_target": n_target, "n_target_used": len(tgt.index), "n_source": len(src.index),
        "n_source_val": 0 if val is None else len(val.index), "target": getattr(target, "origin", None),
        "settings": cfg.to_dict(), "seconds": round(time.perf_counter() - t0, 2),
        "note": "chosen without target labels; `headstart evaluate` on labelled target data measures the result",
    }
    return Adapted(models[winner], report, models)


def _embedder(encoder, precision: str, device):
    """``embed(model, x)``: the model's pooled features of encoded inputs, float32 (cached like training's)."""
    def embed(m, x):
        return cached_features(m, x, preprocess=encoder.preprocess, precision=precision, device=device)[0].float()
    return embed


def _overlap(f_src, f_tgt, f_val, seed: int):
    """DEV's importance weights, how far the domains overlap, and why DEV must abstain (when it must)."""
    weights, overlap = domain_weights(f_src, f_tgt, f_val, seed=seed) if f_val is not None else (None, None)
    abstain = {}
    if f_val is None:
        abstain["dev"] = "no source validation split"
    elif overlap["domain_acc"] >= MAX_DOMAIN_ACC:
        abstain["dev"] = (f"the domains barely overlap: a linear classifier tells source from target features "
                          f"apart {100 * overlap['domain_acc']:.1f} % of the time (held out), so no source "
                          "example stands for the target")
    elif overlap["ess"] < MIN_ESS:
        abstain["dev"] = (f"the importance weights' effective sample size is {100 * overlap['ess']:.1f} % of the "
                          f"{len(f_val)} source validation examples (under {100 * MIN_ESS:.0f} %): a few would decide")
    return weights, overlap, abstain


def _score_all(models: dict, embed, x_tgt, f_tgt, x_val, f_val, y_val, weights, seed: int,
               same_features: tuple[str, ...] = ()) -> dict[str, dict]:
    """Each model's label-free scores on the target (and DEV on the weighted source validation split).
    ``same_features``: models whose backbone is the source model's, so its embeddings serve."""
    rows = {}
    for name, m in models.items():
        same = name in same_features
        ft = f_tgt if same else embed(m, x_tgt)
        fv = f_val if same or f_val is None else embed(m, x_val)
        rows[name] = scores(ft, head_probs(m.head, ft), head_probs(m.head, fv) if fv is not None else None, y_val,
                            weights, seed=seed)
    return rows


def compare_trained(before: TransferModel, after: TransferModel, modality, encoder, train_ex, val_ex, target,
                    *, classes: list, precision: str, seed: int, name: str) -> dict[str, Any]:
    """``train --target``: the label-free scores of the model before the backbone trained (its head on the
    pretrained features: a source-only model) and after (``name``), and what the vote of
    :func:`~headstart.adapt.select.decide` says of the adapted one. Target labels are never read."""
    device = next(after.parameters()).device
    tgt, src = modality.encode(target, encoder), modality.encode(train_ex, encoder)
    val = modality.encode(val_ex, encoder) if val_ex is not None and len(val_ex) else None
    y_val = _labels(val_ex, val.index, classes) if val is not None else None

    embed = _embedder(encoder, precision, device)

    f_src, f_tgt = embed(before, src.x), embed(before, tgt.x)
    f_val = embed(before, val.x) if val is not None else None
    weights, overlap, abstain = _overlap(f_src, f_tgt, f_val, seed)
    rows = _score_all({"source-only": before, name: after}, embed, tgt.x, f_tgt, val.x if val is not None else None,
                      f_val, y_val, weights, seed, same_features=("source-only",))
    winner, why, votes = decide(rows, abstain=tuple(abstain))
    why = why.split(": the source model is kept")[0]  # train --target keeps what it trained, and says this
    return {"scores": rows, "votes": votes, "abstained": abstain, "overlap": overlap,
            "estimated_better": winner == name, "reason": why,
            "source_only": "the head trained on the pretrained (frozen) backbone, before the backbone trained"}


def _methods(method: str, modality_name: str, model: TransferModel) -> list[str]:
    allowed = applicable(modality_name, model)
    if method == "auto":
        return [m for m, why in allowed.items() if why is None and m != "source-only"]
    if allowed[method] is not None:
        raise HeadstartError(f"--method {method} does not apply to this run: {allowed[method]}. Use one of "
                             f"{[m for m, w in allowed.items() if w is None]} or auto.")
    return [] if method == "source-only" else [method]


def draw_examples(examples, max_images: int, seed: int, what: str = "target examples (max_images)"):
    """At most ``max_images`` of the examples (a target domain, a pool), drawn with ``seed`` (kept in their
    order), and how many there were."""
    n = len(examples)
    if n > max_images:
        idx = np.sort(np.random.default_rng(seed).choice(n, max_images, replace=False))
        examples = examples.subset(idx.tolist())
        log.info("%d of the %d %s drawn", max_images, n, what)
    return examples, n


def _labels(examples, index, classes) -> torch.Tensor:
    from headstart.data import encode_labels
    from headstart.data.sources import aligned_labels

    return encode_labels(aligned_labels([examples.labels[i] for i in index], classes), classes)
