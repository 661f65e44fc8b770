"""The transfer set: what the student learns from, each row labelled by the frozen teacher once.

Rows, in order: every labelled training example as each model decodes it natively (its own size,
crop and normalisation), then ``views - 1`` augmented views of each (a random flip and resized crop
made at the teacher's input size and resized for the student, so both see the same view), then the
unlabelled pool. The teacher's outputs for every row are computed once and cached on disk (keyed by the
teacher's weights, the data, the views and the seed), so distillation costs student passes only, and a
second student or a resumed run pays nothing for the teacher.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from headstart.data import augment, iter_decoded
from headstart.data.images import encode_labels
from headstart.data.sources import aligned_labels
from headstart.encoders.base import Backbone, tensors_sha256
from headstart.encoders.model import TransferModel
from headstart.errors import DataError
from headstart.features.cache import cached_features, examples_sha256, extract_to_disk
from headstart.features.fastpath import feature_extractor
from headstart.modalities.scratch import resize_pixels
from headstart.storage import atomic_path, cache_dir
from headstart.train.loop import TrainData

log = logging.getLogger("headstart")


@dataclass
class Teacher:
    """A fitted model, frozen: what the student learns from (``TransferClassifier`` builds it)."""

    model: TransferModel
    modality: Any  # its Modality
    preprocess: Any
    tokenizer: Any
    classes: list
    spec: str  # its backbone
    run: str | None = None  # the run directory it was loaded from
    recorded_val_acc: float | None = None  # what its own fit measured on its validation split

    @property
    def as_backbone(self):
        """What ``modality.encode`` reads of a backbone: how to decode or tokenise for this model."""
        return SimpleNamespace(preprocess=self.preprocess, tokenizer=self.tokenizer)

    @property
    def weights_sha256(self) -> str:
        return tensors_sha256(self.model.state_dict())


@dataclass
class TransferSet:
    data: TrainData  # every row; extra: teacher_logits, labelled
    direct: TrainData  # the labelled rows only (clean and augmented views), true labels: the direct student's
    info: dict = field(default_factory=dict)
    skipped: list = field(default_factory=list)


def labels_tensor(examples, index, classes) -> torch.Tensor:
    return encode_labels(aligned_labels([examples.labels[i] for i in index], classes), classes)


def build_transfer_set(teacher: Teacher, student: Backbone, train_ex, val_ex, pool, *, views: int, seed: int,
                       precision: str) -> TransferSet:
    t0 = time.perf_counter()
    modality = teacher.modality
    labelled = _labelled_rows(teacher, student, train_ex, views=views, seed=seed, precision=precision)
    x, t_logits, idx, skipped = labelled["x"], labelled["logits"], labelled["index"], labelled["skipped"]
    y = labels_tensor(train_ex, idx, teacher.classes).repeat(views)
    n_labelled = len(x)
    parts_x, parts_t, parts_y = [x], [t_logits], [y]
    n_pool = 0
    if pool is not None and len(pool):
        px, pt, pskipped = _pool_rows(teacher, student, pool, precision=precision)
        skipped += pskipped
        parts_x.append(px)
        parts_t.append(pt)
        parts_y.append(pt.argmax(1))  # hard targets of unlabelled rows: the teacher's choice
        n_pool = len(px)
    x_all, t_all, y_all = torch.cat(parts_x), torch.cat(parts_t), torch.cat(parts_y)
    mask = torch.zeros(len(x_all), dtype=torch.bool)
    mask[:n_labelled] = True
    x_val = y_val = None
    if val_ex is not None and len(val_ex):
        enc = modality.encode(val_ex, student)
        skipped += enc.skipped
        x_val, y_val = enc.x, labels_tensor(val_ex, enc.index, teacher.classes)
    data = TrainData(x_all, y_all, x_val, y_val, extra={"teacher_logits": t_all, "labelled": mask})
    direct = TrainData(x, y, x_val, y_val)
    info = {"labelled": len(idx), "views": views, "labelled_rows": n_labelled, "unlabeled": n_pool,
            "rows": len(x_all), "teacher_agreement_labelled": round(float((t_logits.argmax(1) == y).float().mean()), 5),
            "teacher_seconds": labelled["teacher_seconds"], "seconds": round(time.perf_counter() - t0, 2)}
    return TransferSet(data, direct, info, skipped)


def _labelled_rows(teacher: Teacher, student: Backbone, train_ex, *, views: int, seed: int, precision: str) -> dict:
    """Student inputs and teacher logits of the labelled examples: native decodes, then the augmented views."""
    modality = teacher.modality
    s_enc = modality.encode(train_ex, student)
    if modality.name != "image":  # a text has no augmented views; each model tokenises it itself
        t_logits, t_index, seconds = _teacher_on_encoded(teacher, train_ex, precision)
        keep = sorted(set(s_enc.index) & set(t_index))
        return {"x": _rows(s_enc.x, s_enc.index, keep), "logits": _rows(t_logits, t_index, keep), "index": keep,
                "skipped": list(s_enc.skipped), "teacher_seconds": seconds}
    key = _key(teacher, train_ex, views=views, seed=seed, precision=precision)
    path = cache_dir("distill") / f"{key}.npz"
    cached = _load(path)
    device = next(teacher.model.parameters()).device
    extract = None if cached is not None else feature_extractor(teacher.model, precision=precision, device=device,
                                                                n_images=len(train_ex) * views)
    gen = torch.Generator().manual_seed(seed + 104729)  # the views' own stream: same seed, same views
    size = student.preprocess.input_size
    t_index, logits, aug_x = [], [[] for _ in range(views)], [[] for _ in range(views - 1)]
    t0 = time.perf_counter()
    for part in iter_decoded(train_ex, teacher.preprocess, batch_size=256):
        t_index += part.index
        if not len(part.pixels):
            continue
        for v in range(views):
            px = part.pixels if v == 0 else augment(part.pixels, gen)
            if v:
                aug_x[v - 1].append(resize_pixels(px, size))
            if extract is not None:
                with torch.inference_mode():
                    logits[v].append(teacher.model.head(extract(px).to(device)).float().cpu())
    if not t_index:
        raise DataError(f"None of the {len(train_ex)} labelled images could be read for the teacher.")
    if cached is None:
        cached = torch.stack([torch.cat(v) for v in logits]).numpy()
        _store(path, cached)
    seconds = round(time.perf_counter() - t0, 2)
    keep = sorted(set(s_enc.index) & set(t_index))
    xs = [_rows(s_enc.x, s_enc.index, keep)] + [_rows(torch.cat(a), t_index, keep) for a in aug_x]
    ls = [_rows(torch.from_numpy(cached[v]), t_index, keep) for v in range(views)]
    return {"x": torch.cat(xs), "logits": torch.cat(ls), "index": keep, "skipped": list(s_enc.skipped),
            "teacher_seconds": seconds}


def _pool_rows(teacher: Teacher, student: Backbone, pool, *, precision: str):
    """Student inputs and teacher logits of the unlabelled pool (teacher features streamed and cached)."""
    modality = teacher.modality
    s_enc = modality.encode(pool, student)
    if modality.name == "image":
        device = next(teacher.model.parameters()).device
        feats, t_index, _ = extract_to_disk(teacher.model, pool, preprocess=teacher.preprocess,
                                            precision=precision, device=device)
        t_logits = _head(teacher.model, torch.from_numpy(np.array(feats)))
        t_index = [int(i) for i in t_index]
    else:
        t_logits, t_index, _ = _teacher_on_encoded(teacher, pool, precision)
    keep = sorted(set(s_enc.index) & set(t_index))
    if not keep:
        raise DataError(f"None of the {len(pool)} unlabelled {modality.noun} could be read.")
    return _rows(s_enc.x, s_enc.index, keep), _rows(t_logits, t_index, keep), list(s_enc.skipped)


def _teacher_on_encoded(teacher: Teacher, examples, precision: str):
    t0 = time.perf_counter()
    enc = teacher.modality.encode(examples, teacher.as_backbone)
    device = next(teacher.model.parameters()).device
    feats, _ = cached_features(teacher.model, enc.x, preprocess=teacher.preprocess, precision=precision,
                               device=device)
    return _head(teacher.model, feats), list(enc.index), round(time.perf_counter() - t0, 2)


@torch.inference_mode()
def _head(model: TransferModel, feats: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    model.eval()
    device = next(model.parameters()).device
    out = [model.head(feats[i:i + batch_size].to(device).float()).float().cpu()
           for i in range(0, len(feats), batch_size)]
    return torch.cat(out) if out else torch.empty(0, model.head[-1].out_features)


def _rows(x: torch.Tensor, index: list[int], keep: list[int]) -> torch.Tensor:
    """The rows of ``x`` (row i is example ``index[i]``) for the examples ``keep``, in that order."""
    pos = {e: i for i, e in enumerate(index)}
    return x[torch.tensor([pos[e] for e in keep], dtype=torch.long)]


def _key(teacher: Teacher, examples, **parts) -> str:
    body = {"teacher": teacher.weights_sha256, "preprocess": teacher.preprocess.to_dict(),
            "data": examples_sha256(examples), "version": 1, **parts}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:32]


def _load(path) -> np.ndarray | None:
    try:
        with np.load(path) as f:
            return f["logits"]
    except (OSError, ValueError, KeyError):
        return None  # no entry yet, or an unreadable one: compute (and overwrite) it


def _store(path, logits: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, logits=logits)

