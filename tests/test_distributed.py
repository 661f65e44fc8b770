"""Distributed training on CPU, with real processes (gloo): the policy of ``headstart/train/distributed.py``.

The policy: ``batch_size`` is per process (global batch = batch_size x N) and gradients are averaged, so
N processes at batch b train like one process at batch N*b; the sample order comes from a generator
seeded with the run's seed, the same on every process, each process taking its own share of the
batches; evaluation gathers every process's predictions and counts each example exactly once; only the
main process writes (metrics log, checkpoint, saved run) and runs the baselines.

BatchNorm: with the default ``train_bn=False`` every BatchNorm, frozen or fine-tuned, runs in eval mode
on its initial (pretrained, here random-init) running statistics, which therefore never change: the
processes never need to agree on batch statistics, and SyncBatchNorm (GPU-only in PyTorch) is not needed.

What these tests prove, each by launching processes and reading what every one of them ended with
(``tests/dist_worker.py``): after a two-process fit both processes hold bit-identical weights and
histories, and the run directory holds one copy of everything, written once; two processes at batch b
end where one process at batch 2b does; evaluation counts every example once for 1, 2 and 3 processes;
the sample order is reproducible, new each epoch and shared out between the processes; ``accelerate
launch -m headstart.cli train`` works end to end; frozen BatchNorm statistics stay untouched under DDP.

How processes are launched on a CPU-only machine (checked with accelerate 1.15 / torch 2.14):

* ``accelerate launch --cpu --num_processes N`` starts ONE process unless accelerate is configured to
  call ``mpirun`` (huggingface/accelerate#2741): it cannot be used here, nor by users without MPI.
* ``torchrun`` (and ``accelerate launch --multi_gpu``, which runs torchrun) start N processes, and they
  form one gloo group only because ``make_accelerator`` passes ``cpu=True`` where there is no GPU
  (without it each process trained alone with world size 1 and all of them wrote the run). The
  launches below do not set ``ACCELERATE_USE_CPU``, and every worker checks the world size accelerate
  reports, so a launch that silently ran separate single-process fits fails instead of passing vacuously.

The single-process references run the worker plainly (``python tests/dist_worker.py``), no launcher.
"""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import TINY, make_images, write_folder

WORKER = Path(__file__).resolve().with_name("dist_worker.py")
TIMEOUT = 240  # seconds per launch; each takes 5-20 s on 2 cores
TIMING = ("seconds", "images_per_s")


# --------------------------------------------------------------------------- launching
def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_env(cache: Path) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HEADSTART_CACHE": os.environ.get("HEADSTART_CACHE", str(cache))}
    env.pop("ACCELERATE_USE_CPU", None)  # headstart must form the CPU group by itself (module docstring)
    return env


def run(cmd: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=TIMEOUT, check=False)
    assert proc.returncode == 0, (f"exit code {proc.returncode} of {' '.join(cmd)}\n--- stderr (tail):\n"
                                  f"{proc.stderr[-6000:]}\n--- stdout (tail):\n{proc.stdout[-2000:]}")
    return proc


def torchrun(nproc: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
            "--master_addr", "127.0.0.1", "--master_port", str(free_port())]


def launch(nproc: int, mode: str, outdir: Path, *args: str, check_world: bool = True) -> list[dict]:
    """Run the worker in ``nproc`` processes (plainly when 1); every process's JSON record, by rank."""
    prefix = [sys.executable] if nproc == 1 else torchrun(nproc)
    run([*prefix, str(WORKER), mode, str(outdir), *args], process_env(outdir.parent / "cache"))
    infos = [json.loads((outdir / f"rank{r}.json").read_text()) for r in range(nproc)]
    if check_world:
        for r, info in enumerate(infos):
            assert (info["world"], info["rank"]) == (nproc, r), \
                f"process {r} of {nproc} did not join the group: accelerate saw {info}"
    return infos


def tensors(outdir: Path, rank: int) -> dict:
    return torch.load(outdir / f"rank{rank}.pt", weights_only=True)


def max_abs_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(((a[k].double() - b[k].double()).abs().max().item() if a[k].numel() else 0.0) for k in a)


def train_args(strategy: str, batch_size: int, *, epochs: int = 2, head_epochs: int = 2, n_per_class: int = 8,
               size: int = 24, extra: tuple[str, ...] = ()) -> list[str]:
    return ["--strategy", strategy, "--batch-size", str(batch_size), "--epochs", str(epochs),
            "--head-epochs", str(head_epochs), "--head-min-steps", "0", "--n-per-class", str(n_per_class),
            "--size", str(size), *extra]


# --------------------------------------------------------------------------- a. one writer, identical ranks
def test_two_process_fit_ends_identical_on_both_ranks_and_writes_the_run_once(tmp_path):
    out, run_dir = tmp_path / "out", tmp_path / "run"
    infos = launch(2, "train", out, *train_args("two-stage", 4, epochs=1, head_epochs=2, extra=(
        "--baselines", "--baseline-seconds", "1", "--run-dir", str(run_dir))))
    r0, r1 = tensors(out, 0)["state"], tensors(out, 1)["state"]
    assert max_abs_diff(r0, r1) == 0.0  # DDP: same start, same averaged gradients, same steps
    assert infos[0]["phases"] == infos[1]["phases"] == ["head", "finetune"]
    assert infos[0]["epochs"] == infos[1]["epochs"] and len(infos[0]["epochs"]) == 3
    # The baselines run on the main process only (on LOCAL: rank 1 has long left when they run).
    assert infos[0]["baselines_ran"] and not infos[1]["baselines_ran"]

    assert sorted(p.name for p in run_dir.iterdir()) == ["headstart.json", "metrics.jsonl", "model.safetensors", "predictions"]
    meta = json.loads((run_dir / "headstart.json").read_text())
    assert meta["baselines"] is not None
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    logged = [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in lines]
    assert logged == infos[0]["epochs"]  # one line per epoch, none from rank 1


def test_two_process_fit_with_a_target_trains_under_ddp_and_ends_identical(tmp_path):
    """DANN's wrapper (model + discriminator, both domains in one forward) is what DDP wraps: every parameter
    gets a gradient each step (no unused-parameter error, no hang) and both ranks end with the same model."""
    infos = launch(2, "train", tmp_path / "out", *train_args("two-stage", 4, epochs=1, extra=("--target-method", "dann")))
    r0, r1 = tensors(tmp_path / "out", 0)["state"], tensors(tmp_path / "out", 1)["state"]
    assert max_abs_diff(r0, r1) == 0.0
    assert infos[0]["target_adaptation"]["method"] == "dann" and infos[1]["target_adaptation"]["method"] == "dann"


# --------------------------------------------------------------------------- b. N x b == 1 x N*b
@pytest.mark.parametrize("strategy", ["full", "two-stage"])
def test_two_processes_at_batch_b_train_like_one_process_at_batch_2b(tmp_path, strategy):
    """Same global batch (2 x 4 = 1 x 8), augmentation off, 128 training images: a multiple of the global
    batch of every phase (8 while fine-tuning; 128 = 2 x 64 for the head on cached features, whose
    per-process batch is raised to 128 / N). The weights and losses agree to float rounding only: DDP's
    all-reduce averages two half-batch gradients where one process sums one batch, a different float
    summation order (measured: ~1e-7 on the weights). With a training set smaller than the global batch
    they do not agree at all: see test_head_phase_on_fewer_images_than_the_global_batch_still_trains.
    """
    common = {"epochs": 2, "head_epochs": 2, "n_per_class": 85, "size": 16}  # 128 train / 42 val images
    two = launch(2, "train", tmp_path / "two", *train_args(strategy, 4, **common))
    one = launch(1, "train", tmp_path / "one", *train_args(strategy, 8, **common))
    assert one[0]["n_train"] == two[0]["n_train"] == 128
    assert max_abs_diff(tensors(tmp_path / "two", 0)["state"], tensors(tmp_path / "one", 0)["state"]) <= 1e-5
    assert max_abs_diff(tensors(tmp_path / "two", 0)["state"], tensors(tmp_path / "two", 1)["state"]) == 0.0
    e1, e2 = one[0]["epochs"], two[0]["epochs"]
    assert [(e["phase"], e["epoch"]) for e in e1] == [(e["phase"], e["epoch"]) for e in e2]
    assert len(e1) == (2 if strategy == "full" else 4)
    for a, b in zip(e1, e2):
        assert abs(a["train_loss"] - b["train_loss"]) <= 1e-5, (a, b)
        assert abs(a["val_loss"] - b["val_loss"]) <= 1e-5, (a, b)
        assert a["lr"] == pytest.approx(b["lr"], rel=1e-9, abs=1e-12)  # one scheduler step per global step


# --------------------------------------------------------------------------- c. evaluation counts each example once
@pytest.mark.parametrize("world", [1, 2, 3])
def test_evaluation_counts_every_example_once(tmp_path, world):
    n = 11  # divisible neither by the batch size (4) nor by 2 or 3 processes: the last batches are padded
    infos = launch(world, "evaluate", tmp_path / "out", "--n-examples", str(n))
    for info in infos:
        assert info["n"] == info["ref_n"] == n
        assert abs(info["loss"] - info["ref_loss"]) <= 1e-6 and abs(info["acc"] - info["ref_acc"]) <= 1e-6
    if world > 1:  # the padding was really there, and dropped
        assert sum(info["local_examples"] for info in infos) > n


# --------------------------------------------------------------------------- d. sample order
def single_process_order(n: int, batch_size: int, seed: int, epochs: int = 2) -> list[list[int]]:
    from torch.utils.data import DataLoader, TensorDataset

    loader = DataLoader(TensorDataset(torch.arange(n)), batch_size=batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(seed), drop_last=n > batch_size)
    return [torch.cat([idx for (idx,) in loader]).tolist() for _ in range(epochs)]


def test_sample_order_is_seeded_new_each_epoch_and_shared_out(tmp_path):
    n, b = 24, 4  # 3 steps of 2 x 4 per epoch, nothing dropped, nothing padded
    first = launch(2, "order", tmp_path / "first", "--seeds", "0", "1", "--n-examples", str(n), "--batch-size", str(b))
    again = launch(2, "order", tmp_path / "again", "--seeds", "0", "--n-examples", str(n), "--batch-size", str(b))
    for infos in (first, again):
        for seed, epochs in infos[0]["runs"].items():
            for e0, e1 in zip(epochs, infos[1]["runs"][seed]):
                assert e0["global"] == e1["global"]  # every process sees the same global order
                assert sorted(e0["global"]) == list(range(n))  # each example once per epoch
                assert sorted(e0["local"] + e1["local"]) == list(range(n))  # disjoint shares
                assert len(e0["local"]) == len(e1["local"]) == n // 2
    run0 = [e["global"] for e in first[0]["runs"]["0"]]
    assert run0[0] != run0[1]  # a new order each epoch
    assert [e["global"] for e in again[0]["runs"]["0"]] == run0  # same seed, same order, in a new launch
    assert [e["global"] for e in first[0]["runs"]["1"]] != run0  # another seed, another order
    # Batch k of one process at batch 2b is batches 2k and 2k+1 of the permutation, shared out.
    assert run0 == single_process_order(n, b, seed=0) == single_process_order(n, 2 * b, seed=0)


# --------------------------------------------------------------------------- e. the CLI
def test_accelerate_launch_of_the_cli_trains_saves_once_and_loads(tmp_path):
    import headstart
    from headstart.io.run import Run

    x, y = make_images(n_per_class=8)
    data = write_folder(tmp_path / "data", x, y)
    run_dir, logs = tmp_path / "run", tmp_path / "logs"
    # --multi_gpu selects accelerate's torchrun launcher (--cpu would start a single process, see above);
    # on this GPU-less machine make_accelerator makes the processes a gloo group.
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
           "--main_process_ip", "127.0.0.1", "--main_process_port", str(free_port()), "--log_dir", str(logs), "--tee", "3",
           "-m", "headstart.cli", "train", str(data), "--backbone", TINY, "--random-init", "--strategy", "two-stage",
           "--epochs", "1", "--head-epochs", "2", "--head-min-steps", "0", "--batch-size", "4", "--precision", "fp32",
           "--no-baselines", "--out", str(run_dir), "--quiet"]
    run(cmd, process_env(tmp_path / "cache"))
    # torchrun's per-rank logs: two processes really ran (and, one metrics line per epoch, joined one group).
    ranks = {p.parent.name for p in logs.rglob("stdout.log")}
    assert ranks == {"0", "1"}, sorted(logs.rglob("*"))

    meta = json.loads((run_dir / "headstart.json").read_text())
    epochs_run = sum(p["epochs_run"] for p in meta["history"]["phases"])
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == epochs_run == 3
    assert len({(r["phase_index"], r["epoch"]) for r in records}) == len(records)
    assert not (run_dir / "checkpoint.pt").exists()
    assert len(Run.open(run_dir).epochs()) == epochs_run

    clf = headstart.load(run_dir)
    files = sorted(str(p) for p in data.rglob("*.png"))[:4]
    pred = clf.predict(files)
    assert len(pred) == 4 and set(pred) <= {"bright", "dark"}
    assert clf.predict_proba(files).shape == (4, 2)


# --------------------------------------------------------------------------- f. BatchNorm
def test_frozen_batchnorm_statistics_need_no_sync_under_ddp(tmp_path):
    """``full`` fine-tune in two processes with the default ``train_bn=False``: every BatchNorm's
    running_mean / running_var / num_batches_tracked end exactly where the freshly built model had
    them, on both processes, while the BatchNorm scales and shifts (and the rest) did train.

    Compared with the initial statistics, not rank against rank: DDP (broadcast_buffers=True, its
    default) copies rank 0's buffers to the others before every forward, which would make the ranks
    agree even if the statistics were drifting."""
    out = tmp_path / "out"
    launch(2, "train", out, *train_args("full", 4, epochs=2, n_per_class=8))
    for rank in (0, 1):
        saved = tensors(out, rank)
        state, bn, initial = saved["state"], saved["initial_bn"], saved["initial"]
        assert len([k for k in bn if k.endswith("running_mean")]) >= 5  # the model has BatchNorms
        for key, value in bn.items():
            assert torch.equal(state[key], value), f"rank {rank}: {key} moved"
        affine = [k[: -len("running_mean")] + "weight" for k in bn if k.endswith("running_mean")]
        assert any(not torch.equal(state[k], initial[k]) for k in affine), "the BatchNorm scales did not train"
        assert max_abs_diff({k: state[k] for k in initial}, initial) > 0  # the backbone as a whole moved


# --------------------------------------------------------------------------- launching on CPU
def test_torchrun_on_a_cpu_machine_joins_one_gloo_group(tmp_path):
    """Regression: make_accelerator() built Accelerator() without cpu=True, and on a machine without a GPU
    accelerate then ignores torchrun's LOCAL_RANK/WORLD_SIZE: every process trained alone (world size
    1, each the "main" process) and they all wrote the same run directory."""
    infos = launch(2, "order", tmp_path / "out", "--n-examples", "8", check_world=False)
    assert [(i["world"], i["rank"], i["distributed_type"]) for i in infos] == \
        [(2, 0, "DistributedType.MULTI_CPU"), (2, 1, "DistributedType.MULTI_CPU")], infos


# --------------------------------------------------------------------------- regressions
def test_head_phase_on_fewer_images_than_the_global_batch_still_trains(tmp_path):
    """The head on cached features trains at a global batch of >= 128, so a small dataset is one global
    batch per epoch. With 2 processes the per-process batch was 64 and ``drop_last = n > 64``: for
    64 < n <= 128 the remainder was dropped and accelerate then dropped the incomplete round, so no
    process got a batch (zero optimizer steps, measured at n = 100); for n <= 64 accelerate padded each
    process's batch with duplicates. _train_phase now shrinks the per-process batch to ceil(n / N) and
    drops an incomplete round only when there is more than one; this run matches one process."""
    args = {"epochs": 0, "head_epochs": 2, "n_per_class": 67, "size": 16}  # 100 training images < 128 (head batch)
    two = launch(2, "train", tmp_path / "two", *train_args("two-stage", 4, **args))
    assert two[0]["n_train"] == 100
    assert all(e["train_loss"] > 0 for e in two[0]["epochs"]), two[0]["epochs"]  # steps were made
    launch(1, "train", tmp_path / "one", *train_args("two-stage", 8, **args))
    assert max_abs_diff(tensors(tmp_path / "two", 0)["state"], tensors(tmp_path / "one", 0)["state"]) <= 1e-5
