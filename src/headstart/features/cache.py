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
import queue
import threading
import time

import numpy as np
import torch

from headstart.data.images import iter_decoded
from headstart.data.preprocess import PreprocessConfig
from headstart.device import chunks
from headstart.encoders.base import tensors_sha256
from headstart.features.engine import engine_label, resolve_engine
from headstart.features.fastpath import feature_extractor
from headstart.storage import atomic_path, cache_dir


def pixels_sha256(pixels: torch.Tensor) -> str:
    h = hashlib.sha256(str(tuple(pixels.shape)).encode())
    flat = pixels.contiguous().view(-1)
    step = 1 << 26
    for i in range(0, flat.numel(), step):
        h.update(flat[i:i + step].numpy().tobytes())
    return h.hexdigest()


def feature_key(*, weights_sha256: str, preprocess: PreprocessConfig, layer: str, precision: str,
                data_sha256: str, engine: str = "torch") -> str:
    """``engine`` is :func:`headstart.features.engine.engine_label` (torch and OpenVINO features differ
    by rounding, so they never share an entry)."""
    parts = {"weights": weights_sha256, "preprocess": preprocess.to_dict(), "layer": layer,
             "precision": precision, "data": data_sha256, "engine": engine, "version": 2}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


def feature_engine(model, n_images: int, *, precision: str, device: torch.device) -> str:
    """The engine label (``openvino-f32``, ``torch-bf16``...) extracting ``n_images`` features of ``model`` uses."""
    return engine_label(resolve_engine(None, modality=model.modality, device=device, n_images=n_images), precision)


def compute_features(model, pixels: torch.Tensor, *, precision: str, device: torch.device,
                     batch_size: int = 64, compile: str = "auto") -> torch.Tensor:
    """Pooled backbone features of uint8 ``pixels`` (N, 3, S, S) → float32 (N, D).

    Runs :func:`headstart.features.fastpath.feature_extractor`: on a CPU a prepared copy of the backbone
    (BatchNorm folded, bf16 weights where the CPU has native bf16, channels_last, small micro-batches,
    ``torch.compile`` from ``COMPILE_MIN_IMAGES`` images on, or per ``compile``).
    """
    was_training = model.training
    model.eval()
    try:
        extract = feature_extractor(model, precision=precision, device=device, n_images=len(pixels),
                                    compile=compile)
        outs = [extract(xb) for xb in chunks(pixels, batch_size)]
    finally:
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
                      data_sha256=data_sha256 or pixels_sha256(pixels),
                      engine=feature_engine(model, len(pixels), precision=precision, device=device))
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
        else:
            hash_pixels(h, item)
    return h.hexdigest()


def hash_pixels(h, item) -> None:
    """Feed an in-memory image (numpy array or PIL image) to the hash ``h``: its shape and type, then its bytes."""
    if isinstance(item, np.ndarray):
        h.update(str((item.shape, item.dtype.str)).encode())
        h.update(np.ascontiguousarray(item).tobytes())
    else:  # PIL image
        h.update(str((item.mode, item.size)).encode())
        h.update(item.tobytes())


def extract_to_disk(model, ex, *, preprocess: PreprocessConfig, precision: str, device: torch.device,
                    batch_size: int = 64, use_cache: bool = True, prefetch: int = 2,
                    stats: dict | None = None) -> tuple[np.ndarray, np.ndarray, list]:
    """Features of every image in ``ex``, streamed in batches into a memory-mapped file.

    Memory stays flat whatever the dataset size: only a few batches of pixels are ever in RAM, and the
    (N, D) result lives on disk. Images are decoded ``prefetch`` batches ahead in a background thread
    (0: decode and compute take turns), so decoding overlaps the model instead of stalling it.
    ``stats``, when given, is filled with where the time went: ``wait_s`` (the model waiting for
    decoded pixels), ``compute_s``, ``write_s``, ``wall_s``, ``images`` and the extraction ``path``.
    Returns (features memmap, indices of the decoded images, skipped).
    """

    key = feature_key(weights_sha256=tensors_sha256(model.backbone.state_dict()), preprocess=preprocess,
                      layer="pooled", precision=precision, data_sha256=examples_sha256(ex),
                      engine=feature_engine(model, len(ex), precision=precision, device=device))
    root = cache_dir("features")
    path, index_path = root / f"{key}.stream.npy", root / f"{key}.index.npy"
    if use_cache and path.is_file() and index_path.is_file():
        return np.load(path, mmap_mode="r"), np.load(index_path), []
    t_start = time.perf_counter()
    model.eval()
    dim = getattr(model.head[-1], "in_features", None)
    extract = feature_extractor(model, precision=precision, device=device, n_images=len(ex))
    index, skipped, rows = [], [], 0
    wait = compute = write = 0.0
    parts = iter_decoded(ex, preprocess, batch_size=batch_size)
    if prefetch > 0:
        parts = _prefetched(parts, prefetch)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        # Plain appends after an .npy header, not a writable memmap: dirty mapped pages count as
        # resident memory until unmapped, so a 60k x 1280 memmap would grow RSS by ~300 MB.
        header = _npy_header((len(ex), dim))
        f.write(header)
        try:
            while True:
                t0 = time.perf_counter()
                part = next(parts, None)
                t1 = time.perf_counter()
                wait += t1 - t0
                if part is None:
                    break
                skipped += part.skipped
                if len(part.pixels):
                    n = len(part.pixels)
                    feats = extract(part.pixels)
                    t2 = time.perf_counter()
                    f.write(feats.numpy().astype("<f4", copy=False).tobytes())
                    write += time.perf_counter() - t2
                    compute += t2 - t1
                    rows += n
                    index += part.index
        finally:
            getattr(parts, "close", lambda: None)()
        if rows < len(ex):  # skipped images: the header must give the rows actually written
            _fix_rows(f, header, rows, dim)
    with atomic_path(index_path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, np.asarray(index, dtype=np.int64))
    if stats is not None:
        stats.update(images=rows, wait_s=wait, compute_s=compute, write_s=write,
                     wall_s=time.perf_counter() - t_start, path=extract.describe, prefetch=prefetch)
    return np.load(path, mmap_mode="r"), np.load(index_path), skipped


def _prefetched(iterator, depth: int):
    """Yield ``iterator``'s items, produced by a background thread up to ``depth`` items ahead.

    Decoding (PIL releases the GIL) then overlaps the model's forward passes. Exceptions are re-raised
    in the consumer; closing the generator stops the thread at its next item.
    """
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work():
        try:
            for item in iterator:
                if not put((True, item)):
                    break
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            put((False, exc))
            return
        finally:
            getattr(iterator, "close", lambda: None)()
        put((True, done))

    thread = threading.Thread(target=work, name="headstart-decode", daemon=True)
    thread.start()
    try:
        while True:
            ok, item = q.get()
            if not ok:
                raise item
            if item is done:
                return
            yield item
    finally:
        stop.set()
        thread.join()


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
