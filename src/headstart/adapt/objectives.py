"""``train --target``: adapt while the backbone trains, as Objectives of the ordinary training loop.

Each step draws a batch of unlabelled target examples beside the labelled source batch and adds a loss
that pulls the two domains' representations together:

* ``dann`` (Ganin et al. 2016): a domain discriminator learns to tell source from target features
  through a gradient-reversal layer, so the backbone learns features it cannot tell apart. The reversal
  strength ramps from 0 to 1 over each phase (``2 / (1 + exp(-10 p)) - 1``), as in the paper: early
  features are noise and must not be pushed around by a discriminator that knows nothing yet.
* ``deep-coral`` (Sun & Saenko 2016): the distance between the source and target batches' covariances of
  the class logits (the paper's last layer), ``||C_s - C_t||_F^2 / (4 d^2)``. No extra parameters.

Head-only phases train on cached features of the frozen backbone, where no alignment can change
anything: they train on the source labels as usual. The discriminator's weights and the target draws'
random stream are checkpointed with the run, so a killed fit resumes exactly.
"""
from __future__ import annotations

import copy
import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from headstart.config import TARGET_METHODS, TrainConfig
from headstart.encoders.model import TransferModel
from headstart.train.callbacks import Callback
from headstart.train.objectives import Batch, Draws, Objective, StepOutput
from headstart.train.strategies import Phase

__all__ = ["TARGET_METHODS", "DomainAdversarialObjective", "DeepCoralObjective", "DomainModel", "coral_loss",
           "target_objective"]


class _ReverseGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, coeff: float):
        ctx.coeff = coeff
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return -ctx.coeff * grad, None


def reverse_grad(x: torch.Tensor, coeff: float) -> torch.Tensor:
    """Identity forward; the gradient comes back multiplied by ``-coeff``."""
    return _ReverseGrad.apply(x, coeff)


def discriminator(num_features: int, hidden: int = 1024, dropout: float = 0.5) -> nn.Module:
    # DANN's (and TLlib's) domain classifier: two hidden layers with dropout, one logit.
    return nn.Sequential(nn.Linear(num_features, hidden), nn.ReLU(), nn.Dropout(dropout),
                         nn.Linear(hidden, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, 1))


class DomainModel(nn.Module):
    """The model with what the objective trains beside it. ``forward(x)`` is the model's (validation and
    prediction see nothing else); ``forward(x, target)`` runs both domains through one call, so under
    DDP every parameter's gradient is synchronised by the wrapper's own hooks."""

    def __init__(self, model: TransferModel, domain_head: nn.Module | None = None):
        super().__init__()
        self.model, self.domain_head = model, domain_head

    def forward(self, x: torch.Tensor, target: torch.Tensor | None = None, coeff: float = 1.0):
        if target is None:
            return self.model(x)
        f_s, f_t = self.model.features(x), self.model.features(target)
        out = {"logits": self.model.head(f_s), "target_logits": self.model.head(f_t)}
        if self.domain_head is not None:
            out["domain"] = self.domain_head(reverse_grad(torch.cat([f_s, f_t]), coeff)).squeeze(1)
        return out


def coral_loss(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Deep CORAL: squared Frobenius distance of the two batches' covariances over ``4 d^2``."""
    d = source.shape[1]

    def cov(z):
        z = z - z.mean(0, keepdim=True)
        return z.T @ z / max(len(z) - 1, 1)

    return (cov(source.float()) - cov(target.float())).pow(2).sum() / (4 * d * d)


class _TargetObjective(Objective, Callback):
    """Cross-entropy on the source batch plus ``weight`` x an alignment loss against a target batch drawn
    from ``target`` (augmented like the training images by ``augment(x, generator)``)."""

    needs_inputs = True  # the target batch is raw inputs: the backbone must see raw source inputs too
    # Source validation does not measure adaptation: the adapted stage is kept even when the head stage
    # scored better on the source, and the label-free comparison after the fit says which is better.
    phases_compete = False

    def __init__(self, target: torch.Tensor, *, weight: float, label_smoothing: float, seed: int,
                 augment: Callable | None = None):
        super().__init__(label_smoothing)
        self.weight = weight
        self.draw = Draws(target, seed + 7, augment)
        self._progress: Callable[[], float] = lambda: 1.0
        self.before: dict | None = None  # the model's weights after the head stage: the source-only model

    def on_phase_end(self, fit, ph):
        if self.before is None and not isinstance(ph.module, DomainModel):
            self.before = copy.deepcopy(fit.model.state_dict())  # the head on the pretrained features

    def domain_head(self) -> nn.Module | None:
        return None

    def attach(self, module: nn.Module, groups: list[dict], cfg: TrainConfig) -> tuple[nn.Module, list[dict]]:
        if not isinstance(module, TransferModel):  # the head on cached features: nothing to align
            return module, groups
        head = self.domain_head()
        if head is not None:
            groups = groups + [{"params": list(head.parameters()), "lr": cfg.lr, "weight_decay": cfg.weight_decay,
                                "name": "domain discriminator"}]
        return DomainModel(module, head), groups

    def on_phase_start(self, fit, ph):
        # Progress through the phase from the scheduler's own step count: restored with it on resume.
        total = max(1, ph.steps)
        self._progress = lambda: min(1.0, ph.scheduler.last_epoch / total)

    def loss(self, module: nn.Module, batch: Batch, *, phase: Phase) -> StepOutput:
        if not isinstance(getattr(module, "module", module), DomainModel):
            return super().loss(module, batch, phase=phase)
        out = module(batch.x, self.draw(len(batch), batch.x.device), self.coefficient())
        ce = F.cross_entropy(out["logits"].float(), batch.y, label_smoothing=self.label_smoothing)
        return StepOutput(ce + self.weight * self.alignment(out), out["logits"])

    def coefficient(self) -> float:
        return 1.0

    def alignment(self, out: dict) -> torch.Tensor:
        raise NotImplementedError

    def state_dict(self) -> dict:
        return {**self.draw.state_dict(), "before": self.before}

    def load_state_dict(self, state: dict) -> None:
        self.draw.load_state_dict(state)
        self.before = state.get("before")


class DomainAdversarialObjective(_TargetObjective):
    name = "cross-entropy + domain-adversarial (DANN)"

    def __init__(self, target: torch.Tensor, num_features: int, **kw):
        super().__init__(target, **kw)
        self.discriminator = discriminator(num_features)

    def domain_head(self) -> nn.Module:
        return self.discriminator

    def coefficient(self) -> float:
        return 2.0 / (1.0 + math.exp(-10.0 * self._progress())) - 1.0

    def alignment(self, out: dict) -> torch.Tensor:
        d = out["domain"].float()
        n = len(d) // 2
        domain = torch.cat([torch.ones(n), torch.zeros(len(d) - n)]).to(d.device)  # source 1, target 0
        return F.binary_cross_entropy_with_logits(d, domain)

    def state_dict(self) -> dict:
        return {**super().state_dict(), "discriminator": self.discriminator.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        if state.get("discriminator") is not None:
            self.discriminator.load_state_dict(state["discriminator"])


class DeepCoralObjective(_TargetObjective):
    name = "cross-entropy + Deep CORAL"

    def alignment(self, out: dict) -> torch.Tensor:
        return coral_loss(out["logits"], out["target_logits"])


def target_objective(method: str, target: torch.Tensor, *, num_features: int, cfg: TrainConfig,
                     augment: Callable | None) -> _TargetObjective:
    kw = dict(weight=cfg.target_weight, label_smoothing=cfg.label_smoothing, seed=cfg.seed, augment=augment)
    if method == "dann":
        return DomainAdversarialObjective(target, num_features, **kw)
    return DeepCoralObjective(target, **kw)
