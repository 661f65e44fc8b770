"""The modality protocol: everything that differs between images and texts, asked of one object.

The estimator, the CLI and the saved run never test a backbone string or a model attribute to find
out what kind of data they hold; they ask the run's :class:`Modality`. A modality owns

* reading examples from the sources it supports (folders and CSVs of images; text tables),
* encoding them into the tensors a model takes (decoded uint8 pixels; packed token ids + mask),
* its training-time augmentation and the options that make no sense for it,
* its no-pretraining baseline (a small from-scratch net; TF-IDF + logistic regression),
* prediction batching, and the extra files a saved run needs (tokenizer, vocabulary).

A new modality (audio, tabular) is one file here plus one line in ``MODALITIES``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import numpy as np
import torch

from headstart.config import TrainConfig
from headstart.encoders.base import Backbone, Stage
from headstart.encoders.model import TransferModel


@dataclass(frozen=True)
class Columns:
    """Where a table keeps its inputs and labels (``None``: the modality's default)."""

    path_column: str = "path"  # image tables: the column of image paths
    text_column: str | None = None  # text tables: the column of texts
    label_column: str | None = None
    encoding: str | None = None  # text files: None = UTF-8, Windows-1252 for lines that are not


@dataclass
class Encoded:
    """Examples as model inputs: ``x`` row i is example ``index[i]``; ``skipped`` could not be encoded."""

    x: torch.Tensor
    index: list[int]
    skipped: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class Prediction:
    """Class probabilities in input order for the examples that could be read, and those that could not."""

    probs: np.ndarray  # (len(index), n_classes)
    index: list[int]
    skipped: list[tuple[str, str]] = field(default_factory=list)


class BaselineRun(Protocol):
    """Set up before the fit (it may keep the pretrained weights); run after it on the same split."""

    def run(self, clf, data, train_examples, val_examples) -> dict[str, Any]: ...


class Modality(Protocol):
    name: str  # "image" or "text": recorded in headstart.json
    noun: str  # "images" / "texts", for messages

    def read(self, source, y: Sequence | None = None, *, columns: Columns, purpose: str):
        """Examples from ``source``. ``purpose`` "train" and "evaluate" require labels; "predict" ignores them."""

    def encode(self, examples, backbone: Backbone, *, strict: bool = False) -> Encoded: ...

    def configure(self, backbone: Backbone, train_examples, cfg: TrainConfig) -> Backbone:
        """Input settings that depend on the training data (long texts in windows), recorded with the run."""

    def check_config(self, cfg: TrainConfig) -> TrainConfig: ...

    def augmentation(self, cfg: TrainConfig) -> Callable | None:
        """``f(batch, generator) -> batch`` applied while the backbone trains on raw inputs, or None."""

    def baselines(self, model: TransferModel, backbone: Backbone, cfg: TrainConfig) -> BaselineRun: ...

    def data_info(self, backbone: Backbone, train_examples) -> dict[str, Any]: ...

    def predict(self, model: TransferModel, tokenizer, preprocess, examples, *, precision: str,
                batch_size: int = 64) -> Prediction: ...

    def save_files(self, directory: Path, model: TransferModel, tokenizer) -> None: ...

    def rebuild(self, directory: Path, meta: dict, state: dict) -> tuple[Any, list[Stage], Any]: ...
