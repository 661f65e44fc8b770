"""Texts: tables (CSV, TSV, JSON(L), Parquet, DataFrames, datasets) in; packed token ids + mask to the model.

Texts are tokenised once per run into one ``(N, 2, L)`` tensor (ids, attention mask) and sorted by
length, so the training loop, feature cache and checkpoints of the image side apply unchanged and
batches carry almost no padding (each is cut to its longest text by the encoder).
"""
from __future__ import annotations

import dataclasses
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
from headstart.encoders.text import (
    HFEncoder,
    sort_by_length,
    tokenize,
    transformer_stages,
)
from headstart.encoders.tfidf import (
    MAX_TERMS,
    HybridEncoder,
    HybridTokenizer,
    TfidfEncoder,
    TfidfTokenizer,
)
from headstart.encoders.vectors_source import empty_vectors
from headstart.errors import HeadstartError
from headstart.modalities.base import Columns, Encoded, Prediction
from headstart.modalities.tfidf import text_baselines

log = logging.getLogger("headstart")
TEXT_FILES = "text"  # run subdirectory: tokenizer + encoder config, or the word list
WINDOWS = 8  # most windows per long text (hf: encoders, long_texts="window")


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
        # the fitted model, kept for --strategy auto (headstart.candidates)
        self.tfidf = (report.pop("model"), report["tfidf_logreg"]["seconds"], train_examples)
        for w in report["warnings"]:
            log.warning("%s", w)
        return report


class TextModality:
    name = "text"
    noun = "texts"
    preprocess_type = TextPreprocess

    def configure(self, backbone: Backbone, train_examples: TextExamples, cfg: TrainConfig) -> Backbone:
        """Long texts: when a training text is longer than an ``hf:`` encoder's max length (and
        ``long_texts="window"``), every text is encoded in overlapping windows pooled together, recorded in
        the preprocessing so prediction does the same."""
        pre = backbone.preprocess
        if pre.kind != "hf" or cfg.long_texts != "window" or not isinstance(backbone.module, HFEncoder):
            return backbone
        lengths = backbone.tokenizer.n_tokens(train_examples.texts)
        longer = sum(n > pre.max_length for n in lengths)
        if not longer:
            return backbone
        stride = pre.max_length // 4
        backbone.preprocess = dataclasses.replace(pre, windows=WINDOWS, stride=stride)
        backbone.tokenizer.windows, backbone.tokenizer.stride = WINDOWS, stride
        backbone.module.window = pre.max_length
        covered = pre.max_length + (WINDOWS - 1) * (pre.max_length - stride - 2)
        note = (f"long texts: {longer} of {len(lengths)} training texts are longer than {pre.max_length} tokens "
                f"(the longest {max(lengths)}): every text is encoded in up to {WINDOWS} windows of "
                f"{pre.max_length} tokens overlapping by {stride} (about {covered} tokens) and pooled over all "
                f"of them; long_texts='truncate' (CLI: --long-texts truncate) keeps the first {pre.max_length}")
        log.info("%s", note)
        backbone.notes = [*backbone.notes, note]
        return backbone

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
        if cfg.strategy == "auto" and not cfg.baselines:
            raise HeadstartError("strategy 'auto' for texts chooses between the transfer model and TF-IDF, which "
                                 "needs the baselines: drop --no-baselines, or pick linear-probe, partial, full or "
                                 "two-stage yourself.")
        if cfg.harden:
            raise HeadstartError("--harden defends against perturbations in the [0, 1] pixel space, which token ids "
                                 "do not have (`headstart audit` says the same of text runs): drop --harden.")
        if cfg.train_size is not None:
            raise HeadstartError("train_size resizes training images; texts have no size: drop --train-size.")
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
        encoder = next((m for m in model.backbone.modules() if isinstance(m, HFEncoder)), None)  # hybrid: inside
        if encoder is not None:
            encoder.model.config.save_pretrained(files)

    def rebuild(self, directory: Path, meta: dict, state: dict) -> tuple[torch.nn.Module, list[Stage], Any]:
        preprocess = TextPreprocess.from_dict(meta["preprocess"])
        files = Path(directory) / TEXT_FILES
        if not files.is_dir():
            raise HeadstartError(f"{str(directory)!r} is a text run without its {TEXT_FILES}/ folder "
                                 "(tokenizer / word list); copy the whole run directory.")
        if preprocess.kind == "tfidf":  # TF-IDF + logistic regression, kept by --strategy auto
            return _empty_tfidf(state, "backbone."), [], \
                TfidfTokenizer.load(files, preprocess.ngrams, preprocess.lowercase, preprocess.max_length)
        hybrid = preprocess.ngrams > 0  # the encoder's embedding beside TF-IDF features, kept by auto
        prefix = "backbone.neural." if hybrid else "backbone."
        if preprocess.kind == "hf":
            module, tokenizer = empty_hf(files, preprocess)
            stages = transformer_stages(module)
        else:
            module, tokenizer = empty_vectors(files, preprocess, state, prefix=prefix)
            stages = [Stage("embeddings", ("embeddings.weight",))]
        if not hybrid:
            return module, stages, tokenizer
        tfidf = _empty_tfidf(state, "backbone.tfidf.")
        features = int(meta["backbone"]["num_features"]) - tfidf.num_features
        return (HybridEncoder(module, tfidf, features), [],
                HybridTokenizer(tokenizer, TfidfTokenizer.load(files, preprocess.ngrams, True, MAX_TERMS)))


def _empty_tfidf(state: dict, prefix: str) -> TfidfEncoder:
    """A TF-IDF encoder the size of the saved idf (its values come with the run's weights)."""
    return TfidfEncoder(int(state[prefix + "idf"].shape[0]) - 1)


TEXT = TextModality()
