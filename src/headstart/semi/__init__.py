"""Learning from the examples the user has not labelled (``train --unlabeled POOL``, ``fit(..., unlabeled=U)``).

After the supervised fit the run's own backbone (fine-tuned or frozen) embeds the pool once, streamed
to disk, and the methods of :mod:`headstart.semi.methods` train heads on those embeddings. The head
kept is chosen on the labelled validation split (``--ssl-method auto``), which never receives a
pseudo-label: pool examples identical to a labelled one (train or validation) are dropped first.
"""
from __future__ import annotations

import copy
import hashlib
import logging
import os
import time
from typing import Any

import numpy as np
import torch

from headstart.config import TrainConfig
from headstart.errors import DataError
from headstart.features.cache import cached_features, extract_to_disk, hash_pixels
from headstart.semi.methods import METHODS, Feats, HeadCandidate, accuracy, choose

log = logging.getLogger("headstart")
__all__ = ["content_digests", "drop_labelled", "unlabeled_pool", "use_unlabeled"]


def unlabeled_pool(modality, pool, labelled: list) -> tuple[Any, int]:
    """The pool without copies of the ``labelled`` examples (train, validation), and how many were
    dropped; refused when nothing is left. Run before training, so a useless pool fails at once."""
    pool, dropped = drop_labelled(pool, labelled)
    if not len(pool):
        raise DataError(f"Every one of the {dropped} unlabelled {modality.noun} is a copy of a labelled one: "
                        "the pool adds nothing. Pass examples that are not in the training data.")
    return pool, dropped


def use_unlabeled(model, modality, backbone, data, pool, cfg: TrainConfig, *, dropped: int = 0,
                  precision: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Try each semi-supervised method on ``pool`` and put the chosen head into ``model``. Returns the
    record saved in ``headstart.json`` (``semi_supervised``) and every candidate head by name (kept in
    memory for comparisons, not saved). ``pool`` comes from :func:`unlabeled_pool`, which dropped
    ``dropped`` copies of labelled examples from it."""
    t0 = time.perf_counter()
    device = next(model.parameters()).device
    t_embed = time.perf_counter()
    pool_feats, skipped = _embed_pool(model, modality, backbone, pool, precision, device)
    f = Feats(train=_embed(model, backbone, data.x_train, precision, device), y_train=data.y_train,
              pool=pool_feats, val=None if data.x_val is None else _embed(model, backbone, data.x_val, precision,
                                                                          device),
              y_val=data.y_val)
    embed_seconds = time.perf_counter() - t_embed
    supervised = HeadCandidate("supervised", model.head, accuracy(model.head, f.val, f.y_val))
    tried = list(METHODS) if cfg.ssl_method == "auto" else [cfg.ssl_method]
    candidates = [supervised]
    for name in tried:
        log.info("semi-supervised: %s on %d labelled + %d unlabelled embeddings", name, len(f.train), len(f.pool))
        candidates.append(METHODS[name](model.head, f, cfg))
    winner, reason = choose(candidates, cfg.ssl_method)
    log.info("semi-supervised: %s", reason)
    heads = {c.name: copy.deepcopy(c.head) for c in candidates}
    if winner is not supervised:
        model.head.load_state_dict(winner.head.state_dict())
    return heads, {
        "requested": cfg.ssl_method, "method": winner.name, "reason": reason, "val_acc": winner.val_acc,
        "supervised_val_acc": supervised.val_acc, "n_pool": len(pool) + dropped, "n_used": len(f.pool),
        "n_dropped_labelled": dropped, "n_skipped": len(skipped), "skipped": skipped[:50],
        "pool": getattr(pool, "origin", None), "threshold": cfg.ssl_threshold, "rounds": cfg.ssl_rounds,
        "candidates": [c.to_dict() for c in candidates], "embed_seconds": round(embed_seconds, 2),
        "seconds": round(time.perf_counter() - t0, 2),
    }


def _embed(model, backbone, x: torch.Tensor, precision: str, device) -> torch.Tensor:
    feats, _ = cached_features(model, x, preprocess=backbone.preprocess, precision=precision, device=device)
    return feats.float()


def _embed_pool(model, modality, backbone, pool, precision: str, device) -> tuple[torch.Tensor, list]:
    if modality.name == "image":  # streamed: 59,000 decoded 224 px images would take 9 GB of memory
        feats, index, skipped = extract_to_disk(model, pool, preprocess=backbone.preprocess, precision=precision,
                                                device=device)
        if not len(index):
            raise DataError(f"None of the {len(pool)} unlabelled images could be read; first: {skipped[0]}.")
        return torch.from_numpy(np.array(feats)).float(), skipped
    enc = modality.encode(pool, backbone)
    if not len(enc.index):
        raise DataError(f"None of the {len(pool)} unlabelled texts could be encoded.")
    return _embed(model, backbone, enc.x, precision, device), list(enc.skipped)


def drop_labelled(pool, labelled: list) -> tuple[Any, int]:
    """``pool`` without the examples whose content equals a labelled one's, and how many were dropped.
    A copy of a validation example would leak its pseudo-label into the choice made on validation."""
    known = set()
    for ex in labelled:
        if ex is not None:
            known.update(content_digests(ex))
    digests = content_digests(pool)
    keep = [i for i, d in enumerate(digests) if d not in known]
    return (pool if len(keep) == len(pool) else pool.subset(keep)), len(pool) - len(keep)


def content_digests(ex) -> list[str]:
    """One sha256 per example of its content: the file's bytes, an array's bytes, or a text with its
    whitespace collapsed. The same file saved twice under two names is one example; an image re-encoded,
    or given once as a file and once as an array, is not recognised (that would mean decoding the pool twice)."""
    if hasattr(ex, "texts"):
        return [hashlib.sha256(" ".join(t.split()).encode()).hexdigest() for t in ex.texts]
    return [_item_digest(item) for item in ex.items]


def _item_digest(item) -> str:
    h = hashlib.sha256()
    if isinstance(item, (str, os.PathLike)):
        try:
            with open(item, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
        except OSError:
            h.update(f"unreadable|{os.fspath(item)}".encode())  # decoding will skip it, with why
    else:
        hash_pixels(h, item)
    return h.hexdigest()
