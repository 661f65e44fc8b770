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
from .runtime import batched_apply, chunks, maybe_compile, to_fast_layout
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
                    use_cache: bool = True, weights_sha256: str | None = None,
                    data_sha256: str | None = None) -> tuple[torch.Tensor, bool]:
    """Features of ``pixels``, from the on-disk cache when the key matches. Returns (features, hit).

    Callers that already hold the backbone's or the pixels' hash pass it, so nothing is hashed twice.
    """
    if not use_cache:
        return compute_features(model, pixels, precision=precision, device=device, batch_size=batch_size), False
    key = feature_key(weights_sha256=weights_sha256 or tensors_sha256(model.backbone.state_dict()),
                      preprocess=preprocess, layer=layer, precision=precision,
                      data_sha256=data_sha256 or pixels_sha256(pixels))
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


def examples_sha256(ex) -> str:
    """A fingerprint of a dataset without decoding it: file path, size and mtime, or array bytes."""
    h = hashlib.sha256()
    for item in ex.items:
        if isinstance(item, (str, os.PathLike)):
            try:
                st = os.stat(item)
                h.update(f"{os.fspath(item)}|{st.st_size}|{st.st_mtime_ns}".encode())
            except OSError:
                h.update(f"{os.fspath(item)}|missing".encode())
        elif isinstance(item, np.ndarray):
            h.update(str((item.shape, item.dtype.str)).encode())
            h.update(np.ascontiguousarray(item).tobytes())
        else:  # PIL image
            h.update(str((item.mode, item.size)).encode())
            h.update(item.tobytes())
    return h.hexdigest()


def extract_to_disk(model, ex, *, preprocess: PreprocessConfig, precision: str, device: torch.device,
                    batch_size: int = 64, use_cache: bool = True) -> tuple[np.ndarray, np.ndarray, list]:
    """Features of every image in ``ex``, streamed in batches into a memory-mapped file.

    Memory stays flat whatever the dataset size: only one batch of pixels is ever in RAM, and the
    (N, D) result lives on disk. Returns (features memmap, indices of the decoded images, skipped).
    """
    from .data.images import iter_decoded

    key = feature_key(weights_sha256=tensors_sha256(model.backbone.state_dict()), preprocess=preprocess,
                      layer="pooled", precision=precision, data_sha256=examples_sha256(ex))
    root = cache_dir("features")
    path, index_path = root / f"{key}.stream.npy", root / f"{key}.index.npy"
    if use_cache and path.is_file() and index_path.is_file():
        return np.load(path, mmap_mode="r"), np.load(index_path), []
    model.eval()
    to_fast_layout(model)
    dim = getattr(model.head[-1], "in_features", None)
    features = maybe_compile(model.features, len(ex))
    index, skipped, rows = [], [], 0
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        # Plain appends after an .npy header, not a writable memmap: dirty mapped pages count as
        # resident memory until unmapped, so a 60k x 1280 memmap would grow RSS by ~300 MB.
        header = _npy_header((len(ex), dim))
        f.write(header)
        for part in iter_decoded(ex, preprocess, batch_size=batch_size):
            skipped += part.skipped
            if len(part.pixels):
                px, n = part.pixels, len(part.pixels)
                if features is not model.features and n < batch_size:  # one shape: no recompilation
                    px = torch.cat([px, px[-1:].expand(batch_size - n, *px.shape[1:])])
                feats = next(batched_apply(features, [px], precision=precision, device=device))[:n]
                f.write(feats.numpy().astype("<f4", copy=False).tobytes())
                rows += n
                index += part.index
        if rows < len(ex):  # skipped images: the header must give the rows actually written
            _fix_rows(f, header, rows, dim)
    with atomic_path(index_path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, np.asarray(index, dtype=np.int64))
    return np.load(path, mmap_mode="r"), np.load(index_path), skipped


def _npy_header(shape: tuple[int, int], total: int | None = None) -> bytes:
    """A version-1.0 .npy header for float32 C-order data, optionally padded to ``total`` bytes."""
    import struct

    text = "{'descr': '<f4', 'fortran_order': False, 'shape': (%d, %d), }" % shape
    prefix = 10  # magic (6) + version (2) + header length (2)
    total = total or -(-(prefix + len(text) + 1) // 64) * 64  # aligned to 64 bytes, as numpy does
    text += " " * (total - prefix - len(text) - 1) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text.encode("latin1")


def _fix_rows(f, old_header: bytes, rows: int, dim: int) -> None:
    """Rewrite the header in place for ``rows`` rows (same byte length) and drop the unused tail."""
    f.seek(0)
    f.write(_npy_header((rows, dim), total=len(old_header)))
    f.truncate(len(old_header) + rows * dim * 4)
