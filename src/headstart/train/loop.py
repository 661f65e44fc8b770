"""The training loop. Read it top to bottom: for each phase of the strategy, freeze, build the
optimizer, train with warmup + cosine, validate, keep the best weights, stop early.

Device, precision and distribution are Accelerate's job (``prepare`` / ``backward``); the loop is ours.
"""
from __future__ import annotations

import contextlib
import copy
import json
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from headstart.config import TrainConfig
from headstart.data.images import augment
from headstart.device import (
    is_main_process,
    make_accelerator,
    resolve_precision,
    to_fast_layout,
)
from headstart.encoders.base import Backbone, tensors_sha256
from headstart.encoders.model import TransferModel
from headstart.errors import HeadstartError
from headstart.features.cache import cached_features, pixels_sha256
from headstart.features.prefix import prefix_outputs, split_for_prefix_cache
from headstart.storage import atomic_path
from headstart.train.strategies import Phase, apply_freeze, param_groups, plan_phases


@dataclass
class TrainData:
    x_train: torch.Tensor  # uint8 (N, 3, S, S)
    y_train: torch.Tensor
    x_val: torch.Tensor | None = None
    y_val: torch.Tensor | None = None


@dataclass
class History:
    epochs: list[dict] = field(default_factory=list)
    phases: list[dict] = field(default_factory=list)
    precision: str = "fp32"  # of the training passes
    inference_precision: str = "fp32"  # of feature / prefix extraction and prediction
    seconds: float = 0.0


def seed_everything(seed: int) -> torch.Generator:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


@contextlib.contextmanager
def preserved_rng():
    """Run a block without moving the global random streams (python, numpy, torch CPU) training draws
    from: measuring something before training (a profile, a baseline) must not change the model trained."""
    import random

    import numpy as np

    states = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[]):
        yield
    random.setstate(states[0])
    np.random.set_state(states[1])


@dataclass
class _Run:
    """What every phase needs besides the data: precision, logging, and crash-safe checkpoints."""

    cfg: TrainConfig
    precision: str  # training passes
    inference_precision: str  # cached features and prefix outputs
    progress: Callable | None = None
    metrics_path: Path | None = None
    checkpoint_path: Path | None = None
    resume: dict | None = None  # a loaded checkpoint to continue from
    phase_index: int = 0
    done_records: list[dict] = field(default_factory=list)
    done_phases: list[dict] = field(default_factory=list)
    model: nn.Module | None = None
    phase_info: dict = field(default_factory=dict)  # one-off costs of the current phase (cache builds)
    data_sha256: str = ""  # of the decoded training pixels: the feature-cache key of this run's data
    # Within a head-only phase, checkpoint at most this often. Its epochs on cached features take
    # milliseconds; writing (and fsyncing) the whole model after each of hundreds of them dominated
    # the run (a 400k-word embedding table: 160 MB per epoch). The first epoch and every phase end
    # always checkpoint, epochs that train the backbone always do, and resuming from any checkpoint is
    # exact, so at most this much (cheap) work is redone.
    checkpoint_seconds: float = 20.0
    _last_save: float = float("-inf")

    def log_epoch(self, rec: dict, total: int) -> None:
        if self.metrics_path is not None and is_main_process():
            with open(self.metrics_path, "a") as f:
                f.write(json.dumps(rec) + "\n")
        if self.progress is not None:
            self.progress(rec, total)

    def save_checkpoint(self, *, epoch: int, records: list[dict], optimizer=None, scheduler=None,
                        best_state=None, best_score=None, bad_epochs: int = 0, generators=(),
                        final: bool = True) -> None:
        """Everything needed to continue exactly here: weights, optimizer, schedule, RNGs, position."""
        if self.checkpoint_path is None or not is_main_process():  # one writer under DDP
            return
        if not final and time.perf_counter() - self._last_save < self.checkpoint_seconds:
            return
        state = {
            "version": 1, "phase_index": self.phase_index, "epoch": epoch,
            "records": self.done_records + records, "phases": self.done_phases,
            "model": self.model.state_dict(),
            "optimizer": optimizer.state_dict() if optimizer is not None else None,
            "scheduler": scheduler.state_dict() if scheduler is not None else None,
            "best_state": best_state, "best_score": list(best_score) if best_score else None,
            "bad_epochs": bad_epochs, "config": self.cfg.to_dict(), "data_sha256": self.data_sha256,
            # Training draws randomness only from torch: the global RNG and our own generators.
            "rng": {"torch": torch.get_rng_state(), "generators": [g.get_state() for g in generators]},
        }
        with atomic_path(self.checkpoint_path) as tmp:
            torch.save(state, tmp)
        self._last_save = time.perf_counter()


def load_checkpoint(path: Path) -> dict:
    """A checkpoint written by ``_Run.save_checkpoint``, read without unpickling arbitrary objects."""
    return torch.load(path, map_location="cpu", weights_only=True)


def fit(model: TransferModel, backbone: Backbone, data: TrainData, cfg: TrainConfig, *,
        metrics_path: Path | None = None, progress: Callable | None = None,
        checkpoint_path: Path | None = None, resume: dict | None = None) -> History:
    """Train ``model`` in place following ``cfg.strategy``; returns the per-epoch history.

    With ``checkpoint_path`` a checkpoint is written atomically after every epoch; pass a loaded one
    as ``resume`` to continue a killed run exactly where its last checkpoint left it.
    """
    start = time.perf_counter()
    device = next(model.parameters()).device
    precision = resolve_precision(cfg.precision, device, purpose="train")
    inference_precision = resolve_precision(cfg.precision, device, purpose="inference")
    history = History(precision=precision, inference_precision=inference_precision)
    run = _Run(cfg, precision, inference_precision, progress, metrics_path, checkpoint_path, resume, model=model)
    model.train_bn = cfg.train_bn
    phases = plan_phases(cfg, len(backbone.stages))
    first = 0
    if checkpoint_path is not None:
        run.data_sha256 = pixels_sha256(data.x_train)
    if resume is not None:
        if resume.get("data_sha256") and resume["data_sha256"] != run.data_sha256:
            raise HeadstartError(
                "Cannot resume: the training images differ from those of the interrupted run (their hash "
                "changed). Resume with the same data, or start a new run without --resume.")
        model.load_state_dict(resume["model"])
        first = resume["phase_index"]
        run.done_records = [r for r in resume["records"] if r.get("phase_index", 0) < first]
        run.done_phases = list(resume["phases"])
        if metrics_path is not None:  # the log may hold epochs after the checkpoint: rewrite it
            metrics_path.write_text("".join(json.dumps(r) + "\n" for r in resume["records"]))
    for i, phase in enumerate(phases):
        if i < first:
            continue
        run.phase_index = i
        if resume is None or i > first:
            run.resume = None
        # Resume restores the freeze state of the phase it stopped in (Lightning #21901 loses it).
        apply_freeze(model, backbone.stages, phase.frozen)
        t0 = time.perf_counter()
        if phase.head_only(len(backbone.stages)):
            records = _fit_head_on_features(model, backbone, data, cfg, phase, run)
        else:
            records = _fit_images(model, backbone, data, cfg, phase, run)
        run.done_records += records
        run.done_phases.append({"name": phase.name, "frozen_stages": phase.frozen, "epochs_run": len(records),
                                "seconds": round(time.perf_counter() - t0, 2), **run.phase_info})
        run.phase_info = {}
        run.phase_index = i + 1
        run.save_checkpoint(epoch=0, records=[])  # phase boundary: the next phase starts fresh
    history.epochs = run.done_records
    history.phases = run.done_phases
    apply_freeze(model, backbone.stages, 0)  # a saved model is a plain, fully trainable module
    model.eval()
    history.seconds = round(time.perf_counter() - start, 2)
    return history


def _fit_head_on_features(model, backbone, data, cfg, phase, run: _Run):
    """Backbone frozen and no augmentation: features once (cached on disk), then train only the head."""
    device = next(model.parameters()).device
    t0 = time.perf_counter()
    feats = {}
    weights = tensors_sha256(model.backbone.state_dict()) if cfg.use_feature_cache else None  # once, not per split
    for split, x in (("train", data.x_train), ("val", data.x_val)):
        if x is not None and len(x):
            known = run.data_sha256 if split == "train" else None  # already hashed for the checkpoint
            feats[split], _ = cached_features(model, x, preprocess=backbone.preprocess,
                                              precision=run.inference_precision, device=device,
                                              use_cache=cfg.use_feature_cache, weights_sha256=weights,
                                              data_sha256=known or None)
    run.phase_info["features_seconds"] = round(time.perf_counter() - t0, 2)
    val = (feats["val"], data.y_val) if "val" in feats else None
    # Head-only epochs are cheap: a larger batch, and enough epochs for the head to converge.
    batch_size = max(cfg.batch_size, 128)
    steps_per_epoch = max(1, len(data.x_train) // batch_size)
    phase = replace(phase, epochs=max(phase.epochs, math.ceil(cfg.head_min_steps / steps_per_epoch)))
    # Patience counts epochs, and a small dataset makes an epoch one or two steps, still in warmup:
    # give the head at least a fifth of its minimum steps to improve before stopping early.
    patience = max(cfg.patience, math.ceil(cfg.head_min_steps / 5 / steps_per_epoch))
    return _train_module(model.head, (feats["train"], data.y_train), val, cfg, phase, run,
                         batch_size=batch_size, patience=patience)


def _fit_images(model, backbone, data, cfg, phase, run: _Run):
    precision = run.precision
    to_fast_layout(model)
    groups = _groups_for(model, cfg)
    val = (data.x_val, data.y_val) if data.x_val is not None and len(data.x_val) else None
    split = split_for_prefix_cache(model) if (phase.frozen and not cfg.augment and cfg.use_feature_cache) else None
    if split is not None:
        # Frozen prefix + no augmentation: its output never changes, so run it once, not every epoch.
        prefix, suffix, _ = split
        device = next(model.parameters()).device
        kw = dict(precision=run.inference_precision, device=device,
                  store=torch.bfloat16 if precision == "bf16" else torch.float32)
        t0 = time.perf_counter()
        x_train = prefix_outputs(model, prefix, data.x_train, **kw)
        if val is not None:
            val = (prefix_outputs(model, prefix, val[0], **kw), val[1])
        run.phase_info["prefix_cache_seconds"] = round(time.perf_counter() - t0, 2)
        return _train_module(suffix, (x_train, data.y_train), val, cfg, phase, run,
                             batch_size=cfg.batch_size, groups=groups)
    aug_gen = torch.Generator().manual_seed(cfg.seed + 1)
    aug = (lambda xb: augment(xb, aug_gen)) if cfg.augment else None
    return _train_module(model, (data.x_train, data.y_train), val, cfg, phase, run,
                         batch_size=cfg.batch_size, augment_fn=aug, groups=groups, aug_gen=aug_gen)


def _train_module(module: nn.Module, train, val, cfg: TrainConfig, phase: Phase, run: _Run, *,
                  batch_size: int, augment_fn=None, groups: list[dict] | None = None,
                  aug_gen: torch.Generator | None = None, patience: int | None = None) -> list[dict]:
    gen = torch.Generator().manual_seed(cfg.seed)
    generators = [gen] + ([aug_gen] if aug_gen is not None else [])
    accel = make_accelerator(run.precision)
    train_loader = DataLoader(TensorDataset(*train), batch_size=batch_size, shuffle=True, generator=gen,
                              drop_last=len(train[0]) > batch_size)
    val_loader = DataLoader(TensorDataset(*val), batch_size=max(batch_size, 64)) if val else None
    optimizer = _adamw(groups if groups is not None else _groups_for(module, cfg))
    steps = max(1, phase.epochs * math.ceil(len(train_loader) / accel.num_processes))
    scheduler = _make_scheduler(optimizer, cfg, steps)
    module, optimizer, train_loader, scheduler = accel.prepare(module, optimizer, train_loader, scheduler)
    if val_loader is not None:
        val_loader = accel.prepare(val_loader)

    best_score, best_state, bad_epochs, records, start = None, None, 0, [], 1
    if run.resume is not None and run.resume["optimizer"] is not None:
        best_score, best_state, bad_epochs, records, start = _restore(run.resume, optimizer, scheduler, generators)
    elif run.phase_index > 0 and val_loader is not None:
        # A later phase must beat what the earlier ones achieved, or their weights are kept: a
        # fine-tune that overfits a tiny dataset never makes the model worse than the head alone.
        loss, acc = _evaluate(module, val_loader, accel)
        best_score, best_state = (-loss, acc), copy.deepcopy(accel.unwrap_model(module).state_dict())
    for epoch in range(start, phase.epochs + 1):
        t0 = time.perf_counter()
        module.train()
        total_loss, correct, seen = 0.0, 0, 0
        for xb, yb in train_loader:
            if augment_fn is not None:
                xb = augment_fn(xb)
            logits = module(xb)
            loss = F.cross_entropy(logits.float(), yb, label_smoothing=cfg.label_smoothing)
            accel.backward(loss)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            total_loss += loss.item() * len(yb)
            correct += (logits.argmax(1) == yb).sum().item()
            seen += len(yb)
        seconds = time.perf_counter() - t0
        rec = {"phase": phase.name, "phase_index": run.phase_index, "epoch": epoch, "train_loss": round(total_loss / max(seen, 1), 5),
               "train_acc": round(correct / max(seen, 1), 5), "lr": optimizer.param_groups[0]["lr"],
               "seconds": round(seconds, 3), "images_per_s": round(seen / max(seconds, 1e-9), 1)}
        if val_loader is not None:
            rec["val_loss"], rec["val_acc"] = _evaluate(module, val_loader, accel)
            # Monitor validation loss: on a few hundred images accuracy moves in coarse, noisy steps
            # and would stop training early; the loss is smooth. Accuracy breaks ties.
            score = (-rec["val_loss"], rec["val_acc"])
            if best_score is None or score > best_score:
                best_score, bad_epochs = score, 0
                best_state = copy.deepcopy(accel.unwrap_model(module).state_dict())
                rec["best"] = True
            else:
                bad_epochs += 1
        records.append(rec)
        run.save_checkpoint(epoch=epoch, records=records, optimizer=optimizer, scheduler=scheduler,
                            best_state=best_state, best_score=best_score, bad_epochs=bad_epochs,
                            generators=generators,
                            final=epoch == phase.epochs or phase.name != "head")
        run.log_epoch(rec, phase.epochs)
        if val_loader is not None and bad_epochs >= (patience or cfg.patience):
            break
    module = accel.unwrap_model(module, keep_fp32_wrapper=False)
    if best_state is not None:
        module.load_state_dict(best_state)  # the best validation checkpoint, not the last epoch
    accel.free_memory()
    return records


def _adamw(groups: list[dict]) -> torch.optim.Optimizer:
    # The fused kernel is several times faster than the per-tensor loop on CPU as well as GPU.
    try:
        return torch.optim.AdamW(groups, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(groups)


def _restore(ckpt: dict, optimizer, scheduler, generators):
    """Put optimizer, schedule and every RNG back where the checkpoint left them."""
    optimizer.load_state_dict(ckpt["optimizer"])
    scheduler.load_state_dict(ckpt["scheduler"])
    torch.set_rng_state(ckpt["rng"]["torch"])
    for g, state in zip(generators, ckpt["rng"]["generators"]):
        g.set_state(state)
    records = [r for r in ckpt["records"] if r.get("phase_index") == ckpt["phase_index"]]
    score = tuple(ckpt["best_score"]) if ckpt["best_score"] else None
    return score, ckpt["best_state"], ckpt["bad_epochs"], records, ckpt["epoch"] + 1


def _groups_for(module: nn.Module, cfg: TrainConfig) -> list[dict]:
    if isinstance(module, TransferModel):
        return param_groups(module, module.stages, cfg)
    # The head alone (features cached): one group, decay on the weight matrix only.
    decay = [p for p in module.parameters() if p.ndim >= 2]
    no_decay = [p for p in module.parameters() if p.ndim < 2]
    return [{"params": decay, "lr": cfg.lr, "weight_decay": cfg.weight_decay, "name": "head"},
            {"params": no_decay, "lr": cfg.lr, "weight_decay": 0.0, "name": "head"}]


def _make_scheduler(optimizer, cfg: TrainConfig, steps: int):
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


@torch.no_grad()
def _evaluate(module: nn.Module, loader, accel) -> tuple[float, float]:
    module.eval()
    total_loss, correct, seen = 0.0, 0, 0
    for xb, yb in loader:
        logits = module(xb).float()
        logits, yb = accel.gather_for_metrics((logits, yb))
        total_loss += F.cross_entropy(logits, yb, reduction="sum").item()
        correct += (logits.argmax(1) == yb).sum().item()
        seen += len(yb)
    return round(total_loss / max(seen, 1), 5), round(correct / max(seen, 1), 5)
