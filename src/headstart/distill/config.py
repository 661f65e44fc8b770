"""What `headstart distill` is asked to do: one frozen dataclass, its fields the CLI's flags."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from headstart.errors import HeadstartError

# Tried on the validation split when not given: Hinton et al.'s range of temperatures, and a soft-target
# term that dominates (0.1) or shares the loss equally (0.5) with the labels' cross-entropy.
TEMPERATURES = (2.0, 4.0)
ALPHAS = (0.1, 0.5)


@dataclass(frozen=True, kw_only=True)
class DistillConfig:
    student: str = field(default="scratch:tiny", metadata={
        "help": "the student backbone: any registry backbone (e.g. timm:tf_efficientnet_lite0) or a small "
                "from-scratch convnet, scratch:tiny (40 k parameters) or scratch:small (0.3 M)"})
    temperature: float | None = field(default=None, metadata={
        "help": f"softmax temperature of the teacher's soft targets (the KL term is scaled by T^2); "
                f"None = chosen on the validation split from {TEMPERATURES}"})
    alpha: float | None = field(default=None, metadata={
        "help": f"weight of the cross-entropy on the true labels; the soft-target term gets 1 - alpha "
                f"(unlabelled examples have only that term); None = chosen on the validation split from {ALPHAS}"})
    views: int = field(default=4, metadata={
        "help": "teacher-labelled views of every labelled training image: the image and views-1 random "
                "flips and resized crops, each labelled by the teacher once (cached) and seen by the "
                "student unchanged, so teacher and student always see the same view; texts use 1"})
    selection_fraction: float = field(default=0.25, metadata={
        "help": "when T or alpha is chosen: each candidate trains for this fraction of the epochs"})
    compare: bool = field(default=True, metadata={
        "help": "also train the same student directly on the labels (same views, seed and at most the same "
                "number of steps) and report the distillation ratio; --no-compare skips it"})

    def __post_init__(self):
        if self.temperature is not None and not self.temperature > 0:
            raise HeadstartError(f"temperature must be > 0; got {self.temperature!r} (try 4).")
        if self.alpha is not None and not 0.0 <= self.alpha <= 1.0:
            raise HeadstartError(f"alpha must be in [0, 1]; got {self.alpha!r} (0 = soft targets only, "
                                 "1 = labels only).")
        if self.views < 1:
            raise HeadstartError(f"views must be >= 1; got {self.views!r} (1 = the images themselves only).")
        if not 0.0 < self.selection_fraction <= 1.0:
            raise HeadstartError(f"selection_fraction must be in (0, 1]; got {self.selection_fraction!r}.")

    def candidates(self) -> list[tuple[float, float]]:
        """The (temperature, alpha) pairs to try; one pair when both are given."""
        temps = (self.temperature,) if self.temperature is not None else TEMPERATURES
        alphas = (self.alpha,) if self.alpha is not None else ALPHAS
        return [(t, a) for t in temps for a in alphas]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **changes) -> "DistillConfig":
        return dataclasses.replace(self, **changes)
