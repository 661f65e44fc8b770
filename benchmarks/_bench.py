"""Helpers shared by the benchmarks: the real Lite0 backbone, decoded Fashion-MNIST, timing, tables.

Not a benchmark itself (``make bench`` runs only ``bench_*.py``). Importable from every script in this
folder because Python puts a script's own directory first on ``sys.path``.
"""
from __future__ import annotations

import os
import statistics
import time

import numpy as np
import torch

BACKBONE = "timm:tf_efficientnet_lite0"
ARCH = "tf_efficientnet_lite0"


def load_model(num_classes: int = 10):
    """(backbone, TransferModel) for the real pretrained Lite0, loaded offline like headstart does."""
    from headstart.encoders import get_backbone
    from headstart.encoders.model import TransferModel

    bb = get_backbone(BACKBONE)
    model = TransferModel(bb.module, bb.num_features, num_classes, bb.preprocess, stages=bb.stages)
    return bb, model


def weights_file(arch: str = ARCH) -> str:
    """The local safetensors file (timm names) that headstart loads ``arch``'s ImageNet weights from."""
    import timm

    from headstart.encoders.packaged import PACKAGED, packaged_state_dict
    from headstart.storage import cache_dir

    packaged_state_dict(arch, timm.create_model(arch))  # make sure the converted file exists
    return str(cache_dir("weights") / f"{arch}-{PACKAGED[arch].sha256[:12]}.safetensors")


def fashion(split: str, n: int | None = None, per_class: int | None = None, seed: int = 0):
    """(uint8 images (N, 28, 28), int64 labels) of Fashion-MNIST: the first ``n`` or ``per_class`` each."""
    from headstart.data.datasets import fashion_mnist, per_class_subset

    x, y = fashion_mnist(split)
    if per_class:
        idx = per_class_subset(y, per_class, seed=seed)
        x, y = x[idx], y[idx]
    if n is not None:
        x, y = x[:n], y[:n]
    return x, y


def decoded(images: np.ndarray, preprocess) -> torch.Tensor:
    """Fashion-MNIST images decoded the way headstart does it → uint8 (N, 3, S, S)."""
    from headstart.data import as_examples, decode_all

    return decode_all(as_examples(images), preprocess).pixels


def add_threads_option(ap) -> None:
    ap.add_argument("--threads", type=int, default=0,
                    help="torch threads (default: all cores; --quick uses 1 so a smoke test stays short on a "
                         "shared CPU, where OpenMP threads waiting for a descheduled sibling slow every op)")


def apply_threads(args) -> None:
    args.threads = args.threads or (1 if args.quick else 0)
    if args.threads:
        torch.set_num_threads(args.threads)


def clock(fn, *args, **kw) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn(*args, **kw)
    return time.perf_counter() - t0, out


def median(xs) -> float:
    return statistics.median(xs)


def fast_precision() -> str:
    from headstart.device import resolve_precision

    return resolve_precision("auto")  # "bf16" where the CPU has native bf16, else "fp32"


def table(headers: list[str], rows: list[list]) -> None:
    cells = [[str(c) for c in r] for r in [headers] + rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    for j, r in enumerate(cells):
        print("  ".join(c.rjust(w) if _numeric(c) else c.ljust(w) for c, w in zip(r, widths)).rstrip())
        if j == 0:
            print("  ".join("-" * w for w in widths))


def _numeric(cell: str) -> bool:
    return bool(cell) and cell.rstrip("%x").replace(".", "", 1).replace("-", "", 1).isdigit()


def machine() -> str:
    """One line about the machine, warning when other processes load the CPU (timings then mean little)."""
    info = cpuinfo()
    load = os.getloadavg()[0]
    busy = (f"\nWARNING: load average {load:.1f} on {info['cores']} cores before this run: another process is "
            "busy, so these timings are not representative (small ops suffer most, as OpenMP threads wait "
            "for each other)") if load > 0.5 else ""
    return (f"{info['model']} ({info['vendor']}), {info['cores']} cores usable, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads, cpu capability {torch.backends.cpu.get_cpu_capability()}, "
            f"load average {load:.2f}{busy}")


def cpuinfo() -> dict:
    text = open("/proc/cpuinfo").read() if os.path.exists("/proc/cpuinfo") else ""

    def first(key, default=""):
        for line in text.splitlines():
            if line.split(":")[0].strip() == key:
                return line.split(":", 1)[1].strip()
        return default

    return {"model": first("model name", "unknown CPU"), "vendor": first("vendor_id", "?"),
            "mhz": float(first("cpu MHz", "0") or 0), "flags": first("flags").split(),
            "cores": len(os.sched_getaffinity(0))}
