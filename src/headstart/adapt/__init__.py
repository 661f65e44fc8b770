"""Domain adaptation (``headstart adapt RUN TARGET``, ``clf.adapt(target)``): the pipeline is in
``pipeline.py``, the methods in ``methods.py``, the label-free choice in ``select.py``. This package
imports nothing heavy, so the CLI can read :class:`AdaptConfig` without loading torch."""
from headstart.adapt.config import ADAPT_METHODS, IMAGE_ONLY, AdaptConfig

__all__ = ["ADAPT_METHODS", "IMAGE_ONLY", "AdaptConfig"]
