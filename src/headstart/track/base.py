"""What every tracker does with a fit; the two libraries differ only in the four ``_`` methods."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from headstart.train.callbacks import Callback

EPOCH_METRICS = ("train_loss", "train_acc", "val_loss", "val_acc", "lr")


def flat_params(params: dict[str, Any], prefix: str = "") -> dict[str, str | float | int | bool]:
    """Nested options as ``a.b`` keys with scalar values (None and lists as text), what both libraries take."""
    out: dict[str, Any] = {}
    for k, v in params.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flat_params(v, key + "."))
        elif isinstance(v, (bool, int, float, str)):
            out[key] = v
        else:
            out[key] = str(v)
    return out


def final_metrics(clf) -> dict[str, float]:
    """The kept epoch's metrics and each baseline's validation accuracy, as ``final/...`` numbers."""
    out = {f"final/{k}": float(v) for k, v in clf.final_metrics_().items() if isinstance(v, (int, float))
           and k != "epoch"}
    for name, rec in (getattr(clf, "baselines_", None) or {}).items():
        if isinstance(rec, dict) and isinstance(rec.get("val_acc"), (int, float)):
            out[f"baseline/{name}/val_acc"] = float(rec["val_acc"])
    out["fit_seconds"] = float(getattr(clf, "fit_seconds_", 0.0))
    return {k: v for k, v in out.items() if math.isfinite(v)}


class Tracker(Callback):
    """A training callback that forwards every epoch's record, then :meth:`finish` (or :meth:`fail`)."""

    kind = ""

    def __init__(self) -> None:
        self.step = 0

    # ------------------------------------------------------------------ the loop's hooks
    def on_fit_start(self, fit):
        self.step = len(fit.done_records)  # a resumed fit continues the axis where the checkpoint was

    def on_epoch_end(self, fit, ph, record):
        if not fit.is_main:
            return
        self.step += 1
        values = {k: float(record[k]) for k in EPOCH_METRICS if isinstance(record.get(k), (int, float))}
        self._metrics({f"{record.get('phase', 'fit')}/{k}": v for k, v in values.items()}
                      | {f"epoch/{k}": v for k, v in values.items()}, self.step)

    # ------------------------------------------------------------------ after the fit
    def log_params(self, params: dict[str, Any]) -> None:
        self._params(flat_params(params))

    def finish(self, clf, run_dir: Path | None) -> None:
        """Log the final metrics and the run folder, and close."""
        self._final(final_metrics(clf), run_dir)
        self.close("FINISHED")

    def fail(self) -> None:
        self.close("FAILED")

    # ------------------------------------------------------------------ per library
    def _params(self, params: dict[str, Any]) -> None:
        raise NotImplementedError

    def _metrics(self, values: dict[str, float], step: int) -> None:
        raise NotImplementedError

    def _final(self, values: dict[str, float], run_dir: Path | None) -> None:
        raise NotImplementedError

    def close(self, status: str) -> None:
        raise NotImplementedError

    def info(self) -> dict[str, Any]:
        """Where this fit is tracked, as ``headstart.json`` records it (``tracking``)."""
        raise NotImplementedError
