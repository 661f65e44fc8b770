"""Optimizer and schedule: AdamW (fused), weight decay only where it belongs, warmup + cosine or one-cycle."""
from __future__ import annotations

import math

import torch
from torch import nn

from headstart.config import TrainConfig


def decays(p: torch.Tensor) -> bool:
    """The nanoGPT/timm rule, used for every optimizer here: decay matrices and kernels; biases and
    norm scales (fewer than two dimensions) keep their size."""
    return p.ndim >= 2


def adamw(groups: list[dict]) -> torch.optim.Optimizer:
    # The fused kernel is several times faster than the per-tensor loop on CPU as well as GPU.
    try:
        return torch.optim.AdamW(groups, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(groups)


def head_groups(head: nn.Module, cfg: TrainConfig) -> list[dict]:
    """The head alone (features cached): one learning rate, decay on the weight matrix only."""
    params = list(head.parameters())
    return [{"params": [p for p in params if decays(p)], "lr": cfg.lr, "weight_decay": cfg.weight_decay, "name": "head"},
            {"params": [p for p in params if not decays(p)], "lr": cfg.lr, "weight_decay": 0.0, "name": "head"}]


def make_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps: int):
    """``steps`` optimizer steps of ``cfg.schedule``: linear warmup over ``warmup_frac`` then cosine to 0,
    or PyTorch's OneCycleLR."""
    if cfg.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=[g["lr"] for g in optimizer.param_groups], total_steps=steps,
            pct_start=max(cfg.warmup_frac, 0.05))
    warmup = int(round(cfg.warmup_frac * steps))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        progress = (step - warmup) / max(1, steps - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
