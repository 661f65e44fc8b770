"""The Python API: one estimator for every modality. ``TransferClassifier(...).fit(data)``, ``predict``,
``score``, ``evaluate``, ``save`` and :func:`load`.

What differs between images and texts is asked of the run's modality (``modalities/``); the steps
here are the same for both: read, split, build the backbone (planned and cut for ``auto``), encode,
train (``train/``), compare with the baselines, save.

scikit-learn's contract holds: ``__init__`` only stores its parameters (every :class:`TrainConfig`
field is one too), ``get_params`` / ``set_params`` / ``sklearn.base.clone`` work, and what ``fit``
learns ends in ``_``.
"""
from __future__ import annotations

import copy
import dataclasses
import inspect
import logging
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Sequence

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin

from headstart.adapt import AdaptConfig
from headstart.adapt.objectives import target_objective
from headstart.adapt.pipeline import adapt as run_adapt
from headstart.adapt.pipeline import compare_trained, draw_examples
from headstart.assess.calibration import apply_temperature
from headstart.assess.metrics import classification_metrics
from headstart.assess.plan import plan_for_data
from headstart.audit import AuditResult
from headstart.audit import audit as run_audit
from headstart.audit.harden import hardening, measured_tradeoff
from headstart.candidates import TRANSFER, Candidate, choose, score, simple_candidates
from headstart.config import TrainConfig
from headstart.data import class_list, encode_labels, stratified_split
from headstart.data.sources import aligned_labels
from headstart.device import default_device, resolve_precision
from headstart.distill.config import DistillConfig
from headstart.distill.pipeline import Distilled, Teacher, student_config
from headstart.distill.pipeline import distill as run_distill
from headstart.encoders import DEFAULT_BACKBONE, get_backbone
from headstart.encoders.cut import truncate_backbone
from headstart.encoders.model import TransferModel
from headstart.errors import DataError, HeadstartError, did_you_mean
from headstart.features.engine import use_engine
from headstart.io.predictions import predictions
from headstart.io.run import (
    CHECKPOINT,
    Run,
    clear_run,
    discard_unfinished,
    prepare_out,
    refuse_to_replace,
    run_paths,
    save_run,
)
from headstart.modalities import (
    Columns,
    Modality,
    Prediction,
    modality_for,
    modality_named,
    read_pool,
)
from headstart.semi import unlabeled_pool, use_unlabeled
from headstart.storage import check_writable
from headstart.train.distributed import is_main_process, make_accelerator
from headstart.train.loop import TrainData, fit, preserved_rng, seed_everything

log = logging.getLogger("headstart")

TRAIN_OPTIONS = tuple(f.name for f in dataclasses.fields(TrainConfig))
# Parameters of the estimator itself (the TrainConfig fields are parameters too, given as keywords).
_PARAMS = ("backbone", "strategy", "config", "pretrained", "allow_unsafe_pickle", "path_column", "text_column",
           "label_column", "encoding", "pooling", "max_length")


class TransferClassifier(ClassifierMixin, BaseEstimator):
    """Fine-tune a pretrained backbone on your labelled images or texts.

    >>> clf = TransferClassifier("timm:tf_efficientnet_lite0", strategy="two-stage").fit("data/train")
    >>> clf.predict(["a.jpg"]); clf.score("data/test"); clf.save("runs/x")
    >>> TransferClassifier("hf:all-minilm-l6-v2", strategy="linear-probe").fit("reviews.csv")

    The backbone decides the modality: ``timm:``/``file:`` backbones read images, ``hf:``/``vectors:``
    backbones read texts. Training options are the fields of :class:`TrainConfig`, as keywords
    (``epochs=3``) or as a whole ``config``; the keywords win.
    """

    def __init__(self, backbone: str = DEFAULT_BACKBONE, strategy: str = "two-stage", *,
                 config: TrainConfig | None = None, pretrained: bool = True, allow_unsafe_pickle: bool = False,
                 path_column: str = "path", text_column: str | None = None, label_column: str | None = None,
                 encoding: str | None = None,
                 pooling: str | None = None, max_length: int | None = None, **train_options: Any):
        _check_option_names(train_options)
        self.backbone = backbone
        self.strategy = strategy
        self.config = config
        self.pretrained = pretrained
        self.allow_unsafe_pickle = allow_unsafe_pickle  # only for file: weights you trust
        self.path_column = path_column  # image tables: the column of image paths
        self.text_column = text_column  # text tables: the column of texts (None = "text" or the only one)
        self.label_column = label_column  # None = "label" (images), the first of label/labels/target/class (texts)
        self.encoding = encoding  # text files; None = UTF-8, and Windows-1252 for lines that are not (warned)
        self.pooling = pooling  # text backbones; None = the model's own (sentence-transformers config) or mean
        self.max_length = max_length  # text backbones; None = the model's own maximum
        self._options = tuple(train_options)
        for name, value in train_options.items():
            setattr(self, name, value)

    # ------------------------------------------------------------------ parameters
    def get_params(self, deep: bool = True) -> dict[str, Any]:
        return {**{p: getattr(self, p) for p in _PARAMS}, **{k: getattr(self, k) for k in self._options}}

    def set_params(self, **params: Any) -> "TransferClassifier":
        unknown = [k for k in params if k not in _PARAMS and k not in TRAIN_OPTIONS]
        if unknown:
            raise HeadstartError(f"Unknown parameter {unknown[0]!r} of TransferClassifier."
                                 + did_you_mean(unknown[0], _PARAMS + TRAIN_OPTIONS))
        for name, value in params.items():
            setattr(self, name, value)
            if name in TRAIN_OPTIONS and name not in self._options:
                self._options += (name,)
        return self

    def resolved_config(self) -> TrainConfig:
        """The :class:`TrainConfig` these parameters give: ``config`` (or the defaults) with ``strategy``
        and every keyword option applied, validated."""
        base = self.config or TrainConfig()
        changes = {k: getattr(self, k) for k in self._options}
        if self.strategy != base.strategy:
            changes["strategy"] = self.strategy
        return base.replace(**changes) if changes else base

    @property
    def modality(self) -> Modality:
        """What this estimator reads: the fitted run's modality, else the backbone's."""
        return getattr(self, "modality_", None) or modality_for(self.backbone)

    def _columns(self) -> Columns:
        return Columns(path_column=self.path_column, text_column=self.text_column, label_column=self.label_column,
                       encoding=self.encoding)

    def _read(self, X, y=None, *, purpose: str):
        return self.modality.read(X, y, columns=self._columns(), purpose=purpose)

    # ------------------------------------------------------------------ training
    def fit(self, X, y: Sequence | None = None, *, validation=None, unlabeled=None, target=None,
            out: str | Path | None = None, progress: Callable | None = None, resume: bool = False,
            overwrite: bool = False) -> "TransferClassifier":
        """Train on ``X``: images (a class-per-folder directory, a CSV, or images with labels ``y``) or
        texts (a CSV/TSV/JSONL/Parquet file, a DataFrame, a ``datasets.Dataset``, or texts with ``y``).

        With ``out`` a checkpoint is written there after every epoch; ``resume=True`` continues a
        killed run from it (same data and options), ending with the same weights as an unbroken run.
        A finished run, or an interrupted one, already in ``out`` is never replaced unless
        ``overwrite=True``; a fit that fails before its first checkpoint leaves no files behind.

        ``unlabeled``: examples without labels (a folder of images, flat or nested; a CSV of paths; image
        arrays; a text table) that train the head after the supervised fit, by the ``ssl_method`` option
        (see :mod:`headstart.semi`); ``semi_supervised_`` records what was tried and kept.

        ``target``: unlabelled examples from where the model will be used, when that differs from ``X`` (read
        like ``unlabeled``): while the backbone trains, the ``target_method`` option (DANN or Deep CORAL,
        see :mod:`headstart.adapt.objectives`) pulls the two domains' representations together;
        ``target_adaptation_`` records it, with label-free scores of the model before and after.
        """
        created = out is not None and not Path(out).exists()
        try:
            with use_engine(self.resolved_config().engine):  # every frozen-feature pass of the fit, baselines too
                return self._fit(X, y, validation=validation, unlabeled=unlabeled, target=target, out=out,
                                 progress=progress, resume=resume, overwrite=overwrite)
        except BaseException:
            if out is not None and is_main_process():
                discard_unfinished(out, created)
            raise

    def _fit(self, X, y, *, validation, unlabeled, target, out, progress, resume, overwrite) -> "TransferClassifier":
        t0 = time.perf_counter()
        modality = modality_for(self.backbone)
        cfg = modality.check_config(self.resolved_config())
        if target is not None:
            _check_target_config(cfg)
        fixmatch = unlabeled is not None and cfg.ssl_method == "fixmatch"
        if fixmatch:
            _check_fixmatch_config(cfg, modality, target)
        ckpt = prepare_out(out, resume, cfg, overwrite=overwrite)
        labelled = self._read(X, y, purpose="train")  # what `headstart plan` profiles: every labelled example
        if cfg.strict and labelled.skipped:
            raise DataError(f"strict=True (CLI: --strict) and {labelled.skipped_summary()}. Fix those rows, or "
                            "drop strict to train on the rest (a text table not in UTF-8: pass its encoding=..., "
                            "CLI: --encoding).")
        self.classes_ = class_list(labelled.labels)
        train_ex, val_ex = self._split(labelled, validation, cfg)
        pool, dropped = (unlabeled_pool(modality, self._read_pool(modality, unlabeled), [train_ex, val_ex])
                         if unlabeled is not None else (None, 0))  # a bad pool fails before training
        if val_ex is None or not len(val_ex):
            why = ("val_fraction=0 (CLI: --val-fraction 0)" if cfg.val_fraction == 0 else
                   "no class has enough examples to hold one out")
            log.warning("No validation split (%s): nothing stops training early, the last epoch's weights are "
                        "kept, and no baseline is compared. Pass validation data (CLI: --val) or keep a fraction "
                        "out (val_fraction=0.2).", why)

        seed_everything(cfg.seed)
        backbone = get_backbone(self.backbone, pretrained=self.pretrained, allow_unsafe_pickle=self.allow_unsafe_pickle,
                                pooling=self.pooling, max_length=self.max_length)
        # Distributed state is decided here, once: every phase, the caches and the writers use this.
        accel = make_accelerator(resolve_precision(cfg.precision, default_device(), purpose="train"))
        backbone = modality.configure(backbone, train_ex, cfg)
        cfg, backbone = self._plan(cfg, backbone, labelled, accel)
        data, skipped = self._encode(modality, backbone, labelled, train_ex, val_ex, validation, cfg)
        self.model_ = TransferModel(backbone.module, backbone.num_features, len(self.classes_),
                                    backbone.preprocess, stages=backbone.stages, dropout=cfg.dropout)
        self.model_.to(default_device())
        self.modality_ = modality
        self.preprocess_ = backbone.preprocess
        self.tokenizer_ = backbone.tokenizer
        self.backbone_info_ = _backbone_info(backbone)
        self.fitted_config_ = cfg
        self.skipped_ = skipped

        # At most one of these is asked for (checked above); each records what it did, or None.
        objectives = [self._hardening(cfg, data), self._target_objective(cfg, modality, backbone, target),
                      self._fixmatch_objective(cfg, modality, backbone, pool if fixmatch else None)]
        objective = next((o for o in objectives if o is not None), None)
        metrics_path, checkpoint_path = run_paths(out, fresh=ckpt is None)
        main = accel.is_main_process
        baselines = modality.baselines(self.model_, backbone, cfg) if cfg.baselines and main else None
        tracker = self._open_tracker(cfg, out, labelled, data) if cfg.track and main else None
        self.tracking_ = tracker.info() if tracker is not None else None
        try:
            self.history_ = fit(self.model_, backbone, data, cfg, accelerator=accel, objective=objective,
                                augment=modality.augmentation(cfg), callbacks=[tracker] if tracker else (),
                                metrics_path=metrics_path, progress=progress, checkpoint_path=checkpoint_path,
                                resume=ckpt)
            self.data_info_ = {"origin": labelled.origin, "n_train": len(data.x_train),
                               "n_val": 0 if data.x_val is None else len(data.x_val), "n_skipped": len(skipped),
                               "skipped": skipped[:50], **modality.data_info(backbone, train_ex)}
            self.semi_supervised_ = None
            if fixmatch and main:  # the pool trained the backbone with the labels
                self.ssl_heads_, self.semi_supervised_ = {}, self._fixmatch_record(objective, pool, dropped)
            elif pool is not None and main:  # the pool trains the head on the fitted backbone's embeddings
                self.ssl_heads_, self.semi_supervised_ = use_unlabeled(
                    self.model_, modality, backbone, data, pool, cfg, dropped=dropped,
                    precision=self.history_.inference_precision)
            if self.target_adaptation_ is not None and main:
                self._score_target(objective, backbone, train_ex, val_ex)
            if self.hardening_ is not None and main:  # the trade-off it bought, measured on validation
                self.hardening_["validation"] = measured_tradeoff(self.model_, self.backbone_info_["spec"],
                                                                  self.preprocess_, data.x_val, data.y_val, cfg)
            self.fit_seconds_ = round(time.perf_counter() - t0, 2)
            # What transfer bought: the linear probe and a no-pretraining model, on the same split.
            self.baselines_ = baselines.run(self, data, train_ex, val_ex) if baselines is not None else None
            self.selection_ = (self._keep_better(baselines, val_ex) if self.resolved_config().strategy == "auto"
                               and self.baselines_ and "skipped" not in self.baselines_ else None)
            self.run_ = None
            if out is not None and main:  # one writer when several processes train
                self.save(out)
                checkpoint_path.unlink(missing_ok=True)  # the finished run supersedes it
                self.run_ = Run.open(out)
                self.meta_ = self.run_.meta
                if val_ex is not None and len(val_ex):  # what `headstart report` and calibration read
                    predictions(self, val_ex, name="validation", run_dir=Path(out))
        except BaseException:  # Ctrl-C included: the tracked run says it failed instead of running forever
            if tracker is not None:
                tracker.fail()
            raise
        if tracker is not None:
            tracker.finish(self, Path(out) if out is not None else None)
        return self

    def _read_pool(self, modality: Modality, unlabeled):
        return read_pool(modality, unlabeled, text_column=self.text_column, path_column=self.path_column)

    def _target_objective(self, cfg: TrainConfig, modality: Modality, backbone, target):
        """``--target``: the alignment objective, holding the encoded target examples it draws batches from."""
        self.target_adaptation_ = None
        if target is None:
            return None
        examples, n = draw_examples(self._read_pool(modality, target), cfg.target_max, cfg.seed,
                                    "--target examples (target_max)")
        enc = modality.encode(examples, backbone)
        if not len(enc.index):
            raise DataError(f"None of the {n} --target {modality.noun} could be read.")
        objective = target_objective(cfg.target_method, enc.x, num_features=backbone.num_features, cfg=cfg,
                                     augment=modality.augmentation(cfg))
        self._target_examples = examples
        self.target_adaptation_ = {"method": cfg.target_method, "objective": objective.name,
                                   "weight": cfg.target_weight, "target": str(getattr(examples, "origin", "") or ""),
                                   "n_target": n, "n_target_used": len(enc.index)}
        return objective

    def _fixmatch_objective(self, cfg: TrainConfig, modality: Modality, backbone, pool):
        """``--ssl-method fixmatch``: the consistency objective, holding the encoded pool it draws batches from."""
        if pool is None:
            return None
        from headstart.semi.fixmatch import FixMatchObjective

        examples, _ = draw_examples(pool, cfg.ssl_pool_max, cfg.seed, "pool images (ssl_pool_max)")
        enc = modality.encode(examples, backbone)
        if not len(enc.index):
            raise DataError(f"None of the {len(examples)} unlabelled {modality.noun} could be read.")
        self._pool_used = (len(enc.index), list(enc.skipped))
        return FixMatchObjective(enc.x, threshold=cfg.fixmatch_threshold, ratio=cfg.fixmatch_ratio,
                                 label_smoothing=cfg.label_smoothing, seed=cfg.seed,
                                 augment=modality.augmentation(cfg))

    def _fixmatch_record(self, objective, pool, dropped: int) -> dict[str, Any]:
        cfg = self.fitted_config_
        n_used, skipped = self._pool_used
        val_acc = (self.final_metrics_() or {}).get("val_acc")
        return {"requested": "fixmatch", "method": "fixmatch", "val_acc": val_acc, "supervised_val_acc": None,
                "reason": ("--ssl-method fixmatch was asked for: the backbone trained on the pool while it "
                           "fine-tuned, so the validation accuracy is the fit's own (no supervised-only model of the "
                           "same fit exists to compare; train without --unlabeled for one)"),
                "n_pool": len(pool) + dropped, "n_used": n_used, "n_dropped_labelled": dropped,
                "n_skipped": len(skipped), "skipped": skipped[:50], "pool": getattr(pool, "origin", None),
                "threshold": cfg.fixmatch_threshold, "ratio": cfg.fixmatch_ratio,
                "mask_rate": objective.mask_rate(), "candidates": []}

    def _score_target(self, objective, backbone, train_ex, val_ex) -> None:
        """``--target``: the label-free scores of the model before and after the backbone trained with it."""
        rec = self.target_adaptation_
        if objective.before is None:
            rec["comparison"] = {"skipped": "no head-only stage ran before the backbone trained"}
            return
        before = copy.deepcopy(self.model_)
        before.load_state_dict(objective.before)
        target, self._target_examples = self._target_examples, None  # not kept past the fit
        rec["comparison"] = compare_trained(before, self.model_, self.modality_, backbone, train_ex, val_ex, target,
                                            classes=self.classes_, seed=self.fitted_config_.seed,
                                            precision=self.history_.inference_precision, name=rec["method"])
        better = rec["comparison"]["estimated_better"]
        rec["kept"] = rec["method"] if better or self.fitted_config_.target_keep == "adapted" else "source-only"
        if better:
            return
        if rec["kept"] == "source-only":  # as `adapt` does: no evidence it helps, so the source model stays
            self.model_.load_state_dict(objective.before)
            log.warning("--target %s: the label-free scores do not say the adapted model beats the source-only one "
                        "(the head on the pretrained features): %s. The source-only model is kept; check both on "
                        "labelled target data (`headstart evaluate`), and pass --target-keep adapted to keep the "
                        "adapted one.", rec["method"], rec["comparison"]["reason"])
        else:
            log.warning("--target %s: the label-free scores do not say the adapted model beats the source-only one "
                        "(%s); kept as --target-keep adapted asks. Check it on labelled target data.",
                        rec["method"], rec["comparison"]["reason"])

    def _hardening(self, cfg: TrainConfig, data: TrainData):
        """``--harden``: the defence's objective, with the perturbed training images it needs in ``data``."""
        self.hardening_ = None
        if not cfg.harden:
            return None
        objective, extra, self.hardening_ = hardening(cfg, self.backbone_info_["spec"], self.preprocess_,
                                                      data.x_train)
        data.extra.update(extra)
        data.paired = tuple(extra)
        return objective

    def audit(self, data, y: Sequence | None = None, **options) -> AuditResult:
        """The adversarial-robustness audit of this model on labelled ``data`` (see :mod:`headstart.audit`):
        white-box FGSM/PGD/APGD-CE and the teacher-only attack with its controls. ``options`` are
        :class:`~headstart.audit.AuditConfig` fields, e.g. ``eps=(2/255, 4/255, 8/255)``, ``n=200``,
        ``quick=True``; ``control_data`` trains the unrelated control network (default: this run's data)."""
        self._check_fitted()
        return run_audit(self, data, y, **options)

    def _keep_better(self, baselines, val_ex) -> dict[str, Any]:
        """``auto``: the transfer model, the simple model(s) and (texts) the hybrid, scored on the validation
        examples; the best becomes this classifier's model (see :mod:`headstart.candidates`)."""
        cfg = self.fitted_config_
        transfer = Candidate(TRANSFER, f"transfer ({self.backbone_info_['spec']}, {cfg.strategy})",
                             np.zeros(0, bool), self.history_.seconds)
        candidates = [score(c, self, val_ex) for c in [transfer, *simple_candidates(baselines, self)]]
        winner, record = choose(candidates)
        log.info("auto: %s", record["reason"])
        # Every candidate stays in memory (not saved), for comparisons such as the benchmark's test scores.
        self.candidate_models_ = {c.name: (c.model or self.model_, c.preprocess or self.preprocess_,
                                           c.tokenizer if c.model is not None else self.tokenizer_) for c in candidates}
        if winner.model is not None:
            self.model_, self.preprocess_, self.tokenizer_ = winner.model, winner.preprocess, winner.tokenizer
            self.backbone_info_ = winner.backbone_info
        return record

    def run_metrics(self) -> dict[str, Any] | None:
        """What the kept model scored: the kept epoch of training, its head retrained on an unlabelled pool,
        or the candidate ``auto`` kept instead."""
        if not self.history_:
            return self.meta_.get("metrics")
        metrics = self.final_metrics_()
        semi = getattr(self, "semi_supervised_", None)
        if semi and semi["method"] not in ("supervised", "fixmatch"):  # fixmatch: the kept epoch is its model
            metrics = {"val_acc": semi["val_acc"], "model": f"semi-supervised head ({semi['method']})",
                       "supervised": metrics}
        target = getattr(self, "target_adaptation_", None)
        if target and target.get("kept") == "source-only":
            source = target["comparison"]["scores"]["source-only"]
            metrics = {"val_acc": source.get("source_val_acc"), "model": "source-only (the head stage; --target's "
                       "label-free vote)", "adapted": metrics}
        selection = getattr(self, "selection_", None)
        if selection and selection["winner"] != TRANSFER:
            row = next(c for c in selection["candidates"] if c["name"] == selection["winner"])
            return {"val_acc": row["val_acc"], "model": row["name"], "transfer": metrics}
        return metrics

    def _open_tracker(self, cfg: TrainConfig, out, labelled, data):
        from headstart.track import open_tracker

        params = {**cfg.to_dict(), "backbone": self.backbone, "classes": len(self.classes_),
                  "data": str(labelled.origin), "n_train": len(data.x_train),
                  "n_val": 0 if data.x_val is None else len(data.x_val)}
        name = Path(out).name if out is not None else f"{self.backbone}-{cfg.strategy}"
        return open_tracker(cfg, run_dir=out, name=name, params=params)

    def _split(self, labelled, validation, cfg: TrainConfig):
        if validation is not None:
            val = self._read(*validation, purpose="evaluate") if isinstance(validation, tuple) \
                else self._read(validation, purpose="evaluate")
            return labelled, val
        if cfg.val_fraction > 0:
            tr, va = stratified_split(labelled.labels, cfg.val_fraction, cfg.seed)
            return labelled.subset(tr), (labelled.subset(va) if va else None)
        return labelled, None

    def _plan(self, cfg: TrainConfig, backbone, labelled, accel):
        """``auto``: profile the backbone and follow the plan; a cut stage drops the stages above it."""
        self.plan_ = self.profile_ = None
        if cfg.strategy == "auto" and backbone.modality == "text":
            # Texts: the frozen encoder's linear probe is the transfer candidate (fine-tuning a sentence
            # encoder on a few hundred texts rarely beats it, and costs 10-100x more); TF-IDF and the hybrid
            # are compared with it after the fit.
            cfg = cfg.replace(strategy="linear-probe")
            log.info("plan: following --strategy linear-probe on %s; then TF-IDF + logistic regression and the "
                     "hybrid (TF-IDF + embedding) are fitted on the same split and the best on validation is kept",
                     backbone.spec)
        elif cfg.strategy == "auto":
            # Profiled on all labelled examples, not just the training split, so `train --strategy auto`
            # follows exactly the plan `headstart plan DATA` printed (and reuses its cached stage features);
            # the profile's scores are cross-validated, and the validation split only stops training.
            # auto must train exactly as its plan run directly would (preserved_rng); the main process
            # profiles (and caches the stage features) first, the others read its cache.
            with preserved_rng(), accel.main_process_first():
                self.profile_, self.plan_ = plan_for_data(labelled, backbone, precision=cfg.precision, seed=cfg.seed)
            cfg = cfg.replace(**self.plan_.config_changes(cfg))
            for reason in self.plan_.reasons:
                log.info("plan: %s", reason)
        if cfg.cut_stage is not None:
            backbone = truncate_backbone(backbone, cfg.cut_stage)
        if self.plan_ is not None:  # what auto follows, before any training (the CLI prints it)
            cut = "" if cfg.cut_stage is None else f" --cut-stage {cfg.cut_stage}"
            log.info("plan: following --strategy %s --freeze-stages %s --backbone-lr-ratio %g%s; backbone %s "
                     "parameters left", cfg.strategy, cfg.freeze_stages, cfg.backbone_lr_ratio, cut,
                     f"{backbone.num_params:,}")
        return cfg, backbone

    def _encode(self, modality: Modality, backbone, labelled, train_ex, val_ex, validation, cfg: TrainConfig):
        """Model inputs and labels of both splits, and every example skipped on the way (read or encode)."""
        skipped = list(labelled.skipped)
        if validation is not None:
            skipped += val_ex.skipped
        tr = modality.encode(train_ex, backbone, strict=cfg.strict)
        if hasattr(backbone.module, "fit_idf"):
            backbone.module.fit_idf(tr.x)  # tf-idf weights come from the training texts only
        data = TrainData(tr.x, self._labels(train_ex, tr.index))
        skipped += tr.skipped
        _check_every_class_present(data.y_train, self.classes_, skipped)
        if val_ex is not None:
            va = modality.encode(val_ex, backbone, strict=cfg.strict)
            skipped += va.skipped
            data.x_val, data.y_val = va.x, self._labels(val_ex, va.index)
        return data, skipped

    def _labels(self, examples, index: Sequence[int]) -> torch.Tensor:
        return encode_labels(aligned_labels([examples.labels[i] for i in index], self.classes_), self.classes_)

    # ------------------------------------------------------------------ domain adaptation
    def adapt(self, target, *, data=None, y: Sequence | None = None, validation=None, out: str | Path | None = None,
              overwrite: bool = False, **options: Any) -> "TransferClassifier":
        """Adapt this fitted model to unlabelled ``target`` examples (where it will be used: a folder of
        images, flat or nested; a CSV of paths; arrays; a text table); returns the adapted classifier.

        ``data`` defaults to this run's own training data, split as the fit split it (the source).
        ``options`` are :class:`~headstart.adapt.AdaptConfig` fields (``method="auto"``, ``max_images``,
        ...). With ``method="auto"`` a method is kept only when the label-free scores agree it beats the
        source model; otherwise the returned classifier holds the source model, unchanged.
        ``adaptation_`` holds the scores and the decision (saved in ``headstart.json``).
        """
        self._check_fitted()
        settings = AdaptConfig(**options)
        _claim_out(out, resume=False, overwrite=overwrite)
        labelled, train_ex, val_ex = self._source_split(data, y, validation)
        pool = self._read_pool(self.modality_, target)
        encoder = SimpleNamespace(preprocess=self.preprocess_, tokenizer=self.tokenizer_)
        precision = resolve_precision(self.resolved_config().precision, next(self.model_.parameters()).device)
        with use_engine(self.resolved_config().engine):
            result = run_adapt(self.model_.eval(), self.modality_, encoder, train_ex, val_ex, pool, settings,
                               self.fitted_config_, classes=list(self.classes_), precision=precision)
        adapted = copy.copy(self)  # the same run in every other way: classes, preprocessing, history
        adapted.model_, adapted.adaptation_, adapted.adapted_models_ = result.model, result.report, result.models
        adapted.run_ = None
        if out is not None:
            adapted.save(out)
            adapted.run_ = Run.open(out)
            adapted.meta_ = adapted.run_.meta
        return adapted

    # ------------------------------------------------------------------ distillation
    def distill(self, student: str = "scratch:tiny", *, data=None, y: Sequence | None = None, unlabeled=None,
                validation=None, out: str | Path | None = None, progress: Callable | None = None,
                resume: bool = False, overwrite: bool = False, **options: Any) -> "TransferClassifier":
        """Distil this fitted model (the teacher) into ``student``; returns the student, a fitted classifier.

        ``data`` defaults to the teacher's own training data (the path its run recorded), split exactly as
        the teacher split it, so every accuracy is measured on examples neither model trained on.
        ``unlabeled``: a pool of unlabelled images or texts the teacher labels for the student (a folder,
        flat or nested, a CSV, arrays or a text table). ``options``: the :class:`DistillConfig` fields
        (``temperature``, ``alpha``, ``views``, ``selection_fraction``, ``compare``) and training options of
        the student (``epochs=20``, ``lr=...``; see :func:`headstart.distill.student_config` for its
        defaults). ``student.distillation_`` holds the report (saved in ``headstart.json``).
        """
        self._check_fitted()
        settings, train_options = _distill_options(student, options)
        cfg = student_config(student, self.fitted_config_, train_options)
        _claim_out(out, resume=resume, overwrite=overwrite)
        labelled, train_ex, val_ex = self._source_split(data, y, validation)
        pool = self._read_pool(self.modality_, unlabeled) if unlabeled is not None else None
        result = run_distill(self._as_teacher(), settings, cfg, train_ex, val_ex, pool, out=out, progress=progress,
                             resume=resume)
        return self._student(result, labelled.origin, out)

    def _source_split(self, data, y, validation):
        """The labelled data this fitted model learnt from (``data``, else its recorded training data), split
        exactly as its fit split it: every accuracy after it is on examples the model never trained on."""
        labelled = self._read(data if data is not None else self._training_source(), y, purpose="train")
        return (labelled, *self._split(labelled, validation, self.fitted_config_))

    def _training_source(self):
        origin = (self.data_info_ or {}).get("origin")
        if origin and Path(origin).exists():
            return origin
        raise HeadstartError(f"The teacher's training data ({origin!r}) is not a file or folder that exists here; "
                             "pass the data it was trained on: data=... (CLI: --data PATH).")

    def _as_teacher(self) -> Teacher:
        metrics = self.run_metrics() or {}
        return Teacher(self.model_, self.modality_, self.preprocess_, self.tokenizer_, list(self.classes_),
                       spec=self.backbone_info_["spec"], run=str(self.run_.path) if self.run_ is not None else None,
                       recorded_val_acc=metrics.get("val_acc"))

    def _student(self, result: Distilled, origin: str, out) -> "TransferClassifier":
        """The distilled student as a fitted classifier: a normal run in every way once saved."""
        student = TransferClassifier(result.settings.student, strategy=result.config.strategy, config=result.config,
                                     **self._columns().__dict__)
        student.model_ = result.model.eval()
        student.modality_, student.classes_ = self.modality_, list(self.classes_)
        student.preprocess_, student.tokenizer_ = result.backbone.preprocess, result.backbone.tokenizer
        student.backbone_info_ = _backbone_info(result.backbone)
        student.fitted_config_, student.history_ = result.config, result.history
        student.plan_ = student.profile_ = student.baselines_ = None
        student.skipped_ = result.skipped
        student.data_info_ = {"origin": origin, **result.data_info, "n_skipped": len(result.skipped),
                              "skipped": result.skipped[:50]}
        student.distillation_ = result.report
        student.direct_model_ = result.direct_model  # the comparison, kept in memory (not saved)
        student.fit_seconds_ = result.report["seconds"]
        student.run_ = None
        if out is not None:
            student.save(out)
            (Path(out) / CHECKPOINT).unlink(missing_ok=True)  # the finished run supersedes it
            student.run_ = Run.open(out)
        return student

    # ------------------------------------------------------------------ inference
    def predict_examples(self, examples, batch_size: int = 64, *, raw: bool = False) -> Prediction:
        """Probabilities for already-read examples (``modality.read``), with what could not be read.

        A run calibrated by ``headstart report --calibrate`` scales them by its temperature
        (``calibration_["temperature"]``); ``raw=True`` skips that."""
        self._check_fitted()
        model = self.model_.eval()
        cfg = self.resolved_config()
        precision = resolve_precision(cfg.precision, next(model.parameters()).device)
        with use_engine(cfg.engine):
            pred = self.modality_.predict(model, self.tokenizer_, self.preprocess_, examples, precision=precision,
                                          batch_size=batch_size)
        temperature = (getattr(self, "calibration_", None) or {}).get("temperature")
        if temperature and not raw and len(pred.probs):
            pred = dataclasses.replace(pred, probs=apply_temperature(pred.probs, float(temperature)))
        return pred

    def predict_proba(self, X, batch_size: int = 64) -> np.ndarray:
        """Class probabilities, shape (n_inputs, n_classes), columns in ``classes_`` order."""
        self._check_fitted()
        pred = self.predict_examples(self._read(X, purpose="predict"), batch_size=batch_size)
        if pred.skipped:
            name, why = pred.skipped[0]
            raise DataError(f"Cannot predict {name!r}: {why}. ({len(pred.skipped)} unusable input(s) in all.)")
        return pred.probs

    def predict_texts(self, texts: Sequence[str], batch_size: int = 64) -> np.ndarray:
        """``predict_proba`` for a list of texts (a text run)."""
        return self.predict_proba(list(texts), batch_size=batch_size)

    def predict(self, X) -> np.ndarray:
        probs = self.predict_proba(X)
        return np.asarray(self.classes_, dtype=object)[probs.argmax(1)]

    def score(self, X, y: Sequence | None = None) -> float:
        """Accuracy on labelled data (a folder, a table, or inputs + ``y``)."""
        return float(self.evaluate(X, y)["accuracy"])

    def evaluate(self, X, y: Sequence | None = None) -> dict[str, Any]:
        """Accuracy, macro-F1, per-class precision/recall/F1 and the confusion matrix."""
        self._check_fitted()
        ex = self._read(X, y, purpose="evaluate")
        truth = encode_labels(aligned_labels(ex.labels, self.classes_), self.classes_)
        pred = self.predict_examples(ex)
        if not pred.index:
            noun = self.modality_.noun
            if pred.skipped:
                raise DataError(f"None of the {len(ex)} evaluation {noun} could be read; first error: "
                                f"{pred.skipped[0][0]!r}: {pred.skipped[0][1]}.")
            raise DataError(f"No usable {noun} to evaluate in {ex.origin}.")
        report = classification_metrics(truth[pred.index].numpy(), pred.probs.argmax(1), self.classes_)
        report["n_skipped"] = len(pred.skipped)
        report["skipped"] = pred.skipped[:50]
        return report

    # ------------------------------------------------------------------ persistence
    def save(self, directory: str | Path) -> Path:
        self._check_fitted()
        self.modality_.save_files(Path(directory), self.model_, self.tokenizer_)
        return save_run(directory, self.model_, self._meta())

    def _meta(self) -> dict[str, Any]:
        """What ``headstart.json`` records about this fitted model (``save_run`` adds hashes and versions)."""
        history = self.history_
        return {
            "modality": self.modality_.name,
            "backbone": self.backbone_info_,
            "classes": list(self.classes_),
            "preprocess": self.preprocess_.to_dict(),
            "config": self.fitted_config_.to_dict(),
            "inputs": {"path_column": self.path_column, "text_column": self.text_column, "encoding": self.encoding,
                       "label_column": self.label_column},
            "plan": self.plan_.to_dict() if self.plan_ is not None else None,
            "history": {"phases": history.phases, "precision": history.precision,
                        "inference_precision": history.inference_precision,
                        "seconds": history.seconds} if history else None,
            "metrics": self.run_metrics(),
            "selection": getattr(self, "selection_", None),
            "data": self.data_info_,
            "baselines": self.baselines_,
            "distillation": getattr(self, "distillation_", None),
            "hardening": getattr(self, "hardening_", None),
            "semi_supervised": getattr(self, "semi_supervised_", None),
            "target_adaptation": getattr(self, "target_adaptation_", None),
            "adaptation": getattr(self, "adaptation_", None),
            "calibration": getattr(self, "calibration_", None),
            "tracking": getattr(self, "tracking_", None),
        }

    def final_metrics_(self) -> dict[str, Any]:
        """The epoch whose weights were kept (best validation loss), else the last one."""
        best = [r for r in self.history_.epochs if r.get("best")]
        last = self.history_.epochs[-1] if self.history_.epochs else {}
        rec = best[-1] if best else last
        return {k: rec[k] for k in ("phase", "epoch", "train_loss", "train_acc", "val_loss", "val_acc") if k in rec}

    def _check_fitted(self) -> None:
        if not hasattr(self, "model_"):
            raise HeadstartError("This TransferClassifier is not fitted yet; call fit() or headstart.load(run_dir).")


_DISTILL_OPTIONS = tuple(f.name for f in dataclasses.fields(DistillConfig) if f.name != "student")


def _claim_out(out, *, resume: bool, overwrite: bool) -> None:
    """A run directory a derived run (distilled, adapted) may write: never a finished run unless told."""
    if out is None:
        return
    refuse_to_replace(out, resume=resume, overwrite=overwrite)
    check_writable(out)
    if overwrite:
        clear_run(out)


def _distill_options(student: str, options: dict[str, Any]) -> tuple[DistillConfig, dict[str, Any]]:
    """Split ``distill``'s keywords into the distillation settings and the student's training options."""
    unknown = [k for k in options if k not in _DISTILL_OPTIONS and k not in TRAIN_OPTIONS]
    if unknown:
        raise HeadstartError(f"Unknown distillation option {unknown[0]!r}."
                             + did_you_mean(unknown[0], _DISTILL_OPTIONS + TRAIN_OPTIONS))
    settings = DistillConfig(student=student, **{k: v for k, v in options.items() if k in _DISTILL_OPTIONS})
    return settings, {k: v for k, v in options.items() if k in TRAIN_OPTIONS}


def _full_signature(init) -> inspect.Signature:
    """``__init__``'s signature with every TrainConfig field spelled out (keyword-only, its default), so
    ``help(TransferClassifier)``, IDEs and ``inspect`` show the real parameters, not ``**train_options``."""
    sig = inspect.signature(init)
    named = [p for p in sig.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    taken = {p.name for p in named}
    extra = [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, default=f.default, annotation=f.type)
             for f in dataclasses.fields(TrainConfig) if f.name not in taken]
    return sig.replace(parameters=named + extra)


TransferClassifier.__init__.__signature__ = _full_signature(TransferClassifier.__init__)


def _check_option_names(options: dict[str, Any]) -> None:
    unknown = [k for k in options if k not in TRAIN_OPTIONS]
    if unknown:
        raise HeadstartError(f"Unknown training option {unknown[0]!r}." + did_you_mean(unknown[0], TRAIN_OPTIONS))


def _check_fixmatch_config(cfg: TrainConfig, modality: Modality, target) -> None:
    if modality.name != "image":
        raise HeadstartError("--ssl-method fixmatch needs images (its strong augmentation perturbs pixels): use "
                             "self-training, label-propagation or auto for texts.")
    if cfg.strategy in ("linear-probe", "auto"):
        raise HeadstartError(f"--ssl-method fixmatch trains the backbone on the pool, and strategy {cfg.strategy!r} "
                             "does not train it: use --strategy two-stage (or full, partial), or --ssl-method auto "
                             "for heads on frozen features.")
    if cfg.harden or target is not None:
        raise HeadstartError("--ssl-method fixmatch changes what the fine-tune minimises, as --harden and --target "
                             "do: use one of them per run.")


def _check_target_config(cfg: TrainConfig) -> None:
    if cfg.strategy in ("linear-probe", "auto"):
        why = "never trains the backbone" if cfg.strategy == "linear-probe" else "may not train the backbone"
        raise HeadstartError(f"--target aligns the backbone's features while it trains, and strategy {cfg.strategy!r} "
                             f"{why}: use --strategy two-stage (or full, partial), or adapt a frozen-backbone run "
                             "afterwards with `headstart adapt RUN TARGET`.")
    if cfg.harden:
        raise HeadstartError("--target and --harden each change what the fine-tune minimises; pick one (harden the "
                             "adapted run's successor, or adapt a hardened run with `headstart adapt`).")


def _check_every_class_present(y: torch.Tensor, classes: list, skipped: list) -> None:
    counts = torch.bincount(y, minlength=len(classes))
    empty = [classes[i] for i in range(len(classes)) if counts[i] == 0]
    if empty:
        example = f", e.g. {skipped[0][0]!r}: {skipped[0][1]}" if skipped else ""
        raise DataError(
            f"Every training example of class {empty[0]!r} was unreadable ({len(skipped)} skipped{example}); "
            "fix those files or remove the class."
        )


def _backbone_info(backbone) -> dict[str, Any]:
    return {"spec": backbone.spec, "architecture": backbone.architecture,
            "weights_sha256": backbone.weights_sha256, "num_features": backbone.num_features,
            "num_params": backbone.num_params, "stages": [s.name for s in backbone.stages],
            "notes": backbone.notes}


def load(directory: str | Path) -> TransferClassifier:
    """Rebuild a saved run offline (any modality, any earlier format): same architecture, weights,
    classes, preprocessing and tokenizer."""
    run = Run.open(directory)
    modality = modality_named(run.modality)
    state = run.state_dict()
    module, stages, tokenizer = modality.rebuild(run.path, run.meta, state)
    preprocess = modality.preprocess_type.from_dict(run.meta["preprocess"])
    cfg = run.config
    model = TransferModel(module, run.backbone["num_features"], len(run.classes), preprocess, stages=stages,
                          dropout=cfg.dropout)
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]  # a non-persistent buffer in some versions
    if missing or unexpected:
        raise HeadstartError(f"{str(directory)!r}: weights do not match the recorded architecture "
                             f"(missing {missing[:3]}, unexpected {unexpected[:3]}).")
    clf = TransferClassifier(run.backbone["spec"], strategy=cfg.strategy, config=cfg, **run.inputs)
    clf.model_ = model.to(default_device()).eval()
    clf.modality_ = modality
    clf.classes_ = run.classes
    clf.preprocess_ = preprocess
    clf.tokenizer_ = tokenizer
    clf.backbone_info_ = run.backbone
    clf.fitted_config_ = cfg
    # What fit measured stays as saved; a loaded model has no training history of its own.
    clf.history_, clf.plan_, clf.profile_ = None, None, None
    clf.data_info_, clf.baselines_ = run.meta.get("data"), run.meta.get("baselines")
    clf.distillation_ = run.meta.get("distillation")
    clf.hardening_ = run.meta.get("hardening")
    clf.semi_supervised_ = run.meta.get("semi_supervised")
    clf.target_adaptation_ = run.meta.get("target_adaptation")
    clf.adaptation_ = run.meta.get("adaptation")
    clf.selection_ = run.meta.get("selection")
    clf.calibration_ = run.meta.get("calibration")
    clf.tracking_ = run.meta.get("tracking")
    clf.run_ = run
    clf.meta_ = run.meta
    return clf
