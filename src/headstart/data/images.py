"""Pixels: decode any image safely, resize and crop it the way the backbone was trained, once.

Output is a uint8 tensor (3, S, S); normalisation happens inside the model so it can never be wrong.
Decoding is done once per run (:func:`decode_all`); training epochs only read the decoded tensor.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np
import torch

from headstart.data.preprocess import PreprocessConfig
from headstart.data.sources import Examples
from headstart.errors import DataError

# Refuse images whose header claims more pixels than this (decompression bombs); ~ 16k x 10k.
MAX_PIXELS = 178_956_970
# Images more elongated than this are not resized whole before the centre crop (see preprocess).
MAX_RESIZE_RATIO = 8


class BadImage(Exception):
    """An input that cannot be turned into an image; ``str(exc)`` says why."""


def load_image(item) -> "PIL.Image.Image":  # noqa: F821
    """Any supported input → an RGB PIL image, or :class:`BadImage` with the reason."""
    from PIL import Image

    if isinstance(item, Image.Image):
        img = item
    elif isinstance(item, np.ndarray):
        img = _array_to_pil(item)
    elif isinstance(item, (str, bytes, os.PathLike)) or hasattr(item, "read"):
        img = _open_file(item)
    else:
        raise BadImage(f"unsupported input of type {type(item).__name__}; "
                       "pass an image path, a PIL image or a numpy array")
    _check_size(img.size)
    try:
        return _to_rgb(img)
    except ValueError as exc:  # PIL has no RGB conversion for a few rare modes (e.g. "La")
        raise BadImage(f"cannot convert an image of mode {img.mode!r} to RGB ({exc})") from exc


def _open_file(item):
    """Decode a path or file object: the first frame, EXIF orientation applied, nothing lazy left."""
    from PIL import Image, ImageOps

    try:
        Image.MAX_IMAGE_PIXELS = MAX_PIXELS
        with Image.open(item) as im:
            # Checked here, before any pixel is allocated, rather than through PIL's
            # DecompressionBombWarning: warning filters are process-wide and not thread-safe,
            # and decode_all decodes in threads.
            _check_size(im.size)
            im.seek(0)  # animated images: the first frame
            im.load()
            img = ImageOps.exif_transpose(im) or im
            return img.copy()
    except Image.DecompressionBombError as exc:
        raise BadImage(f"refused as a possible decompression bomb ({exc})") from exc
    except FileNotFoundError as exc:
        raise BadImage("file not found") from exc
    except (OSError, ValueError, SyntaxError, EOFError, Image.UnidentifiedImageError) as exc:
        raise BadImage(f"not a readable image ({type(exc).__name__}: {exc})") from exc


def _check_size(size: tuple[int, int]) -> None:
    w, h = size
    if w * h > MAX_PIXELS:
        raise BadImage(f"refused as a possible decompression bomb: {w} x {h} pixels is more than "
                       f"the limit of {MAX_PIXELS}")
    if w < 1 or h < 1:
        raise BadImage(f"the image is empty ({w} x {h} pixels)")


def _to_rgb(img):
    from PIL import Image

    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.int64)
        top = 65535 if img.mode.startswith("I;16") or arr.max() > 255 else 255
        img = Image.fromarray((np.clip(arr, 0, top) * (255.0 / top)).astype(np.uint8))
    elif img.mode == "F":
        img = Image.fromarray((np.clip(np.asarray(img), 0, 1) * 255).astype(np.uint8))
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        # Transparent pixels become white rather than whatever colour hides behind alpha=0.
        background = Image.new("RGB", img.size, (255, 255, 255))
        background.paste(img.convert("RGBA"), mask=img.convert("RGBA").getchannel("A"))
        return background
    return img.convert("RGB") if img.mode != "RGB" else img


def _array_to_pil(arr: np.ndarray):
    from PIL import Image

    if arr.ndim == 3 and arr.shape[0] in (1, 3) and arr.shape[-1] not in (1, 3, 4):
        arr = np.moveaxis(arr, 0, -1)  # CHW → HWC
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (3, 4)):
        raise BadImage(f"array of shape {arr.shape} is not an image (H, W), (H, W, 3) or (H, W, 4)")
    if arr.dtype.kind not in "buif":  # strings, objects, complex numbers: no pixel values
        raise BadImage(f"array of dtype {arr.dtype} is not an image; use numbers (uint8 or float)")
    _check_size((arr.shape[1], arr.shape[0]))  # before np.max, which fails on an empty array
    if arr.dtype != np.uint8:
        arr = np.asarray(arr, dtype=np.float32)
        if not np.isfinite(arr).all():
            raise BadImage("array contains NaN or infinity")
        scale = 255.0 if arr.max(initial=0) <= 1.0 else 1.0  # floats in [0, 1] or already 0..255
        arr = np.clip(arr * scale, 0, 255).round().astype(np.uint8)
    return Image.fromarray(arr)


def preprocess(img, cfg: PreprocessConfig) -> torch.Tensor:
    """Resize the short side to ``cfg.resize_size`` and centre-crop ``cfg.input_size`` → uint8 (3, S, S)."""
    from PIL import Image

    resample = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "nearest": Image.NEAREST,
                "lanczos": Image.LANCZOS}.get(cfg.interpolation, Image.BICUBIC)
    w, h = img.size
    short = cfg.resize_size
    if w <= h:
        nw, nh = short, max(short, int(round(h * short / w)))
    else:
        nw, nh = max(short, int(round(w * short / h))), short
    s = cfg.input_size
    left, top = int(round((nw - s) / 2.0)), int(round((nh - s) / 2.0))
    if max(nw, nh) <= MAX_RESIZE_RATIO * short:
        img = img.resize((nw, nh), resample).crop((left, top, left + s, top + s))
    else:
        # A very thin image (say 1 x 100000) would first be resized to billions of pixels: resample
        # only the part of it that survives the centre crop instead.
        sx, sy = w / nw, h / nh
        img = img.resize((s, s), resample, box=(left * sx, top * sy, (left + s) * sx, (top + s) * sy))
    return torch.from_numpy(np.asarray(img, dtype=np.uint8).copy()).permute(2, 0, 1)


@dataclass
class Decoded:
    """Decoded, preprocessed images: ``pixels`` (N, 3, S, S) uint8, and which inputs were skipped."""

    pixels: torch.Tensor
    index: list[int]  # positions in the original Examples of the rows of ``pixels``
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (name, reason)


def _decode_one(args):
    item, cfg = args
    try:
        return preprocess(load_image(item), cfg), None
    except BadImage as exc:
        return None, str(exc)


def iter_decoded(ex: Examples, cfg: PreprocessConfig, batch_size: int = 64,
                 workers: int = 2) -> Iterator[Decoded]:
    """Decode in batches (bounded memory), with threads (PIL releases the GIL while resizing)."""
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for start in range(0, len(ex), batch_size):
            idx = list(range(start, min(start + batch_size, len(ex))))
            results = list(pool.map(_decode_one, [(ex.items[i], cfg) for i in idx]))
            ok = [(i, t) for i, (t, _) in zip(idx, results) if t is not None]
            skipped = [(ex.name(i), err) for i, (_, err) in zip(idx, results) if err is not None]
            pixels = (torch.stack([t for _, t in ok]) if ok
                      else torch.empty(0, 3, cfg.input_size, cfg.input_size, dtype=torch.uint8))
            yield Decoded(pixels, [i for i, _ in ok], skipped)


def decode_all(ex: Examples, cfg: PreprocessConfig, *, strict: bool = False) -> Decoded:
    """Decode every image once. Unreadable ones are skipped and reported (or fail with ``strict``)."""
    parts = list(iter_decoded(ex, cfg, batch_size=256))
    skipped = [s for p in parts for s in p.skipped]
    if skipped and strict:
        name, why = skipped[0]
        raise DataError(f"Unreadable image {name!r}: {why}. Remove or fix it, or drop --strict to skip it.")
    index = [i for p in parts for i in p.index]
    if not index:
        raise DataError(f"None of the {len(ex)} images in {ex.origin!r} could be read; first error: "
                        f"{skipped[0][0]!r}: {skipped[0][1]}." if skipped else "No images to decode.")
    pixels = torch.cat([p.pixels for p in parts]) if len(parts) > 1 else parts[0].pixels
    return Decoded(pixels, index, skipped)


def augment(batch: torch.Tensor, generator: torch.Generator, *, flip: bool = True,
            scale: tuple[float, float] = (0.7, 1.0), size: int | None = None) -> torch.Tensor:
    """Random horizontal flip and random resized crop on a uint8 batch (N, 3, S, S), the crops resized to
    ``size`` (default: S; ``scale=(1, 1)`` with a ``size`` only resizes)."""
    from torchvision.transforms.v2 import functional as F

    n, c, h, w = batch.shape
    side = size or h
    if scale[0] < 1.0:
        out = torch.empty(n, c, side, side, dtype=batch.dtype)
        areas = torch.empty(n).uniform_(scale[0], scale[1], generator=generator)
        for i in range(n):
            side_h = max(8, int(h * areas[i].sqrt()))
            side_w = max(8, int(w * areas[i].sqrt()))
            top = int(torch.randint(0, h - side_h + 1, (1,), generator=generator))
            left = int(torch.randint(0, w - side_w + 1, (1,), generator=generator))
            out[i] = F.resized_crop(batch[i], top, left, side_h, side_w, [side, side], antialias=True)
    elif side != h or side != w:
        out = F.resize(batch, [side, side], antialias=True)
    else:
        out = batch.clone()
    if flip:
        mask = torch.rand(n, generator=generator) < 0.5
        out[mask] = out[mask].flip(-1)
    return out


def encode_labels(labels: Sequence, classes: Sequence) -> torch.Tensor:
    lookup = {c: i for i, c in enumerate(classes)}
    unknown = sorted({str(v) for v in labels if v not in lookup})
    if unknown:
        raise DataError(
            f"Labels {unknown[:5]} were never seen in training (classes: {list(classes)}); "
            "evaluate only on classes the model knows."
        )
    return torch.tensor([lookup[v] for v in labels], dtype=torch.long)
