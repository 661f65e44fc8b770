"""Domain adaptation methods: a trained source model and unlabelled target inputs in, an adapted copy out.

Each returns a new :class:`TransferModel` (the source model is never changed):

- :func:`adabn` (Li et al. 2016): every BatchNorm's running mean and variance re-estimated on the target
  images. Nothing trains; the features are re-centred on the target's statistics.
- :func:`coral_head` (Sun et al. 2016, CORAL on features): the source features are whitened and
  recoloured with the target features' covariance and mean, and the head is retrained on them; the
  backbone is unchanged, so it applies to any backbone, texts included.
- :func:`self_trained_head`: the head retrained on the source labels plus confident target
  pseudo-labels (:func:`headstart.semi.methods.self_training`, the source as the labelled set).
- :func:`shot_im` (Liang et al. 2020, the information-maximisation part of SHOT): the head is frozen
  (it is the source hypothesis) and the backbone learns to make target predictions confident
  (low entropy per example) and diverse (high entropy of the mean prediction).
"""
from __future__ import annotations

import copy
import math
import time

import torch
from torch import nn

from headstart.adapt.config import AdaptConfig
from headstart.config import TrainConfig
from headstart.device import chunks
from headstart.encoders.model import TransferModel
from headstart.semi.methods import Feats, self_training, train_head


def batchnorms(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def adabn(model: TransferModel, target_x: torch.Tensor, batch_size: int = 64) -> TransferModel:
    """A copy whose BatchNorm statistics are the target's: the exact average over every target batch
    (momentum None), not an exponential average that would favour the last batches."""
    out = copy.deepcopy(model).eval()
    norms = batchnorms(out.backbone)
    saved = [bn.momentum for bn in norms]
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None
        bn.train()
    for xb in chunks(target_x, batch_size):
        out.features(xb)
    for bn, m in zip(norms, saved):
        bn.momentum = m
    return out.eval()


def _sqrtm(c: torch.Tensor, inverse: bool = False) -> torch.Tensor:
    vals, vecs = torch.linalg.eigh(c)
    vals = vals.clamp_min(1e-8)
    return (vecs * (vals.rsqrt() if inverse else vals.sqrt())) @ vecs.T


def coral_transform(source: torch.Tensor, target: torch.Tensor, eps: float = 1.0) -> torch.Tensor:
    """Source features with the target's mean and covariance: x -> (x - mu_s) Cs^-1/2 Ct^1/2 + mu_t, in
    float64. ``eps`` I regularises both covariances (CORAL's choice of 1 on standardised features), here
    scaled to the features' mean variance so it means the same for every backbone."""
    s, t = source.double(), target.double()
    scale = float(torch.cat([s, t]).var(0).mean()) or 1.0
    eye = torch.eye(s.shape[1], dtype=torch.float64) * eps * scale
    cs = torch.cov(s.T) + eye if len(s) > 1 else eye
    ct = torch.cov(t.T) + eye if len(t) > 1 else eye
    out = (s - s.mean(0)) @ _sqrtm(cs, inverse=True) @ _sqrtm(ct) + t.mean(0)
    return out.float()


def coral_head(model: TransferModel, f: Feats, cfg: TrainConfig) -> TransferModel:
    out = copy.deepcopy(model)
    aligned = Feats(train=coral_transform(f.train, f.pool), y_train=f.y_train, pool=f.pool)
    out.head = train_head(model.head, aligned, None, None, cfg, seed=cfg.seed)
    return out.eval()


def self_trained_head(model: TransferModel, f: Feats, cfg: TrainConfig) -> tuple[TransferModel, dict]:
    out = copy.deepcopy(model)
    # No validation split here: the source's would choose the round best on the source, not the target;
    # the last round (every target example) is kept.
    cand = self_training(model.head, Feats(train=f.train, y_train=f.y_train, pool=f.pool), cfg)
    out.head = cand.head
    return out.eval(), {"n_pseudo": cand.n_pseudo, "per_class": cand.per_class, "rounds": cand.rounds}


def information_maximisation(logits: torch.Tensor, diversity: float) -> torch.Tensor:
    """SHOT's L_ent - L_div: the mean per-example entropy minus the entropy of the mean prediction."""
    p = torch.softmax(logits.float(), 1)
    ent = -(p * torch.log(p + 1e-6)).sum(1).mean()
    mean = p.mean(0)
    div = -(mean * torch.log(mean + 1e-6)).sum()
    return ent - diversity * div


def shot_im(model: TransferModel, target_x: torch.Tensor, cfg: AdaptConfig) -> tuple[TransferModel, dict]:
    """Train the backbone on unlabelled target images by information maximisation, the head frozen.
    BatchNorm layers run in train mode, so their statistics follow the target as well (as in SHOT)."""
    t0 = time.perf_counter()
    out = copy.deepcopy(model)
    for p in out.head.parameters():
        p.requires_grad_(False)
    params = [p for p in out.backbone.parameters()]
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(cfg.seed)
    steps_per_epoch = math.ceil(len(target_x) / cfg.batch_size)
    losses = []
    out.train()
    out.head.eval()
    for _ in range(cfg.epochs):
        order = torch.randperm(len(target_x), generator=gen)
        total = 0.0
        for idx in chunks(order, cfg.batch_size):
            if len(idx) < 2:  # the diversity term needs a batch, and BatchNorm more than one example
                continue
            loss = information_maximisation(out(target_x[idx]), cfg.diversity)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach())
        losses.append(round(total / steps_per_epoch, 5))
    for p in out.parameters():
        p.requires_grad_(False)
    return out.eval(), {"epochs": cfg.epochs, "loss_per_epoch": losses, "seconds": round(time.perf_counter() - t0, 2)}
