"""The distillation objective: soft targets at temperature T mixed with the labels' cross-entropy."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from headstart.train.objectives import Batch, Objective, StepOutput
from headstart.train.strategies import Phase


def soft_target_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per example: T^2 * KL(softmax(teacher / T) || softmax(student / T)).

    The T^2 keeps the gradient of this term the same size whatever T (Hinton et al. 2015, section 2):
    softening divides the logits' gradients by T^2.
    """
    t = temperature
    log_p_teacher = F.log_softmax(teacher_logits.float() / t, dim=1)
    log_p_student = F.log_softmax(student_logits.float() / t, dim=1)
    kl = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(1)
    return kl * (t * t)


class DistillObjective(Objective):
    """``alpha * CE(student, label) + (1 - alpha) * T^2 * KL(teacher_T || student_T)`` per labelled example,
    the soft-target term alone for unlabelled ones; the mean over the batch.

    The batch carries ``extra["teacher_logits"]`` (the frozen teacher's outputs for exactly the input the
    student sees, computed once) and ``extra["labelled"]``; for unlabelled rows ``y`` holds the teacher's
    argmax, so the loop's running training accuracy is agreement with the hard targets.
    """

    name = "distillation"

    def __init__(self, temperature: float, alpha: float):
        super().__init__(0.0)
        self.temperature = temperature
        self.alpha = alpha

    def loss(self, module: nn.Module, batch: Batch, *, phase: Phase) -> StepOutput:
        logits = module(batch.x)
        soft = soft_target_loss(logits, batch.extra["teacher_logits"], self.temperature)
        labelled = batch.extra["labelled"].bool()
        hard = F.cross_entropy(logits.float(), batch.y, reduction="none")
        per_example = torch.where(labelled, self.alpha * hard + (1 - self.alpha) * soft, soft)
        return StepOutput(per_example.mean(), logits)
