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
  batch statistics. SyncBatchNorm is GPU-only in PyTorch; with ``train_bn=True``, DDP hands every process
  the main process's statistics before each forward (its default), so they are estimated from the main
  process's batches only (the fit warns).
* Launch with ``torchrun --nproc_per_node N -m headstart.cli train ...`` (or ``accelerate launch
  --multi_gpu --num_processes N``, which runs torchrun). ``accelerate launch --cpu --num_processes N``
  starts one process unless accelerate is configured for MPI (accelerate #2741); a launch whose
  processes did not join one group is refused.

Work only the main process does (the baselines) must not enter a collective the others will not:
it runs on :data:`LOCAL`, a single-process runtime with the same small interface.
"""
from __future__ import annotations

import atexit
import contextlib
import datetime
import logging
import os

import torch

from headstart.device import default_device
from headstart.errors import HeadstartError

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
    process_state()  # the process group first, formed the way headstart needs it
    accel = Accelerator(mixed_precision=mixed, cpu=default_device().type == "cpu")
    launched = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if launched != accel.num_processes:
        raise HeadstartError(f"The launcher started {launched} processes but accelerate joined {accel.num_processes}; "
                             "launch with `torchrun --nproc_per_node N -m headstart.cli ...`.")
    return accel


def process_state():
    """Accelerate's process state (rank, world size), created once per process.

    Where headstart trains on the CPU (no CUDA) it says so: under torchrun, accelerate forms a CPU
    process group (gloo) only when told ``cpu``, and would otherwise run every process as a lone
    trainer, each writing the run. The group is destroyed at exit: a gloo process that exits right
    after its last collective can otherwise abort ("terminate called without an active exception").
    """
    from accelerate import PartialState

    state = PartialState(cpu=default_device().type == "cpu")
    if state.num_processes > 1 and not _cleanup_registered:
        _register_cleanup()
    return state


_cleanup_registered = False


def _register_cleanup() -> None:
    global _cleanup_registered

    def destroy() -> None:
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return
        try:  # wait until every process is done with the group: a peer still sending would abort
            torch.distributed.monitored_barrier(timeout=datetime.timedelta(seconds=60))
        except RuntimeError:  # a peer failed or is gone: nothing left to wait for
            pass
        torch.distributed.destroy_process_group()

    atexit.register(destroy)
    _cleanup_registered = True


def is_main_process() -> bool:
    """Whether this process writes shared files (the main one of a launch, or a lone process)."""
    return process_state().is_main_process


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

    def unwrap_model(self, model, keep_fp32_wrapper: bool = True):
        return model

    @contextlib.contextmanager
    def main_process_first(self):
        yield

    def free_memory(self, *objects):
        return objects


LOCAL = LocalRuntime()
