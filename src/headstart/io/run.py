"""The saved run: ``model.safetensors`` + ``headstart.json`` (+ ``metrics.jsonl`` written while training).

The weights file holds backbone and head together, so the head can never be lost; the JSON holds
everything needed to rebuild the model offline and to know how it was made.
"""
from __future__ import annotations

import datetime as _dt
import json
import platform
from importlib import metadata
from pathlib import Path
from typing import Any

from headstart.errors import HeadstartError
from headstart.storage import file_sha256, save_safetensors, write_json

FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
META = "headstart.json"
METRICS = "metrics.jsonl"
CHECKPOINT = "checkpoint.pt"  # crash-safe training state; loaded with weights_only=True
TRAIN_ARGS = "train_args.json"  # what `headstart resume` needs to restart the command


def library_versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("headstart", "torch", "timm", "accelerate", "safetensors", "numpy", "pillow", "scikit-learn"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def save_run(directory: str | Path, model, meta: dict[str, Any]) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = model.state_dict()
    save_safetensors(state, directory / WEIGHTS, metadata={"format": "headstart", "version": str(FORMAT_VERSION)})
    meta = dict(meta)
    meta.update({
        "format_version": FORMAT_VERSION,
        "model_sha256": file_sha256(directory / WEIGHTS),
        "library_versions": library_versions(),
        "saved_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    })
    write_json(directory / META, meta)  # written last: a run dir with headstart.json is complete
    return directory


def read_run(directory: str | Path) -> tuple[dict[str, Any], dict]:
    """(meta, state_dict) of a saved run, with the weights checked against the recorded sha256."""
    from safetensors.torch import load_file

    directory = Path(directory)
    meta_path = directory / META
    if not meta_path.is_file():
        raise HeadstartError(
            f"{str(directory)!r} is not a headstart run (no {META}). Pass the --out directory of "
            "`headstart train`."
        )
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as exc:
        raise HeadstartError(f"{str(meta_path)!r} is corrupt ({exc}).") from exc
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise HeadstartError(f"{str(directory)!r} was saved by a newer headstart; upgrade to load it.")
    weights = directory / WEIGHTS
    if not weights.is_file():
        raise HeadstartError(f"{str(directory)!r} has no {WEIGHTS}; the run did not finish saving.")
    expected = meta.get("model_sha256")
    if expected and file_sha256(weights) != expected:
        raise HeadstartError(
            f"{str(weights)!r} does not match the sha256 recorded in {META}: the file was modified or "
            "corrupted. Re-train or restore it from a backup."
        )
    return meta, load_file(str(weights))
