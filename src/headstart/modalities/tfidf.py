"""The baseline beside every text result: TF-IDF + logistic regression, trained from scratch on the same split.

What transfer bought is the gap to this: a strong, fast, no-pretraining classifier. Word uni- and
bigrams with sublinear tf (the scikit-learn text-classification recipe), and the regularisation
strength picked by 5-fold cross-validation on the training texts only.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Sequence

import numpy as np

from headstart.modalities.verdict import compare

log = logging.getLogger("headstart")


def tfidf_pipeline(seed: int = 0):
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.pipeline import make_pipeline

    pipe = make_pipeline(TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1),
                         LogisticRegression(max_iter=2000))
    return GridSearchCV(pipe, {"logisticregression__C": [0.1, 1.0, 10.0, 100.0]},
                        cv=StratifiedKFold(5, shuffle=True, random_state=seed), n_jobs=1)


def fit_tfidf(texts: Sequence[str], labels: Sequence, seed: int = 0):
    from collections import Counter

    search = tfidf_pipeline(seed)
    if min(Counter(map(str, labels)).values()) < 5:  # too few per class for 5 folds: plain default C
        return search.estimator.fit(list(texts), [str(v) for v in labels])
    return search.fit(list(texts), [str(v) for v in labels]).best_estimator_


def tfidf_baseline(train, val, seed: int = 0) -> dict[str, Any]:
    """Fit on ``train`` (TextExamples), score on ``val``: accuracy, macro-F1 and seconds."""
    from sklearn.metrics import accuracy_score, f1_score

    t0 = time.perf_counter()
    model = fit_tfidf(train.texts, train.labels, seed)
    pred = model.predict(list(val.texts))
    truth = [str(v) for v in val.labels]
    return {"val_acc": round(float(accuracy_score(truth, pred)), 5),
            "val_macro_f1": round(float(f1_score(truth, pred, average="macro")), 5),
            "seconds": round(time.perf_counter() - t0, 2),
            "what": "TF-IDF (word 1-2 grams, sublinear tf) + logistic regression, C by 5-fold CV",
            "val_correct": np.asarray(pred) == np.asarray(truth),  # these two are popped by the caller:
            "model": model}  # not for the JSON


def text_baselines(clf, train, val) -> dict[str, Any]:
    """The comparison saved with every text run: transfer vs its linear probe vs TF-IDF, on ``val``."""
    tfidf = tfidf_baseline(train, val, seed=clf.fitted_config_.seed)
    simple_right = tfidf.pop("val_correct")
    fitted = tfidf.pop("model")
    transfer = clf.run_metrics().get("val_acc")
    head = [r for r in clf.history_.epochs if r.get("phase") == "head" and r.get("best")]
    probe = head[-1]["val_acc"] if head else None
    # Paired on the same texts: the transfer model's predictions on the rows it could encode.
    pred = clf.predict_examples(val, raw=True)
    truth = np.asarray([str(val.labels[i]) for i in pred.index])
    transfer_right = np.asarray([str(clf.classes_[k]) for k in pred.probs.argmax(1)]) == truth
    verdict = compare(transfer_right, simple_right[pred.index])
    warnings = []
    if transfer is not None and verdict.outcome in ("worse", "no difference") and verdict.difference <= 0:
        what = "is worse than" if verdict.outcome == "worse" else "is not better than"
        warnings.append(
            f"transfer did not help: {clf.backbone} {what} TF-IDF + logistic regression on the same texts "
            f"({verdict.why}). Try another backbone, fine-tuning (--strategy two-stage), or the TF-IDF model itself.")
    elif verdict.outcome == "too few to tell":
        log.info("baselines: %s", verdict.why)
    return {"n_val": len(val), "transfer": {"val_acc": transfer}, "linear_probe": {"val_acc": probe},
            "tfidf_logreg": tfidf, "simple": "tfidf_logreg", "verdict": verdict.to_dict(), "warnings": warnings,
            "model": fitted}  # popped by TextBaselines: a candidate of --strategy auto
