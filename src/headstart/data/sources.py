"""Where labelled images come from: a class-per-folder tree, a CSV of (path, label), or arrays.

Everything is turned into :class:`Examples` (items + labels) before any pixel is read, so problems
with the *layout* of the data are reported at once, with the file and the fix.
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from headstart.errors import DataError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}


@dataclass
class Examples:
    """Images (paths, numpy arrays or PIL images) and their labels (``None`` when unlabelled)."""

    items: list
    labels: list | None
    origin: str = "data"
    notes: list[str] = field(default_factory=list)
    # Inputs dropped while reading, with why. Image sources fail loudly on layout problems and leave
    # unreadable pixels to decoding, so this stays empty for them; it matches TextExamples.skipped.
    skipped: list[tuple[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.items)

    def name(self, i: int) -> str:
        item = self.items[i]
        return str(item) if isinstance(item, (str, os.PathLike)) else f"{self.origin}[{i}]"

    def subset(self, idx: Sequence[int]) -> "Examples":
        labels = None if self.labels is None else [self.labels[i] for i in idx]
        return Examples([self.items[i] for i in idx], labels, self.origin, list(self.notes), list(self.skipped))


def as_examples(data: Any, labels: Sequence | None = None, *, path_column: str = "path",
                label_column: str = "label") -> Examples:
    """Dispatch on what the user passed: a folder, a CSV file, a list of images/paths or an array."""
    if isinstance(data, Examples):
        return data
    if isinstance(data, (str, os.PathLike)):
        path = Path(data).expanduser()
        if path.is_dir():
            if labels is not None:
                raise DataError(f"Labels come from the class subfolders of {str(path)!r}; do not pass y too.")
            return from_folder(path)
        if path.suffix.lower() in (".csv", ".tsv"):
            return from_csv(path, path_column=path_column, label_column=label_column)
        if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file():
            return Examples([str(path)], list(labels) if labels is not None else None, str(path))
        if not path.exists():
            raise DataError(f"{str(path)!r} does not exist. Pass a folder of class subfolders or a CSV file.")
        raise DataError(f"Cannot read {str(path)!r}: expected a folder of class subfolders, a .csv or an image.")
    if isinstance(data, np.ndarray):
        items = _split_array(data)
    elif isinstance(data, Sequence):
        items = list(data)
    else:
        try:
            import torch

            if isinstance(data, torch.Tensor):
                return as_examples(data.cpu().numpy(), labels)
        except ImportError:
            pass
        raise DataError(
            f"Unsupported data of type {type(data).__name__}; pass a folder, a CSV path, a list of "
            "image paths / PIL images / arrays, or an array of shape (N, H, W[, C])."
        )
    if not items:
        raise DataError("No images were given (an empty list or array).")
    if labels is not None:
        labels = _plain_labels(labels)
        if len(labels) != len(items):
            raise DataError(f"Got {len(items)} images but {len(labels)} labels; they must match one to one.")
    return Examples(items, labels, "array")


def _split_array(x: np.ndarray) -> list[np.ndarray]:
    if x.ndim not in (3, 4):
        raise DataError(
            f"An image array must have shape (N, H, W) or (N, H, W, C); got shape {x.shape}."
        )
    return list(x)


def _plain_labels(labels: Sequence) -> list:
    """Labels as plain Python scalars (so classes serialise to JSON)."""
    out = []
    for v in np.asarray(labels).tolist() if not isinstance(labels, list) else labels:
        out.append(v.item() if hasattr(v, "item") else v)
    return out


def from_folder(root: Path) -> Examples:
    """One subfolder per class; image files anywhere below it (symlinked folders are not followed)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{str(root)!r} is not a folder.")
    class_dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not class_dirs:
        loose = [p for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES]
        if loose:
            raise DataError(
                f"{str(root)!r} holds {len(loose)} images but no class subfolders. Put each class's "
                f"images in their own subfolder, e.g. {str(root / 'cat')!r} and {str(root / 'dog')!r}."
            )
        raise DataError(f"{str(root)!r} is empty: it needs one subfolder of images per class.")
    items, labels, ignored = [], [], 0
    for d in class_dirs:
        files = _image_files(d)
        ignored += files[1]
        if not files[0]:
            raise DataError(
                f"Class folder {str(d)!r} has no images (looked for {sorted(IMAGE_SUFFIXES)}). "
                "Add images to it or remove the folder."
            )
        items.extend(str(p) for p in files[0])
        labels.extend([d.name] * len(files[0]))
    ex = Examples(items, labels, str(root))
    if ignored:
        ex.notes.append(f"ignored {ignored} non-image files under {str(root)!r}")
    return ex


def from_pool(data: Any, *, path_column: str = "path") -> Examples:
    """Unlabelled images: a folder (images anywhere below it, flat or nested), a CSV of paths, or arrays.

    Any labels the source carries (class subfolders, a label column) are ignored: a pool is grouped,
    not learned from.
    """
    if isinstance(data, (str, os.PathLike)):
        path = Path(data).expanduser()
        if path.is_dir():
            files, ignored = _image_files(path)
            if not files:
                raise DataError(f"{str(path)!r} holds no images (looked for {sorted(IMAGE_SUFFIXES)} below it).")
            ex = Examples([str(p) for p in files], None, str(path))
            if ignored:
                ex.notes.append(f"ignored {ignored} non-image files under {str(path)!r}")
            return ex
        if path.suffix.lower() in (".csv", ".tsv"):
            return from_csv(path, path_column=path_column, label_column=None)
        if not path.exists():
            raise DataError(f"{str(path)!r} does not exist. Pass a folder of images or a CSV of image paths.")
        raise DataError(f"Cannot read a pool from {str(path)!r}: pass a folder of images, a .csv of paths "
                        "or an array of images.")
    ex = as_examples(data)
    return Examples(ex.items, None, ex.origin, ex.notes)


def _image_files(folder: Path) -> tuple[list[Path], int]:
    found, ignored = [], 0
    for dirpath, dirnames, filenames in os.walk(folder):  # followlinks=False: no symlink loops
        dirnames[:] = sorted(n for n in dirnames if not n.startswith("."))
        for name in sorted(filenames):
            if name.startswith("."):
                continue
            p = Path(dirpath) / name
            if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file():
                found.append(p)
            else:
                ignored += 1
    return found, ignored


def from_csv(path: Path, *, path_column: str = "path", label_column: str | None = "label") -> Examples:
    """A CSV/TSV with an image-path column (relative to the CSV's folder) and a label column."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"CSV file {str(path)!r} does not exist.")
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f, delimiter=delimiter))
            columns = list(rows[0].keys()) if rows else []
    except UnicodeDecodeError as exc:
        raise DataError(f"{str(path)!r} is not UTF-8 text ({exc}); save it as UTF-8.") from exc
    except csv.Error as exc:
        raise DataError(f"{str(path)!r} is not a valid CSV file: {exc}") from exc
    if not rows:
        raise DataError(f"CSV file {str(path)!r} has no data rows.")
    columns = [c for c in columns if c is not None]  # None holds the extra cells of long rows
    if not columns:
        raise DataError(f"The first line of CSV file {str(path)!r} is empty; it must name the columns, "
                        f"e.g. '{path_column},{label_column or 'label'}'.")
    wanted = [path_column] + ([label_column] if label_column else [])
    missing = [c for c in wanted if c not in columns]
    if missing:
        texts = missing[0] == path_column and any(c.strip().lower() in ("text", "sentence", "review", "body")
                                                  for c in columns)
        hint = (" It looks like a table of texts: texts need a text backbone, e.g. --backbone hf:all-minilm-l6-v2 "
                "or vectors:glove-6b-50d (`headstart backbones`)." if texts else "")
        raise DataError(
            f"CSV file {str(path)!r} has no column {missing[0]!r}; its columns are {columns}. "
            f"Choose columns with --path-column / --label-column.{hint}"
        )
    items, labels, absent = [], [], []
    for line, row in enumerate(rows, start=2):
        rel = (row.get(path_column) or "").strip()
        p = Path(rel) if Path(rel).is_absolute() else path.parent / rel
        if not rel or not _is_file(p):
            absent.append(f"line {line}: {rel!r}")
            continue
        items.append(str(p))
        if label_column:
            labels.append((row.get(label_column) or "").strip())
    if absent:
        raise DataError(
            f"{len(absent)} image(s) listed in {str(path)!r} do not exist (paths are relative to the "
            f"CSV's folder): {', '.join(absent[:5])}{' ...' if len(absent) > 5 else ''}. "
            "Fix the paths or remove those rows."
        )
    if label_column and any(lbl == "" for lbl in labels):
        raise DataError(f"Some rows of {str(path)!r} have an empty {label_column!r}; label every row.")
    return Examples(items, labels if label_column else None, str(path))


def _is_file(p: Path) -> bool:
    """``p.is_file()``, but False rather than an OSError for a path the OS refuses (name too long)."""
    try:
        return p.is_file()
    except OSError:
        return False


def check_duplicates(ex: Examples) -> Examples:
    """The same file listed twice: keep one if labels agree, refuse if they conflict."""
    if ex.labels is None:
        return ex
    seen: dict[str, Any] = {}
    keep = []
    for i, item in enumerate(ex.items):
        if not isinstance(item, str):
            keep.append(i)
            continue
        key = os.path.realpath(item)
        if key in seen:
            if seen[key] != ex.labels[i]:
                raise DataError(
                    f"{item!r} is listed twice with conflicting labels {seen[key]!r} and "
                    f"{ex.labels[i]!r}; keep one row for it."
                )
            continue
        seen[key] = ex.labels[i]
        keep.append(i)
    if len(keep) < len(ex.items):
        out = ex.subset(keep)
        out.notes.append(f"dropped {len(ex.items) - len(keep)} duplicate rows")
        return out
    return ex


def class_list(labels: Sequence) -> list:
    """The sorted distinct labels; at least two are needed to train a classifier."""
    classes = sorted(set(labels), key=lambda v: (str(type(v)), v))
    if len(classes) < 2:
        raise DataError(
            f"Only one class ({classes[0]!r}) in the training data; a classifier needs at least two. "
            "Add images of the other classes (one subfolder per class)." if classes else
            "The training data has no labels."
        )
    return classes


def stratified_split(labels: Sequence, val_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Per-class shuffled split; every class keeps at least one training example."""
    rng = np.random.default_rng(seed)
    by_class: dict[Any, list[int]] = {}
    for i, lbl in enumerate(labels):
        by_class.setdefault(lbl, []).append(i)
    train, val = [], []
    for idx in by_class.values():
        idx = list(rng.permutation(idx))
        n_val = min(int(round(val_fraction * len(idx))), len(idx) - 1)
        val.extend(idx[:n_val])
        train.extend(idx[n_val:])
    return sorted(train), sorted(val)


def aligned_labels(labels: Sequence, classes: Sequence) -> list:
    """Labels matched to the trained classes, also when one side was read as text ("1") and one as int (1)."""
    known = set(classes)
    if all(v in known for v in labels):
        return list(labels)
    by_text = {str(c): c for c in classes}
    return [by_text.get(str(v), v) for v in labels]
