"""One prediction pass per (model, data), kept in the run folder: every plot and table reads it.

``RUN/predictions/<name>-<key>.npz`` holds the probabilities (before any temperature), the true class
indices, and the id of each example (its path, its text, or ``#i`` for in-memory arrays). The key is
the model's weight hash and the data's fingerprint (file paths, sizes and times, array bytes, or the
texts), so rerunning ``report`` on the same test data does no inference, and other weights or data
never match. A fit with ``out`` writes its validation split's pass (``validation-<key>.npz``) as it
saves the run, so a report has validation predictions even when the training data were arrays.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from headstart.data import encode_labels
from headstart.data.sources import aligned_labels
from headstart.features.cache import examples_sha256
from headstart.storage import atomic_path


@dataclass
class Predictions:
    """Probabilities of the readable examples, their true classes and ids; what could not be read."""

    name: str  # "test" or "validation"
    origin: str
    probs: np.ndarray  # (n, C), float32, without calibration
    truth: np.ndarray  # (n,), class indices
    ids: list[str]
    n_skipped: int
    cached: bool = False


def _fingerprint(examples) -> str:
    if hasattr(examples, "texts"):  # a text dataset: the texts themselves
        h = hashlib.sha256()
        for t in examples.texts:
            h.update(t.encode("utf-8", "surrogatepass") + b"\0")
        return h.hexdigest()
    return examples_sha256(examples)


def _id(examples, i: int) -> str:
    """What the report shows for example ``i``: its text, its file path, or its position."""
    if hasattr(examples, "texts"):
        return examples.texts[i]
    item = examples.items[i]
    return os.fspath(item) if isinstance(item, (str, os.PathLike)) else f"#{i}"


def predictions(clf, examples, *, name: str, run_dir: Path | None) -> Predictions:
    """``clf``'s probabilities for labelled ``examples``, from the run's cache when the key matches."""
    meta = getattr(clf, "meta_", None) or {}
    key = hashlib.sha256(json.dumps({"model": meta.get("model_sha256"), "data": _fingerprint(examples),
                                     "version": 1}).encode()).hexdigest()[:24]
    path = run_dir / "predictions" / f"{name}-{key}.npz" if run_dir is not None and meta.get("model_sha256") else None
    if path is not None and path.is_file():
        return _read(path, name)
    truth_all = encode_labels(aligned_labels(examples.labels, clf.classes_), clf.classes_).numpy()
    pred = clf.predict_examples(examples, raw=True)
    out = Predictions(name, str(examples.origin), pred.probs.astype(np.float32), truth_all[pred.index],
                      [_id(examples, i) for i in pred.index], len(pred.skipped))
    if path is not None:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.savez(f, probs=out.probs, truth=out.truth, ids=np.array(out.ids, dtype=str),
                     origin=np.array(out.origin), n_skipped=np.array(out.n_skipped),
                     model=np.array(str(meta.get("model_sha256"))))
    return out


def _read(path: Path, name: str) -> Predictions:
    with np.load(path, allow_pickle=False) as z:
        return Predictions(name, str(z["origin"]), z["probs"], z["truth"], [str(s) for s in z["ids"]],
                           int(z["n_skipped"]), cached=True)


def saved_validation(run_dir: Path, model_sha256: str) -> Predictions | None:
    """The validation pass the fit saved for these weights, if any."""
    for path in sorted((Path(run_dir) / "predictions").glob("validation-*.npz")):
        try:
            with np.load(path, allow_pickle=False) as z:
                if str(z["model"]) != model_sha256:
                    continue
            return _read(path, "validation")
        except (OSError, ValueError, KeyError):
            continue
    return None
