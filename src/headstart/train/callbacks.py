"""The side business of training, one callback each: best weights, early stopping, checkpoints and
resume, the metrics log, progress.

Every hook is a no-op in :class:`Callback`; the loop calls them in list order (the built-in ones
first, in the order of :func:`default_callbacks`) and never needs to know what they do. A hook sees
the :class:`FitState` of the whole fit and, inside a phase, the :class:`PhaseState`.
"""
from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from headstart.config import TrainConfig
from headstart.storage import atomic_path
from headstart.train.strategies import Phase

CHECKPOINT_VERSION = 1


@dataclass
class FitState:
    """The whole fit: where it is, what finished, and a checkpoint to continue from."""

    cfg: TrainConfig
    model: nn.Module
    accel: Any
    resume: dict | None = None  # a loaded checkpoint
    first_phase: int = 0  # phases before it finished in the run being resumed
    phase_index: int = 0
    done_records: list[dict] = field(default_factory=list)
    done_phases: list[dict] = field(default_factory=list)
    data_sha256: str = ""  # of the training inputs: the feature-cache key, checked on resume
    objective: Any = None  # the fit's Objective: its state (a discriminator, a random stream) is checkpointed

    @property
    def is_main(self) -> bool:
        return self.accel.is_main_process

    @property
    def resumes_mid_phase(self) -> bool:
        """The current phase continues from a checkpoint written inside it (optimizer and all)."""
        return (self.resume is not None and self.phase_index == self.first_phase
                and self.resume["optimizer"] is not None)


@dataclass
class PhaseState:
    """One phase while it trains: the module, its optimizer, and the running best."""

    phase: Phase  # epochs here are the phase's real count (head phases get at least head_min_steps)
    module: nn.Module  # what trains: the model, its trainable suffix, or the head on cached features
    optimizer: torch.optim.Optimizer
    scheduler: Any
    generators: list[torch.Generator]  # every random stream of the phase (sample order, augmentation)
    evaluate: Callable[[], tuple[float, float]] | None  # validation (loss, accuracy) of the module now
    patience: int
    steps: int = 1  # optimizer steps the phase's schedule spans
    records: list[dict] = field(default_factory=list)
    start_epoch: int = 1
    best_score: tuple | None = None  # (-val_loss, val_acc)
    best_state: dict | None = None
    bad_epochs: int = 0
    should_stop: bool = False


class Callback:
    def on_fit_start(self, fit: FitState) -> None:
        pass

    def on_phase_start(self, fit: FitState, ph: PhaseState) -> None:
        pass

    def on_epoch_end(self, fit: FitState, ph: PhaseState, record: dict) -> None:
        pass

    def on_phase_end(self, fit: FitState, ph: PhaseState) -> None:
        pass


class BestState(Callback):
    """Keep the weights of the epoch with the best validation score and restore them at the phase end.

    The score is validation loss, accuracy breaking ties: on a few hundred examples accuracy moves in
    coarse, noisy steps, the loss is smooth. A later phase must beat what the earlier ones achieved,
    or their weights are kept: a fine-tune that overfits a tiny dataset never leaves the model worse
    than the head alone.
    """

    def on_phase_start(self, fit, ph):
        # An objective whose aim validation does not measure (adapting to a target domain: validation is
        # the source) lets each phase keep its own best epoch instead of competing with the earlier phases.
        if not getattr(fit.objective, "phases_compete", True):
            return
        if not fit.resumes_mid_phase and fit.phase_index > 0 and ph.evaluate is not None:
            loss, acc = ph.evaluate()
            ph.best_score, ph.best_state = (-loss, acc), _state(fit, ph.module)

    def on_epoch_end(self, fit, ph, record):
        if "val_loss" not in record:
            return
        score = (-record["val_loss"], record["val_acc"])
        if ph.best_score is None or score > ph.best_score:
            ph.best_score, ph.bad_epochs, ph.best_state = score, 0, _state(fit, ph.module)
            record["best"] = True
        else:
            ph.bad_epochs += 1

    def on_phase_end(self, fit, ph):
        if ph.best_state is not None:
            ph.module.load_state_dict(ph.best_state)  # the best validation checkpoint, not the last epoch


def _state(fit: FitState, module: nn.Module) -> dict:
    return copy.deepcopy(fit.accel.unwrap_model(module).state_dict())


class EarlyStopping(Callback):
    """Stop a phase after ``patience`` epochs without a better validation score (counted by BestState)."""

    def on_epoch_end(self, fit, ph, record):
        if "val_loss" in record and ph.bad_epochs >= ph.patience:
            ph.should_stop = True


class Checkpoint(Callback):
    """After every epoch, everything needed to continue exactly there, written atomically; resume from it.

    Within a head-only phase it writes at most every ``every_seconds``: its epochs on cached features
    take milliseconds, and writing (and fsyncing) the whole model after each of hundreds of them
    dominated the run (a 400k-word embedding table: 160 MB an epoch). The first epoch and every phase
    end always write, epochs that train the backbone always do, and resuming from any checkpoint is
    exact, so at most this much (cheap) work is redone.
    """

    def __init__(self, path: Path, every_seconds: float = 20.0):
        self.path = path
        self.every_seconds = every_seconds
        self._last = float("-inf")

    def on_fit_start(self, fit):
        ck = fit.resume
        if ck is None:
            return
        fit.model.load_state_dict(ck["model"])
        if fit.objective is not None:
            fit.objective.load_state_dict(ck.get("objective") or {})
        fit.first_phase = ck["phase_index"]
        fit.done_records = [r for r in ck["records"] if r.get("phase_index", 0) < fit.first_phase]
        fit.done_phases = list(ck["phases"])

    def on_phase_start(self, fit, ph):
        if not fit.resumes_mid_phase:
            return
        ck = fit.resume
        ph.optimizer.load_state_dict(ck["optimizer"])
        ph.scheduler.load_state_dict(ck["scheduler"])
        torch.set_rng_state(ck["rng"]["torch"])
        for g, state in zip(ph.generators, ck["rng"]["generators"]):
            g.set_state(state)
        ph.records = [r for r in ck["records"] if r.get("phase_index") == ck["phase_index"]]
        ph.best_score = tuple(ck["best_score"]) if ck["best_score"] else None
        ph.best_state, ph.bad_epochs, ph.start_epoch = ck["best_state"], ck["bad_epochs"], ck["epoch"] + 1

    def on_epoch_end(self, fit, ph, record):
        final = record["epoch"] == ph.phase.epochs or ph.phase.name != "head"
        if final or time.perf_counter() - self._last >= self.every_seconds:
            self._save(fit, ph, epoch=record["epoch"], records=ph.records)

    def on_phase_end(self, fit, ph):
        self._save(fit, None, epoch=0, records=[])  # phase boundary: the next phase starts fresh

    def _save(self, fit: FitState, ph: PhaseState | None, *, epoch: int, records: list[dict]) -> None:
        if not fit.is_main:  # one writer when several processes train
            return
        state = {
            "version": CHECKPOINT_VERSION, "phase_index": fit.phase_index, "epoch": epoch,
            "records": fit.done_records + records, "phases": fit.done_phases,
            "model": fit.model.state_dict(),
            "objective": fit.objective.state_dict() if fit.objective is not None else {},
            "optimizer": ph.optimizer.state_dict() if ph else None,
            "scheduler": ph.scheduler.state_dict() if ph else None,
            "best_state": ph.best_state if ph else None,
            "best_score": list(ph.best_score) if ph and ph.best_score else None,
            "bad_epochs": ph.bad_epochs if ph else 0, "config": fit.cfg.to_dict(), "data_sha256": fit.data_sha256,
            # Training draws randomness only from torch: the global RNG and the phase's generators.
            "rng": {"torch": torch.get_rng_state(), "generators": [g.get_state() for g in ph.generators] if ph else []},
        }
        with atomic_path(self.path) as tmp:
            torch.save(state, tmp)
        self._last = time.perf_counter()


def load_checkpoint(path: Path) -> dict:
    """A checkpoint written by :class:`Checkpoint`, read without unpickling arbitrary objects."""
    return torch.load(path, map_location="cpu", weights_only=True)


class MetricsLog(Callback):
    """``metrics.jsonl``: one JSON line per epoch, from the main process."""

    def __init__(self, path: Path):
        self.path = path

    def on_fit_start(self, fit):
        if fit.resume is not None and fit.is_main:  # the log may hold epochs after the checkpoint: rewrite it
            self.path.write_text("".join(json.dumps(r) + "\n" for r in fit.resume["records"]))

    def on_epoch_end(self, fit, ph, record):
        if fit.is_main:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")


class Progress(Callback):
    """Calls ``report(record, epochs_in_phase)`` after every epoch (the CLI's progress bars)."""

    def __init__(self, report: Callable[[dict, int], None]):
        self.report = report

    def on_epoch_end(self, fit, ph, record):
        self.report(record, ph.phase.epochs)


def default_callbacks(*, metrics_path: Path | None = None, checkpoint_path: Path | None = None,
                      progress: Callable | None = None) -> list[Callback]:
    """In this order: the best-state bookkeeping feeds early stopping and the checkpoint (which must
    save the updated counters), and the checkpoint is written before the epoch is logged."""
    out: list[Callback] = [BestState()]
    if checkpoint_path is not None:
        out.append(Checkpoint(checkpoint_path))
    if metrics_path is not None:
        out.append(MetricsLog(metrics_path))
    if progress is not None:
        out.append(Progress(progress))
    out.append(EarlyStopping())
    return out
