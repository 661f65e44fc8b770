"""Freeze strategies: which stages train in which phase, and at what learning rate.

A strategy is a list of :class:`Phase`. Each phase freezes the first ``frozen`` backbone stages and
trains the rest plus the head. A phase with every stage frozen trains only the head, on cached
features when possible.

=============  ===========================================================================
linear-probe   one phase: backbone frozen, head trained
partial        one phase: first K stages frozen, the rest and the head trained
full           one phase: everything trained, the backbone at ``lr x backbone_lr_ratio``
two-stage      head first (backbone frozen), then unfreeze from stage K and fine-tune at a lower,
               layer-wise decayed learning rate
=============  ===========================================================================
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from headstart.config import TrainConfig
from headstart.encoders.base import Stage
from headstart.errors import HeadstartError
from headstart.train.optim import decays


@dataclass(frozen=True)
class Phase:
    name: str  # "head" or "finetune"
    frozen: int  # number of leading backbone stages kept frozen
    epochs: int

    def head_only(self, num_stages: int) -> bool:
        return self.frozen >= num_stages


def plan_phases(cfg: TrainConfig, num_stages: int) -> list[Phase]:
    k = cfg.freeze_stages
    if k is not None and k > num_stages:
        raise HeadstartError(
            f"freeze_stages={k} but this backbone has only {num_stages} stages "
            f"(0..{num_stages}); run `headstart plan` or `headstart backbones --stages` to see them."
        )
    if cfg.strategy == "auto":
        raise HeadstartError("strategy 'auto' must be resolved into a plan first (TransferClassifier.fit does it).")
    if cfg.strategy == "linear-probe":
        return [Phase("head", num_stages, cfg.head_epochs)]
    if cfg.strategy == "partial":
        return [Phase("finetune", k, cfg.epochs)]
    if cfg.strategy == "full":
        return [Phase("finetune", 0, cfg.epochs)]
    phases = []
    if cfg.head_epochs:
        phases.append(Phase("head", num_stages, cfg.head_epochs))
    if cfg.epochs:
        phases.append(Phase("finetune", k or 0, cfg.epochs))
    return phases


def apply_freeze(model: nn.Module, stages: list[Stage], frozen: int, prefix: str = "backbone.") -> None:
    """Freeze the first ``frozen`` stages, unfreeze the others and the head.

    BatchNorm layers of frozen stages are put in eval mode by ``TransferModel.train``.
    """
    frozen_names = {prefix + n for s in stages[:frozen] for n in s.param_names}
    for name, p in model.named_parameters():
        p.requires_grad_(name not in frozen_names)


def param_groups(model: nn.Module, stages: list[Stage], cfg: TrainConfig, *,
                 prefix: str = "backbone.") -> list[dict]:
    """AdamW groups: per-stage learning rates (layer-wise decay) and no weight decay on biases/norms.

    The head trains at ``lr``; the top backbone stage at ``lr x backbone_lr_ratio``; each stage
    below at ``layer_decay`` times the one above (general early features move least).
    """
    stage_of = {prefix + n: i for i, s in enumerate(stages) for n in s.param_names}
    n = len(stages)
    decay = cfg.effective_layer_decay
    groups: dict[tuple, dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if name in stage_of:
            i = stage_of[name]
            lr = cfg.lr * cfg.backbone_lr_ratio * decay ** (n - 1 - i)
            tag = f"stage{i}"
        else:
            lr, tag = cfg.lr, "head"
        wd = cfg.weight_decay if decays(p) else 0.0
        g = groups.setdefault((tag, wd), {"params": [], "lr": lr, "weight_decay": wd, "name": tag})
        g["params"].append(p)
    return list(groups.values())
