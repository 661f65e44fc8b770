"""Serve a run over HTTP: a JSON API with dynamic batching, a bearer token, limits, and a web page.

``serve(run, ServeConfig(port=8000))`` blocks; ``build_app(run, config)`` gives the FastAPI app (for
tests, or to mount elsewhere). Only the config is imported eagerly; FastAPI and torch load on first use.
"""
from __future__ import annotations

from headstart.serve.config import ServeConfig

__all__ = ["ServeConfig", "build_app", "serve"]


def build_app(run, config: ServeConfig | None = None):
    from headstart.serve.server import build_app as build

    return build(run, config)


def serve(run, config: ServeConfig | None = None, **options) -> None:
    from headstart.serve.server import serve as run_server

    run_server(run, config, **options)
