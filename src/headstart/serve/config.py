"""What `headstart serve` is asked to do: one frozen dataclass, its fields the CLI's flags."""
from __future__ import annotations

import dataclasses
import ipaddress
import os
from dataclasses import dataclass, field
from typing import Any

from headstart.config import ENGINES
from headstart.errors import HeadstartError, check_choice

PRECISIONS = ("auto", "bf16", "fp32")


@dataclass(frozen=True, kw_only=True)
class ServeConfig:
    host: str = field(default="127.0.0.1", metadata={
        "help": "address to bind; anything but loopback (127.0.0.1, ::1, localhost) needs --token"})
    port: int = field(default=8000, metadata={"help": "TCP port (0 = any free port, printed at start)"})
    token: str | None = field(default=None, metadata={
        "help": "bearer token every request but GET / and /health must carry (Authorization: Bearer TOKEN); "
                "$HEADSTART_TOKEN is read when this is not given"})
    max_batch: int = field(default=16, metadata={
        "help": "dynamic batching: at most this many inputs, from any number of requests, per model call"})
    max_wait_ms: float = field(default=5.0, metadata={
        "help": "dynamic batching: the first input of a batch waits at most this long for others to join "
                "(the added latency is bounded by it; 0 = run whatever is queued at once)"})
    max_body_mb: float = field(default=10.0, metadata={"help": "larger request bodies get 413"})
    max_inputs: int = field(default=64, metadata={"help": "images or texts per request; more get 413"})
    body_timeout_s: float = field(default=10.0, metadata={
        "help": "a request body that takes longer than this to arrive gets 408 (slow-sending clients)"})
    request_timeout_s: float = field(default=30.0, metadata={
        "help": "a prediction not answered within this gets 503 (an overloaded server sheds load)"})
    engine: str = field(default="auto", metadata={
        "help": f"one of {ENGINES}: auto = OpenVINO for image runs when it is installed, else PyTorch's CPU "
                "fast path"})
    precision: str = field(default="auto", metadata={
        "help": f"one of {PRECISIONS}: auto = bf16 where the CPU has it natively, else fp32"})
    graceful_timeout_s: float = field(default=10.0, metadata={
        "help": "on SIGINT/SIGTERM, requests in flight get this long to finish before the server exits"})

    def __post_init__(self):
        if self.token is None and os.environ.get("HEADSTART_TOKEN"):
            object.__setattr__(self, "token", os.environ["HEADSTART_TOKEN"])  # frozen: set once, here
        check_choice("engine", self.engine, ENGINES)
        check_choice("precision", self.precision, PRECISIONS)
        if not 0 <= self.port <= 65535:
            raise HeadstartError(f"port must be in 0..65535; got {self.port!r}.")
        for name in ("max_batch", "max_inputs"):
            if getattr(self, name) < 1:
                raise HeadstartError(f"{name} must be >= 1; got {getattr(self, name)!r}.")
        for name in ("max_body_mb", "body_timeout_s", "request_timeout_s"):
            if not getattr(self, name) > 0:
                raise HeadstartError(f"{name} must be > 0; got {getattr(self, name)!r}.")
        if self.max_wait_ms < 0 or self.graceful_timeout_s < 0:
            raise HeadstartError("max_wait_ms and graceful_timeout_s must be >= 0.")
        if self.token is not None and len(self.token) < 8:
            raise HeadstartError("token must be at least 8 characters (try: python -c 'import secrets; "
                                 "print(secrets.token_urlsafe())').")
        if self.token is None and not is_loopback(self.host):
            raise HeadstartError(f"Binding {self.host!r} exposes the model beyond this machine: pass --token SECRET "
                                 "(or set HEADSTART_TOKEN), or keep the default --host 127.0.0.1.")

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 1024 * 1024)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["token"] = "set" if self.token else None  # never echo the secret
        return d


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
