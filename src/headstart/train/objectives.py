"""What a training step minimises. The loop asks an :class:`Objective` for the loss of a batch and never
changes; a method that needs another loss (distillation, domain adaptation, adversarial training)
adds an Objective, and data it needs beside ``(x, y)`` rides in :attr:`Batch.extra`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from headstart.train.strategies import Phase


@dataclass
class Batch:
    """One step's data: inputs, labels, and any tensors aligned with them (``TrainData.extra``), by name."""

    x: torch.Tensor
    y: torch.Tensor | None = None
    extra: dict[str, torch.Tensor] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.x)


@dataclass
class StepOutput:
    loss: torch.Tensor  # what the optimizer minimises (a scalar)
    logits: torch.Tensor | None = None  # predictions for ``batch.y``, for the running training accuracy


class Objective:
    """Cross-entropy on the labels, with label smoothing: the default objective of every fit."""

    name = "cross-entropy"
    # True when the loss needs the model's own inputs while the backbone trains (an attack in pixel space):
    # the loop then never swaps in a frozen-prefix cache, whose outputs are activations, not pixels.
    needs_inputs = False
    # True: a later phase keeps its weights only when it beats the earlier phases on validation (BestState).
    # An objective whose aim the validation split does not measure (a target domain) sets it False.
    phases_compete = True

    def __init__(self, label_smoothing: float = 0.0):
        self.label_smoothing = label_smoothing

    def loss(self, module: nn.Module, batch: Batch, *, phase: Phase) -> StepOutput:
        logits = module(batch.x)
        loss = F.cross_entropy(logits.float(), batch.y, label_smoothing=self.label_smoothing)
        return StepOutput(loss, logits)

    def attach(self, module: nn.Module, groups: list[dict], cfg) -> tuple[nn.Module, list[dict]]:
        """What trains in a phase: ``module`` (the model, its suffix, or the head) and its parameter groups,
        to which an objective may add modules of its own (a domain discriminator) before the optimizer is
        built. Whatever it returns must call the model for ``module(x)`` (validation uses that)."""
        return module, groups

    def state_dict(self) -> dict:
        """What the objective keeps between steps (its own weights, random streams), for checkpoints."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


class Draws:
    """Batches drawn at random from examples beside the training set (a target domain, an unlabelled pool),
    augmented by ``augment(x, generator)`` when given. Its own random stream, saved in the objective's
    ``state_dict``, so a resumed fit draws the same batches. Every process draws the same ones (its own
    stream would need the process index); the labelled batches differ, so each epoch still covers them."""

    def __init__(self, x: torch.Tensor, seed: int, augment: Callable | None = None):
        self.x, self.augment = x, augment
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return len(self.x)

    def __call__(self, n: int, device, *, augment: bool = True) -> torch.Tensor:
        xb = self.x[torch.randint(len(self.x), (n,), generator=self.generator)]
        if augment and self.augment is not None:
            xb = self.augment(xb, self.generator)
        return xb.to(device)

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        if state.get("generator") is not None:
            self.generator.set_state(state["generator"])
