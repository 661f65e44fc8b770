"""MLflow: the tracking client (``MlflowClient``), so headstart never changes MLflow's global run state."""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any

from headstart.errors import HeadstartError
from headstart.track.base import Tracker

log = logging.getLogger(__name__)
EXPERIMENT = "headstart"
MAX_PARAM = 6000  # MLflow refuses longer parameter values
BATCH = 100  # log_batch takes at most 1,000 metrics and 100 parameters per call


def _mlflow():
    try:
        import mlflow
        from mlflow.tracking import MlflowClient
    except ImportError as exc:
        raise HeadstartError("--track mlflow needs MLflow: pip install 'headstart[track]'.") from exc
    return mlflow, MlflowClient


class MlflowTracker(Tracker):
    kind = "mlflow"

    def __init__(self, client, run_id: str, uri: str, experiment: str):
        super().__init__()
        self.client, self.run_id, self.uri, self.experiment = client, run_id, uri, experiment

    @classmethod
    def open(cls, uri: str | None, name: str) -> "MlflowTracker":
        mlflow, MlflowClient = _mlflow()
        uri = uri or mlflow.get_tracking_uri()  # $MLFLOW_TRACKING_URI, else MLflow's local default
        client = MlflowClient(tracking_uri=uri)
        experiment = os.environ.get("MLFLOW_EXPERIMENT_NAME", EXPERIMENT)
        found = client.get_experiment_by_name(experiment)
        experiment_id = found.experiment_id if found is not None else client.create_experiment(experiment)
        run = client.create_run(experiment_id, run_name=name, tags={"mlflow.source.name": "headstart"})
        log.info("tracking in MLflow: %s, experiment %r, run %s", uri, experiment, run.info.run_id)
        return cls(client, run.info.run_id, uri, experiment)

    def _params(self, params):
        from mlflow.entities import Param

        items = [Param(k, str(v)[:MAX_PARAM]) for k, v in sorted(params.items())]
        for i in range(0, len(items), BATCH):
            self.client.log_batch(self.run_id, params=items[i:i + BATCH])

    def _metrics(self, values, step):
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        # MLflow keys may hold "/" (shown as groups in its UI); the rest is [\w.\- /].
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in values.items()])

    def _final(self, values, run_dir):
        self._metrics(values, self.step)
        if run_dir is not None:
            self.client.log_artifacts(self.run_id, str(run_dir), artifact_path="run")

    def close(self, status):
        self.client.set_terminated(self.run_id, status)

    def info(self):
        return {"kind": self.kind, "uri": self.uri, "experiment": self.experiment, "run_id": self.run_id}


def log_file(info: dict[str, Any], path: Path) -> str:
    """Add ``path`` to the artefacts (``run/``) of the MLflow run ``info`` names."""
    _, MlflowClient = _mlflow()
    MlflowClient(tracking_uri=info["uri"]).log_artifact(info["run_id"], str(path), artifact_path="run")
    return f"MLflow run {info['run_id']} ({info['uri']})"
