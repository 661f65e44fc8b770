"""``TextClassifier``: the image workflow, for texts.

Texts are tokenised once into packed (N, 2, L) tensors and sorted by length, so the unchanged
training loop, feature cache and checkpoints of the image side apply: a linear probe trains on cached
sentence embeddings, ``partial`` freezes the first K transformer layers, ``two-stage`` fine-tunes with
layer-wise decayed learning rates. ``TransferClassifier("hf:...")`` builds one of these.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from headstart.config import TrainConfig
from headstart.data import class_list, encode_labels, stratified_split
from headstart.data.preprocess import TextPreprocess
from headstart.data.texts import TextExamples, load_texts
from headstart.device import (
    default_device,
    inference_context,
    is_main_process,
    resolve_precision,
)
from headstart.encoders import get_backbone
from headstart.encoders.model import TransferModel
from headstart.encoders.text import sort_by_length, tokenize
from headstart.errors import DataError, HeadstartError
from headstart.estimator import (
    TransferClassifier,
    _backbone_info,
    prepare_out,
    run_paths,
)
from headstart.io.run import read_run, save_run

log = logging.getLogger("headstart")
TEXT_FILES = "text"  # run subdirectory: tokenizer + encoder config, or the word list


class TextClassifier(TransferClassifier):
    """Fine-tune a pretrained text encoder (``hf:``) or word vectors (``vectors:``) on labelled texts.

    >>> clf = TextClassifier("hf:all-minilm-l6-v2", strategy="linear-probe").fit("reviews.csv")
    >>> clf.predict(["the plot was thin but the acting saved it"]); clf.save("runs/reviews")
    """

    def __init__(self, backbone: str = "hf:all-minilm-l6-v2", strategy: str = "two-stage", *,
                 config: TrainConfig | None = None, text_column: str | None = None,
                 label_column: str | None = None, pooling: str | None = None, max_length: int | None = None,
                 verbose: bool = False, pretrained: bool = True,
                 allow_unsafe_pickle: bool = False, **train_options: Any):
        super().__init__(backbone, strategy, config=config, pretrained=pretrained, verbose=verbose,
                         allow_unsafe_pickle=allow_unsafe_pickle, **train_options)
        self.text_column = text_column
        self.label_column = label_column
        self.pooling = pooling  # None = the model's own (sentence-transformers config) or mean
        self.max_length = max_length  # None = the model's own maximum

    # ------------------------------------------------------------------ training
    def fit(self, X, y: Sequence | None = None, *, validation=None, out: str | Path | None = None,
            progress: Callable | None = None, resume: bool = False) -> "TextClassifier":
        """Train on ``X``: a CSV/TSV/JSONL/Parquet file, a DataFrame, a ``datasets.Dataset``, or texts + ``y``."""
        t0 = time.perf_counter()
        cfg = self._text_config()
        ckpt = prepare_out(out, resume, cfg)
        train_ex = self._load(X, y, labelled=True)
        self.classes_ = class_list(train_ex.labels)
        self.skipped_ = list(train_ex.skipped)
        train_ex, val_ex = self._split(train_ex, validation, cfg)
        if validation is not None:
            self.skipped_ += val_ex.skipped
        if self.skipped_:  # one summary line; every row is listed in headstart.json (data.skipped)
            log.warning("%s", train_ex.skipped_summary() if validation is None else
                        f"skipped {len(self.skipped_)} unusable rows (see headstart.json)")

        from headstart.train.loop import TrainData, fit, seed_everything

        seed_everything(cfg.seed)
        backbone = get_backbone(self.backbone, pooling=self.pooling, max_length=self.max_length)
        if backbone.modality != "text":
            raise HeadstartError(f"{self.backbone!r} is an image backbone; use TransferClassifier for images.")
        self.tokenizer_ = backbone.tokenizer
        self.preprocess_ = backbone.preprocess
        self.backbone_info_ = _backbone_info(backbone)
        x_train, y_train = self._encode(train_ex)
        if hasattr(backbone.module, "fit_idf"):
            backbone.module.fit_idf(x_train)  # tf-idf weights come from the training texts only
        self.model_ = TransferModel(backbone.module, backbone.num_features, len(self.classes_),
                                    backbone.preprocess, stages=backbone.stages, dropout=cfg.dropout)
        self.model_.to(default_device())
        data = TrainData(x_train, y_train)
        if val_ex is not None:
            data.x_val, data.y_val = self._encode(val_ex)

        metrics_path, checkpoint_path = run_paths(out, fresh=ckpt is None)
        self.fitted_config_ = cfg
        self.history_ = fit(self.model_, backbone, data, cfg, metrics_path=metrics_path, progress=progress,
                            checkpoint_path=checkpoint_path, resume=ckpt)
        self.data_info_ = {"origin": train_ex.origin, "n_train": len(x_train),
                           "n_val": 0 if data.x_val is None else len(data.x_val),
                           "n_skipped": len(self.skipped_), "skipped": self.skipped_[:50]}
        if hasattr(self.tokenizer_, "coverage"):
            self.data_info_["vocabulary_coverage"] = round(self.tokenizer_.coverage(train_ex.texts), 4)
        if cfg.baselines and val_ex is not None:  # what transfer bought: a no-pretraining model, same split
            from headstart.modalities.tfidf import text_baselines

            self.baselines_ = text_baselines(self, train_ex, val_ex)
            for w in self.baselines_["warnings"]:
                log.warning(w)
        self.fit_seconds_ = round(time.perf_counter() - t0, 2)
        if out is not None and is_main_process():
            self.save(out)
            checkpoint_path.unlink(missing_ok=True)
        return self

    def _text_config(self) -> TrainConfig:
        cfg = self.config
        if cfg.strategy == "auto":
            raise HeadstartError("strategy 'auto' profiles image backbones; for text pick linear-probe, partial, "
                                 "full or two-stage (linear-probe is the quick, safe start).")
        if cfg.cut_stage is not None:
            raise HeadstartError("cut_stage drops the top stages of image backbones; text backbones keep every "
                                 "layer (freeze the lower ones with --freeze-stages instead).")
        # Image augmentation (flips, crops) has no meaning for token ids.
        return cfg.replace(augment=False) if cfg.augment else cfg

    def _load(self, X, y=None, *, labelled: bool) -> TextExamples:
        if isinstance(X, TextExamples):
            return X
        return load_texts(X, y, text_column=self.text_column, label_column=self.label_column,
                          require_labels=labelled)

    def _split(self, train_ex: TextExamples, validation, cfg: TrainConfig):
        if validation is not None:
            val_ex = self._load(*validation, labelled=True) if isinstance(validation, tuple) \
                else self._load(validation, labelled=True)
            return train_ex, val_ex
        if cfg.val_fraction > 0:
            tr, va = stratified_split(train_ex.labels, cfg.val_fraction, cfg.seed)
            return train_ex.subset(tr), (train_ex.subset(va) if va else None)
        return train_ex, None

    def _encode(self, ex: TextExamples) -> tuple[torch.Tensor, torch.Tensor]:
        """Token tensor and label tensor, ordered by length so batches carry little padding."""
        tokens = tokenize(self.tokenizer_, ex.texts)
        order = sort_by_length(tokens)
        labels = encode_labels(_aligned(ex.labels, self.classes_), self.classes_)
        return tokens[order], labels[order]

    # ------------------------------------------------------------------ inference
    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities, (n_texts, n_classes), columns in ``classes_`` order."""
        ex = self._load(X, labelled=False)
        if ex.skipped:
            name, why = ex.skipped[0]
            raise DataError(f"Cannot predict {name}: {why}. ({len(ex.skipped)} unusable text(s) in all.)")
        return self.predict_texts(ex.texts)

    def predict_texts(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        self._check_fitted()
        if not len(texts):
            return np.zeros((0, len(self.classes_)), dtype=np.float32)
        model = self.model_.eval()
        device = next(model.parameters()).device
        precision = resolve_precision(self.config.precision, device)
        tokens = tokenize(self.tokenizer_, list(texts))
        order = sort_by_length(tokens)
        probs = torch.empty(len(texts), len(self.classes_))
        with inference_context(precision, device):
            for i in range(0, len(order), batch_size):
                idx = order[i:i + batch_size]
                probs[idx] = torch.softmax(model(tokens[idx].to(device)).float(), 1).cpu()
        return probs.numpy()

    def evaluate(self, X, y: Sequence | None = None) -> dict[str, Any]:
        """Accuracy, macro-F1, per-class precision/recall/F1 and the confusion matrix."""
        from headstart.assess.metrics import classification_metrics

        ex = self._load(X, y, labelled=True)
        truth = encode_labels(_aligned(ex.labels, self.classes_), self.classes_)
        if not len(ex.texts):
            raise DataError(f"No usable texts to evaluate in {ex.origin} ({len(ex.skipped)} skipped).")
        probs = self.predict_texts(ex.texts)
        report = classification_metrics(truth.numpy(), probs.argmax(1), self.classes_)
        report["n_skipped"] = len(ex.skipped)
        report["skipped"] = ex.skipped[:50]
        return report

    # ------------------------------------------------------------------ persistence
    def save(self, directory: str | Path) -> Path:
        self._check_fitted()
        directory = Path(directory)
        files = directory / TEXT_FILES
        files.mkdir(parents=True, exist_ok=True)
        self.tokenizer_.save(files)  # a run reloads offline: it carries its own tokenizer / word list
        encoder = getattr(self.model_.backbone, "model", None)
        if encoder is not None:
            encoder.config.save_pretrained(files)
        meta = self._meta()
        meta.update({"modality": "text", "text_column": self.text_column, "label_column": self.label_column})
        return save_run(directory, self.model_, meta)

    def __repr__(self) -> str:
        return f"TextClassifier(backbone={self.backbone!r}, strategy={self.config.strategy!r})"


def _aligned(labels: Sequence, classes: Sequence) -> list:
    """Labels matched to the trained classes, also when one side was read as text ("1") and one as int (1)."""
    known = set(classes)
    if all(v in known for v in labels):
        return list(labels)
    by_text = {str(c): c for c in classes}
    return [by_text.get(str(v), v) for v in labels]


def load_text_run(directory: str | Path, meta: dict | None = None, state: dict | None = None) -> TextClassifier:
    """Rebuild a saved text run offline: encoder, tokenizer, head, classes."""
    from headstart.encoders.hf_source import empty_hf
    from headstart.encoders.text import transformer_stages
    from headstart.encoders.vectors_source import empty_vectors

    directory = Path(directory)
    if meta is None or state is None:
        meta, state = read_run(directory)
    info = meta["backbone"]
    preprocess = TextPreprocess.from_dict(meta["preprocess"])
    files = directory / TEXT_FILES
    if not files.is_dir():
        raise HeadstartError(f"{str(directory)!r} is a text run without its {TEXT_FILES}/ folder "
                             "(tokenizer / word list); copy the whole run directory.")
    if preprocess.kind == "hf":
        module, tokenizer = empty_hf(files, preprocess)
        stages = transformer_stages(module)
    else:
        module, tokenizer = empty_vectors(files, preprocess, state)
        from headstart.encoders.base import Stage

        stages = [Stage("embeddings", ("embeddings.weight",))]
    model = TransferModel(module, info["num_features"], len(meta["classes"]), preprocess, stages=stages,
                          dropout=meta["config"].get("dropout", 0.0))
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]  # a non-persistent buffer in some versions
    if missing or unexpected:
        raise HeadstartError(f"{str(directory)!r}: weights do not match the saved text model "
                             f"(missing {missing[:3]}, unexpected {unexpected[:3]}).")
    clf = TextClassifier(info["spec"], config=TrainConfig.from_dict(meta["config"]),
                         text_column=meta.get("text_column"), label_column=meta.get("label_column"))
    clf.model_ = model.to(default_device()).eval()
    clf.classes_ = meta["classes"]
    clf.preprocess_ = preprocess
    clf.tokenizer_ = tokenizer
    clf.backbone_info_ = info
    clf.meta_ = meta
    return clf
