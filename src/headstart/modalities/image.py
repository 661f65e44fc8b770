"""Images: class folders, CSVs of paths and arrays in; decoded, resized uint8 pixels to the model."""
from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from headstart.config import TrainConfig
from headstart.data import (
    Examples,
    as_examples,
    augment,
    check_duplicates,
    decode_all,
    iter_decoded,
)
from headstart.data.preprocess import PreprocessConfig
from headstart.encoders.base import Backbone, Stage, timm_stages
from headstart.encoders.cut import truncate_module
from headstart.encoders.model import TransferModel
from headstart.encoders.scratch_source import empty_scratch, scratch_stages
from headstart.encoders.timm_source import empty_timm
from headstart.errors import DataError, HeadstartError
from headstart.features.fastpath import feature_extractor
from headstart.modalities.base import Columns, Encoded, Prediction
from headstart.modalities.scratch import Baselines

log = logging.getLogger("headstart")
_NEEDS_LABELS = {
    "train": "Training needs labels: pass y, a class-per-folder directory, or a CSV with labels.",
    "evaluate": "Evaluation needs labels: a class-per-folder directory, a CSV with labels, or y.",
}


class ImageModality:
    name = "image"
    noun = "images"
    preprocess_type = PreprocessConfig

    def read(self, source, y: Sequence | None = None, *, columns: Columns = Columns(),
             purpose: str = "predict") -> Examples:
        """``purpose``: "train" (labels required, duplicate files merged), "evaluate" or "predict"."""
        ex = as_examples(source, y, path_column=columns.path_column, label_column=columns.label_column or "label")
        if purpose in _NEEDS_LABELS and ex.labels is None:
            raise DataError(_NEEDS_LABELS[purpose])
        return check_duplicates(ex) if purpose == "train" else ex

    def encode(self, examples: Examples, backbone: Backbone, *, strict: bool = False) -> Encoded:
        decoded = decode_all(examples, backbone.preprocess, strict=strict)
        for name, why in decoded.skipped:
            log.warning("skipped unreadable image %s: %s", name, why)
        return Encoded(decoded.pixels, decoded.index, list(decoded.skipped))

    def configure(self, backbone: Backbone, train_examples: Examples, cfg: TrainConfig) -> Backbone:
        # Images are resized to the backbone's input size: nothing depends on the data. A smaller training
        # size must suit the network (a ViT's position embeddings fix its size): one tiny forward says.
        if cfg.train_size is not None and cfg.train_size != backbone.preprocess.input_size:
            try:
                with torch.no_grad():
                    backbone.module.eval()(torch.zeros(1, 3, cfg.train_size, cfg.train_size))
            except Exception as e:  # the network's own error names what it needs
                raise HeadstartError(f"train_size={cfg.train_size}: the backbone does not take "
                                     f"{cfg.train_size}x{cfg.train_size} inputs ({type(e).__name__}: {e}). Drop "
                                     "--train-size, or use a CNN backbone (global pooling takes any size).") from e
        return backbone

    def check_config(self, cfg: TrainConfig) -> TrainConfig:
        return cfg

    def augmentation(self, cfg: TrainConfig) -> Callable | None:
        """``f(batch, generator)``: random flip + resized crop of uint8 batches while the backbone trains,
        output at ``train_size`` when it is set (then, without ``augment``, a plain resize)."""
        if cfg.train_size is None:
            return augment if cfg.augment else None
        if cfg.augment:
            return functools.partial(augment, size=cfg.train_size)
        return functools.partial(augment, size=cfg.train_size, flip=False, scale=(1.0, 1.0))

    def baselines(self, model: TransferModel, backbone: Backbone, cfg: TrainConfig) -> Baselines:
        return Baselines(model, backbone, cfg)

    def data_info(self, backbone: Backbone, train_examples: Examples) -> dict[str, Any]:
        return {}

    def predict(self, model: TransferModel, tokenizer, preprocess: PreprocessConfig, examples: Examples, *,
                precision: str, batch_size: int = 64) -> Prediction:
        device = next(model.parameters()).device
        # The backbone runs on the inference fast path (BatchNorm folded, bf16 weights, channels_last;
        # compiled for large inputs), the same features as training's cache; the head in fp32 after it.
        extract = feature_extractor(model, precision=precision, device=device, n_images=len(examples))
        outs, kept, skipped = [], [], []
        with torch.inference_mode():
            for part in iter_decoded(examples, preprocess, batch_size=batch_size):
                skipped += part.skipped
                kept += part.index
                if len(part.pixels):
                    logits = model.head(extract(part.pixels).to(device))
                    outs.append(torch.softmax(logits.float(), 1).cpu())
        n_classes = model.head[-1].out_features
        probs = torch.cat(outs).numpy() if outs else np.zeros((0, n_classes), dtype=np.float32)
        return Prediction(probs, kept, skipped)

    def save_files(self, directory: Path, model: TransferModel, tokenizer) -> None:
        """An image run needs nothing beside its weights and headstart.json."""

    def rebuild(self, directory: Path, meta: dict, state: dict) -> tuple[torch.nn.Module, list[Stage], None]:
        architecture = meta["backbone"]["architecture"]
        if architecture.startswith("scratch:"):  # a small from-scratch net (a distilled student)
            module = empty_scratch(architecture)
            stages: list[Stage] = scratch_stages(module)
        else:
            module = empty_timm(architecture)
            stages = timm_stages(module)
        if meta["config"].get("cut_stage") is not None:  # a truncated run: rebuild the same cut
            module, stages, _ = truncate_module(module, stages, meta["config"]["cut_stage"])
        return module, stages, None


IMAGE = ImageModality()
