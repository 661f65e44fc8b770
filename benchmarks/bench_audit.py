"""What a fine-tuned model inherits, and what ``--harden`` buys: the issue-15 table.

    .venv/bin/python benchmarks/bench_audit.py [--variants default,teacher,adversarial] [--n 100] [--full]
    .venv/bin/python benchmarks/bench_audit.py --validation-only   # the choice a user can make without test data

Fashion-MNIST, 100 labelled images per class (20 % of them the validation split), EfficientNet-Lite0
two-stage at 224 px, as ``headstart train`` runs it; one run per variant (the default fit, ``--harden``
with each method), kept under ``benchmarks/.runs/audit-*`` so a second call only audits. Each run is
then audited by ``headstart.audit.audit`` on the first ``--n`` points of a seeded draw from the 10,000
official test images: clean accuracy on all 10,000, white-box FGSM / PGD / APGD-CE at 2, 4, 8/255, and
the teacher-only attack with its two controls (random signs, the same attack from an unrelated
from-scratch network). The audit runs in the tool's ``--quick`` mode unless ``--full`` (its wall time
is printed either way). Results: benchmarks/results/audit.json.

The goal of ``--harden``: teacher-only success cut at least 5x at no more than 1 point of clean test
accuracy. Nothing here is tuned on the test images: every option is the tool's default.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from _bench import BACKBONE, machine

HERE = Path(__file__).resolve().parent
RUNS = HERE / ".runs"
VARIANTS = {"default": {}, "teacher": {"harden": True, "harden_method": "teacher"},
            "adversarial": {"harden": True, "harden_method": "adversarial"}}


def data(per_class: int, seed: int = 0):
    from headstart.data import as_examples
    from headstart.data.datasets import fashion_mnist, per_class_subset

    x, y = fashion_mnist("train")
    idx = per_class_subset(y, per_class, seed=seed)
    xt, yt = fashion_mnist("test")
    return as_examples(x[idx], y[idx].tolist()), as_examples(xt, yt.tolist())


def trained(variant: str, train, per_class: int):
    from headstart import TransferClassifier, load

    out = RUNS / f"audit-{variant}-{per_class}"
    if (out / "headstart.json").exists():
        return load(out), None
    t0 = time.perf_counter()
    clf = TransferClassifier(BACKBONE, strategy="two-stage", **VARIANTS[variant])
    clf.fit(train, out=out, overwrite=True)
    return load(out), time.perf_counter() - t0


def validation_tradeoff(clf, train) -> dict:
    """The figure a user can choose a defence by (no test data): on the run's own validation split, the
    accuracy and the share of right answers a fresh teacher-only attack (5 steps, 8/255) fools."""
    from headstart.audit.harden import measured_tradeoff
    from headstart.data import decode_all, encode_labels, stratified_split

    cfg = clf.fitted_config_
    _, va = stratified_split(train.labels, cfg.val_fraction, cfg.seed)
    val = train.subset(va)
    pixels = decode_all(val, clf.preprocess_).pixels
    y = encode_labels([val.labels[i] for i in range(len(val))], clf.classes_)
    return measured_tradeoff(clf.model_, clf.backbone_info_["spec"], clf.preprocess_, pixels, y,
                             cfg.replace(harden_eps=8.0))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", default="default,teacher,adversarial")
    ap.add_argument("--per-class", type=int, default=100)
    ap.add_argument("--n", type=int, default=100, help="test points attacked")
    ap.add_argument("--full", action="store_true", help="the audit at full strength instead of --quick")
    ap.add_argument("--validation-only", action="store_true",
                    help="only the validation trade-off of each (trained) variant, added to the saved results")
    args = ap.parse_args()
    print(machine())
    from headstart.audit import audit

    train, test = data(args.per_class)
    out = HERE / "results" / "audit.json"
    old = json.loads(out.read_text()) if out.exists() else {}
    if args.validation_only:
        for variant in args.variants.split(","):
            clf, _ = trained(variant, train, args.per_class)
            old.setdefault(variant, {})["validation_tradeoff"] = v = validation_tradeoff(clf, train)
            print(f"{variant}: validation accuracy {v['val_acc']:.3f}, teacher-only success {v['teacher_only_success']:.3f}"
                  f" ({v['n']} images, {v['seconds']:.0f} s)")
        out.write_text(json.dumps(old, indent=1, default=float))
        return
    rows = {}
    for variant in args.variants.split(","):
        clf, train_s = trained(variant, train, args.per_class)
        clean = clf.evaluate(test)["accuracy"]
        t0 = time.perf_counter()
        res = audit(clf, test, n=args.n, quick=not args.full, control_data=train)
        rows[variant] = {"train_seconds": round(train_s, 1) if train_s else clf.meta_.get("fit_seconds"),
                         "test_acc_10k": round(float(clean), 5), "audit_seconds": round(time.perf_counter() - t0, 1),
                         "hardening": clf.meta_.get("hardening"), **res.to_dict()}
        print(f"\n== {variant}: clean test accuracy {clean:.4f} (10,000 images); audit of {args.n} points "
              f"{rows[variant]['audit_seconds']:.0f} s")
        print(f"   clean on the audited points {res.clean_acc:.3f}")
        for r in res.white_box:
            print(f"   {r['attack']:8s} {r['norm']:4s} eps {r.get('eps_255', r['eps'])}: accuracy {r['accuracy']:.3f}")
        for r in res.teacher_only:
            print(f"   teacher-only {r['eps_255']}/255: success {r['teacher_success']:.3f}, random "
                  f"{r['random_noise_success']:.3f}, unrelated {r.get('unrelated_success', float('nan')):.3f}")
        for c in res.sanity:
            print(f"   sanity {'ok  ' if c['passed'] else 'FAIL'} {c['check']}: {c['measured']}")
    if "default" in rows:
        base = rows["default"]
        for variant, r in rows.items():
            if variant == "default" or not r["teacher_only"] or not base["teacher_only"]:
                continue
            b8, h8 = base["teacher_only"][-1]["teacher_success"], r["teacher_only"][-1]["teacher_success"]
            cut = b8 / max(h8, 1e-9)
            cost = 100 * (base["test_acc_10k"] - r["test_acc_10k"])
            r["goal"] = {"teacher_success_cut_at_max_eps": round(cut, 2), "clean_cost_points": round(cost, 2),
                         "met": bool(cut >= 5 and cost <= 1)}
            print(f"\n{variant}: teacher-only success at 8/255 {b8:.3f} -> {h8:.3f} ({cut:.1f}x cut), clean "
                  f"accuracy cost {cost:+.2f} points: goal (>= 5x at <= 1 point) "
                  f"{'met' if r['goal']['met'] else 'NOT met'}")
    merged = {**old, **{k: {**old.get(k, {}), **r} for k, r in rows.items()}}
    out.write_text(json.dumps(merged, indent=1, default=float))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
