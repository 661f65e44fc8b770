"""The Python API: ``TransferClassifier(...).fit(data)``, ``predict``, ``score``, ``save`` and ``load``.

scikit-learn conventions: ``__init__`` only stores parameters; what ``fit`` learns ends in ``_``.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from headstart.config import TrainConfig
from headstart.data import (
    Examples,
    as_examples,
    check_duplicates,
    class_list,
    decode_all,
    encode_labels,
    iter_decoded,
    stratified_split,
)
from headstart.data.preprocess import PreprocessConfig
from headstart.device import default_device, is_main_process, resolve_precision
from headstart.encoders import DEFAULT_BACKBONE, get_backbone
from headstart.encoders.base import Stage
from headstart.encoders.model import TransferModel
from headstart.errors import DataError, HeadstartError
from headstart.features.fastpath import feature_extractor
from headstart.io.run import CHECKPOINT, METRICS, read_run, save_run

log = logging.getLogger("headstart")


class TransferClassifier:
    """Fine-tune a pretrained backbone on your labelled images.

    >>> clf = TransferClassifier("timm:tf_efficientnet_lite0", strategy="two-stage").fit("data/train")
    >>> clf.predict(["a.jpg"]); clf.score("data/test"); clf.save("runs/x")

    A text backbone (``hf:...`` or ``vectors:...``) gives a :class:`headstart.text.TextClassifier`.
    """

    def __new__(cls, backbone: str = DEFAULT_BACKBONE, *args, **kwargs):
        from headstart.encoders import is_text_spec

        if cls is TransferClassifier and is_text_spec(backbone):
            from headstart.text.classifier import TextClassifier

            return super().__new__(TextClassifier)
        return super().__new__(cls)

    def __init__(self, backbone: str = DEFAULT_BACKBONE, strategy: str = "two-stage", *,
                 config: TrainConfig | None = None, pretrained: bool = True, verbose: bool = False,
                 allow_unsafe_pickle: bool = False, **train_options: Any):
        self.backbone = backbone
        self.pretrained = pretrained
        self.allow_unsafe_pickle = allow_unsafe_pickle  # only for file: weights you trust
        self.verbose = verbose
        base = config or TrainConfig()
        self.config = base.replace(strategy=strategy, **train_options) if (strategy != base.strategy or train_options) \
            else base

    # ------------------------------------------------------------------ training
    def fit(self, X, y: Sequence | None = None, *, validation=None, out: str | Path | None = None,
            progress: Callable | None = None, resume: bool = False) -> "TransferClassifier":
        """Train on ``X`` (a class-per-folder directory, a CSV, or images with labels ``y``).

        With ``out`` a checkpoint is written there after every epoch; ``resume=True`` continues a
        killed run from it (same data and options), ending with the same weights as an unbroken run.
        """
        cfg = self.config
        t0 = time.perf_counter()
        ckpt = prepare_out(out, resume, cfg)
        train_ex = check_duplicates(as_examples(X, y))
        if train_ex.labels is None:
            raise DataError("Training needs labels: pass y, a class-per-folder directory, or a CSV with labels.")
        self.classes_ = class_list(train_ex.labels)
        labelled = train_ex  # what `headstart plan` would profile: every labelled example
        if validation is not None:
            val_ex = as_examples(*validation) if isinstance(validation, tuple) else as_examples(validation)
        elif cfg.val_fraction > 0:
            tr, va = stratified_split(train_ex.labels, cfg.val_fraction, cfg.seed)
            train_ex, val_ex = train_ex.subset(tr), (train_ex.subset(va) if va else None)
        else:
            val_ex = None

        from headstart.train.loop import TrainData, fit, preserved_rng, seed_everything

        seed_everything(cfg.seed)
        backbone = get_backbone(self.backbone, pretrained=self.pretrained,
                                allow_unsafe_pickle=self.allow_unsafe_pickle)
        if cfg.strategy == "auto":
            from headstart.assess.plan import plan_for_data

            # Profiled on all labelled examples, not just the training split, so `train --strategy auto`
            # follows exactly the plan `headstart plan DATA` printed (and reuses its cached stage features);
            # the profile's scores are cross-validated, and the validation split only stops training.
            with preserved_rng():  # auto must train exactly as its plan run directly would
                self.profile_, self.plan_ = plan_for_data(labelled, backbone, precision=cfg.precision, seed=cfg.seed)
            cfg = cfg.replace(**self.plan_.config_changes(cfg))
            for reason in self.plan_.reasons:
                log.info("plan: %s", reason)
        if cfg.cut_stage is not None:  # drop the stages above the cut (truncate.py)
            from headstart.encoders.cut import truncate_backbone

            backbone = truncate_backbone(backbone, cfg.cut_stage)
        self.model_ = TransferModel(backbone.module, backbone.num_features, len(self.classes_),
                                    backbone.preprocess, stages=backbone.stages, dropout=cfg.dropout)
        self.model_.to(default_device())
        self.preprocess_ = backbone.preprocess
        self.backbone_info_ = _backbone_info(backbone)

        tr = decode_all(train_ex, backbone.preprocess, strict=cfg.strict)
        self.skipped_ = list(tr.skipped)
        data = TrainData(tr.pixels, encode_labels([train_ex.labels[i] for i in tr.index], self.classes_))
        _check_every_class_readable(data.y_train, self.classes_, tr.skipped)
        if val_ex is not None:
            va = decode_all(val_ex, backbone.preprocess, strict=cfg.strict)
            self.skipped_ += va.skipped
            data.x_val = va.pixels
            data.y_val = encode_labels([val_ex.labels[i] for i in va.index], self.classes_)
        for name, why in self.skipped_:
            log.warning("skipped unreadable image %s: %s", name, why)

        metrics_path, checkpoint_path = run_paths(out, fresh=ckpt is None)
        self.fitted_config_ = cfg
        from headstart.modalities.scratch import Baselines

        baselines = Baselines(self.model_, backbone, cfg) if cfg.baselines and is_main_process() else None
        self.history_ = fit(self.model_, backbone, data, cfg, metrics_path=metrics_path, progress=progress,
                            checkpoint_path=checkpoint_path, resume=ckpt)
        self.data_info_ = {"origin": train_ex.origin, "n_train": len(data.x_train),
                           "n_val": 0 if data.x_val is None else len(data.x_val),
                           "n_skipped": len(self.skipped_), "skipped": self.skipped_[:50]}
        self.fit_seconds_ = round(time.perf_counter() - t0, 2)
        if baselines is not None:  # linear probe and from-scratch model on the same split (baselines.py)
            self.baselines_ = baselines.run(self, data)
        if out is not None and is_main_process():  # one writer when several processes train
            self.save(out)
            checkpoint_path.unlink(missing_ok=True)  # the finished run supersedes it
        return self

    # ------------------------------------------------------------------ inference
    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities, shape (n_images, n_classes), columns in ``classes_`` order."""
        probs, skipped = self._predict_examples(as_examples(X))
        if skipped:
            name, why = skipped[0]
            raise DataError(f"Cannot predict {name!r}: {why}. ({len(skipped)} unreadable input(s) in all.)")
        return probs

    def predict(self, X) -> np.ndarray:
        probs = self.predict_proba(X)
        return np.asarray(self.classes_, dtype=object)[probs.argmax(1)]

    def score(self, X, y: Sequence | None = None) -> float:
        """Accuracy on labelled data (folder, CSV, or images + ``y``)."""
        return float(self.evaluate(X, y)["accuracy"])

    def evaluate(self, X, y: Sequence | None = None) -> dict[str, Any]:
        """Accuracy, per-class precision/recall/F1 and the confusion matrix."""
        from headstart.assess.metrics import classification_metrics

        ex = as_examples(X, y)
        if ex.labels is None:
            raise DataError("Evaluation needs labels: a class-per-folder directory, a CSV with labels, or y.")
        truth = encode_labels(ex.labels, self.classes_)
        probs, skipped, kept = self._predict_examples(ex, with_index=True)
        if not kept:
            raise DataError(f"None of the {len(ex)} evaluation images could be read; first error: "
                            f"{skipped[0][0]!r}: {skipped[0][1]}.")
        report = classification_metrics(truth[kept].numpy(), probs.argmax(1), self.classes_)
        report["n_skipped"] = len(skipped)
        report["skipped"] = skipped[:50]
        return report

    def _predict_examples(self, ex: Examples, with_index: bool = False, batch_size: int = 64):
        self._check_fitted()
        model = self.model_.eval()
        device = next(model.parameters()).device
        precision = resolve_precision(self.config.precision, device)
        # The backbone runs on the inference fast path (BatchNorm folded, bf16 weights, channels_last;
        # compiled for large inputs), the same features as training's cache; the head in fp32 after it.
        extract = feature_extractor(model, precision=precision, device=device, n_images=len(ex))
        outs, kept, skipped = [], [], []
        with torch.inference_mode():
            for part in iter_decoded(ex, self.preprocess_, batch_size=batch_size):
                skipped += part.skipped
                kept += part.index
                if len(part.pixels):
                    logits = model.head(extract(part.pixels).to(device))
                    outs.append(torch.softmax(logits.float(), 1).cpu())
        probs = torch.cat(outs).numpy() if outs else np.zeros((0, len(self.classes_)), dtype=np.float32)
        return (probs, skipped, kept) if with_index else (probs, skipped)

    # ------------------------------------------------------------------ persistence
    def save(self, directory: str | Path) -> Path:
        self._check_fitted()
        return save_run(directory, self.model_, self._meta())

    def _meta(self) -> dict[str, Any]:
        """What ``headstart.json`` records about this fitted model (``save_run`` adds hashes and versions)."""
        return {
            "backbone": self.backbone_info_,
            "classes": list(self.classes_),
            "preprocess": self.preprocess_.to_dict(),
            "config": getattr(self, "fitted_config_", self.config).to_dict(),
            "plan": self.plan_.to_dict() if hasattr(self, "plan_") else None,
            "history": {"phases": self.history_.phases, "precision": self.history_.precision,
                        "inference_precision": self.history_.inference_precision,
                        "seconds": self.history_.seconds} if hasattr(self, "history_") else None,
            "metrics": self.final_metrics_() if hasattr(self, "history_") else None,
            "data": getattr(self, "data_info_", None),
            "baselines": getattr(self, "baselines_", None),
        }

    def final_metrics_(self) -> dict[str, Any]:
        best = [r for r in self.history_.epochs if r.get("best")]
        last = self.history_.epochs[-1] if self.history_.epochs else {}
        rec = best[-1] if best else last
        return {k: rec[k] for k in ("phase", "epoch", "train_loss", "train_acc", "val_loss", "val_acc") if k in rec}

    def _check_fitted(self) -> None:
        if not hasattr(self, "model_"):
            raise HeadstartError("This TransferClassifier is not fitted yet; call fit() or headstart.load(run_dir).")

    def __repr__(self) -> str:
        return f"TransferClassifier(backbone={self.backbone!r}, strategy={self.config.strategy!r})"


def _check_every_class_readable(y: torch.Tensor, classes: list, skipped: list) -> None:
    counts = torch.bincount(y, minlength=len(classes))
    empty = [classes[i] for i in range(len(classes)) if counts[i] == 0]
    if empty:
        raise DataError(
            f"Every training image of class {empty[0]!r} was unreadable ({len(skipped)} skipped, e.g. "
            f"{skipped[0][0]!r}: {skipped[0][1]}); fix those files or remove the class."
        )


def prepare_out(out: str | Path | None, resume: bool, cfg: TrainConfig) -> dict | None:
    """Check the run directory before any training; the checkpoint to resume from, if asked."""
    if out is None:
        if resume:
            raise HeadstartError("resume=True needs out=<the run directory of the interrupted run>.")
        return None
    from headstart.storage import check_writable

    check_writable(out)  # fail before any training, never after an hour of it
    return _load_resume_checkpoint(Path(out), cfg) if resume else None


def run_paths(out: str | Path | None, fresh: bool) -> tuple[Path | None, Path | None]:
    """(metrics.jsonl, checkpoint.pt) of a run directory; a fresh run starts a new metrics log."""
    if out is None:
        return None, None
    metrics_path, checkpoint_path = Path(out) / METRICS, Path(out) / CHECKPOINT
    if fresh:
        metrics_path.unlink(missing_ok=True)
    return metrics_path, checkpoint_path


def _load_resume_checkpoint(out: Path, cfg: TrainConfig) -> dict:
    from headstart.train.loop import load_checkpoint

    path = out / CHECKPOINT
    if not path.is_file():
        done = (out / "headstart.json").is_file()
        raise HeadstartError(
            f"Nothing to resume in {str(out)!r}: " + ("the run already finished." if done else
                                                     "no checkpoint.pt (the run never finished an epoch).")
            + " Start it again without --resume.")
    ckpt = load_checkpoint(path)
    planned = {"strategy", "freeze_stages", "backbone_lr_ratio", "cut_stage"} if cfg.strategy == "auto" else set()
    planned |= {"baselines", "baseline_seconds"}  # run after training: they never change its course
    changed = sorted(k for k, v in cfg.to_dict().items() if k not in planned and ckpt["config"].get(k) != v)
    if changed:
        raise HeadstartError(
            f"Cannot resume {str(out)!r} with different options {changed}; resume with the options of "
            "the original run (`headstart resume RUN` reads them for you).")
    return ckpt


def _backbone_info(backbone) -> dict[str, Any]:
    return {"spec": backbone.spec, "architecture": backbone.architecture,
            "weights_sha256": backbone.weights_sha256, "num_features": backbone.num_features,
            "num_params": backbone.num_params, "stages": [s.name for s in backbone.stages],
            "notes": backbone.notes}


def load(directory: str | Path) -> TransferClassifier:
    """Rebuild a saved run offline: same architecture, weights, classes and preprocessing."""
    from headstart.encoders.base import timm_stages
    from headstart.encoders.timm_source import empty_timm

    meta, state = read_run(directory)
    if meta.get("modality") == "text":
        from headstart.text.classifier import load_text_run

        return load_text_run(directory, meta, state)
    info = meta["backbone"]
    module = empty_timm(info["architecture"])
    preprocess = PreprocessConfig.from_dict(meta["preprocess"])
    stages: list[Stage] = timm_stages(module)
    if meta["config"].get("cut_stage") is not None:  # a truncated run: rebuild the same cut
        from headstart.encoders.cut import truncate_module

        module, stages, _ = truncate_module(module, stages, meta["config"]["cut_stage"])
    model = TransferModel(module, info["num_features"], len(meta["classes"]), preprocess, stages=stages,
                          dropout=meta["config"].get("dropout", 0.0))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise HeadstartError(f"{str(directory)!r}: weights do not match the recorded architecture "
                             f"(missing {missing[:3]}, unexpected {unexpected[:3]}).")
    clf = TransferClassifier(info["spec"], config=TrainConfig.from_dict(meta["config"]))
    clf.model_ = model.to(default_device()).eval()
    clf.classes_ = meta["classes"]
    clf.preprocess_ = preprocess
    clf.backbone_info_ = info
    clf.meta_ = meta
    return clf
