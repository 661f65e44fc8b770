"""Distributed state, decided once per fit.

One :class:`accelerate.Accelerator` serves a whole fit (every phase, the estimator's "am I the
writer?" questions, the feature cache's "who computes first?"), so nothing re-reads ``RANK``. Under
``accelerate launch --num_processes N`` / ``torchrun`` every process runs the same fit:

* ``batch_size`` is per process: the global batch is ``batch_size x N``. Gradients are averaged over
  the processes, so N processes at batch b train like one process at batch N*b (tested equal).
* Each epoch the sample order is drawn from a generator seeded with the run's seed, the same on every
  process, and each process takes its own share of the batches.
* Evaluation gathers every process's predictions and drops the padding duplicates, so each example is
  counted exactly once (tested for 1, 2 and 3 processes).
* Only the main process writes: metrics log, checkpoints, the saved run. Cache files are computed
  by the main process first, then read by the others.
* BatchNorm: frozen backbone layers and, by default (``train_bn=False``), every BatchNorm while
  fine-tuning use their pretrained running statistics in eval mode, so processes never need to agree on
  batch statistics. SyncBatchNorm is GPU-only in PyTorch; with ``train_bn=True`` each process updates its
  own statistics from its own batches and the main process's are the ones saved (a warning says so).

Work only the main process does (the baselines) must not enter a collective the others will not:
it runs on :data:`LOCAL`, a single-process runtime with the same small interface.
"""
from __future__ import annotations

import contextlib
import logging

import torch

log = logging.getLogger("headstart")


def make_accelerator(precision: str):
    """The Accelerator of one fit. Accelerate keeps process-wide state; a fit asking for another mixed
    precision than the last one in this process resets the parts of it that hold the precision."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState, GradientState

    mixed = "bf16" if precision == "bf16" else "no"
    if AcceleratorState._shared_state and str(AcceleratorState().mixed_precision) != mixed:
        AcceleratorState._reset_state()
        GradientState._reset_state()
    return Accelerator(mixed_precision=mixed)


class LocalRuntime:
    """One process, no collectives: the subset of the Accelerator interface the loop uses."""

    num_processes = 1
    process_index = 0
    is_main_process = True

    def prepare(self, *objects):
        return objects[0] if len(objects) == 1 else objects

    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def gather_for_metrics(self, tensors):
        return tensors

    def reduce(self, tensor: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
        return tensor

    def unwrap_model(self, model, keep_fp32_wrapper: bool = True):
        return model

    def wait_for_everyone(self) -> None:
        pass

    @contextlib.contextmanager
    def main_process_first(self):
        yield

    def free_memory(self, *objects):
        return objects


LOCAL = LocalRuntime()
