"""Texts: tables (CSV, TSV, JSON(L), Parquet, DataFrames, datasets) in; packed token ids + mask to the model.

Texts are tokenised once per run into one ``(N, 2, L)`` tensor (ids, attention mask) and sorted by
length, so the training loop, feature cache and checkpoints of the image side apply unchanged and
batches carry almost no padding (each is cut to its longest text by the encoder).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from headstart.config import TrainConfig
from headstart.data.preprocess import TextPreprocess
from headstart.data.texts import TextExamples, load_texts
from headstart.device import inference_context
from headstart.encoders.base import Backbone, Stage
from headstart.encoders.hf_source import empty_hf
from headstart.encoders.model import TransferModel
from headstart.encoders.text import sort_by_length, tokenize, transformer_stages
from headstart.encoders.vectors_source import empty_vectors
from headstart.errors import HeadstartError
from headstart.modalities.base import Columns, Encoded, Prediction
from headstart.modalities.tfidf import text_baselines

log = logging.getLogger("headstart")
TEXT_FILES = "text"  # run subdirectory: tokenizer + encoder config, or the word list


class TextBaselines:
    """TF-IDF + logistic regression on the same texts, after the fit (nothing to keep before it)."""

    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg

    def run(self, clf, data, train_examples: TextExamples, val_examples: TextExamples | None) -> dict[str, Any]:
        if val_examples is None or not len(val_examples):
            msg = ("no validation split (val_fraction=0 and no validation data): the TF-IDF baseline "
                   "was skipped")
            log.info("baselines: %s", msg)
            return {"skipped": msg}
        report = text_baselines(clf, train_examples, val_examples)
        for w in report["warnings"]:
            log.warning("%s", w)
        return report


class TextModality:
    name = "text"
    noun = "texts"
    preprocess_type = TextPreprocess

    def read(self, source, y: Sequence | None = None, *, columns: Columns = Columns(),
             purpose: str = "predict") -> TextExamples:
        ex = load_texts(source, y, text_column=columns.text_column, label_column=columns.label_column,
                        require_labels=purpose != "predict", encoding=columns.encoding)
        if purpose == "train" and ex.skipped:  # one summary line; every row is listed in headstart.json
            log.warning("%s", ex.skipped_summary())
        return ex

    def encode(self, examples: TextExamples, backbone: Backbone, *, strict: bool = False) -> Encoded:
        """Token tensor ordered by length, so batches carry little padding (rows read earlier were skipped)."""
        tokens = tokenize(backbone.tokenizer, examples.texts)
        order = sort_by_length(tokens)
        return Encoded(tokens[order], order.tolist(), [])

    def check_config(self, cfg: TrainConfig) -> TrainConfig:
        if cfg.strategy == "auto":
            raise HeadstartError("strategy 'auto' profiles image backbones; for text pick linear-probe, partial, "
                                 "full or two-stage (linear-probe is the quick, safe start).")
        if cfg.cut_stage is not None:
            raise HeadstartError("cut_stage drops the top stages of image backbones; text backbones keep every "
                                 "layer (freeze the lower ones with --freeze-stages instead).")
        # Image augmentation (flips, crops) has no meaning for token ids.
        return cfg.replace(augment=False) if cfg.augment else cfg

    def augmentation(self, cfg: TrainConfig) -> Callable | None:
        return None  # check_config turned augment off: flips and crops mean nothing for token ids

    def baselines(self, model: TransferModel, backbone: Backbone, cfg: TrainConfig) -> TextBaselines:
        return TextBaselines(cfg)

    def data_info(self, backbone: Backbone, train_examples: TextExamples) -> dict[str, Any]:
        coverage = getattr(backbone.tokenizer, "coverage", None)  # word vectors: share of known words
        return {"vocabulary_coverage": round(coverage(train_examples.texts), 4)} if coverage else {}

    def predict(self, model: TransferModel, tokenizer, preprocess: TextPreprocess, examples: TextExamples, *,
                precision: str, batch_size: int = 64) -> Prediction:
        texts = examples.texts
        n_classes = model.head[-1].out_features
        if not len(texts):
            return Prediction(np.zeros((0, n_classes), dtype=np.float32), [], list(examples.skipped))
        device = next(model.parameters()).device
        tokens = tokenize(tokenizer, list(texts))
        order = sort_by_length(tokens)
        probs = torch.empty(len(texts), n_classes)
        with inference_context(precision, device):
            for i in range(0, len(order), batch_size):
                idx = order[i:i + batch_size]
                probs[idx] = torch.softmax(model(tokens[idx].to(device)).float(), 1).cpu()
        return Prediction(probs.numpy(), list(range(len(texts))), list(examples.skipped))

    def save_files(self, directory: Path, model: TransferModel, tokenizer) -> None:
        """A run reloads offline: it carries its own tokenizer (or word list) and encoder config."""
        files = Path(directory) / TEXT_FILES
        files.mkdir(parents=True, exist_ok=True)
        tokenizer.save(files)
        encoder = getattr(model.backbone, "model", None)
        if encoder is not None:
            encoder.config.save_pretrained(files)

    def rebuild(self, directory: Path, meta: dict, state: dict) -> tuple[torch.nn.Module, list[Stage], Any]:
        preprocess = TextPreprocess.from_dict(meta["preprocess"])
        files = Path(directory) / TEXT_FILES
        if not files.is_dir():
            raise HeadstartError(f"{str(directory)!r} is a text run without its {TEXT_FILES}/ folder "
                                 "(tokenizer / word list); copy the whole run directory.")
        if preprocess.kind == "hf":
            module, tokenizer = empty_hf(files, preprocess)
            return module, transformer_stages(module), tokenizer
        module, tokenizer = empty_vectors(files, preprocess, state)
        return module, [Stage("embeddings", ("embeddings.weight",))], tokenizer


TEXT = TextModality()
