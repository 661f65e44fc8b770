"""What `headstart adapt` is asked to do: one frozen dataclass, its fields the CLI's flags."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from headstart.errors import HeadstartError, check_choice

# source-only is always measured: it is what every other method must beat, and the fallback.
ADAPT_METHODS = ("auto", "source-only", "adabn", "coral", "self-training", "shot-im")
IMAGE_ONLY = ("adabn", "shot-im")  # BatchNorm statistics; training a convolutional backbone on pixels


@dataclass(frozen=True, kw_only=True)
class AdaptConfig:
    method: str = field(default="auto", metadata={
        "help": f"one of {ADAPT_METHODS}. 'auto' tries every method that applies and keeps one only when the "
                "label-free scores agree it beats the source-only model, else keeps the source model. adabn: "
                "BatchNorm statistics re-estimated on the target; coral: the head retrained on source features "
                "recoloured to the target's covariance; self-training: the head retrained with confident target "
                "pseudo-labels; shot-im: the backbone trained on the target by information maximisation, head "
                "fixed (SHOT without its clustering step)"})
    max_images: int = field(default=5000, metadata={
        "help": "target examples used (a seeded draw when there are more): statistics, training and scores"})
    epochs: int = field(default=2, metadata={"help": "shot-im: epochs over the target images"})
    lr: float = field(default=1e-4, metadata={"help": "shot-im: backbone learning rate (AdamW)"})
    batch_size: int = field(default=32, metadata={"help": "shot-im: target images per step"})
    diversity: float = field(default=1.0, metadata={
        "help": "shot-im: weight of the diversity term (entropy of the mean prediction), which keeps the "
                "model from putting every target example into one class"})
    seed: int = field(default=0, metadata={"help": "the target draw, shot-im's order, the domain classifier"})

    def __post_init__(self):
        check_choice("method", self.method, ADAPT_METHODS)
        for name in ("max_images", "epochs", "batch_size"):
            if getattr(self, name) < 1:
                raise HeadstartError(f"The {name!r} option must be >= 1; got {getattr(self, name)!r}.")
        if not self.lr > 0:
            raise HeadstartError(f"lr must be > 0; got {self.lr!r} (try 1e-4).")
        if self.diversity < 0:
            raise HeadstartError(f"diversity must be >= 0; got {self.diversity!r} (1 is SHOT's).")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
