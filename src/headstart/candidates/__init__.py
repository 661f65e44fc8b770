"""``--strategy auto`` keeps the better model: transfer, or the simple model that beat it.

Every run already trains its no-pretraining baseline on the same split (a small net from scratch for
images, TF-IDF + logistic regression for texts). With ``auto`` these are *candidates*, beside the
transfer model and, for texts, a **hybrid** (TF-IDF features concatenated with the pretrained
sentence embedding, one logistic regression on both). Each candidate is scored by the model that would
be saved (the torch module, on the validation examples as read from disk), and the one with the
highest validation accuracy becomes the run; ties keep the transfer model, then the simpler one.
The comparison, the paired verdict against the transfer model, and the reason are saved in
``headstart.json`` (``selection``) and printed.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from headstart.modalities.verdict import compare

TRANSFER = "transfer"


@dataclass
class Candidate:
    """One model that could become the run, scored on the validation split."""

    name: str  # "transfer", "scratch", "tfidf_logreg", "hybrid"
    what: str  # for people: what the model is
    val_correct: np.ndarray  # per validation example, in the split's order
    seconds: float  # wall time to train it
    model: Any = None  # a TransferModel to save instead of the transfer model (None: the transfer model)
    preprocess: Any = None
    tokenizer: Any = None
    backbone_info: dict[str, Any] | None = None
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def val_acc(self) -> float:
        return float(np.mean(self.val_correct)) if len(self.val_correct) else 0.0

    def row(self) -> dict[str, Any]:
        return {"name": self.name, "what": self.what, "val_acc": round(self.val_acc, 5),
                "val_correct": int(np.sum(self.val_correct)), "seconds": round(float(self.seconds), 2),
                **self.details}


def choose(candidates: list[Candidate]) -> tuple[Candidate, dict[str, Any]]:
    """The candidate with the highest validation accuracy (ties: the earliest, transfer first) and the record.

    ``candidates[0]`` must be the transfer model; all are scored on the same validation examples.
    """
    transfer = candidates[0]
    assert transfer.name == TRANSFER, "the transfer model comes first"
    n = len(transfer.val_correct)
    for c in candidates[1:]:
        if len(c.val_correct) != n:
            raise ValueError(f"candidate {c.name} was scored on {len(c.val_correct)} examples, transfer on {n}")
    winner = max(candidates, key=lambda c: (int(np.sum(c.val_correct)), -candidates.index(c)))
    record: dict[str, Any] = {"rule": "highest validation accuracy; ties keep the transfer model, then the simpler",
                              "n_val": n, "winner": winner.name, "candidates": [c.row() for c in candidates]}
    if winner is transfer:
        best_other = max(candidates[1:], key=lambda c: c.val_acc, default=None)
        record["reason"] = ("transfer is best on validation" + (
            f" ({transfer.val_acc:.4f} vs {best_other.what} {best_other.val_acc:.4f})" if best_other else ""))
    else:
        verdict = compare(transfer.val_correct, winner.val_correct)  # worded as transfer vs the other
        record["verdict_vs_transfer"] = verdict.to_dict()
        more = int(np.sum(winner.val_correct)) - int(np.sum(transfer.val_correct))
        record["reason"] = (f"{winner.what} beat the transfer model on validation ({winner.val_acc:.4f} vs "
                            f"{transfer.val_acc:.4f}: {more} more of {n} right; paired test: {verdict.outcome}); "
                            "it is saved as the run")
    return winner, record


def score(candidate: Candidate, clf, val_examples) -> Candidate:
    """Fill ``val_correct``: the candidate's model predicts the validation examples as read from disk —
    exactly what the saved run would do (its own preprocessing or tokenizer)."""
    model = candidate.model if candidate.model is not None else clf.model_
    preprocess = candidate.preprocess if candidate.model is not None else clf.preprocess_
    tokenizer = candidate.tokenizer if candidate.model is not None else clf.tokenizer_
    was_training = model.training
    pred = clf.modality_.predict(model.eval(), tokenizer, preprocess, val_examples, precision="fp32")
    model.train(was_training)
    truth = np.asarray([str(val_examples.labels[i]) for i in pred.index])
    names = np.asarray([str(c) for c in clf.classes_])
    candidate.val_correct = names[pred.probs.argmax(1)] == truth if len(pred.index) else np.zeros(0, bool)
    return candidate


def simple_candidates(baselines, clf) -> list[Candidate]:
    """The models the run's baselines fitted (``modalities``: ``scratch`` for images, ``tfidf`` for texts)
    as candidates, and for a linear-probe text run the hybrid of both."""
    out: list[Candidate] = []
    if getattr(baselines, "scratch", None) is not None:
        from headstart.candidates.image import scratch_candidate

        net, report = baselines.scratch
        out.append(scratch_candidate(net, report, clf))
    if getattr(baselines, "tfidf", None) is not None:
        from headstart.candidates.text import hybrid_candidate, tfidf_candidate

        pipe, seconds, train = baselines.tfidf
        out.append(tfidf_candidate(pipe, list(clf.classes_), seconds))
        if clf.fitted_config_.strategy == "linear-probe":  # the embedding is the pretrained one: hybrid applies
            out.append(hybrid_candidate(clf, pipe, train.texts, train.labels, seed=clf.fitted_config_.seed))
    return out
