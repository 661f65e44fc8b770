"""What ``discover`` found, as the user sees it and as it is saved.

A :class:`Grouping` holds a group id, a confidence and an outlier flag per pool item, per-group
facts (size, cohesion, typical and borderline members, prototypes; for texts the distinctive terms),
how K and the representation were chosen, and the raw-input baseline beside it. ``save`` writes
``discovery.json`` (everything but the arrays), ``groups.csv`` (item, group, confidence, outlier)
and, for images, a contact sheet per group; ``export_folders`` lays the pool out as one folder per
group -- rename and correct them, then ``headstart train`` on the folder.
"""
from __future__ import annotations

import csv
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from headstart.errors import DataError
from headstart.storage import atomic_path, check_writable

FORMAT = "headstart-discovery"
FORMAT_VERSION = 1
SHEETS = "sheets"
TYPICAL = 36  # members shown on a group's contact sheet (the most typical first)
BORDERLINE = 6


@dataclass
class Grouping:
    """Groups found in an unlabelled pool. Arrays are aligned with the pool's items.

    ``labels_[i]`` is item i's group (0 = the largest), or -1 when the item could not be read;
    ``k_`` the number of groups; ``confidence_`` in [0, 1] (0 = on a boundary); ``outlier_`` marks
    items that sit far from their group (density-method noise, reassigned rather than dropped).
    """

    labels_: np.ndarray
    k_: int
    confidence_: np.ndarray
    outlier_: np.ndarray
    prototypes_: np.ndarray  # (k, D): each group's mean embedding in the chosen representation
    items: list[str]  # file paths, "origin[i]" for arrays, row ids for texts
    groups: list[dict[str, Any]]
    summary: dict[str, Any]  # method, chosen K and runner-up, criteria, representation, baseline, timings
    texts: list[str] | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list)
    examples: Any = None  # the pool as read (to draw sheets and export); not saved
    baseline_labels_: np.ndarray | None = None  # the raw-input baseline's groups, aligned like labels_
    embeddings_: np.ndarray | None = None  # (n readable, D) the chosen representation, in pool order

    @property
    def modality(self) -> str:
        return "text" if self.texts is not None else "image"

    def to_dict(self) -> dict[str, Any]:
        return {"format": FORMAT, "format_version": FORMAT_VERSION, "modality": self.modality, "k": self.k_,
                **self.summary, "groups": self.groups, "n_items": len(self.items),
                "n_grouped": int((self.labels_ >= 0).sum()), "n_outliers": int(self.outlier_.sum()),
                "skipped": [list(s) for s in self.skipped[:50]], "n_skipped": len(self.skipped)}

    # ------------------------------------------------------------------ files
    def save(self, directory: str | Path) -> Path:
        out = Path(directory)
        check_writable(out)
        out.mkdir(parents=True, exist_ok=True)
        with atomic_path(out / "groups.csv") as tmp:
            self._write_csv(tmp)
        np.save(out / "prototypes.npy", self.prototypes_.astype(np.float32))
        if self.modality == "image" and self.examples is not None:
            sheets = out / SHEETS
            sheets.mkdir(exist_ok=True)
            for g in self.groups:
                contact_sheet(self, g["id"]).save(sheets / f"{g['name']}.png")
            overview_sheet(self).save(sheets / "overview.png")
        with atomic_path(out / "discovery.json") as tmp:
            tmp.write_text(json.dumps(self.to_dict(), indent=2))
        return out

    def _write_csv(self, path: Path) -> None:
        names = {g["id"]: g["name"] for g in self.groups}
        with open(path, "w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(["item", "group", "confidence", "outlier"] + (["text"] if self.texts is not None else []))
            for i, item in enumerate(self.items):
                g = int(self.labels_[i])
                row = [item, names.get(g, ""), f"{self.confidence_[i]:.4f}" if g >= 0 else "",
                       int(self.outlier_[i]) if g >= 0 else ""]
                w.writerow(row + ([self.texts[i]] if self.texts is not None else []))

    def export_folders(self, directory: str | Path, *, link: bool = False) -> Path:
        """One folder per group (images: copies, or symlinks with ``link``; texts: one labelled
        ``texts.csv``), ready to rename, correct and train on."""
        out = Path(directory)
        if out.exists() and any(out.iterdir()):
            raise DataError(f"{str(out)!r} is not empty; export into a new folder so no file is mixed "
                            "into the wrong group.")
        out.mkdir(parents=True, exist_ok=True)
        names = {g["id"]: g["name"] for g in self.groups}
        if self.texts is not None:
            with open(out / "texts.csv", "w", newline="", encoding="utf-8") as f:
                w = csv.writer(f)
                w.writerow(["text", "label"])
                for i, text in enumerate(self.texts):
                    if self.labels_[i] >= 0:
                        w.writerow([text, names[int(self.labels_[i])]])
            return out
        for g in self.groups:
            (out / g["name"]).mkdir()
        for i, item in enumerate(self.items):
            if self.labels_[i] < 0:
                continue
            folder = out / names[int(self.labels_[i])]
            _place(self.examples.items[i], folder, i, link)
        return out


def _place(item, folder: Path, i: int, link: bool) -> None:
    if isinstance(item, (str, os.PathLike)):
        src = Path(item)
        dest = folder / f"{i:06d}_{src.name}"  # the index keeps same-named files from different folders apart
        if link:
            dest.symlink_to(src.resolve())
        else:
            shutil.copy2(src, dest)
        return
    from headstart.data.images import load_image

    load_image(item).save(folder / f"{i:06d}.png")  # arrays and PIL images: written as the model reads them


def read_grouping(directory: str | Path) -> dict[str, Any]:
    """``discovery.json`` of a saved grouping, checked to be one."""
    path = Path(directory) / "discovery.json"
    if not path.is_file():
        raise DataError(f"{str(directory)!r} holds no discovery.json; it is not a `headstart discover` output.")
    meta = json.loads(path.read_text())
    if meta.get("format") != FORMAT:
        raise DataError(f"{str(path)!r} is not a headstart discovery file.")
    return meta


# ---------------------------------------------------------------------- contact sheets
def _thumb(item, size: int):
    from PIL import Image

    from headstart.data.images import load_image

    img = load_image(item)
    img.thumbnail((size, size), Image.Resampling.BICUBIC if max(img.size) > size else Image.Resampling.NEAREST)
    if max(img.size) < size:  # tiny images (8x8 digits) are blown up, not left as specks
        scale = size / max(img.size)
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))),
                         Image.Resampling.NEAREST)
    return img


def _grid(items: list, cols: int, size: int, pad: int = 4, title: str = "", rows: int | None = None):
    from PIL import Image, ImageDraw

    from headstart.data.images import BadImage

    rows = rows or max(1, -(-len(items) // cols))
    top = 18 if title else 0
    sheet = Image.new("RGB", (cols * (size + pad) + pad, top + rows * (size + pad) + pad), "white")
    if title:
        ImageDraw.Draw(sheet).text((pad, 3), title, fill="black")
    for j, item in enumerate(items[:cols * rows]):
        try:
            thumb = _thumb(item, size)
        except (BadImage, OSError, ValueError):  # an image that vanished since grouping: leave its cell empty
            continue
        r, c = divmod(j, cols)
        sheet.paste(thumb, (pad + c * (size + pad), top + pad + r * (size + pad)))
    return sheet


def contact_sheet(grouping: Grouping, g: int, size: int = 96):
    """The group's most typical members (most confident first), then a row of its borderline ones."""
    info = grouping.groups[g]
    items = grouping.examples.items
    typical = _grid([items[i] for i in info["typical"][:TYPICAL]], 6, size,
                    title=f"{info['name']}: {info['size']} items, cohesion {info['cohesion']:.2f} - most typical")
    border = _grid([items[i] for i in info["borderline"][:BORDERLINE]], 6, size, title="borderline", rows=1)
    from PIL import Image

    sheet = Image.new("RGB", (typical.width, typical.height + border.height), "white")
    sheet.paste(typical, (0, 0))
    sheet.paste(border, (0, typical.height))
    return sheet


def overview_sheet(grouping: Grouping, per_group: int = 10, size: int = 48):
    """One row per group: its name and size, then its most typical members."""
    from PIL import Image, ImageDraw

    label_w, pad = 130, 3
    rows = [_grid([grouping.examples.items[i] for i in g["typical"][:per_group]], per_group, size, pad=pad, rows=1)
            for g in grouping.groups]
    width = label_w + (rows[0].width if rows else 0)
    sheet = Image.new("RGB", (width, sum(r.height for r in rows) or 1), "white")
    draw = ImageDraw.Draw(sheet)
    y = 0
    for g, row in zip(grouping.groups, rows):
        draw.text((4, y + size // 2 - 6), f"{g['name']} ({g['size']})", fill="black")
        sheet.paste(row, (label_w, y))
        y += row.height
    return sheet
