"""The training loop. Read it top to bottom: for each phase of the strategy, freeze, choose what
trains (the head on cached features, the trainable suffix on cached prefix outputs, or the model),
build the optimizer, then run epochs: an :class:`Objective` turns each batch into a loss, and
callbacks (best weights, early stopping, checkpoints, the metrics log, progress) do the rest.

Device, precision and distribution are Accelerate's job (``prepare`` / ``backward``), one accelerator
per fit (``distributed.py``); the loop is ours.
"""
from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from headstart.config import TrainConfig
from headstart.device import resolve_precision, to_fast_layout
from headstart.encoders.base import Backbone, tensors_sha256
from headstart.encoders.model import TransferModel
from headstart.errors import HeadstartError
from headstart.features.cache import cached_features, feature_engine, pixels_sha256
from headstart.features.prefix import prefix_outputs, split_for_prefix_cache
from headstart.train.callbacks import (
    Callback,
    FitState,
    PhaseState,
    default_callbacks,
    load_checkpoint,
)
from headstart.train.distributed import make_accelerator
from headstart.train.interrupt import check_stop
from headstart.train.objectives import Batch, Objective
from headstart.train.optim import adamw, head_groups, make_scheduler
from headstart.train.strategies import Phase, apply_freeze, param_groups, plan_phases

log = logging.getLogger("headstart")
__all__ = ["History", "TrainData", "evaluate", "fit", "load_checkpoint", "preserved_rng", "seed_everything",
           "shuffled_loader"]


@dataclass
class TrainData:
    x_train: torch.Tensor  # uint8 pixels (N, 3, S, S) or packed tokens (N, 2, L)
    y_train: torch.Tensor
    x_val: torch.Tensor | None = None
    y_val: torch.Tensor | None = None
    extra: dict[str, torch.Tensor] = field(default_factory=dict)  # aligned with x_train; reach Batch.extra
    # Names of extra tensors that are images like x_train (a perturbed copy): cropped and flipped with it.
    paired: tuple[str, ...] = ()


@dataclass
class History:
    epochs: list[dict] = field(default_factory=list)
    phases: list[dict] = field(default_factory=list)
    precision: str = "fp32"  # of the training passes
    inference_precision: str = "fp32"  # of feature / prefix extraction and prediction
    seconds: float = 0.0


@dataclass
class PhaseInputs:
    """What one phase trains and on what."""

    module: nn.Module
    x: torch.Tensor
    val: tuple[torch.Tensor, torch.Tensor] | None
    batch_size: int
    epochs: int
    patience: int
    groups: list[dict]
    augment: Callable | None = None
    generators: list[torch.Generator] = field(default_factory=list)  # besides the sample order
    info: dict = field(default_factory=dict)  # one-off costs (cache builds), saved with the phase


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


def fit(model: TransferModel, backbone: Backbone, data: TrainData, cfg: TrainConfig, *,
        objective: Objective | None = None, callbacks: Sequence[Callback] = (), accelerator=None,
        augment: Callable | None = None, metrics_path: Path | None = None, progress: Callable | None = None,
        checkpoint_path: Path | None = None, resume: dict | None = None) -> History:
    """Train ``model`` in place following ``cfg.strategy``; returns the per-epoch history.

    ``objective`` defaults to cross-entropy with ``cfg.label_smoothing``; ``callbacks`` run after the
    built-in ones. ``augment(x_batch)`` runs on training batches while the backbone trains on raw
    inputs. With ``checkpoint_path`` a checkpoint is written atomically after every epoch; pass a loaded
    one as ``resume`` to continue a killed run exactly where its last checkpoint left it.
    """
    start = time.perf_counter()
    device = next(model.parameters()).device
    precision = resolve_precision(cfg.precision, device, purpose="train")
    history = History(precision=precision, inference_precision=resolve_precision(cfg.precision, device))
    accel = accelerator or make_accelerator(precision)
    objective = objective or Objective(cfg.label_smoothing)
    callbacks = default_callbacks(metrics_path=metrics_path, checkpoint_path=checkpoint_path,
                                  progress=progress) + list(callbacks)
    if isinstance(objective, Callback):  # an objective that follows the phases (a schedule of its own)
        callbacks.append(objective)
    state = FitState(cfg, model, accel, resume=resume, objective=objective)
    if checkpoint_path is not None:
        state.data_sha256 = pixels_sha256(data.x_train)
    if resume is not None and resume.get("data_sha256") and resume["data_sha256"] != state.data_sha256:
        raise HeadstartError(
            "Cannot resume: the training images differ from those of the interrupted run (their hash "
            "changed). Resume with the same data, or train the new data into another --out (or --overwrite).")
    model.train_bn = cfg.train_bn
    if cfg.train_bn and accel.num_processes > 1:
        log.warning("train_bn=True under %d processes: DDP hands every process the main process's BatchNorm "
                    "statistics before each forward, so they are estimated from its batches only (SyncBatchNorm "
                    "is GPU-only); the default, train_bn=False, keeps the pretrained statistics and needs no sync.",
                    accel.num_processes)
    _hook(callbacks, "on_fit_start", state)
    for i, phase in enumerate(plan_phases(cfg, len(backbone.stages))):
        if i < state.first_phase:
            continue
        state.phase_index = i
        # Resume restores the freeze state of the phase it stopped in (Lightning #21901 loses it).
        apply_freeze(model, backbone.stages, phase.frozen)
        t0 = time.perf_counter()
        inputs = _phase_inputs(model, backbone, data, cfg, phase, state, history, augment, objective)
        ph = _train_phase(inputs, data, replace(phase, epochs=inputs.epochs), objective, callbacks, state)
        state.done_records += ph.records
        state.done_phases.append({"name": phase.name, "frozen_stages": phase.frozen, "epochs_run": len(ph.records),
                                  "seconds": round(time.perf_counter() - t0, 2), **inputs.info})
        state.phase_index = i + 1
        _hook(callbacks, "on_phase_end", state, ph)
    history.epochs, history.phases = state.done_records, state.done_phases
    apply_freeze(model, backbone.stages, 0)  # a saved model is a plain, fully trainable module
    model.eval()
    history.seconds = round(time.perf_counter() - start, 2)
    return history


def _hook(callbacks: Sequence[Callback], name: str, *args) -> None:
    for cb in callbacks:
        getattr(cb, name)(*args)


def _phase_inputs(model, backbone, data, cfg, phase: Phase, state: FitState, history: History, augment,
                  objective: Objective):
    if phase.head_only(len(backbone.stages)):
        return _head_on_features(model, backbone, data, cfg, phase, state, history.inference_precision)
    return _model_inputs(model, data, cfg, phase, history, augment, raw=objective.needs_inputs or bool(data.paired))


def _head_on_features(model, backbone, data, cfg, phase, state: FitState, precision: str) -> PhaseInputs:
    """Backbone frozen and no augmentation: features once (cached on disk), then train only the head."""
    device = next(model.parameters()).device
    t0 = time.perf_counter()
    feats = {}
    weights = tensors_sha256(model.backbone.state_dict()) if cfg.use_feature_cache else None  # once, not per split
    # The main process computes (and caches) first; the others then read what it wrote.
    with state.accel.main_process_first():
        for split, x in (("train", data.x_train), ("val", data.x_val)):
            if x is not None and len(x):
                known = state.data_sha256 if split == "train" else None  # already hashed for the checkpoint
                feats[split], _ = cached_features(model, x, preprocess=backbone.preprocess, precision=precision,
                                                  device=device, use_cache=cfg.use_feature_cache,
                                                  weights_sha256=weights, data_sha256=known or None)
    info = {"features_seconds": round(time.perf_counter() - t0, 2),
            "features_engine": feature_engine(model, len(data.x_train), precision=precision, device=device)}
    # Head-only epochs are cheap: a larger global batch (>= 128 over all processes), and enough epochs
    # for the head to converge.
    batch_size = max(cfg.batch_size, math.ceil(128 / state.accel.num_processes))
    steps_per_epoch = max(1, len(data.x_train) // (batch_size * state.accel.num_processes))
    epochs = max(phase.epochs, math.ceil(cfg.head_min_steps / steps_per_epoch))
    # Patience counts epochs, and a small dataset makes an epoch one or two steps, still in warmup:
    # give the head at least a fifth of its minimum steps to improve before stopping early.
    patience = max(cfg.patience, math.ceil(cfg.head_min_steps / 5 / steps_per_epoch))
    # Say what will run when it is not what was asked: head_epochs=5 with head_min_steps=500 runs 500.
    info["epochs_asked"], info["epochs_planned"] = phase.epochs, epochs
    if epochs > phase.epochs:
        info["epochs_why"] = (f"head_min_steps={cfg.head_min_steps} at {steps_per_epoch} step(s) per epoch "
                              f"(batch {batch_size}) needs {epochs} epochs; patience {patience}")
        log.info("%s: %d epochs instead of %d: %s (CLI: --head-min-steps)", phase.name, epochs, phase.epochs,
                 info["epochs_why"])
    val = (feats["val"], data.y_val) if "val" in feats else None
    return PhaseInputs(model.head, feats["train"], val, batch_size, epochs, patience, head_groups(model.head, cfg),
                       info=info)


def _model_inputs(model, data, cfg, phase, history: History, augment, raw: bool = False) -> PhaseInputs:
    to_fast_layout(model)
    groups = param_groups(model, model.stages, cfg)
    val = (data.x_val, data.y_val) if data.x_val is not None and len(data.x_val) else None
    # raw: the objective attacks pixels, or images ride along; a prefix cache would hand it activations.
    cacheable = phase.frozen and augment is None and cfg.use_feature_cache and not raw
    split = split_for_prefix_cache(model) if cacheable else None
    if split is not None:
        # Frozen prefix + no augmentation: its output never changes, so run it once, not every epoch.
        prefix, suffix, _ = split
        device = next(model.parameters()).device
        kw = dict(precision=history.inference_precision, device=device,
                  store=torch.bfloat16 if history.precision == "bf16" else torch.float32)
        t0 = time.perf_counter()
        x = prefix_outputs(model, prefix, data.x_train, **kw)
        if val is not None:
            val = (prefix_outputs(model, prefix, val[0], **kw), val[1])
        info = {"prefix_cache_seconds": round(time.perf_counter() - t0, 2)}
        return PhaseInputs(suffix, x, val, cfg.batch_size, phase.epochs, cfg.patience, groups, info=info)
    aug_gen = torch.Generator().manual_seed(cfg.seed + 1)
    fn = (lambda xb: augment(xb, aug_gen)) if augment is not None else None  # drawn from a checkpointed stream
    return PhaseInputs(model, data.x_train, val, cfg.batch_size, phase.epochs, cfg.patience, groups,
                       augment=fn, generators=[aug_gen])


def _train_phase(inputs: PhaseInputs, data: TrainData, phase: Phase, objective: Objective,
                 callbacks: Sequence[Callback], state: FitState) -> PhaseState:
    accel, cfg = state.accel, state.cfg
    order = torch.Generator().manual_seed(cfg.seed)  # the sample order: same seed, same order, new each epoch
    names = list(data.extra)
    train_set = TensorDataset(inputs.x, data.y_train, *data.extra.values())
    loader = shuffled_loader(train_set, inputs.batch_size, order, accel.num_processes)
    val_loader = DataLoader(TensorDataset(*inputs.val), batch_size=max(loader.batch_size, 64)) if inputs.val else None
    module, groups = objective.attach(inputs.module, inputs.groups, cfg)
    optimizer = adamw(groups)
    # Stepped by us once per optimizer step (not through accelerate, which would step it once per
    # process): the learning rate at step k is the same whatever the number of processes.
    steps = max(1, phase.epochs * math.ceil(len(loader) / accel.num_processes))
    scheduler = make_scheduler(optimizer, cfg, steps)
    module, optimizer, loader = accel.prepare(module, optimizer, loader)
    if val_loader is not None:
        val_loader = accel.prepare(val_loader)
    evaluate_now = (lambda: evaluate(module, val_loader, accel)[:2]) if val_loader is not None else None
    ph = PhaseState(phase, module, optimizer, scheduler, [order] + inputs.generators, evaluate_now, inputs.patience,
                    steps=steps)
    _hook(callbacks, "on_phase_start", state, ph)
    for epoch in range(ph.start_epoch, phase.epochs + 1):
        t0 = time.perf_counter()
        module.train()
        loss_sum, correct, seen = _epoch(module, loader, optimizer, scheduler, objective, phase, accel,
                                         inputs.augment, names, data.paired if inputs.augment else ())
        seconds = time.perf_counter() - t0
        rec = {"phase": phase.name, "phase_index": state.phase_index, "epoch": epoch,
               "train_loss": round(loss_sum / max(seen, 1), 5), "train_acc": round(correct / max(seen, 1), 5),
               "lr": optimizer.param_groups[0]["lr"], "seconds": round(seconds, 3),
               "images_per_s": round(seen / max(seconds, 1e-9), 1)}
        if val_loader is not None:
            rec["val_loss"], rec["val_acc"], _ = evaluate(module, val_loader, accel)
        ph.records.append(rec)
        _hook(callbacks, "on_epoch_end", state, ph, rec)
        if ph.should_stop:
            break
    ph.module = accel.unwrap_model(module, keep_fp32_wrapper=False)
    accel.free_memory()
    return ph


def shuffled_loader(dataset, batch_size: int, generator: torch.Generator, world: int) -> DataLoader:
    """The training batches, before ``accel.prepare`` shares them out between ``world`` processes.

    Every process needs a full batch each step: with fewer examples than one global batch the
    per-process batch shrinks (else the one partial round would be dropped, or padded with repeated
    examples), and an incomplete last round is dropped only when there is more than one."""
    n = len(dataset)
    batch_size = max(1, min(batch_size, math.ceil(n / world)))
    return DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=generator,
                      drop_last=n > batch_size * world)


def _epoch(module, loader, optimizer, scheduler, objective: Objective, phase: Phase, accel, augment,
           names: list[str], paired: Sequence[str] = ()) -> tuple[float, int, int]:
    """One pass over the training batches: (summed loss, correct, examples) over every process."""
    loss_sum, correct, seen = 0.0, 0, 0
    for x, y, *extra in loader:
        check_stop()  # a Ctrl-C whose KeyboardInterrupt was swallowed still stops here
        extra = dict(zip(names, extra))
        if augment is not None:
            x, extra = _augment_together(augment, x, extra, paired)
        batch = Batch(x, y, extra)
        out = objective.loss(module, batch, phase=phase)
        accel.backward(out.loss)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        loss_sum += out.loss.item() * len(y)
        if out.logits is not None:
            correct += (out.logits.argmax(1) == y).sum().item()
        seen += len(y)
    if accel.num_processes > 1:  # every process logs the same, global figures
        totals = accel.reduce(torch.tensor([loss_sum, correct, seen], dtype=torch.float64), reduction="sum")
        loss_sum, correct, seen = float(totals[0]), int(totals[1]), int(totals[2])
    return loss_sum, correct, seen


def _augment_together(augment: Callable, x: torch.Tensor, extra: dict, paired: Sequence[str]):
    """Augment ``x`` and the paired images with one draw: stacked along channels, one crop and flip."""
    if not paired:
        return augment(x), extra
    out = augment(torch.cat([x] + [extra[k] for k in paired], dim=1))
    parts = out.split(x.shape[1], dim=1)
    return parts[0], {**extra, **dict(zip(paired, parts[1:]))}


@torch.no_grad()
def evaluate(module: nn.Module, loader, accel) -> tuple[float, float, int]:
    """(mean cross-entropy, accuracy, examples counted) over the validation set, each example once."""
    module.eval()
    total_loss, correct, seen = 0.0, 0, 0
    for xb, yb in loader:
        logits = module(xb).float()
        logits, yb = accel.gather_for_metrics((logits, yb))  # drops the duplicates that pad the last batch
        total_loss += F.cross_entropy(logits, yb, reduction="sum").item()
        correct += (logits.argmax(1) == yb).sum().item()
        seen += len(yb)
    return round(total_loss / max(seen, 1), 5), round(correct / max(seen, 1), 5), seen
