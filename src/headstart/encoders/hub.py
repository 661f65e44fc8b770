"""Reaching the Hugging Face Hub, or knowing fast that it cannot be reached.

Without a network, ``huggingface_hub`` retries each file five times with back-off: ``timm:resnet18``
took 54 s to fail here, twice over (safetensors, then the .bin). A 3-second probe of the hub's host
decides once per process; unreachable, downloads run in the hub's own offline mode (cached files load
at once, missing ones fail at once) and the error lists what works offline instead.
"""
from __future__ import annotations

import contextlib
import functools
import os
import socket
from urllib.parse import urlparse

PROBE_SECONDS = 3.0


@functools.lru_cache(maxsize=1)
def hub_reachable() -> bool:
    """Whether a TCP connection to the hub's endpoint opens within :data:`PROBE_SECONDS` (cached)."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return False
    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname, port), timeout=PROBE_SECONDS):
            return True
    except OSError:  # no DNS, refused, timed out
        return False


@contextlib.contextmanager
def hub_or_cache():
    """Downloads inside use the network when the hub answers, else the local cache only (no retries)."""
    if hub_reachable():
        yield True
        return
    from huggingface_hub import constants

    was = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True  # read at call time by huggingface_hub (is_offline_mode)
    try:
        yield False
    finally:
        constants.HF_HUB_OFFLINE = was


def offline_alternatives(modality: str) -> str:
    """The backbones that work offline right now, for an error message."""
    from headstart.encoders import list_backbones, source_modality

    names = [r["spec"] for r in list_backbones() if r["offline"] and "<" not in r["spec"]
             and source_modality(r["spec"]) == modality]
    return f" Offline now: {', '.join(names)}." if names else ""
