"""Semi-supervised heads on embeddings: what the unlabelled pool teaches a classifier whose backbone
is fixed. Every method ends in the same place, a new linear head trained on the labelled embeddings
plus pseudo-labelled pool embeddings, so the saved model is a normal run.

- ``self-training``: curriculum pseudo-labelling (Cascante-Bonilla et al. 2021). Each round the head
  labels the pool, and the most confident share of each predicted class (20 %, 40 % ... 100 % over the
  rounds, never below ``ssl_threshold``) joins the labelled set; the head is retrained from the
  supervised head each round, so an early round's mistakes are not trained into the next.
- ``label-propagation``: the labels spread over a k-nearest-neighbour graph of the embeddings
  (scikit-learn's ``LabelSpreading``, Zhou et al. 2004), then a head learns the propagated labels.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from headstart.config import TrainConfig

SIMPLEST_FIRST = ("supervised", "self-training", "label-propagation")  # ties go to the earlier one


@dataclass
class Feats:
    """Embeddings (float32) of the labelled training split, the validation split and the pool."""

    train: torch.Tensor
    y_train: torch.Tensor
    pool: torch.Tensor
    val: torch.Tensor | None = None
    y_val: torch.Tensor | None = None


@dataclass
class HeadCandidate:
    name: str
    head: nn.Module
    val_acc: float | None
    n_pseudo: int = 0
    per_class: list[int] = field(default_factory=list)  # pseudo-labels given to each class
    seconds: float = 0.0
    rounds: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"name": self.name, "val_acc": self.val_acc, "n_pseudo": self.n_pseudo, "per_class": self.per_class,
                "seconds": round(self.seconds, 2), **({"rounds": self.rounds} if self.rounds else {})}


@torch.no_grad()
def head_probs(head: nn.Module, feats: torch.Tensor, batch_size: int = 8192) -> torch.Tensor:
    was_training = head.training
    head.eval()
    out = [torch.softmax(head(feats[i:i + batch_size]).float(), 1) for i in range(0, len(feats), batch_size)]
    head.train(was_training)
    return torch.cat(out) if out else torch.empty(0, head[-1].out_features)


def accuracy(head: nn.Module, feats: torch.Tensor | None, y: torch.Tensor | None) -> float | None:
    if feats is None or y is None or not len(y):
        return None
    return round(float((head_probs(head, feats).argmax(1) == y).float().mean()), 5)


def confident_share(probs: torch.Tensor, share: float, threshold: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of the pool to pseudo-label, and their labels: per predicted class, the ``share`` of its
    rows with the highest confidence, of those at or above ``threshold``. Per class, so a class the
    model is unsure of still gets examples (a global cut would hand almost all of them to the easy ones)."""
    conf, pred = probs.max(1)
    keep = []
    for c in range(probs.shape[1]):
        rows = torch.nonzero(pred == c).flatten()
        k = math.ceil(share * len(rows))
        rows = rows[conf[rows] >= threshold]
        keep.append(rows[torch.argsort(conf[rows], descending=True, stable=True)[:k]])
    idx = torch.cat(keep) if keep else torch.empty(0, dtype=torch.long)
    return idx, pred[idx]


def train_head(head: nn.Module, f: Feats, pool_idx: torch.Tensor | None, pool_y: torch.Tensor | None,
               cfg: TrainConfig, seed: int) -> nn.Module:
    """A copy of ``head`` trained on the labelled embeddings plus pseudo-labelled pool rows.

    Each step takes one labelled batch and one pseudo-labelled batch (FixMatch's layout) and adds their
    mean losses: 800 labels keep their weight beside 59,000 pseudo-labels, whatever the pool's size."""
    head = copy.deepcopy(head).train()
    gen = torch.Generator().manual_seed(seed)
    bs = max(cfg.batch_size, 128)
    has_pool = pool_idx is not None and len(pool_idx) > 0
    bs_pool = 4 * bs
    passes = math.ceil(len(pool_idx) / bs_pool) * 3 if has_pool else 0
    steps = max(cfg.head_min_steps, passes)
    decay = [p for p in head.parameters() if p.ndim > 1]
    rest = [p for p in head.parameters() if p.ndim <= 1]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": rest, "weight_decay": 0.0}], lr=cfg.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))
    for _ in range(steps):
        i = torch.randint(len(f.train), (bs,), generator=gen)
        loss = F.cross_entropy(head(f.train[i]), f.y_train[i], label_smoothing=cfg.label_smoothing)
        if has_pool:
            k = torch.randint(len(pool_idx), (bs_pool,), generator=gen)
            loss = loss + F.cross_entropy(head(f.pool[pool_idx[k]]), pool_y[k], label_smoothing=cfg.label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return head.eval()


def self_training(head: nn.Module, f: Feats, cfg: TrainConfig) -> HeadCandidate:
    t0 = time.perf_counter()
    best = None
    current = head
    rounds = []
    for r in range(1, cfg.ssl_rounds + 1):
        idx, labels = confident_share(head_probs(current, f.pool), r / cfg.ssl_rounds, cfg.ssl_threshold)
        current = train_head(head, f, idx, labels, cfg, seed=cfg.seed + r)
        acc = accuracy(current, f.val, f.y_val)
        rounds.append({"round": r, "n_pseudo": len(idx), "val_acc": acc})
        # The round kept is the best on validation (labelled, never pseudo-labelled); without a
        # validation split, the last.
        if best is None or acc is None or acc > best[0]:
            best = (acc, current, idx, labels)
    acc, kept, idx, labels = best
    return HeadCandidate("self-training", kept, acc, len(idx), _per_class(labels, f), time.perf_counter() - t0,
                         rounds)


def label_propagation(head: nn.Module, f: Feats, cfg: TrainConfig) -> HeadCandidate:
    from sklearn.decomposition import PCA
    from sklearn.semi_supervised import LabelSpreading

    t0 = time.perf_counter()
    x = F.normalize(torch.cat([f.train, f.pool]).float(), dim=1).numpy()
    # PCA keeps the neighbour search cheap on 60,000 x 1,280 embeddings and drops their noisiest directions.
    dims = min(128, x.shape[1], len(x) - 1)
    if dims < x.shape[1]:
        x = PCA(n_components=dims, random_state=cfg.seed).fit_transform(x)
    y = np.concatenate([f.y_train.numpy(), -np.ones(len(f.pool), dtype=np.int64)])
    spread = LabelSpreading(kernel="knn", n_neighbors=min(cfg.ssl_neighbors, len(x) - 1), alpha=0.2, max_iter=30)
    spread.fit(x, y)
    dist = np.nan_to_num(spread.label_distributions_[len(f.train):], nan=0.0)
    probs = torch.from_numpy(dist).float()
    idx, labels = confident_share(probs, 1.0, cfg.ssl_threshold)
    trained = train_head(head, f, idx, labels, cfg, seed=cfg.seed)
    return HeadCandidate("label-propagation", trained, accuracy(trained, f.val, f.y_val), len(idx),
                         _per_class(labels, f), time.perf_counter() - t0)


METHODS = {"self-training": self_training, "label-propagation": label_propagation}


def _per_class(labels: torch.Tensor, f: Feats) -> list[int]:
    n_classes = int(f.y_train.max()) + 1 if len(f.y_train) else 0
    return torch.bincount(labels, minlength=n_classes).tolist()


def choose(candidates: list[HeadCandidate], requested: str) -> tuple[HeadCandidate, str]:
    """The head to keep, and why. ``auto``: the best validation accuracy, which must beat the supervised
    head's; ties go to the simpler method. A named method is kept as asked (its figures still reported)."""
    by_name = {c.name: c for c in candidates}
    supervised = by_name["supervised"]
    if requested != "auto":
        c = by_name[requested]
        return c, f"--ssl-method {requested} was asked for" + _versus(c, supervised)
    if supervised.val_acc is None:
        return supervised, ("--ssl-method auto chooses on the validation split and there is none: the "
                            "supervised head is kept (name a method, e.g. --ssl-method self-training, to use "
                            "the pool without validation)")
    ranked = sorted(candidates, key=lambda c: (-c.val_acc, SIMPLEST_FIRST.index(c.name)))
    winner = ranked[0]
    if winner is supervised:
        return supervised, (f"no method beat the supervised head on validation ({supervised.val_acc:.4f}; "
                            + ", ".join(f"{c.name} {c.val_acc:.4f}" for c in candidates if c is not supervised)
                            + "): it is kept, the pool unused")
    return winner, f"{winner.name} had the best validation accuracy" + _versus(winner, supervised)


def _versus(c: HeadCandidate, supervised: HeadCandidate) -> str:
    if c is supervised or c.val_acc is None or supervised.val_acc is None:
        return ""
    return f" ({c.val_acc:.4f} vs {supervised.val_acc:.4f} supervised)"
