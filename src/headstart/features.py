"""Frozen-backbone features, computed once and cached on disk.

A frozen backbone maps the same image to the same features every epoch, so head training should
never run it twice. The cache key covers everything the features depend on: the backbone's weight
hash, the preprocessing, the layer, the precision and a hash of the decoded pixels. Any change
gives a new key, so a stale cache can never be used.
"""
from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import torch

from .backbones.base import PreprocessConfig, tensors_sha256
from .runtime import batched_apply, chunks, to_fast_layout
from .storage import atomic_path, cache_dir


def pixels_sha256(pixels: torch.Tensor) -> str:
    h = hashlib.sha256(str(tuple(pixels.shape)).encode())
    flat = pixels.contiguous().view(-1)
    step = 1 << 26
    for i in range(0, flat.numel(), step):
        h.update(flat[i:i + step].numpy().tobytes())
    return h.hexdigest()


def feature_key(*, weights_sha256: str, preprocess: PreprocessConfig, layer: str, precision: str,
                data_sha256: str) -> str:
    parts = {"weights": weights_sha256, "preprocess": preprocess.to_dict(), "layer": layer,
             "precision": precision, "data": data_sha256, "version": 1}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


def compute_features(model, pixels: torch.Tensor, *, precision: str, device: torch.device,
                     batch_size: int = 64) -> torch.Tensor:
    """Pooled backbone features of uint8 ``pixels`` (N, 3, S, S) → float32 (N, D)."""
    was_training = model.training
    model.eval()
    to_fast_layout(model)
    outs = list(batched_apply(model.features, chunks(pixels, batch_size), precision=precision, device=device))
    model.train(was_training)
    return torch.cat(outs) if outs else torch.empty(0, 0)


def cached_features(model, pixels: torch.Tensor, *, preprocess: PreprocessConfig, precision: str,
                    device: torch.device, layer: str = "pooled", batch_size: int = 64,
                    use_cache: bool = True) -> tuple[torch.Tensor, bool]:
    """Features of ``pixels``, from the on-disk cache when the key matches. Returns (features, hit)."""
    if not use_cache:
        return compute_features(model, pixels, precision=precision, device=device, batch_size=batch_size), False
    key = feature_key(weights_sha256=tensors_sha256(model.backbone.state_dict()), preprocess=preprocess,
                      layer=layer, precision=precision, data_sha256=pixels_sha256(pixels))
    path = cache_dir("features") / f"{key}.npy"
    if path.is_file():
        try:
            arr = np.load(path, mmap_mode="r")
            if arr.shape[0] == len(pixels):
                return torch.from_numpy(np.array(arr)), True
        except (OSError, ValueError):
            pass  # unreadable cache entry: recompute and overwrite it
    feats = compute_features(model, pixels, precision=precision, device=device, batch_size=batch_size)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, feats.numpy())
    return feats, False


def clear_feature_cache() -> int:
    removed = 0
    for p in cache_dir("features").glob("*.npy"):
        os.unlink(p)
        removed += 1
    return removed
