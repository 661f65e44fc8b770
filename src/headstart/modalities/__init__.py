"""What differs between images and texts, in one object each (the protocol is in base.py)."""
from __future__ import annotations

from headstart.data.sources import from_pool
from headstart.encoders import source_modality
from headstart.errors import HeadstartError
from headstart.modalities.base import Columns, Encoded, Modality, Prediction
from headstart.modalities.image import IMAGE
from headstart.modalities.text import TEXT

MODALITIES: dict[str, Modality] = {"image": IMAGE, "text": TEXT}

__all__ = ["Columns", "Encoded", "MODALITIES", "Modality", "Prediction", "modality_for", "modality_named",
           "read_pool"]


def modality_for(backbone_spec: str) -> Modality:
    """The modality of the data a backbone takes, from its spec (``timm:...`` images, ``hf:...`` texts)."""
    return MODALITIES[source_modality(backbone_spec)]


def modality_named(name: str) -> Modality:
    if name not in MODALITIES:
        raise HeadstartError(f"Unknown modality {name!r} in a saved run; this headstart knows {sorted(MODALITIES)}.")
    return MODALITIES[name]


def read_pool(modality: Modality, pool, *, text_column: str | None = None, path_column: str = "path"):
    """Unlabelled examples: a folder of images (flat or nested; any class subfolders are ignored), a CSV
    of image paths, image arrays, or a text table without (or ignoring) a label column."""
    if modality.name == "text":
        return modality.read(pool, columns=Columns(text_column=text_column, label_column=False), purpose="predict")
    return from_pool(pool, path_column=path_column)
