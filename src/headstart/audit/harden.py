"""``--harden``: fine-tune so the model keeps less of its teacher's weaknesses.

Two defences, each an :class:`~headstart.train.objectives.Objective` of the ordinary training loop:

* ``teacher`` (the default) targets inheritance. Before training, every training image gets its
  teacher-only perturbation: the feature attack of the audit, run on the public pretrained backbone
  alone at ``harden_eps``. Teacher and perturbations are fixed, so this runs once (stored as uint8 —
  the budget is a whole number of 1/255 steps — and cropped and flipped with the image). While the
  backbone trains, each example is replaced by its perturbed copy with probability ``harden_mix``:
  the student learns to keep its answer where the teacher's features move. This is ensemble
  adversarial training (Tramèr et al. 2018) with the teacher as the static source model — the
  defence against transferred attacks — at about the cost of plain fine-tuning plus the one pass.
* ``adversarial``: white-box adversarial fine-tuning on the student itself, PGD with a random start
  at ``harden_eps`` (one step by default, the "fast" FGSM-RS of Wong et al. 2020, step 1.25 eps;
  more steps with ``harden_steps``), on the same ``harden_mix`` share of each batch. It costs one
  extra forward and backward per attacked example and step.

Head-only phases train as usual: on cached features of the frozen backbone there is nothing to harden.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from headstart.audit.attacks import _grad, _project, _random_start, feature_attack
from headstart.config import TrainConfig
from headstart.device import to_fast_layout
from headstart.train.objectives import Batch, Objective, StepOutput
from headstart.train.strategies import Phase

__all__ = ["TEACHER_ADV", "AdversarialObjective", "TeacherTransferObjective", "hardening", "measured_tradeoff",
           "teacher_features", "teacher_perturbed"]

log = logging.getLogger("headstart")
TEACHER_ADV = "x_teacher_adv"  # the name of the perturbed training images in TrainData.extra
DEFAULT_STEPS = {"teacher": 5, "adversarial": 1}


def teacher_features(spec: str, preprocess) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """The public pretrained backbone alone, as published (its full depth, whatever the run cut), with
    the run's normalisation: ``f(x in [0, 1]) -> pooled features``. None when there is no pretrained
    teacher (a from-scratch or TF-IDF model)."""
    from headstart.encoders import get_backbone

    if spec.startswith(("scratch:", "tfidf", "hybrid:")):
        return None
    net = to_fast_layout(get_backbone(spec, pretrained=True).module.float().eval())
    for p in net.parameters():
        p.requires_grad_(False)  # gradients flow to the inputs only
    mean = torch.tensor(preprocess.mean).view(1, 3, 1, 1)
    std = torch.tensor(preprocess.std).view(1, 3, 1, 1)
    return lambda z: net(((z - mean) / std).contiguous(memory_format=torch.channels_last))


def teacher_perturbed(teacher: Callable, pixels: torch.Tensor, eps: float, *, steps: int, seed: int,
                      batch_size: int = 32) -> torch.Tensor:
    """Each uint8 image (N, 3, S, S) moved by the teacher-only feature attack, back to uint8 (exact: the
    attack stays within ``eps``, a whole number of 1/255 steps, of an image on the 1/255 grid)."""
    gen = torch.Generator().manual_seed(seed)
    out = torch.empty_like(pixels)
    for i in range(0, len(pixels), batch_size):
        x = pixels[i:i + batch_size].float().div_(255.0)
        adv = feature_attack(teacher, x, eps, steps=steps, generator=gen)
        out[i:i + batch_size] = adv.mul_(255.0).round_().clamp_(0, 255).to(torch.uint8)
    return out


def _on_images(batch: Batch) -> bool:
    """True while the backbone trains on pixels; False on cached features (a head-only phase)."""
    return batch.x.dim() == 4


def _mask(n: int, share: float, device) -> torch.Tensor:
    # The global torch stream: checkpointed with the run, so a resumed fit draws the same examples.
    return torch.rand(n).to(device) < share


class TeacherTransferObjective(Objective):
    """Cross-entropy on a batch where a ``mix`` share of the images is swapped for their teacher-only
    perturbed copies (``batch.extra[TEACHER_ADV]``, cropped and flipped with the image)."""

    name = "cross-entropy, teacher-perturbed copies mixed in"
    needs_inputs = True

    def __init__(self, label_smoothing: float = 0.0, *, mix: float = 0.5):
        super().__init__(label_smoothing)
        self.mix = mix

    def loss(self, module: nn.Module, batch: Batch, *, phase: Phase) -> StepOutput:
        if _on_images(batch) and TEACHER_ADV in batch.extra:
            swap = _mask(len(batch), self.mix, batch.x.device).view(-1, 1, 1, 1)
            batch = Batch(torch.where(swap, batch.extra[TEACHER_ADV], batch.x), batch.y, batch.extra)
        return super().loss(module, batch, phase=phase)


class AdversarialObjective(Objective):
    """Cross-entropy where a ``mix`` share of each batch is replaced by its white-box PGD example against
    the model as it is at this step (random start; ``steps=1`` with step 1.25 eps is FGSM-RS)."""

    name = "cross-entropy, PGD adversarial examples mixed in"
    needs_inputs = True

    def __init__(self, label_smoothing: float = 0.0, *, eps: float, steps: int = 1, mix: float = 0.5):
        super().__init__(label_smoothing)
        self.eps, self.steps, self.mix = eps, steps, mix
        self.alpha = 1.25 * eps if steps == 1 else 2.5 * eps / steps

    def loss(self, module: nn.Module, batch: Batch, *, phase: Phase) -> StepOutput:
        if not _on_images(batch):
            return super().loss(module, batch, phase=phase)
        attack = _mask(len(batch), self.mix, batch.x.device)
        x = batch.x.float().div(255.0) if batch.x.dtype == torch.uint8 else batch.x.clone()
        if attack.any():
            x[attack] = self._perturb(getattr(module, "module", module), x[attack], batch.y[attack])
        return super().loss(module, Batch(x, batch.y, batch.extra), phase=phase)

    def _perturb(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        # On the unwrapped model (no DDP reducer involved); autograd.grad fills only the input's gradient.
        adv = _random_start(x, self.eps, "linf", None)
        for _ in range(self.steps):
            _, g = _grad(lambda z: F.cross_entropy(model(z).float(), y, reduction="none"), adv)
            adv = _project(adv + self.alpha * g.sign(), x, self.eps, "linf")
        return adv.detach()


def hardening(cfg: TrainConfig, spec: str, preprocess, x_train: torch.Tensor
              ) -> tuple[Objective, dict[str, torch.Tensor], dict[str, Any]]:
    """The objective of ``cfg.harden_method``, the tensors it needs beside the training images, and the
    record saved in the run."""
    eps = cfg.harden_eps / 255.0
    steps = cfg.harden_steps or DEFAULT_STEPS[cfg.harden_method]
    info: dict[str, Any] = {"method": cfg.harden_method, "eps": round(eps, 6), "eps_255": cfg.harden_eps,
                            "steps": steps, "mix": cfg.harden_mix}
    if cfg.harden_method == "adversarial":
        info["what"] = (f"white-box PGD ({steps} step(s), random start) at {cfg.harden_eps:g}/255 on "
                        f"{100 * cfg.harden_mix:.0f} % of each batch while the backbone trains")
        return AdversarialObjective(cfg.label_smoothing, eps=eps, steps=steps, mix=cfg.harden_mix), {}, info
    teacher = teacher_features(spec, preprocess)
    t0 = time.perf_counter()
    adv = teacher_perturbed(teacher, x_train, eps, steps=steps, seed=cfg.seed)
    info["perturb_seconds"] = round(time.perf_counter() - t0, 2)
    info["what"] = (f"each training image's teacher-only perturbation ({steps}-step feature attack on the public "
                    f"{spec} at {cfg.harden_eps:g}/255, computed once) swapped in for {100 * cfg.harden_mix:.0f} % "
                    "of each batch while the backbone trains")
    log.info("harden: teacher-only perturbations of %d training images in %.0f s", len(x_train),
             info["perturb_seconds"])
    return TeacherTransferObjective(cfg.label_smoothing, mix=cfg.harden_mix), {TEACHER_ADV: adv}, info


@torch.no_grad()
def _predict(model: nn.Module, x: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    return torch.cat([model(x[i:i + batch_size]).argmax(1) for i in range(0, len(x), batch_size)])


def measured_tradeoff(model: nn.Module, spec: str, preprocess, x_val: torch.Tensor, y_val: torch.Tensor,
                      cfg: TrainConfig) -> dict[str, Any]:
    """What the hardened model does on the validation split: clean accuracy, and the share of the points it
    gets right that the teacher-only attack (5 steps at ``harden_eps``, fresh perturbations) fools."""
    teacher = teacher_features(spec, preprocess)
    if teacher is None or x_val is None or not len(x_val):
        return {}
    t0 = time.perf_counter()
    model = model.float().eval()
    right = _predict(model, x_val) == y_val
    adv = teacher_perturbed(teacher, x_val, cfg.harden_eps / 255.0, steps=DEFAULT_STEPS["teacher"],
                            seed=cfg.seed + 1)
    fooled = (_predict(model, adv) != y_val) & right
    return {"n": len(x_val), "val_acc": round(float(right.float().mean()), 5),
            "teacher_only_success": round(float(fooled.sum() / right.sum().clamp(min=1)), 5),
            "attack": f"teacher-only feature attack, {DEFAULT_STEPS['teacher']} steps at {cfg.harden_eps:g}/255",
            "seconds": round(time.perf_counter() - t0, 2)}
