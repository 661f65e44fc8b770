"""`headstart serve`: load a run, choose the engine once, and run the app under uvicorn.

uvicorn handles SIGINT/SIGTERM: it stops accepting connections, lets requests in flight finish for up
to ``graceful_timeout_s``, then the app's shutdown answers whatever is still queued for the model.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from headstart.serve.config import ServeConfig

log = logging.getLogger("headstart")


def build_app(run, config: ServeConfig | None = None):
    """(FastAPI app, predictor) for a run directory or a fitted TransferClassifier."""
    from headstart.estimator import TransferClassifier, load
    from headstart.serve.app import create_app
    from headstart.serve.predictor import Predictor

    config = config or ServeConfig()
    clf = run if isinstance(run, TransferClassifier) else load(run)
    predictor = Predictor.build(clf, config.engine, config.precision)
    name = Path(str(clf.run_.path)).name if getattr(clf, "run_", None) is not None else "model"
    return create_app(predictor, config, name=name, info=_info(clf)), predictor


def _info(clf) -> dict[str, Any]:
    run = getattr(clf, "run_", None)
    return {"backbone": clf.backbone_info_.get("spec"), "architecture": clf.backbone_info_.get("architecture"),
            "preprocess": clf.preprocess_.to_dict(), "cut_stage": clf.fitted_config_.cut_stage,
            "metrics": run.meta.get("metrics") if run is not None else None,
            "run_model_sha256": run.meta.get("model_sha256") if run is not None else None}


def serve(run, config: ServeConfig | None = None, *, log_level: str = "info", access_log: bool = True) -> None:
    """Serve until interrupted (blocking)."""
    import uvicorn

    config = config or ServeConfig()
    app, predictor = build_app(run, config)
    log.info("serving %s on %s", predictor.describe(), config.host)
    server = uvicorn.Server(uvicorn.Config(
        app, host=config.host, port=config.port, log_level=log_level, access_log=access_log,
        timeout_graceful_shutdown=config.graceful_timeout_s, timeout_keep_alive=5,
        h11_max_incomplete_event_size=64 * 1024,  # request line + headers: a slowloris cannot grow them
    ))
    try:
        server.run()
    except KeyboardInterrupt:  # uvicorn re-raises the signal once it has shut down gracefully: a clean exit
        log.info("server stopped")
