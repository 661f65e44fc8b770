"""``--ssl-method fixmatch``: the backbone learns from the unlabelled pool while it trains (Sohn et al. 2020).

Each step draws ``ratio`` x batch pool images beside the labelled batch. A weakly augmented view (the
training flip and crop) is predicted without gradients; where the model is at least ``threshold``
confident, its prediction becomes the label of a *strongly* augmented view of the same crop (RandAugment,
two operations, then a cutout), trained with cross-entropy. The model learns to give perturbed images the
answer it gives clean ones — consistency regularisation, which moves the features, not just the head.

Head-only phases (cached features) train on the labels alone; the pool's random stream and the counts of
confident pseudo-labels are checkpointed, and the strong augmentation draws from torch's global stream
(checkpointed by the loop), so a killed fit resumes exactly.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from headstart.train.objectives import Batch, Draws, Objective, StepOutput
from headstart.train.strategies import Phase

__all__ = ["FixMatchObjective", "strong_augment"]


def strong_augment(batch: torch.Tensor) -> torch.Tensor:
    """RandAugment (2 operations, magnitude 9 of 31) and a cutout of up to a quarter of the image, per image of a
    uint8 batch (N, 3, S, S)."""
    from torchvision.transforms import v2

    ops = v2.Compose([v2.RandAugment(num_ops=2, magnitude=9),
                      v2.RandomErasing(p=1.0, scale=(0.02, 0.25), value=127)])
    return torch.stack([ops(img) for img in batch])


class FixMatchObjective(Objective):
    name = "cross-entropy + FixMatch consistency on the unlabelled pool"
    needs_inputs = True  # pool images are pixels: the backbone must train on pixels too

    def __init__(self, pool: torch.Tensor, *, threshold: float, ratio: int, label_smoothing: float, seed: int,
                 augment: Callable | None, weight: float = 1.0):
        super().__init__(label_smoothing)
        self.threshold, self.ratio, self.weight = threshold, ratio, weight
        self.draw = Draws(pool, seed + 11, augment)
        self.confident = self.drawn = 0  # pool examples that got a pseudo-label / were drawn, backbone phases

    def loss(self, module: nn.Module, batch: Batch, *, phase: Phase) -> StepOutput:
        if batch.x.dim() != 4:  # the head on cached features: labels only
            return super().loss(module, batch, phase=phase)
        weak = self.draw(self.ratio * len(batch), batch.x.device)
        with torch.no_grad():  # on the unwrapped model: no DDP reducer is involved in a gradient-free pass
            probs = getattr(module, "module", module)(weak).float().softmax(1)
        conf, pseudo = probs.max(1)
        mask = (conf >= self.threshold).float()
        strong = strong_augment(weak.cpu()).to(batch.x.device)
        logits = module(torch.cat([batch.x, strong]))
        n = len(batch)
        supervised = F.cross_entropy(logits[:n].float(), batch.y, label_smoothing=self.label_smoothing)
        unlabelled = (F.cross_entropy(logits[n:].float(), pseudo, reduction="none") * mask).mean()
        self.confident += int(mask.sum())
        self.drawn += len(mask)
        return StepOutput(supervised + self.weight * unlabelled, logits[:n])

    def mask_rate(self) -> float | None:
        return round(self.confident / self.drawn, 5) if self.drawn else None

    def state_dict(self) -> dict:
        return {**self.draw.state_dict(), "confident": self.confident, "drawn": self.drawn}

    def load_state_dict(self, state: dict) -> None:
        self.draw.load_state_dict(state)
        self.confident, self.drawn = state.get("confident", 0), state.get("drawn", 0)
