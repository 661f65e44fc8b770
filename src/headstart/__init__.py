"""headstart: transfer learning in one command.

Heavy libraries (torch, timm, accelerate) are imported only when used, so ``headstart --help`` is instant.
"""
from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["TransferClassifier", "TrainConfig", "load", "get_backbone", "list_backbones", "HeadstartError"]


def __getattr__(name: str):
    if name in ("TransferClassifier", "load"):
        from headstart import estimator as api

        return getattr(api, name)
    if name == "TrainConfig":
        from headstart.config import TrainConfig

        return TrainConfig
    if name in ("get_backbone", "list_backbones"):
        from headstart import encoders as backbones

        return getattr(backbones, name)
    if name == "HeadstartError":
        from headstart.errors import HeadstartError

        return HeadstartError
    raise AttributeError(f"module 'headstart' has no attribute {name!r}")
