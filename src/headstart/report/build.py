"""What the report says, computed from one cached prediction pass per split (no inference on a rerun).

:func:`build` gathers it into a :class:`Contents`; :mod:`headstart.report.html` renders it.
"""
from __future__ import annotations

import base64
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from headstart.assess.calibration import apply_temperature, fit_temperature, reliability
from headstart.assess.metrics import classification_metrics
from headstart.errors import HeadstartError
from headstart.io.predictions import Predictions, predictions, saved_validation
from headstart.io.run import META
from headstart.storage import write_json

TOP_LOSSES = 12
TOP_CONFUSED = 10
BOOTSTRAP = 1000


@dataclass
class Contents:
    run: Any  # headstart.io.run.Run
    evaluated: Predictions  # the test set when given, else the validation split
    metrics: dict[str, Any]
    accuracy_interval: tuple[float, float]
    confused: list[dict[str, Any]]
    top_losses: list[dict[str, Any]]
    calibration: dict[str, Any]
    reliability_before: Any
    reliability_after: Any | None
    validation: Predictions | None
    notes: list[str] = field(default_factory=list)
    audit: dict[str, Any] | None = None  # RUN/audit.json, written by `headstart audit`


def bootstrap_interval(correct: np.ndarray, n: int = BOOTSTRAP, seed: int = 0) -> tuple[float, float]:
    """95 % percentile bootstrap interval of the accuracy (fixed seed: the same report every time)."""
    if not len(correct):
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    means = correct[rng.integers(0, len(correct), (n, len(correct)))].mean(1)
    return (float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975)))


def most_confused(matrix: np.ndarray, classes: list[str], k: int = TOP_CONFUSED) -> list[dict[str, Any]]:
    m = np.asarray(matrix)
    off = [(int(m[i, j]), i, j) for i in range(len(m)) for j in range(len(m)) if i != j and m[i, j]]
    off.sort(key=lambda t: (-t[0], t[1], t[2]))
    return [{"true": classes[i], "predicted": classes[j], "count": n, "share_of_true": n / max(int(m[i].sum()), 1)}
            for n, i, j in off[:k]]


def _thumbnail(examples, i_item: int, size: int = 72) -> str | None:
    """A PNG data URL of image ``i_item`` of ``examples`` (deterministic bytes), or None for texts."""
    if examples is None or hasattr(examples, "texts"):
        return None
    from PIL import Image

    from headstart.data import load_image

    try:
        img = load_image(examples.items[i_item])
    except Exception:  # unreadable now: the table still lists it
        return None
    img = img.convert("RGB")
    img.thumbnail((size, size), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def top_losses(pred: Predictions, classes: list[str], examples=None, positions=None,
               k: int = TOP_LOSSES) -> list[dict[str, Any]]:
    """The examples whose true class got the lowest probability, worst first."""
    if not len(pred.truth):
        return []
    p_true = pred.probs[np.arange(len(pred.truth)), pred.truth]
    order = np.lexsort((np.arange(len(p_true)), p_true))[:k]
    rows = []
    for r in order:
        item = positions[r] if positions is not None else None
        rows.append({"id": pred.ids[r], "true": classes[int(pred.truth[r])],
                     "predicted": classes[int(pred.probs[r].argmax())], "p_true": float(p_true[r]),
                     "p_predicted": float(pred.probs[r].max()), "loss": float(-np.log(max(p_true[r], 1e-12))),
                     "thumbnail": _thumbnail(examples, item) if item is not None else None})
    return rows


def _calibration(clf, validation: Predictions | None, evaluated: Predictions, notes: list[str]):
    """Fit T on the validation split; measure ECE before/after on the evaluated set."""
    before = reliability(evaluated.probs, evaluated.truth)
    if validation is None or len(validation.truth) < 20:
        notes.append("Temperature scaling needs the validation split's predictions (at least 20 examples); "
                     "this run has none saved, so calibration is shown as trained only.")
        return {"ece": before.ece, "temperature": None}, before, None
    t = fit_temperature(validation.probs, validation.truth)
    after = reliability(apply_temperature(evaluated.probs, t), evaluated.truth)
    info = {"temperature": t, "ece": before.ece, "ece_calibrated": after.ece,
            "fitted_on": f"validation split ({len(validation.truth)} examples)",
            "measured_on": f"{evaluated.name} ({len(evaluated.truth)} examples)",
            "stored": (getattr(clf, "calibration_", None) or {}).get("temperature")}
    if evaluated.name == "validation":
        notes.append("No test data was given: calibration is fitted and measured on the same validation "
                     "split, which flatters it; pass TEST to measure it on held-out data.")
    return info, before, after


def build(run_dir: str | Path, test=None, *, test_labels=None, clf=None) -> tuple[Contents, Any]:
    """The report's contents for the run at ``run_dir`` on ``test`` (else its validation split).

    ``clf``: the run already loaded (e.g. with another engine set); returns (contents, the classifier)."""
    from headstart.estimator import load

    clf = clf if clf is not None else load(run_dir)
    run_dir = Path(run_dir)
    notes: list[str] = []
    validation = saved_validation(run_dir, clf.meta_.get("model_sha256", ""))
    examples = positions = None
    if test is not None:
        examples = clf._read(test, test_labels, purpose="evaluate")
        evaluated = predictions(clf, examples, name="test", run_dir=run_dir)
        positions = _positions(examples, evaluated)
    elif validation is not None:
        evaluated = validation
        notes.append("No test data was given: every figure below is on the validation split, which chose "
                     "the kept epoch; pass TEST for an unbiased estimate.")
    else:
        raise HeadstartError(f"{str(run_dir)!r} has no saved validation predictions (trained without a validation "
                             "split, or by an older headstart): pass test data, e.g. `headstart report RUN TEST`.")
    if not len(evaluated.truth):
        raise HeadstartError(f"None of the examples in {evaluated.origin!r} could be read.")
    classes = [str(c) for c in clf.classes_]
    metrics = classification_metrics(evaluated.truth, evaluated.probs.argmax(1), classes)
    correct = (evaluated.probs.argmax(1) == evaluated.truth).astype(float)
    calibration, before, after = _calibration(clf, validation, evaluated, notes)
    contents = Contents(clf.run_, evaluated, metrics, bootstrap_interval(correct),
                        most_confused(np.array(metrics["confusion_matrix"]), classes),
                        top_losses(evaluated, classes, examples, positions), calibration, before, after, validation,
                        notes, saved_audit(run_dir))
    return contents, clf


def saved_audit(run_dir: Path) -> dict[str, Any] | None:
    """The run's last ``headstart audit`` (RUN/audit.json), or None when it was never audited there."""
    path = run_dir / "audit.json"
    return json.loads(path.read_text()) if path.exists() else None


def _positions(examples, pred: Predictions) -> list[int] | None:
    """Index into ``examples`` of each readable prediction (ids are paths, texts or '#i')."""
    if hasattr(examples, "texts"):
        return None
    import os

    where = {}
    for i, item in enumerate(examples.items):
        where.setdefault(os.fspath(item) if isinstance(item, (str, os.PathLike)) else f"#{i}", i)
    return [where.get(i) for i in pred.ids]


def store_temperature(clf, run_dir: Path, info: dict[str, Any]) -> None:
    """Record the fitted temperature in the run's headstart.json; predictions use it from then on."""
    if not info.get("temperature"):
        raise HeadstartError("No temperature could be fitted: the run has no saved validation predictions, or "
                             "fewer than 20; nothing to store with --calibrate.")
    meta_path = Path(run_dir) / META
    meta = json.loads(meta_path.read_text())
    meta["calibration"] = {k: info[k] for k in ("temperature", "ece", "ece_calibrated", "fitted_on", "measured_on")}
    write_json(meta_path, meta)
    clf.calibration_ = meta["calibration"]
