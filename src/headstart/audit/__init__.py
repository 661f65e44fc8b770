"""What a fine-tuned model inherits: an adversarial-robustness audit, white-box and teacher-only.

>>> result = audit(load("runs/shoes"), "data/test", eps=(2/255, 4/255, 8/255))
>>> result.table(); result.save("runs/shoes/audit.json")

The pipeline: read and decode the test images exactly as the run predicts them (its own size and
crop), take ``n`` of them (a seeded draw), and work in the input space [0, 1] — the run's model
normalises inside, so no attack can be fed wrongly normalised inputs. Then, on the fp32 model:

1. **white-box** accuracy under FGSM, PGD (random restarts) and APGD-CE at each L∞ budget, and PGD at
   each L2 budget (:mod:`headstart.audit.attacks`);
2. **teacher-only**: perturbations computed on the *public pretrained backbone alone* (its features
   pushed away from the clean ones; no head, no fine-tuned weights), applied to the run's model; with two
   controls at the same budget: random signs, and the same feature attack computed on an *unrelated*
   network (a small net trained from scratch on the run's training data for ``control_seconds``);
3. **sanity checks** against gradient masking: accuracy falls as ε grows and is near 0 at a large ε,
   more PGD steps never help the model, the teacher-only attack is weaker than the white-box one.

Text runs: there is no [0, 1] input space to perturb (token ids are discrete); the result says so and
names the attacks that would apply (word substitutions), which headstart does not run.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from headstart.audit.attacks import apgd, feature_attack, fgsm, pgd, random_noise
from headstart.audit.harden import teacher_features
from headstart.data import decode_all
from headstart.device import to_fast_layout
from headstart.errors import HeadstartError
from headstart.storage import atomic_path

__all__ = ["AuditConfig", "AuditResult", "audit"]

log = logging.getLogger("headstart")


@dataclass(frozen=True)
class AuditConfig:
    """The threat model and the effort spent on it (``quick`` trades strength for time, and says so)."""

    eps: tuple[float, ...] = (2 / 255, 4 / 255, 8 / 255)  # L∞ budgets in [0, 1] pixel units
    l2_eps: tuple[float, ...] = (0.5, 1.0)  # L2 budgets per image
    n: int = 500  # test points attacked
    pgd_steps: int = 10
    pgd_restarts: int = 2
    apgd_steps: int = 50
    feature_steps: int = 10
    large_eps: float = 32 / 255  # the sanity check: accuracy should be near 0 here
    control_seconds: float = 60.0  # training budget of the unrelated from-scratch network
    batch_size: int = 32
    seed: int = 0
    quick: bool = False

    def effective(self) -> "AuditConfig":
        if not self.quick:
            return self
        from dataclasses import replace

        return replace(self, n=min(self.n, 100), pgd_steps=5, pgd_restarts=1, apgd_steps=20, feature_steps=5,
                       control_seconds=min(self.control_seconds, 20.0))


@dataclass
class AuditResult:
    applies: bool
    threat_model: dict[str, Any]
    clean_acc: float | None = None
    white_box: list[dict[str, Any]] = field(default_factory=list)  # one row per (attack, norm, eps)
    teacher_only: list[dict[str, Any]] = field(default_factory=list)  # one row per eps, with the controls
    sanity: list[dict[str, Any]] = field(default_factory=list)
    statement: str = ""
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(self.to_dict(), indent=2))
        return path


def audit(clf, data, y=None, *, config: AuditConfig | None = None, control_data=None, **options) -> AuditResult:
    """Audit the fitted classifier ``clf`` on labelled ``data`` (a folder, a CSV, or images with ``y``).

    ``options`` are :class:`AuditConfig` fields (``eps=(4/255,)``, ``n=200``, ``quick=True``).
    ``control_data``: labelled images to train the unrelated control network on (default: the run's own
    training data, as recorded; never the audited test images).
    """
    cfg = (config or AuditConfig()).__class__(**{**asdict(config or AuditConfig()), **options}).effective()
    t0 = time.perf_counter()
    threat = _threat_model(cfg)
    if clf.modality_.name != "image":
        return AuditResult(False, threat, statement=(
            "this is a text run: its inputs are token ids, with no [0, 1] space for L-inf/L2 perturbations, so "
            "none of these attacks apply. The text analogue is word-substitution attacks (TextFooler, BERT-Attack), "
            "which headstart does not run."), seconds=round(time.perf_counter() - t0, 2))
    x, y_true = _points(clf, data, y, cfg)
    model = _fp32(clf.model_)
    threat["n_points"] = len(x)
    clean_right = _correct(model, x, y_true, cfg.batch_size)
    result = AuditResult(True, threat, clean_acc=_mean(clean_right))
    result.white_box = _white_box(model, x, y_true, cfg)
    result.teacher_only = _teacher_only(clf, model, x, y_true, clean_right, cfg, control_data)
    result.sanity = _sanity(model, x, y_true, result, cfg)
    result.statement = _statement(result)
    result.seconds = round(time.perf_counter() - t0, 2)
    return result


# ----------------------------------------------------------------------------- steps
def _threat_model(cfg: AuditConfig) -> dict[str, Any]:
    return {"input_space": "[0, 1] per pixel channel, at the run's input size (normalisation is inside the model)",
            "linf_eps": [round(e, 6) for e in cfg.eps], "linf_eps_255": [round(e * 255, 3) for e in cfg.eps],
            "l2_eps": list(cfg.l2_eps), "pgd": {"steps": cfg.pgd_steps, "restarts": cfg.pgd_restarts,
                                                "step": "2.5 eps / steps"},
            "apgd_ce": {"steps": cfg.apgd_steps}, "feature_attack_steps": cfg.feature_steps, "seed": cfg.seed,
            "precision": "fp32", "quick": cfg.quick}


def _points(clf, data, y, cfg: AuditConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """``cfg.n`` test images decoded as the run predicts them, as floats in [0, 1], and their labels."""
    from headstart.data import encode_labels
    from headstart.data.sources import aligned_labels

    ex = clf._read(data, y, purpose="evaluate")
    decoded = decode_all(ex, clf.preprocess_)
    labels = encode_labels(aligned_labels([ex.labels[i] for i in decoded.index], clf.classes_), clf.classes_)
    rng = np.random.default_rng(cfg.seed)
    take = np.sort(rng.permutation(len(labels))[: cfg.n])
    return decoded.pixels[take].float().div_(255.0), labels[take]


def _fp32(model):
    model = to_fast_layout(model.float().eval())  # channels_last: about 1.25x faster input gradients on CPU
    for p in model.parameters():
        p.requires_grad_(False)  # gradients flow to the inputs only
    return model


def _batched(fn: Callable, x: torch.Tensor, *rest, batch_size: int) -> torch.Tensor:
    return torch.cat([fn(x[i:i + batch_size], *[r[i:i + batch_size] for r in rest])
                      for i in range(0, len(x), batch_size)])


@torch.no_grad()
def _correct(model, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> np.ndarray:
    return torch.cat([model(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size]
                      for i in range(0, len(x), batch_size)]).numpy()


def _mean(right: np.ndarray) -> float:
    return round(float(np.mean(right)), 5) if len(right) else 0.0


def _white_box(model, x, y, cfg: AuditConfig) -> list[dict[str, Any]]:
    rows = []
    gen = lambda: torch.Generator().manual_seed(cfg.seed)  # noqa: E731  (each attack draws the same starts)
    attacks = {
        "fgsm": lambda xb, yb, e: fgsm(model, xb, yb, e),
        "pgd": lambda xb, yb, e: pgd(model, xb, yb, e, steps=cfg.pgd_steps, restarts=cfg.pgd_restarts,
                                     generator=gen()),
        "apgd-ce": lambda xb, yb, e: apgd(model, xb, yb, e, steps=cfg.apgd_steps, generator=gen()),
    }
    for eps in cfg.eps:
        for name, attack in attacks.items():
            t0 = time.perf_counter()
            adv = _batched(lambda xb, yb: attack(xb, yb, eps), x, y, batch_size=cfg.batch_size)
            rows.append({"attack": name, "norm": "linf", "eps": eps, "eps_255": round(eps * 255, 3),
                         "accuracy": _mean(_correct(model, adv, y, cfg.batch_size)),
                         "seconds": round(time.perf_counter() - t0, 2)})
            log.info("audit: %s L-inf %.1f/255: accuracy %.4f", name, eps * 255, rows[-1]["accuracy"])
    for eps in cfg.l2_eps:
        t0 = time.perf_counter()
        adv = _batched(lambda xb, yb: pgd(model, xb, yb, eps, norm="l2", steps=cfg.pgd_steps,
                                          restarts=cfg.pgd_restarts, generator=gen()), x, y, batch_size=cfg.batch_size)
        rows.append({"attack": "pgd", "norm": "l2", "eps": eps, "accuracy": _mean(_correct(model, adv, y, cfg.batch_size)),
                     "seconds": round(time.perf_counter() - t0, 2)})
    return rows


def _teacher_only(clf, model, x, y, clean_right, cfg: AuditConfig, control_data) -> list[dict[str, Any]]:
    teacher = teacher_features(clf.backbone_info_["spec"], clf.preprocess_)
    if teacher is None:
        return []
    control, control_what = _control_features(clf, cfg, control_data)
    rows = []
    right = clean_right.astype(bool)

    def success(adv) -> float:  # share of the clean-correct points the perturbation fools
        now = _correct(model, adv, y, cfg.batch_size)
        return round(float(np.mean(~now[right])), 5) if right.any() else 0.0

    for eps in cfg.eps:
        t0 = time.perf_counter()
        gen = torch.Generator().manual_seed(cfg.seed)
        adv = _batched(lambda xb: feature_attack(teacher, xb, eps, steps=cfg.feature_steps, generator=gen), x,
                       batch_size=cfg.batch_size)
        row = {"eps": eps, "eps_255": round(eps * 255, 3), "teacher_success": success(adv),
               "random_noise_success": success(random_noise(x, eps, torch.Generator().manual_seed(cfg.seed)))}
        if control is not None:
            gen = torch.Generator().manual_seed(cfg.seed)
            adv_c = _batched(lambda xb: feature_attack(control, xb, eps, steps=cfg.feature_steps, generator=gen), x,
                             batch_size=cfg.batch_size)
            row["unrelated_success"] = success(adv_c)
        row["unrelated"] = control_what
        row["seconds"] = round(time.perf_counter() - t0, 2)
        rows.append(row)
        log.info("audit: teacher-only %.1f/255: %.1f %% of the correct points fooled (random %.1f %%)", eps * 255,
                 100 * row["teacher_success"], 100 * row["random_noise_success"])
    return rows


def _control_features(clf, cfg: AuditConfig, control_data) -> tuple[Callable | None, str]:
    """An unrelated network: :class:`ScratchNet` trained on the run's training data (never the test points)."""
    from headstart.data import class_list, encode_labels, stratified_split
    from headstart.modalities.scratch import train_scratch

    try:
        source = control_data if control_data is not None else clf._training_source()
        ex = clf._read(source, purpose="train")
    except HeadstartError as exc:
        return None, f"not run: {exc}"
    decoded = decode_all(ex, clf.preprocess_)
    labels = [ex.labels[i] for i in decoded.index]
    classes = class_list(labels)
    y = encode_labels(labels, classes)
    tr, va = stratified_split(labels, 0.2, cfg.seed)
    net = train_scratch(decoded.pixels[tr], y[tr], decoded.pixels[va], y[va], len(classes), cfg.control_seconds,
                        seed=cfg.seed)
    what = (f"ScratchNet trained from scratch on the run's training data for {net['seconds']:.0f}s "
            f"(validation accuracy {net['val_acc']:.3f})")
    body = _fp32(net["model"]).body
    size = int(net["input_size"])

    def features(z):
        small = F.interpolate(z, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        return body((small - 0.5) / 0.25)
    return features, what


def _sanity(model, x, y, result: AuditResult, cfg: AuditConfig) -> list[dict[str, Any]]:
    """The checks that catch gradient masking, each with what was measured."""
    out = []
    linf = {(r["attack"], r["eps"]): r["accuracy"] for r in result.white_box if r["norm"] == "linf"}
    pgd_accs = [linf[("pgd", e)] for e in cfg.eps]
    out.append({"check": "PGD accuracy does not rise as eps grows", "measured": pgd_accs,
                "passed": all(b <= a + 1e-9 for a, b in zip(pgd_accs, pgd_accs[1:]))})
    k = min(len(x), 64)
    gen = lambda: torch.Generator().manual_seed(cfg.seed)  # noqa: E731
    big = _batched(lambda xb, yb: pgd(model, xb, yb, cfg.large_eps, steps=cfg.pgd_steps, generator=gen()),
                   x[:k], y[:k], batch_size=cfg.batch_size)
    big_acc = _mean(_correct(model, big, y[:k], cfg.batch_size))
    out.append({"check": f"accuracy near 0 at a large eps ({cfg.large_eps * 255:.0f}/255, {k} points)",
                "measured": big_acc, "passed": big_acc <= 0.05})
    e = cfg.eps[-1]
    more = _batched(lambda xb, yb: pgd(model, xb, yb, e, steps=2 * cfg.pgd_steps, restarts=cfg.pgd_restarts,
                                       generator=gen()), x[:k], y[:k], batch_size=cfg.batch_size)
    fewer = _batched(lambda xb, yb: pgd(model, xb, yb, e, steps=cfg.pgd_steps, restarts=cfg.pgd_restarts,
                                        generator=gen()), x[:k], y[:k], batch_size=cfg.batch_size)
    acc_more, acc_fewer = (_mean(_correct(model, a, y[:k], cfg.batch_size)) for a in (more, fewer))
    out.append({"check": f"twice the PGD steps never help the model ({e * 255:.0f}/255, {k} points)",
                "measured": {"steps": acc_fewer, "twice the steps": acc_more},
                "passed": acc_more <= acc_fewer + 1.0 / k})
    if result.teacher_only:
        white = {r["eps"]: r["accuracy"] for r in result.white_box if r["attack"] == "pgd" and r["norm"] == "linf"}
        clean = result.clean_acc or 0.0
        ok = all(clean * (1 - r["teacher_success"]) >= white[r["eps"]] - 1e-9 for r in result.teacher_only)
        out.append({"check": "the teacher-only attack is weaker than white-box PGD at every eps", "passed": ok,
                    "measured": {r["eps_255"]: {"teacher_only_acc": round(clean * (1 - r["teacher_success"]), 5),
                                                "pgd_acc": white[r["eps"]]} for r in result.teacher_only}})
    for c in out:
        if not c["passed"]:
            log.warning("audit sanity check failed: %s (%s): the robustness figures may be overestimated",
                        c["check"], c["measured"])
    return out


def _statement(result: AuditResult) -> str:
    if not result.teacher_only:
        return "no pretrained teacher (the run was trained without one): only white-box attacks apply"
    worst = max(result.teacher_only, key=lambda r: r["eps"])
    parts = [f"at {worst['eps_255']:.0f}/255 an attacker who knows only the public base weights fools "
             f"{100 * worst['teacher_success']:.1f} % of the points this model gets right "
             f"(random noise {100 * worst['random_noise_success']:.1f} %"]
    if "unrelated_success" in worst:
        parts.append(f", the same attack from an unrelated network {100 * worst['unrelated_success']:.1f} %")
    parts.append(")")
    inherited = worst["teacher_success"] - max(worst["random_noise_success"], worst.get("unrelated_success", 0.0))
    parts.append(f": {100 * max(inherited, 0):.1f} points of that vulnerability come from the teacher")
    return "".join(parts)
