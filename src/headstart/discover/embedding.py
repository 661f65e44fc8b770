"""Embeddings of an unlabelled pool, from a registry backbone or a trained run's backbone.

For images the pooled output of the last layer is not always the representation that groups best:
on 8x8 scikit-learn digits blown up to 224 px, Lite0's pooled features give AMI 0.64 with K known,
while the output of an earlier stage at 32 px gives 0.91. So image pools get a few candidates --
the last three stages, at the backbone's input size and, for small images, at a size closer to
their own -- and :func:`choose` keeps the one whose grouping is most cohesive (silhouette in the
reduced space, measured without labels on a fixed subsample). Every candidate's features go
through the on-disk feature cache, so a second ``discover`` on the same pool costs no extraction.
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from headstart.assess.plan import cached_stage_features
from headstart.data import iter_decoded
from headstart.data.sources import Examples
from headstart.device import default_device, resolve_precision
from headstart.discover.cluster import group
from headstart.encoders import get_backbone
from headstart.encoders.chain import sequential_chain
from headstart.encoders.model import TransferModel
from headstart.errors import DataError, HeadstartError
from headstart.features.cache import cached_features
from headstart.modalities import Modality, modality_for
from headstart.train.loop import preserved_rng

CHUNK = 2048  # images decoded and embedded at a time
SELECT_SAMPLE = 1000  # representations are compared on this many items (the same ones for each)
LAST_STAGES = 3


@dataclass
class Encoder:
    """What embeds the pool: a backbone under a dummy head, its preprocessing and tokenizer."""

    spec: str  # a registry spec, or the run directory it came from
    model: TransferModel
    preprocess: Any
    tokenizer: Any
    modality: Modality


@dataclass
class Embeddings:
    """One representation of the pool: row i embeds pool item ``index[i]``."""

    name: str  # e.g. "blocks.4 @ 64 px", "pooled"
    features: np.ndarray
    index: list[int]
    skipped: list[tuple[str, str]]
    seconds: float
    stage: str | None = None
    input_size: int | None = None
    selection_silhouette: float | None = None  # filled by choose()


def open_encoder(spec: str, *, pretrained: bool = True, seed: int = 0) -> Encoder:
    """A registry backbone (``timm:...``, ``hf:...``) or the backbone of a run written by ``train``
    (fine-tuned features often group the user's data better than the pretrained ones).

    Random weights (``pretrained=False``) are drawn from ``seed``, so the same seed gives the same
    groups (and the feature cache applies), without moving the caller's random streams."""
    path = Path(spec).expanduser()
    if path.is_dir() and (path / "headstart.json").is_file():
        from headstart.estimator import load

        clf = load(path)
        return Encoder(str(path), clf.model_, clf.preprocess_, clf.tokenizer_, clf.modality_)
    with preserved_rng():
        torch.manual_seed(seed)
        bb = get_backbone(spec, pretrained=pretrained)
    model = TransferModel(bb.module, bb.num_features, 2, bb.preprocess, stages=bb.stages).to(default_device())
    return Encoder(spec, model.eval(), bb.preprocess, bb.tokenizer, modality_for(spec))


def embed(encoder: Encoder, examples, *, stage: str = "auto", precision: str = "auto") -> list[Embeddings]:
    """Candidate representations of the pool (one for texts, or when ``stage`` names one)."""
    device = default_device()
    prec = resolve_precision(precision, device)
    if encoder.modality.name == "text":
        return [_text_embeddings(encoder, examples, prec, device)]
    return _image_candidates(encoder, examples, stage=stage, precision=prec, device=device)


def _text_embeddings(encoder: Encoder, examples, precision: str, device) -> Embeddings:
    t0 = time.perf_counter()
    # encode reads only these two attributes of a backbone
    enc = encoder.modality.encode(examples, SimpleNamespace(tokenizer=encoder.tokenizer, preprocess=encoder.preprocess))
    feats, _ = cached_features(encoder.model, enc.x, preprocess=encoder.preprocess, precision=precision,
                               device=device)
    order = np.argsort(enc.index)  # encode sorted the texts by length; back to pool order
    return Embeddings("pooled", feats.numpy()[order], sorted(enc.index), list(examples.skipped),
                      round(time.perf_counter() - t0, 2))


def candidate_sizes(examples: Examples, input_size: int) -> list[int]:
    """The backbone's input size and, for images under half of it, about four times their own side."""
    side = native_side(examples)
    small = min(input_size, max(32, 32 * math.ceil(4 * side / 32)))
    return [input_size] if side * 2 >= input_size or small >= input_size else [input_size, small]


def native_side(examples: Examples, sample: int = 64) -> int:
    """Median longer side of the first ``sample`` images, read from headers (no decoding)."""
    from PIL import Image

    sides = []
    for item in examples.items[:sample]:
        if isinstance(item, np.ndarray):
            sides.append(max(item.shape[:2]))
        elif isinstance(item, Image.Image):
            sides.append(max(item.size))
        else:
            try:
                with Image.open(item) as im:
                    sides.append(max(im.size))
            except (OSError, ValueError):  # unreadable: decoding reports it
                continue
    return int(np.median(sides)) if sides else 224


def _image_candidates(encoder: Encoder, examples: Examples, *, stage: str, precision: str, device) -> list[Embeddings]:
    model, base = encoder.model, encoder.preprocess
    stages = model.stages
    chain_ok = bool(stages) and sequential_chain(model.backbone) is not None
    if stage not in ("auto", "pooled") and not chain_ok:
        raise HeadstartError(f"stage={stage!r}: this backbone's forward is not a chain of stages; use "
                             "stage='pooled' (or 'auto').")
    if stage not in ("auto", "pooled") and stage not in [s.name for s in stages]:
        raise HeadstartError(f"Unknown stage {stage!r}; this backbone's stages are {[s.name for s in stages]} "
                             "(or 'pooled', 'auto').")
    sizes = candidate_sizes(examples, base.input_size) if stage == "auto" else [base.input_size]
    pooled = stage == "pooled" or not chain_ok
    picked = [len(stages) - 1] if pooled else (
        list(range(len(stages)))[-LAST_STAGES:] if stage == "auto" else [[s.name for s in stages].index(stage)])
    out = []
    for size in sizes:
        pp = dataclasses.replace(base, input_size=size)
        t0 = time.perf_counter()
        parts: list[list[np.ndarray]] = [[] for _ in picked]
        index, skipped = [], []
        for pixels, idx, bad in _decoded_chunks(examples, pp):
            skipped += bad
            if not idx:
                continue
            index += idx
            if pooled:
                feats, _ = cached_features(model, pixels, preprocess=pp, precision=precision, device=device)
                parts[0].append(feats.numpy())
                continue
            per_stage = cached_stage_features(model, stages, pixels, preprocess=pp, precision=precision, device=device)
            for j, i in enumerate(picked):
                parts[j].append(per_stage[i])
        if not index:
            raise DataError(f"None of the {len(examples)} images in {examples.origin!r} could be read; first "
                            f"error: {skipped[0][0]!r}: {skipped[0][1]}." if skipped else "No images to embed.")
        seconds = round(time.perf_counter() - t0, 2)
        for j, i in enumerate(picked):
            name = f"pooled @ {size} px" if pooled else f"{stages[i].name} @ {size} px"
            out.append(Embeddings(name, np.concatenate(parts[j]), index, skipped, seconds,
                                  None if pooled else stages[i].name, size))
    return out


def _decoded_chunks(examples: Examples, pp):
    """(uint8 pixels, pool indices, skipped) for CHUNK images at a time: memory stays flat (0.3 GB at
    224 px) whatever the pool's size, and each chunk's features are cached under its own pixels' hash."""
    for start in range(0, len(examples), CHUNK):
        part = examples.subset(range(start, min(start + CHUNK, len(examples))))
        pieces = list(iter_decoded(part, pp, batch_size=256))
        idx = [start + i for p in pieces for i in p.index]
        bad = [b for p in pieces for b in p.skipped]
        pixels = torch.cat([p.pixels for p in pieces if len(p.pixels)]) if idx else None
        yield pixels, idx, bad


def choose(candidates: list[Embeddings], *, seed: int = 0) -> Embeddings:
    """The candidate whose quick grouping (no null, no stability) has the highest silhouette."""
    if len(candidates) == 1:
        return candidates[0]
    n = len(candidates[0].features)
    rng = np.random.default_rng(seed)
    sub = np.sort(rng.choice(n, SELECT_SAMPLE, replace=False)) if n > SELECT_SAMPLE else np.arange(n)
    for c in candidates:
        fit = group(c.features[sub], seed=seed, quick=True)
        c.selection_silhouette = round(max(x.silhouette for x in fit.candidates), 4)
    return max(candidates, key=lambda c: c.selection_silhouette)


def representation_table(candidates: list[Embeddings], chosen: Embeddings) -> list[dict[str, Any]]:
    return [{"name": c.name, "dims": int(c.features.shape[1]), "silhouette": c.selection_silhouette,
             "chosen": c is chosen} for c in candidates]
