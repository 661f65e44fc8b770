"""One process of a multi-process run, started by tests/test_distributed.py (not collected by pytest).

    python -m torch.distributed.run --nproc_per_node N --master_port PORT tests/dist_worker.py MODE OUTDIR [options]

or run plainly (``python tests/dist_worker.py MODE OUTDIR ...``) for the single-process reference.
Every process writes what it saw to ``OUTDIR/rank{RANK}.json`` (and ``.pt`` for tensors, plain tensors only,
read back with ``torch.load(weights_only=True)``). ``RANK`` is the launcher's rank (0 without a launcher),
not accelerate's, so processes that failed to join one group cannot overwrite each other's results; each
file records accelerate's own view (``world``, ``rank``, ``distributed_type``) for the test to check.

Modes:

* ``train``: the same tiny synthetic images on every process, one ``TransferClassifier.fit``; saves the
  final ``model_.state_dict()``, the backbone as freshly built (untrained) and its BatchNorm buffers, and
  the epoch history without its timing fields.
* ``evaluate``: ``headstart.train.loop.evaluate`` over a prepared loader whose length is divisible neither
  by the batch size nor by the number of processes, and the same on this process's unsharded data.
* ``order``: the sample order of two epochs, drawn the way ``_train_phase`` draws it.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import TINY, make_images

TIMING = ("seconds", "images_per_s")


def launcher_rank() -> int:
    return int(os.environ.get("RANK", "0"))


def runtime_info() -> dict:
    """Accelerate's view of this process (its state exists once an Accelerator was built)."""
    from accelerate.state import PartialState

    state = PartialState()
    return {"world": state.num_processes, "rank": state.process_index, "distributed_type": str(state.distributed_type),
            "launcher_rank": launcher_rank(), "launcher_world": int(os.environ.get("WORLD_SIZE", "1"))}


def write(out: Path, info: dict, tensors: dict | None = None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    rank = launcher_rank()
    if tensors is not None:
        torch.save(tensors, out / f"rank{rank}.pt")
    tmp = out / f"rank{rank}.json.tmp"
    tmp.write_text(json.dumps(info))
    tmp.replace(out / f"rank{rank}.json")


# --------------------------------------------------------------------------- train
def batchnorm_buffers(module: torch.nn.Module, prefix: str = "") -> dict[str, torch.Tensor]:
    out = {}
    for name, m in module.named_modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            for buf in ("running_mean", "running_var", "num_batches_tracked"):
                out[f"{prefix}{name}.{buf}"] = getattr(m, buf).detach().clone()
    return out


def initial_backbone(seed: int) -> torch.nn.Module:
    """The backbone the fit started from: ``TransferClassifier.fit`` seeds with ``cfg.seed`` right before
    building it, so the same two calls build the same initial weights and BatchNorm statistics."""
    from headstart.encoders import get_backbone
    from headstart.train.loop import seed_everything

    seed_everything(seed)
    return get_backbone(TINY, pretrained=False).module


def run_train(a: argparse.Namespace) -> None:
    from headstart import TransferClassifier

    x, y = make_images(n_per_class=a.n_per_class, size=a.size, seed=0)
    opts = {"precision": "fp32", "augment": False, "val_fraction": 0.25, "batch_size": a.batch_size,
            "epochs": a.epochs, "head_epochs": a.head_epochs, "head_min_steps": a.head_min_steps,
            "baselines": a.baselines, "seed": a.seed}
    if a.baseline_seconds is not None:
        opts["baseline_seconds"] = a.baseline_seconds
    target = None
    if a.target_method:
        # the label-free vote (and a swap to the source-only model) runs on the main process only, as every
        # post-fit step does: keep the trained model so both ranks can be compared
        opts["target_method"], opts["target_keep"] = a.target_method, "adapted"
        xt, _ = make_images(n_per_class=a.n_per_class, size=a.size, seed=5)
        target = (xt * 0.5).astype(xt.dtype)  # the same shifted images on every process
    clf = TransferClassifier(TINY, strategy=a.strategy, pretrained=False, **opts)
    clf.fit(x, y, target=target, out=a.run_dir)
    info = runtime_info()
    info["epochs"] = [{k: v for k, v in r.items() if k not in TIMING} for r in clf.history_.epochs]
    info["phases"] = [p["name"] for p in clf.history_.phases]
    info["n_train"], info["n_val"] = clf.data_info_["n_train"], clf.data_info_["n_val"]
    info["baselines_ran"] = clf.baselines_ is not None
    info["target_adaptation"] = getattr(clf, "target_adaptation_", None)
    state = {k: v.detach().clone() for k, v in clf.model_.state_dict().items()}
    start = initial_backbone(a.seed)
    initial = {f"backbone.{k}": v.detach().clone() for k, v in start.state_dict().items()}
    write(a.outdir, info, {"state": state, "initial": initial, "initial_bn": batchnorm_buffers(start, "backbone.")})


# --------------------------------------------------------------------------- evaluate
def run_evaluate(a: argparse.Namespace) -> None:
    from torch.utils.data import DataLoader, TensorDataset

    from headstart.train.distributed import LOCAL, make_accelerator
    from headstart.train.loop import evaluate

    accel = make_accelerator("fp32")
    g = torch.Generator().manual_seed(1)
    x = torch.randn(a.n_examples, 5, generator=g)
    y = torch.randint(0, 3, (a.n_examples,), generator=g)
    torch.manual_seed(0)
    model = torch.nn.Linear(5, 3)  # the same weights on every process (and DDP broadcasts rank 0's anyway)
    module, loader = accel.prepare(model, DataLoader(TensorDataset(x, y), batch_size=4))
    local_examples = sum(len(xb) for xb, _ in loader)  # this process's share, padding included
    loss, acc, n = evaluate(module, loader, accel)
    # The same on this process's own, unsharded copy of the data, with no collective at all.
    ref_loss, ref_acc, ref_n = evaluate(model, DataLoader(TensorDataset(x, y), batch_size=4), LOCAL)
    info = runtime_info()
    info.update(n=n, loss=loss, acc=acc, local_examples=local_examples,
                ref_n=ref_n, ref_loss=ref_loss, ref_acc=ref_acc, n_examples=a.n_examples)
    write(a.outdir, info)


# --------------------------------------------------------------------------- order
def run_order(a: argparse.Namespace) -> None:
    from torch.utils.data import TensorDataset

    from headstart.train.distributed import make_accelerator
    from headstart.train.loop import shuffled_loader

    accel = make_accelerator("fp32")
    runs = {}
    for seed in a.seeds:
        # What headstart.train.loop._train_phase does: a fresh generator seeded with cfg.seed per phase,
        # shuffled_loader, then accel.prepare. Only the dataset differs (the example indices themselves,
        # so the order can be read off the batches).
        order = torch.Generator().manual_seed(seed)
        loader = shuffled_loader(TensorDataset(torch.arange(a.n_examples)), a.batch_size, order, accel.num_processes)
        loader = accel.prepare(loader)
        epochs = []
        for _ in range(2):
            local, gathered = [], []
            for (idx,) in loader:
                local.append(idx)
                gathered.append(accel.gather(idx))  # plain gather: padding duplicates, if any, would show
            epochs.append({"local": torch.cat(local).tolist(), "global": torch.cat(gathered).tolist()})
        runs[str(seed)] = epochs
    info = runtime_info()
    info["runs"] = runs
    write(a.outdir, info)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=("train", "evaluate", "order"))
    p.add_argument("outdir", type=Path)
    p.add_argument("--strategy", default="two-stage")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--head-epochs", type=int, default=2)
    p.add_argument("--head-min-steps", type=int, default=0)
    p.add_argument("--baselines", action=argparse.BooleanOptionalAction, default=False)
    p.add_argument("--baseline-seconds", type=float, default=None)
    p.add_argument("--run-dir", type=Path, default=None)
    p.add_argument("--n-per-class", type=int, default=8)
    p.add_argument("--size", type=int, default=24)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--target-method", default=None, help="train with a --target set (shifted copies) and this method")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--n-examples", type=int, default=11)
    a = p.parse_args(argv)
    {"train": run_train, "evaluate": run_evaluate, "order": run_order}[a.mode](a)
    # The process group is torn down by headstart at exit (train/distributed.py): a barrier, then
    # destroy. A process exiting with a live gloo group right after its last collective aborted in about
    # one run in four ("terminate called without an active exception"), the exit path this exercises.


if __name__ == "__main__":
    main()
