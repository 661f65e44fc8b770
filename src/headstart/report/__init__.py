"""See what a run learned: one self-contained HTML report (``headstart report RUN [TEST]``).

``build`` reads one cached prediction pass per split (``headstart.io.predictions``), ``html.render``
draws it (matplotlib SVG inline, thumbnails as data URLs), :func:`write_report` writes it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from headstart.storage import atomic_path


def write_report(run: str | Path, test=None, *, out: str | Path | None = None, calibrate: bool = False,
                 test_labels=None, clf=None) -> tuple[Path, dict[str, Any]]:
    """Write ``out`` (default ``RUN/report.html``); returns (path, a summary of what it shows).

    ``calibrate=True`` stores the temperature fitted on the validation split in the run, so its
    predictions are calibrated from then on."""
    from headstart.report.build import build, store_temperature
    from headstart.report.html import render

    contents, clf = build(run, test, test_labels=test_labels, clf=clf)
    if calibrate:
        store_temperature(clf, Path(run), contents.calibration)
        contents.calibration["stored"] = contents.calibration["temperature"]
    out = Path(out) if out is not None else Path(run) / "report.html"
    with atomic_path(out) as tmp:
        tmp.write_text(render(contents), encoding="utf-8")
    tracked = _log_to_tracker(contents.run.meta, out)
    summary = {"report": str(out), "evaluated_on": contents.evaluated.name, "n": contents.metrics["n"],
               "macro_f1": contents.metrics["macro_f1"],
               "accuracy": contents.metrics["accuracy"], "accuracy_interval": list(contents.accuracy_interval),
               "cached_predictions": contents.evaluated.cached, **{k: v for k, v in contents.calibration.items()
                                                                 if k in ("ece", "ece_calibrated", "temperature")}}
    metrics = {**contents.metrics, "n_skipped": contents.evaluated.n_skipped}
    return out, {**summary, "tracked": tracked, "metrics": metrics}


def _log_to_tracker(meta: dict[str, Any], path: Path) -> str | None:
    """The page joins the MLflow run the fit was tracked in; a tracker that is gone costs a warning only."""
    import logging

    from headstart.track import log_report

    try:
        return log_report(meta, path)
    except Exception as exc:  # the report itself is written: losing the copy must not fail the command
        logging.getLogger(__name__).warning("could not add the report to the tracked run: %s", exc)
        return None
