"""The steps of :func:`distill`, in order (the package docstring says what each does)."""
from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from headstart.config import TrainConfig
from headstart.device import default_device, resolve_precision
from headstart.distill.config import DistillConfig
from headstart.distill.loss import DistillObjective
from headstart.distill.measure import model_facts
from headstart.distill.transfer_set import (
    Teacher,
    TransferSet,
    build_transfer_set,
    labels_tensor,
)
from headstart.encoders import get_backbone, source_modality
from headstart.encoders.base import Backbone
from headstart.encoders.model import TransferModel
from headstart.errors import BackboneError, DataError, HeadstartError
from headstart.io.run import CHECKPOINT, resume_checkpoint, run_paths
from headstart.storage import check_writable, write_json
from headstart.train.distributed import make_accelerator, process_state
from headstart.train.loop import History, TrainData, fit, seed_everything
from headstart.train.objectives import Objective

log = logging.getLogger("headstart")
STATE = "distill_state.json"  # the finished direct student and T/alpha choice, so a resumed run skips them


@dataclass
class Distilled:
    """A trained student and what distilling it measured."""

    model: TransferModel
    backbone: Backbone
    history: History
    config: TrainConfig  # the student's training options
    settings: DistillConfig  # temperature and alpha as used
    report: dict[str, Any]
    data_info: dict[str, Any] = field(default_factory=dict)
    skipped: list = field(default_factory=list)
    direct_model: TransferModel | None = None  # the student trained on the labels alone (not after a resume)


def student_config(spec: str, teacher_cfg: TrainConfig, options: dict[str, Any]) -> TrainConfig:
    """The student's :class:`TrainConfig`: defaults for its kind, then ``options`` (what the user set).

    A from-scratch student trains every layer at one learning rate, as the from-scratch baseline does;
    a pretrained one follows the usual two-stage defaults. The split seed and precision are the teacher's
    (the same validation split), label smoothing is off (the soft targets already soften), and views
    replace augmentation: the loop's own augmentation would show the student a view the teacher never saw.
    """
    if options.get("augment"):
        raise HeadstartError("augment=True does not apply to distillation: the student sees exactly the views "
                             "the teacher labelled; set views=N (CLI --views N) for more augmented views.")
    if options.get("strategy") == "auto":
        raise HeadstartError("strategy 'auto' plans a fine-tune from labelled data; a distillation student takes "
                             "one of linear-probe, partial, full, two-stage.")
    base = TrainConfig(seed=teacher_cfg.seed, val_fraction=teacher_cfg.val_fraction, precision=teacher_cfg.precision,
                       label_smoothing=0.0, baselines=False)
    if spec.startswith("scratch:"):
        base = base.replace(strategy="full", lr=2e-3, backbone_lr_ratio=1.0, layer_decay=1.0, weight_decay=5e-4,
                            epochs=30, batch_size=64)
    return base.replace(**options).replace(augment=False)


def distill(teacher: Teacher, settings: DistillConfig, cfg: TrainConfig, train_ex, val_ex, pool=None, *,
            out: str | Path | None = None, progress: Callable | None = None, resume: bool = False) -> Distilled:
    """Train ``settings.student`` on ``teacher``'s outputs (the steps: ``headstart.distill``'s docstring)."""
    t_start = time.perf_counter()
    device = default_device()
    precision = resolve_precision(cfg.precision, device)
    if process_state().num_processes > 1:  # read the process state; building an accelerator here would reset it
        raise HeadstartError("distill runs in one process; start it without torchrun / accelerate launch.")
    state = _State(out, settings, cfg, resume)
    checks = check_pair(teacher, settings.student)
    seed_everything(cfg.seed)
    student_bb = get_backbone(settings.student)
    checks += check_preprocessing(teacher, student_bb)
    teacher_val = _teacher_on_validation(teacher, val_ex, precision, checks)
    views = settings.views if teacher.modality.augmentation(TrainConfig(augment=True)) is not None else 1
    ts = build_transfer_set(teacher, student_bb, train_ex, val_ex, pool, views=views, seed=cfg.seed,
                            precision=precision)
    has_val = ts.data.x_val is not None and len(ts.data.x_val) > 0

    direct, direct_model = state.get("direct"), None
    if direct is None:
        direct, direct_model = _direct_student(teacher, settings, cfg, ts, val_ex, precision, has_val,
                                               _named(progress, "direct"))
        state.put("direct", direct)
    chosen = state.get("chosen")
    if chosen is None:
        chosen = _choose(teacher, settings, cfg, ts, val_ex, precision, has_val, progress)
        state.put("chosen", chosen)
    temperature, alpha = chosen["temperature"], chosen["alpha"]
    settings = settings.replace(temperature=temperature, alpha=alpha)

    ckpt = resume_checkpoint(Path(out), cfg) if resume and (Path(out) / CHECKPOINT).is_file() else None
    metrics_path, checkpoint_path = run_paths(out, fresh=ckpt is None)
    log.info("distill: training %s (T=%g, alpha=%g) on %d rows", settings.student, temperature, alpha,
             len(ts.data.x_train))
    model, backbone, history = _train(settings.student, len(teacher.classes), ts.data, cfg,
                                      DistillObjective(temperature, alpha), metrics_path=metrics_path,
                                      checkpoint_path=checkpoint_path, resume=ckpt, progress=progress)
    student_acc = _accuracy(model, teacher, backbone, val_ex, precision) if has_val else None
    sample = train_ex.subset(list(range(min(8, len(train_ex)))))
    report = _report(teacher, teacher_val, model, ts, sample, direct, chosen, student_acc, settings, checks,
                     precision)
    report["seconds"] = round(time.perf_counter() - t_start, 2)
    _log_summary(report)
    return Distilled(model, backbone, history, cfg, settings, report,
                     data_info={"n_train": len(ts.data.x_train), "n_val": len(ts.data.x_val) if has_val else 0,
                                "transfer_set": ts.info},
                     skipped=ts.skipped, direct_model=direct_model)


# ------------------------------------------------------------------ 1. checks

def check_pair(teacher: Teacher, student_spec: str) -> list[str]:
    """The student must read what the teacher reads; a text student of an image teacher cannot learn."""
    kind = source_modality(student_spec)
    if kind != teacher.modality.name:
        raise BackboneError(
            f"The student {student_spec!r} reads {kind}s but the teacher ({teacher.spec}) reads "
            f"{teacher.modality.name}s: both must take the same inputs. Pick a student for "
            f"{teacher.modality.noun}, e.g. " + ("'scratch:tiny' or 'timm:tf_efficientnet_lite0'."
                                                 if teacher.modality.name == "image" else "'vectors:glove-6b-50d'."))
    return [f"same inputs: teacher and student both read {teacher.modality.noun}"]


def check_preprocessing(teacher: Teacher, student: Backbone) -> list[str]:
    """Each model must normalise inside itself, exactly as its own preprocessing says.

    Both are fed the same raw inputs (uint8 pixels, or texts each tokenises itself); a teacher whose
    built-in normalisation differs from its recorded preprocessing would be given inputs it was never
    trained on, so that is an error, not a warning.
    """
    if teacher.modality.name != "image":
        return [f"texts: the teacher tokenises with its own tokenizer ({teacher.preprocess.kind}, "
                f"{teacher.preprocess.max_length} tokens), the student with its own "
                f"({student.preprocess.kind}, {student.preprocess.max_length} tokens)"]
    t, s = teacher.preprocess, student.preprocess
    for name, model_value, recorded in (("mean", teacher.model.mean, t.mean), ("std", teacher.model.std, t.std)):
        if not torch.allclose(model_value.flatten().cpu(), torch.tensor(recorded, dtype=model_value.dtype), atol=1e-6):
            raise HeadstartError(
                f"The teacher normalises with {name} {model_value.flatten().tolist()} but its run records "
                f"{list(recorded)}: its inputs would be normalised differently from its training. Re-save the "
                "teacher with `headstart train` (or fix preprocess in its headstart.json).")
    return [f"teacher decodes at {t.input_size} px (crop {t.crop_pct:g}, {t.interpolation}) and normalises with "
            f"mean {_fmt(t.mean)} std {_fmt(t.std)} inside itself; the student at {s.input_size} px "
            f"(crop {s.crop_pct:g}, {s.interpolation}), mean {_fmt(s.mean)} std {_fmt(s.std)}; each decodes the same "
            "files itself, and augmented views are cut at the teacher's size and resized for the student"]


def _fmt(values) -> str:
    return "(" + ", ".join(f"{v:.3f}" for v in values) + ")"


def _teacher_on_validation(teacher: Teacher, val_ex, precision: str, checks: list[str]) -> float | None:
    """The teacher's accuracy on the validation split; far below what its fit recorded is an error."""
    if val_ex is None or not len(val_ex):
        checks.append("no validation split: the teacher's accuracy could not be re-measured")
        return None
    acc = _accuracy(teacher.model, teacher, teacher.as_backbone, val_ex, precision)
    rec = teacher.recorded_val_acc
    if rec is None:
        checks.append(f"teacher validation accuracy {acc:.4f} (its run recorded none to compare)")
        return acc
    se = math.sqrt(max(rec * (1 - rec), 1e-4) / len(val_ex))
    if acc < rec - max(0.05, 3 * se):
        raise DataError(
            f"The teacher scores {acc:.4f} on the validation split rebuilt from its run, but its own fit measured "
            f"{rec:.4f} there ({len(val_ex)} examples): the data, its split or its preprocessing differ from the "
            "teacher's training. Pass the data the teacher was trained on (--data), or --val with the teacher's "
            "validation set if it had one.")
    checks.append(f"teacher validation accuracy {acc:.4f}, as its fit recorded ({rec:.4f})")
    return acc


@torch.no_grad()
def _accuracy(model: TransferModel, teacher: Teacher, encoder, examples, precision: str) -> float:
    """Accuracy on labelled ``examples`` through the prediction path (``modality.predict``)."""
    pred = teacher.modality.predict(model.eval(), encoder.tokenizer, encoder.preprocess, examples, precision=precision)
    if not pred.index:
        raise DataError(f"None of the {len(examples)} validation {teacher.modality.noun} could be read.")
    truth = labels_tensor(examples, pred.index, teacher.classes).numpy()
    return round(float((pred.probs.argmax(1) == truth).mean()), 5)


# ------------------------------------------------------------------ 3-5. training the students

def _train(spec: str, n_classes: int, data: TrainData, cfg: TrainConfig, objective: Objective, **fit_kwargs):
    """A fresh student (same seed, same initial weights every time) trained by the usual loop."""
    seed_everything(cfg.seed)
    backbone = get_backbone(spec)
    model = TransferModel(backbone.module, backbone.num_features, n_classes, backbone.preprocess,
                          stages=backbone.stages, dropout=cfg.dropout).to(default_device())
    accel = make_accelerator(resolve_precision(cfg.precision, default_device(), purpose="train"))
    history = fit(model, backbone, data, cfg, objective=objective, accelerator=accel, **fit_kwargs)
    return model, backbone, history


def _direct_student(teacher: Teacher, settings: DistillConfig, cfg: TrainConfig, ts: TransferSet, val_ex,
                    precision: str, has_val: bool, progress=None) -> tuple[dict[str, Any], TransferModel | None]:
    """The student trained on the labelled rows alone: same views, seed and at most the same steps."""
    if not settings.compare:
        return {"skipped": "compare=False"}, None
    if not has_val:
        return {"skipped": "no validation split to compare on"}, None
    scale = len(ts.data.x_train) / max(len(ts.direct.x_train), 1)  # the same budget in optimizer steps
    dcfg = cfg.replace(epochs=math.ceil(cfg.epochs * scale), head_epochs=math.ceil(cfg.head_epochs * scale))
    log.info("distill: training the direct student (%s on the labels alone, %d rows)", settings.student,
             len(ts.direct.x_train))
    t0 = time.perf_counter()
    model, backbone, history = _train(settings.student, len(teacher.classes), ts.direct, dcfg,
                                      Objective(cfg.label_smoothing), progress=progress)
    acc = _accuracy(model, teacher, backbone, val_ex, precision)
    return {"val_acc": acc, "epochs": dcfg.epochs, "head_epochs": dcfg.head_epochs,
            "epochs_run": len(history.epochs), "seconds": round(time.perf_counter() - t0, 2)}, model


def _choose(teacher: Teacher, settings: DistillConfig, cfg: TrainConfig, ts: TransferSet, val_ex, precision: str,
            has_val: bool, progress=None) -> dict[str, Any]:
    """T and alpha: as given, else the candidate whose short run scores best on the validation split."""
    candidates = settings.candidates()
    if len(candidates) == 1:
        t, a = candidates[0]
        return {"temperature": t, "alpha": a, "by": "given", "selection": []}
    if not has_val:
        t = settings.temperature if settings.temperature is not None else 4.0
        a = settings.alpha if settings.alpha is not None else 0.5
        return {"temperature": t, "alpha": a, "by": "default (no validation split to choose on)", "selection": []}
    frac = settings.selection_fraction
    short = cfg.replace(epochs=max(1, round(cfg.epochs * frac)),
                        head_epochs=max(1, round(cfg.head_epochs * frac)) if cfg.head_epochs else 0)
    rows = []
    for t, a in candidates:
        log.info("distill: trying T=%g, alpha=%g (%s)", t, a, _budget(short))
        model, backbone, history = _train(settings.student, len(teacher.classes), ts.data, short,
                                          DistillObjective(t, a), progress=_named(progress, f"T={t:g} a={a:g}"))
        rows.append({"temperature": t, "alpha": a, "val_acc": _accuracy(model, teacher, backbone, val_ex, precision),
                     "val_loss": _final_record(history).get("val_loss")})
    best = max(rows, key=lambda r: (r["val_acc"], -(r["val_loss"] if r["val_loss"] is not None else math.inf)))
    return {"temperature": best["temperature"], "alpha": best["alpha"], "by": "validation", "selection": rows,
            "selection_epochs": short.epochs}


def _budget(cfg: TrainConfig) -> str:
    return f"{cfg.head_epochs} head epochs, {cfg.epochs} epochs" if cfg.strategy == "two-stage" else (
        f"{cfg.head_epochs} head epochs" if cfg.strategy == "linear-probe" else f"{cfg.epochs} epochs")


def _named(progress, name: str):
    """The progress callback with its bars named after this student ("direct finetune", ...)."""
    if progress is None:
        return None
    return lambda rec, total: progress({**rec, "phase": f"{name} {rec['phase']}"}, total)


def _final_record(history: History) -> dict[str, Any]:
    best = [r for r in history.epochs if r.get("best")]
    return (best or history.epochs or [{}])[-1]


# ------------------------------------------------------------------ 6. the report

def _report(teacher: Teacher, teacher_val, model, ts: TransferSet, sample, direct, chosen, student_acc, settings,
            checks, precision: str) -> dict[str, Any]:
    sample_t = teacher.modality.encode(sample, teacher.as_backbone).x
    sample_s = ts.data.x_train[:8]
    t_facts = model_facts(teacher.model, sample_t, precision=precision)
    s_facts = model_facts(model, sample_s, precision=precision)
    d_acc = direct.get("val_acc")
    ratio = None
    if None not in (teacher_val, student_acc, d_acc) and teacher_val - d_acc > 0:
        ratio = round((student_acc - d_acc) / (teacher_val - d_acc), 4)
    return {
        "teacher": {"spec": teacher.spec, "run": teacher.run, "val_acc": teacher_val,
                    "recorded_val_acc": teacher.recorded_val_acc, **t_facts},
        "student": {"spec": settings.student, "val_acc": student_acc, **s_facts},
        "direct": direct,
        "gain": round(student_acc - d_acc, 5) if None not in (student_acc, d_acc) else None,
        "ratio": ratio,
        "throughput_ratio": round(s_facts["throughput_per_s"] / max(t_facts["throughput_per_s"], 1e-9), 2),
        "size_ratio": round(t_facts["file_bytes"] / max(s_facts["file_bytes"], 1), 2),
        "temperature": chosen["temperature"], "alpha": chosen["alpha"], "chosen_by": chosen["by"],
        "settings": settings.to_dict(),
        "selection": chosen.get("selection", []), "transfer_set": ts.info, "checks": checks,
        "validation": "accuracies on the teacher's validation split (never trained on by teacher or student)",
    }


def _log_summary(r: dict[str, Any]) -> None:
    log.info("distill: teacher %s, student %s, direct %s; ratio %s; throughput x%s", r["teacher"]["val_acc"],
             r["student"]["val_acc"], r["direct"].get("val_acc"), r["ratio"], r["throughput_ratio"])


class _State:
    """``distill_state.json`` in the run directory: the finished stages of a distillation, for resume."""

    def __init__(self, out, settings: DistillConfig, cfg: TrainConfig, resume: bool):
        self.path = Path(out) / STATE if out is not None else None
        self.key = {"distill": settings.to_dict(), "config": cfg.to_dict()}
        self.data: dict[str, Any] = {"key": self.key}
        if self.path is None:
            if resume:
                raise HeadstartError("resume=True needs out=<the run directory of the interrupted distillation>.")
            return
        check_writable(self.path.parent)
        if resume:
            if not self.path.is_file():
                raise HeadstartError(f"Nothing to resume in {str(self.path.parent)!r}: no {STATE} (the "
                                     "distillation never finished its first stage). Start it again with "
                                     "`headstart distill` and the same options.")
            saved = json.loads(self.path.read_text())
            if saved.get("key") != self.key:
                raise HeadstartError(f"Cannot resume {str(self.path.parent)!r} with different distillation or "
                                     "training options; resume with the options of the original run.")
            self.data = saved
        elif self.path.is_file():
            self.path.unlink()

    def get(self, name: str):
        return self.data.get(name)

    def put(self, name: str, value) -> None:
        self.data[name] = value
        if self.path is not None:
            write_json(self.path, self.data)
