"""Did transfer help? Every fit is compared with a linear probe and a from-scratch model.

After the main fit, on the same training and validation split:

* **linear probe**: a linear head on the frozen pretrained features. Strategies with a head phase
  (``two-stage``, ``linear-probe``) already trained one: its validation accuracy is read from the
  history. ``partial`` and ``full`` have none, so one is trained on cached features of the pretrained
  weights (kept aside before the fit).
* **from scratch**: :class:`ScratchNet`, a compact randomly initialised ResNet (0.3 M parameters)
  at 32 px, trained with pad-and-crop + flip augmentation for the **same wall time** as the transfer
  model's training loop (``History.seconds``: feature extraction and every epoch included; image
  decoding and planning excluded), or ``baseline_seconds`` when set.

Reported (``headstart.json`` → ``baselines``): the three validation accuracies, and **compute saved**
measured in wall-clock seconds on the same machine: how long the from-scratch model needed to reach
the transfer model's accuracy (if it did within the budget), and how long the transfer run needed to
reach the from-scratch model's best accuracy (per-epoch times, scaled so each phase ends at its
recorded duration). A WARNING is logged and saved when transfer did not beat the from-scratch model
(negative transfer) or fine-tuning did not beat the linear probe.

Both models are compared at the epoch with the lowest validation loss (the rule that selects the
transfer model's weights). The verdict pairs the two models on the same validation images
(:mod:`headstart.modalities.verdict`): "NEGATIVE TRANSFER" when the transfer model is significantly worse
(exact McNemar test), "TRANSFER DID NOT HELP" when it is not better and the two cannot be told apart, and
no advice at all below 30 validation images or on a one-image difference.
"""
from __future__ import annotations

import copy
import logging
import math
import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from headstart.device import default_device
from headstart.encoders.model import TransferModel
from headstart.encoders.scratch_source import SCRATCH_INPUT, SCRATCH_WIDTHS, ScratchBody
from headstart.modalities.verdict import Verdict, compare
from headstart.train.distributed import LOCAL
from headstart.train.loop import fit
from headstart.train.optim import decays
from headstart.train.strategies import plan_phases

log = logging.getLogger("headstart")

SCRATCH_SIZE = SCRATCH_INPUT  # input side of the from-scratch model (pixels), the CIFAR regime


class ScratchNet(nn.Module):
    """``scratch:small`` (:class:`ScratchBody`: 3x3 stem, four residual blocks of 16-128 channels) with a
    linear head, 0.3 M parameters; normalises its own inputs.

    Small on purpose: it has to train many epochs within the transfer run's wall time on a CPU.
    """

    def __init__(self, num_classes: int, widths: tuple[int, int, int, int] = SCRATCH_WIDTHS["small"]):
        super().__init__()
        self.body = ScratchBody(widths)
        self.head = nn.Linear(self.body.num_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.uint8:
            x = x.float().div_(255.0)
        x = (x - 0.5) / 0.25
        return self.head(self.body(x))


def resize_pixels(pixels: torch.Tensor, size: int, batch_size: int = 256) -> torch.Tensor:
    """uint8 (N, 3, S, S) → uint8 (N, 3, size, size), antialiased."""
    if pixels.shape[-1] == size:
        return pixels
    out = []
    for i in range(0, len(pixels), batch_size):
        x = pixels[i:i + batch_size].float()
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out.append(x.round_().clamp_(0, 255).to(torch.uint8))
    return torch.cat(out)


def crop_flip(batch: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """The standard from-scratch augmentation (ResNet on CIFAR): reflect-pad, random crop, random flip.

    uint8 (N, 3, S, S) → float in [0, 1]. Slicing only, so it costs far less than the model's step.
    """
    n, _, h, w = batch.shape
    x = F.pad(batch.float().div_(255.0), (pad, pad, pad, pad), mode="reflect")
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=generator).tolist()
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=generator).tolist()
    out = torch.stack([x[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w] for i in range(n)])
    flip = torch.rand(n, generator=generator) < 0.5
    out[flip] = out[flip].flip(-1)
    return out


@torch.no_grad()
def _evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, device,
              batch_size: int = 256) -> tuple[float, float, torch.Tensor]:
    """(mean cross-entropy, accuracy, per-example correctness) on a validation split."""
    model.eval()
    loss, right = 0.0, []
    for i in range(0, len(x), batch_size):
        logits = model(x[i:i + batch_size].to(device)).float().cpu()
        loss += F.cross_entropy(logits, y[i:i + batch_size], reduction="sum").item()
        right.append(logits.argmax(1) == y[i:i + batch_size])
    right = torch.cat(right) if right else torch.zeros(0, dtype=torch.bool)
    return loss / max(len(y), 1), float(right.float().mean()) if len(right) else 0.0, right


def train_scratch(x_train, y_train, x_val, y_val, num_classes: int, budget_seconds: float, *, seed: int = 0,
                  batch_size: int = 64, lr: float = 2e-3, size: int = SCRATCH_SIZE, device=None) -> dict[str, Any]:
    """Train :class:`ScratchNet` for ``budget_seconds`` of wall time (at least one epoch).

    The first epoch warms up; the learning rate then follows a cosine to zero over the *time* left, so
    the whole budget is used however the machine's speed varies, and training stops when another
    epoch would not fit. Validation after every epoch counts towards the budget. Returns the validation
    accuracy of the epoch with the lowest validation loss (the rule that picks the transfer model's
    weights), the highest accuracy of any epoch, and the (seconds, accuracy) curve.
    """
    device = device or default_device()
    t_start = time.perf_counter()
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    size = min(size, int(x_train.shape[-1]))
    xt, xv = resize_pixels(x_train, size), resize_pixels(x_val, size)
    model = ScratchNet(num_classes).to(device)
    decay = [p for p in model.parameters() if decays(p)]
    no_decay = [p for p in model.parameters() if not decays(p)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 5e-4}, {"params": no_decay, "weight_decay": 0.0}], lr=lr)
    batch_size = min(batch_size, max(8, len(xt) // 8))  # a few hundred images: still several steps per epoch
    steps_per_epoch = max(1, math.ceil(len(xt) / batch_size))
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    warm_end, epoch, step = None, 0, 0
    curve: list[list[float]] = []
    best, best_acc = None, 0.0
    while True:
        epoch += 1
        model.train()
        perm = torch.randperm(len(xt), generator=gen)
        for i in range(0, len(xt), batch_size):
            idx = perm[i:i + batch_size]
            if len(idx) < 2:
                continue  # BatchNorm needs more than one example
            if warm_end is None:  # warmup epoch
                scale = 0.1 + 0.9 * (step + 1) / steps_per_epoch
            else:  # cosine over the remaining wall time
                progress = (time.perf_counter() - t_start - warm_end) / max(budget_seconds - warm_end, 1e-6)
                scale = 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))
            for g in opt.param_groups:
                g["lr"] = lr * scale
            for m in norms:  # exact running averages over the first steps, then the usual 0.1 EMA:
                m.momentum = max(0.1, 1.0 / (step + 1))  # evaluation is sound even after a few steps
            xb = crop_flip(xt[idx], gen, pad=max(1, size // 16)).to(device)
            loss = F.cross_entropy(model(xb), y_train[idx].to(device), label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
        loss, acc, right = _evaluate(model, xv, y_val, device)
        elapsed = time.perf_counter() - t_start
        curve.append([round(elapsed, 2), round(acc, 5)])
        if best is None or (-loss, acc) > best:  # the transfer run's rule: best validation loss
            best, best_acc, best_right = (-loss, acc), acc, right
            best_state = copy.deepcopy(model.state_dict())  # 0.3 M parameters: cheap to keep
        if warm_end is None:
            warm_end = elapsed
        per_epoch = elapsed / epoch
        if elapsed + per_epoch > budget_seconds * 1.02:
            break
    model.load_state_dict(best_state)  # the epoch reported is the epoch kept (auto may save it as the run)
    params = sum(p.numel() for p in model.parameters())
    return {"architecture": "ScratchNet (ResNet-style, 4 residual blocks, 16-128 channels)", "params": params,
            "input_size": size, "epochs": epoch, "seconds": round(time.perf_counter() - t_start, 2),
            "val_acc": round(best_acc, 5), "best_val_acc": max(a for _, a in curve), "final_val_acc": curve[-1][1],
            "curve": curve, "val_correct": best_right.numpy(),  # these two are popped by the caller:
            "model": model.eval()}  # not for the JSON


def _phase_times(history) -> list[float]:
    """Estimated wall time since the start of training at the end of every epoch record."""
    out, offset = [], 0.0
    records = history.epochs
    for k, ph in enumerate(history.phases):
        recs = [r for r in records if r.get("phase_index", 0) == k]
        one_off = sum(v for key, v in ph.items() if key.endswith("_seconds") and isinstance(v, (int, float)))
        total = float(ph.get("seconds", 0.0))
        cum, times = 0.0, []
        train_total = sum(r.get("seconds", 0.0) for r in recs) or 1.0
        for r in recs:
            cum += r.get("seconds", 0.0)
            times.append(offset + one_off + max(total - one_off, 0.0) * cum / train_total)
        out += times
        offset += total
    return out


def _first_time(points, target: float) -> float | None:
    for t, acc in points:
        if acc >= target:
            return round(t, 2)
    return None


class Baselines:
    """Set up before the fit (keeps the pretrained weights when a linear probe must be trained later)."""

    def __init__(self, model, backbone, cfg):
        self.cfg = cfg
        phases = plan_phases(cfg, len(backbone.stages))
        self.head_phases = [i for i, p in enumerate(phases) if p.head_only(len(backbone.stages))]
        self.has_head_phase = bool(self.head_phases)
        self.finetunes = any(not p.head_only(len(backbone.stages)) for p in phases)
        self.backbone = backbone
        self.pretrained = None if self.has_head_phase else copy.deepcopy(model.backbone)

    def run(self, clf, data, train_examples=None, val_examples=None) -> dict[str, Any]:
        """Compare on ``data``'s split (the pixels; the examples themselves are not needed here)."""
        cfg, history = self.cfg, clf.history_
        if data.x_val is None or not len(data.x_val):
            msg = ("no validation split (val_fraction=0 and no validation data): the linear-probe and "
                   "from-scratch baselines were skipped")
            log.info("baselines: %s", msg)
            return {"skipped": msg}
        t0 = time.perf_counter()
        transfer_acc = clf.run_metrics().get("val_acc")
        lp = self._linear_probe(clf, data)
        budget = float(cfg.baseline_seconds) if cfg.baseline_seconds else float(history.seconds)
        log.info("baselines: training a small model from scratch for %.0f s", budget)
        scratch = train_scratch(data.x_train, data.y_train, data.x_val, data.y_val, len(clf.classes_), budget,
                                seed=cfg.seed)
        self.scratch = (scratch.pop("model"), scratch)  # kept for --strategy auto (headstart.candidates)
        report = {
            "n_val": len(data.x_val), "budget_seconds": round(budget, 2),
            "transfer": {"val_acc": transfer_acc, "seconds": history.seconds, "strategy": cfg.strategy},
            "linear_probe": lp, "scratch": scratch, "simple": "scratch",
        }
        report["compute_saved"] = _compute_saved(history, transfer_acc, scratch)
        verdict = compare(val_correct(clf.model_, data.x_val, data.y_val), scratch.pop("val_correct"))
        report["verdict"] = verdict.to_dict()
        report["warnings"] = self._warnings(transfer_acc, lp, scratch, verdict)
        for w in report["warnings"]:
            log.warning("%s", w)
        if verdict.outcome == "too few to tell":
            log.info("baselines: %s", verdict.why)
        report["seconds"] = round(time.perf_counter() - t0, 2)
        return report

    def _linear_probe(self, clf, data) -> dict[str, Any]:
        if self.has_head_phase:
            head = [r for r in clf.history_.epochs if r.get("phase_index", 0) in self.head_phases and "val_acc" in r]
            best = [r for r in head if r.get("best")] or head
            return {"val_acc": best[-1]["val_acc"] if best else None, "source": "the run's head phase"}
        t0 = time.perf_counter()
        model = TransferModel(self.pretrained, self.backbone.num_features, len(clf.classes_),
                              self.backbone.preprocess, stages=self.backbone.stages, dropout=self.cfg.dropout)
        model.to(default_device())
        cfg = self.cfg.replace(strategy="linear-probe", freeze_stages=None, head_epochs=max(self.cfg.head_epochs, 1))
        # The main process alone runs the baselines: on the single-process runtime, so it never enters a
        # collective (a DDP wrapper, a gather) the other processes are not part of.
        hist = fit(model, self.backbone, data, cfg, accelerator=LOCAL)
        recs = [r for r in hist.epochs if "val_acc" in r]
        best = [r for r in recs if r.get("best")] or recs
        self.pretrained = None
        return {"val_acc": best[-1]["val_acc"] if best else None,
                "source": "trained on cached features of the pretrained weights",
                "seconds": round(time.perf_counter() - t0, 2)}

    def _warnings(self, transfer_acc, lp, scratch, verdict: Verdict) -> list[str]:
        """Advice only where the paired comparison supports it: never on too few examples or one
        example's difference (see :mod:`headstart.modalities.verdict`)."""
        out = []
        if transfer_acc is None or verdict.outcome == "too few to tell":
            return out
        versus = f"a small model trained from scratch on the same split for {scratch['seconds']:.0f}s"
        if verdict.outcome == "worse":
            out.append(f"NEGATIVE TRANSFER: the transfer model is worse than {versus} ({verdict.why}). The "
                       "pretrained weights hurt on this data; try another backbone (`headstart rank`), or train "
                       "from scratch.")
        elif verdict.outcome == "no difference" and verdict.difference <= 0:
            out.append(f"TRANSFER DID NOT HELP: the transfer model is not better than {versus} ({verdict.why}). "
                       "A model trained from scratch is as good here.")
        if self.finetunes and lp.get("val_acc") is not None and transfer_acc <= lp["val_acc"]:
            out.append(f"Fine-tuning did not beat the linear probe (validation accuracy {transfer_acc:.4f} vs "
                       f"{lp['val_acc']:.4f}): the extra training bought nothing; `--strategy linear-probe` "
                       "is as good and cheaper.")
        return out


@torch.no_grad()
def val_correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256) -> np.ndarray:
    """Per-example correctness of a fitted model on encoded validation inputs (fp32, eval mode)."""
    was_training = model.training
    device = next(model.parameters()).device
    _, _, right = _evaluate(model, x, y, device, batch_size)
    model.train(was_training)
    return right.numpy()


def _compute_saved(history, transfer_acc, scratch) -> dict[str, Any]:
    out: dict[str, Any] = {"measure": "wall-clock seconds on this machine", "transfer_seconds": history.seconds}
    if transfer_acc is None:
        return out
    s = _first_time(scratch["curve"], transfer_acc)
    times = _phase_times(history)
    pts = [(t, r["val_acc"]) for t, r in zip(times, history.epochs) if "val_acc" in r]
    t = _first_time(pts, scratch["val_acc"])
    out["scratch_seconds_to_transfer_acc"] = s
    out["transfer_seconds_to_scratch_acc"] = t
    T = history.seconds
    if s is None:
        out["summary"] = (f"the from-scratch model never reached the transfer model's accuracy {transfer_acc:.4f} "
                          f"within {scratch['seconds']:.0f}s (it got {scratch['val_acc']:.4f})")
        if t is not None:
            out["summary"] += (f"; the transfer run reached {scratch['val_acc']:.4f} after about {t:.0f}s "
                               f"({scratch['seconds'] / max(t, 1e-9):.1f}x less time)")
    elif s > T:
        out["saved_seconds"] = round(s - T, 2)
        out["summary"] = (f"the from-scratch model needed {s:.0f}s to reach the transfer model's accuracy "
                          f"{transfer_acc:.4f}; transfer took {T:.0f}s ({s / max(T, 1e-9):.1f}x less)")
    else:
        out["saved_seconds"] = 0.0
        out["summary"] = (f"the from-scratch model reached the transfer model's accuracy {transfer_acc:.4f} "
                          f"after {s:.0f}s (transfer took {T:.0f}s): no compute saved")
    return out
