"""Experiment tracking: ``--track tensorboard|mlflow`` logs a fit through those libraries' own APIs.

Both trackers log the same things: the training options, backbone and data as parameters; every
epoch's train/validation loss and accuracy and the learning rate (step = the epoch's position in
the whole fit, so the head and fine-tuning phases follow each other on one axis); at the end the
kept epoch's metrics and the baselines; and the run folder. Only the main process logs.

- ``tensorboard``: event files in ``track_uri`` or, by default, ``RUN/tensorboard`` (so
  ``tensorboard --logdir runs`` shows every run); the run folder around them is the artefact.
- ``mlflow``: a run in experiment ``$MLFLOW_EXPERIMENT_NAME`` (default ``headstart``) at ``track_uri``,
  else ``$MLFLOW_TRACKING_URI``, else MLflow's own default (a local store: no server); the run folder
  is logged as its artefacts under ``run/``. ``headstart.json`` records where (``tracking``), so a
  later ``headstart report`` adds its page to the same MLflow run.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from headstart.config import TRACKERS, TrainConfig
from headstart.errors import HeadstartError
from headstart.track.base import Tracker


def open_tracker(cfg: TrainConfig, *, run_dir: str | Path | None, name: str, params: dict[str, Any]) -> Tracker:
    """The tracker ``cfg.track`` names, opened (a TensorBoard writer or an MLflow run) and given ``params``."""
    if cfg.track == "tensorboard":
        from headstart.track.tensorboard import TensorBoardTracker

        tracker: Tracker = TensorBoardTracker.open(cfg.track_uri, run_dir, name)
    elif cfg.track == "mlflow":
        from headstart.track.mlflow import MlflowTracker

        tracker = MlflowTracker.open(cfg.track_uri, name)
    else:  # TrainConfig validates it; a caller passing a config built some other way
        raise HeadstartError(f"track must be one of {list(TRACKERS)}; got {cfg.track!r}.")
    tracker.log_params(params)
    return tracker


def log_report(meta: dict[str, Any], path: str | Path) -> str | None:
    """Add a report page to the MLflow run this run was tracked in (``headstart.json``: ``tracking``).

    Returns where it went, or None when the run was not tracked with MLflow."""
    info = (meta or {}).get("tracking") or {}
    if info.get("kind") != "mlflow":
        return None
    from headstart.track.mlflow import log_file

    return log_file(info, Path(path))


__all__ = ["Tracker", "open_tracker", "log_report", "TRACKERS"]
