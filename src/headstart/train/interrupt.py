"""A stop request that survives where a KeyboardInterrupt may not.

Python raises the KeyboardInterrupt of Ctrl-C (or the CLI's SIGTERM) at whatever bytecode runs next;
when that is inside a finaliser or a callback whose exceptions are "ignored", the interrupt is printed
and lost, and training goes on to its last epoch. The CLI's signal handler therefore also sets
:data:`STOP`, and the training loop checks it between optimizer steps. Torch-free, so a handler can
import it.
"""
from __future__ import annotations

import threading

STOP = threading.Event()


def request_stop(signum=None, frame=None) -> None:
    """Signal handler: remember the request, then interrupt the code running now."""
    STOP.set()
    raise KeyboardInterrupt


def check_stop() -> None:
    """Raise the KeyboardInterrupt a swallowed signal should have raised."""
    if STOP.is_set():
        raise KeyboardInterrupt
