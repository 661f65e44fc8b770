"""Shared fixtures: an isolated cache, tiny random timm models and synthetic images on disk."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

TINY = "timm:test_efficientnet"  # ~100k parameters, random weights: unit tests run in seconds


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("HEADSTART_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def make_images(n_per_class: int = 12, classes=("dark", "bright"), size: int = 24, seed: int = 0):
    """Easily separable synthetic RGB images: class k has mean brightness rising with k."""
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for k, c in enumerate(classes):
        lo = int(255 * k / len(classes))
        hi = int(255 * (k + 1) / len(classes))
        xs.append(rng.integers(lo, hi, (n_per_class, size, size, 3)).astype(np.uint8))
        ys += [c] * n_per_class
    return np.concatenate(xs), ys


def write_folder(root: Path, x, y, fmt: str = "png") -> Path:
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    for i, (img, label) in enumerate(zip(x, y)):
        d = root / str(label)
        d.mkdir(exist_ok=True)
        Image.fromarray(img).save(d / f"img{i:03d}.{fmt}")
    return root


@pytest.fixture
def tiny_data():
    return make_images()


@pytest.fixture
def image_folder(tmp_path):
    x, y = make_images(n_per_class=8)
    return write_folder(tmp_path / "train", x, y)


def pytest_collection_modifyitems(config, items):
    if os.environ.get("HEADSTART_SKIP_INTEGRATION"):
        skip = pytest.mark.skip(reason="HEADSTART_SKIP_INTEGRATION is set")
        for item in items:
            if "integration" in item.keywords:
                item.add_marker(skip)
