"""Issue 14, teacher -> student: distillation against the same student trained on the labels alone.

Fashion-MNIST, 100 labels per class (seeded subset of the training split); every accuracy below is on
all 10,000 test images, which no choice here ever looks at (T and alpha are chosen on the teacher's
validation split, by ``distill`` itself).

* **teacher**: ``timm:tf_efficientnet_lite2`` (the strongest backbone installed offline), two-stage with
  library defaults but ``--teacher-epochs`` (3) fine-tuning epochs, trained once and kept in ``--runs``
  (delete it to retrain).
* **row 1, Lite2 -> Lite0**: ``teacher.distill("timm:tf_efficientnet_lite0", strategy=...)`` on the labelled
  data only, for each ``--seeds``; the direct student (same views, seed, steps) comes from the same call.
  Seed 0 chooses T and alpha on validation; the other seeds reuse its choice (one choice per setting, as a
  user would make it). ``--lite0-strategy`` sets how much of Lite0 trains (default linear-probe: the whole
  row fits in minutes on 2 cores; two-stage fine-tunes Lite0 at 224 px and costs about an hour per seed).
* **row 2, Lite2 -> scratch:tiny** with ``--pool`` (20,000) of the other 59,000 training images as the
  unlabelled transfer set.

Printed: accuracies, the distillation gain and ratio (student_KD - direct) / (teacher - direct) with a
95 % interval over seeds (t distribution) when there are several, parameters, file size, CPU latency and
throughput, all measured in this one run. JSON in results/distill.json.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _bench import fashion, machine, table

RESULTS = Path(__file__).parent / "results" / "distill.json"
TEACHER = "timm:tf_efficientnet_lite2"


def test_accuracy(model, preprocess, x_test, y_test, precision: str) -> float:
    """Accuracy on the test images through the model's fast path; features cached by its weights."""
    import torch

    from headstart.data import as_examples, decode_all
    from headstart.device import default_device
    from headstart.features.cache import cached_features

    pixels = decode_all(as_examples(x_test), preprocess).pixels
    feats, _ = cached_features(model, pixels, preprocess=preprocess, precision=precision, device=default_device())
    with torch.inference_mode():
        pred = model.head(feats.float()).argmax(1).numpy()
    return round(float((pred == y_test).mean()), 5)


def interval(values: list[float]) -> list[float] | None:
    """95 % t interval of the mean (None for fewer than two values)."""
    if len(values) < 2:
        return None
    t = {2: 12.706, 3: 4.303, 4: 3.182, 5: 2.776}.get(len(values), 2.571)
    m, se = statistics.mean(values), statistics.stdev(values) / math.sqrt(len(values))
    return [round(m - t * se, 4), round(m + t * se, 4)]


def teacher_run(runs: Path, x, y, args):
    from headstart import TransferClassifier, load

    path = runs / "teacher_lite2"
    if (path / "headstart.json").is_file():
        return load(path), None
    t0 = time.perf_counter()
    # No baselines: the comparison here is the direct student; resume a teacher run that was interrupted.
    TransferClassifier(TEACHER, strategy="two-stage", epochs=args.teacher_epochs, seed=0, baselines=False).fit(
        x, y, out=path, resume=(path / "checkpoint.pt").is_file())
    return load(path), round(time.perf_counter() - t0, 1)


def distil_row(teacher, student: str, x, y, x_test, y_test, seeds, precision, *, unlabeled=None, **options):
    rows, chosen = [], {}
    for seed in seeds:
        t0 = time.perf_counter()
        s = teacher.distill(student, data=x, y=y, unlabeled=unlabeled, seed=seed, **chosen, **options)
        rep = s.distillation_
        if not chosen:  # the first seed chooses T and alpha on validation; the others reuse the choice
            chosen = {"temperature": rep["temperature"], "alpha": rep["alpha"]}
        row = {"seed": seed, "seconds": round(time.perf_counter() - t0, 1),
               "kd_test": test_accuracy(s.model_, s.preprocess_, x_test, y_test, precision),
               "direct_test": test_accuracy(s.direct_model_, s.preprocess_, x_test, y_test, precision),
               "report": rep}
        print(f"  seed {seed}: KD {row['kd_test']:.4f}, direct {row['direct_test']:.4f} "
              f"(T={rep['temperature']}, alpha={rep['alpha']}, {row['seconds']:.0f}s)", flush=True)
        rows.append(row)
    return rows


def summarise(name, rows, teacher_test) -> dict:
    gains = [r["kd_test"] - r["direct_test"] for r in rows]
    ratios = [(r["kd_test"] - r["direct_test"]) / (teacher_test - r["direct_test"])
              for r in rows if teacher_test - r["direct_test"] > 0]
    rep = rows[0]["report"]
    return {"pair": name, "seeds": [r["seed"] for r in rows], "kd_test": [r["kd_test"] for r in rows],
            "direct_test": [r["direct_test"] for r in rows], "gain_mean": round(statistics.mean(gains), 4),
            "gain_ci95": interval(gains), "ratio_mean": round(statistics.mean(ratios), 4) if ratios else None,
            "ratio_ci95": interval(ratios), "student_params": rep["student"]["params"],
            "student_file_bytes": rep["student"]["file_bytes"], "student_latency_ms": rep["student"]["latency_ms"],
            "student_throughput": rep["student"]["throughput_per_s"],
            "teacher_throughput": rep["teacher"]["throughput_per_s"], "teacher_latency_ms": rep["teacher"]["latency_ms"],
            "throughput_ratio": rep["throughput_ratio"], "temperature": rep["temperature"], "alpha": rep["alpha"],
            "chosen_by": rep["chosen_by"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds of the Lite0 row")
    ap.add_argument("--tiny-seeds", type=int, nargs="+", default=[0], help="seeds of the scratch:tiny row")
    ap.add_argument("--lite0-strategy", default="linear-probe")
    ap.add_argument("--pool", type=int, default=20_000,
                    help="unlabelled images for the tiny row (0 = all 59,000; the teacher labels about 30 images/s "
                         "on 2 AVX2 cores in fp32, so all of them cost half an hour)")
    ap.add_argument("--teacher-epochs", type=int, default=3,
                    help="fine-tuning epochs of the Lite2 teacher (two-stage; a Lite2 epoch over 800 images at 260 px "
                         "takes minutes on 2 cores)")
    ap.add_argument("--runs", type=Path, default=Path(__file__).parent / ".runs")
    ap.add_argument("--skip", nargs="*", default=[], choices=["lite0", "tiny"])
    args = ap.parse_args()
    import logging

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    from headstart.data.datasets import fashion_mnist, per_class_subset
    from headstart.device import resolve_precision

    print(machine(), flush=True)
    precision = resolve_precision("auto")
    x_all, y_all = fashion_mnist("train")
    labelled = per_class_subset(y_all, 100, seed=0)
    x, y = x_all[labelled], y_all[labelled]
    rest = np.setdiff1d(np.arange(len(x_all)), labelled)
    pool = x_all[rest[: args.pool] if args.pool else rest]
    x_test, y_test = fashion("test")
    out = {"machine": machine(), "labelled": len(x), "test": len(x_test)}
    if RESULTS.is_file():
        out = {**json.loads(RESULTS.read_text()), **out}

    teacher, teacher_seconds = teacher_run(args.runs, x, y, args)
    t_test = test_accuracy(teacher.model_, teacher.preprocess_, x_test, y_test, precision)
    out["teacher"] = {"spec": TEACHER, "test_acc": t_test, "train_seconds": teacher_seconds,
                      "val_acc": teacher.meta_["metrics"].get("val_acc")}
    print(f"teacher {TEACHER}: test {t_test:.4f}", flush=True)

    if "lite0" not in args.skip:
        print(f"row 1: Lite2 -> Lite0 ({args.lite0_strategy}), labelled data only", flush=True)
        rows = distil_row(teacher, "timm:tf_efficientnet_lite0", x, y, x_test, y_test, args.seeds, precision,
                          strategy=args.lite0_strategy)
        out["lite0"] = {**summarise(f"Lite2 -> Lite0 ({args.lite0_strategy})", rows, t_test), "rows": rows}
        RESULTS.write_text(json.dumps(out, indent=1))
    if "tiny" not in args.skip:
        print(f"row 2: Lite2 -> scratch:tiny, {len(pool)} unlabelled images", flush=True)
        rows = distil_row(teacher, "scratch:tiny", x, y, x_test, y_test, args.tiny_seeds, precision, unlabeled=pool)
        out["tiny"] = {**summarise("Lite2 -> scratch:tiny + pool", rows, t_test), "rows": rows, "pool": len(pool)}
        RESULTS.write_text(json.dumps(out, indent=1))

    body = []
    for key in ("lite0", "tiny"):
        if key in out:
            r = out[key]
            body.append([r["pair"], f"{t_test:.4f}", f"{statistics.mean(r['kd_test']):.4f}",
                         f"{statistics.mean(r['direct_test']):.4f}", f"{r['gain_mean']:+.4f}", r["gain_ci95"],
                         r["ratio_mean"], r["ratio_ci95"], r["student_params"],
                         f"{r['student_file_bytes'] / 1e6:.2f}MB", f"{r['throughput_ratio']}x"])
    table(["pair", "teacher", "KD", "direct", "gain", "gain 95%", "ratio", "ratio 95%", "params", "file",
           "throughput vs teacher"], body)
    for key in ("lite0", "tiny"):
        if key in out:
            print(f"RATIO distill_{key}_gain_points: {100 * out[key]['gain_mean']:+.2f}")
            print(f"RATIO distill_{key}_throughput_vs_teacher: {out[key]['throughput_ratio']}x")


if __name__ == "__main__":
    main()
