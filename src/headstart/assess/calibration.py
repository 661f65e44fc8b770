"""How far to trust the probabilities: expected calibration error, a reliability diagram's bins, and
temperature scaling (Guo et al., 2017) fitted on the validation split.

A temperature T rescales the logits, ``softmax(z / T)``; with only probabilities at hand the same is
``p ** (1/T)`` renormalised, because log p is z up to a per-row constant. T > 1 softens an
over-confident model, never changes its argmax, and is fitted by minimising the negative
log-likelihood on examples the model was not trained on.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize_scalar

BINS = 15  # Guo et al.'s choice; enough for a few hundred examples, not too noisy


@dataclass(frozen=True)
class Reliability:
    """Per confidence bin: its range, how many examples fell in it, their mean confidence and accuracy."""

    edges: np.ndarray
    counts: np.ndarray
    confidence: np.ndarray
    accuracy: np.ndarray
    ece: float


def reliability(probs: np.ndarray, truth: np.ndarray, bins: int = BINS) -> Reliability:
    """ECE = sum over equal-width confidence bins of (bin share) x |accuracy - confidence|."""
    conf = probs.max(1)
    correct = (probs.argmax(1) == truth).astype(float)
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1], right=True), 0, bins - 1)
    counts = np.bincount(which, minlength=bins)
    safe = np.maximum(counts, 1)
    mean_conf = np.bincount(which, weights=conf, minlength=bins) / safe
    mean_acc = np.bincount(which, weights=correct, minlength=bins) / safe
    ece = float(np.sum(counts / max(len(conf), 1) * np.abs(mean_acc - mean_conf)))
    return Reliability(edges, counts, mean_conf, mean_acc, ece)


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """``softmax(log p / T)``, computed stably; T = 1 returns ``probs`` unchanged."""
    if temperature == 1.0:
        return probs
    z = np.log(np.clip(probs, 1e-12, 1.0)) / temperature
    z -= z.max(1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(1, keepdims=True)).astype(np.float32)


def nll(probs: np.ndarray, truth: np.ndarray) -> float:
    return float(-np.mean(np.log(np.clip(probs[np.arange(len(truth)), truth], 1e-12, 1.0))))


def fit_temperature(probs: np.ndarray, truth: np.ndarray) -> float:
    """The T in [0.05, 20] minimising the NLL of ``apply_temperature(probs, T)`` (searched on log T)."""
    result = minimize_scalar(lambda t: nll(apply_temperature(probs, float(np.exp(t))), truth),
                             bounds=(np.log(0.05), np.log(20.0)), method="bounded", options={"xatol": 1e-4})
    return round(float(np.exp(result.x)), 4)
