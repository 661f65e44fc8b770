"""Transferability scores: how well will a pretrained model's features serve a labelled target task?

All scores are computed on frozen features (or on the source head's predictions), in seconds, before
any fine-tuning. Implemented from the papers:

* LogME (You et al., ICML 2021): the log marginal evidence of a Bayesian linear model on the features,
  per class one-vs-rest, averaged and divided by N. Higher is better.
* LEEP (Nguyen et al., ICML 2020): the log expected empirical prediction of the source classifier's
  soft predictions turned into target predictions through the empirical P(y | z). Higher is better.
* NCE (Tran et al., ICCV 2019): negative conditional entropy -H(Y | Z) of target labels given the
  source classifier's hard predictions. Higher is better (<= 0).
* H-score (Bao et al., ICIP 2019): tr(cov(f)^+ cov(E[f | y])), the between-class share of the feature
  variance. Higher is better.
* cross-validated k-NN and linear-probe accuracy (scikit-learn).
"""
from __future__ import annotations

from typing import Callable

import numpy as np


def logme(features: np.ndarray, labels: np.ndarray) -> float:
    """LogME, with the paper's fixed-point updates of alpha and beta on the SVD of F^T F."""
    f = np.asarray(features, dtype=np.float64)
    y = _dense_labels(labels)
    n, d = f.shape
    # Eigen-decomposition of the D x D Gram matrix gives everything the updates need.
    v, s, _ = np.linalg.svd(f.T @ f, full_matrices=True)
    evidences = []
    for k in range(y.max() + 1):
        target = (y == k).astype(np.float64)
        evidences.append(_evidence(f, target, v, s, n, d))
    return float(np.mean(evidences))


def _evidence(f, y, v, s, n, d, eps: float = 1e-5, max_iter: int = 11) -> float:
    alpha, beta = 1.0, 1.0
    lam = alpha / beta
    proj = v.T @ (f.T @ y)
    for _ in range(max_iter):  # converges in 2-3 steps in practice (the paper's observation)
        gamma = (s / (s + lam)).sum()
        m = v @ (proj * beta / (alpha + beta * s))
        alpha_de = (m * m).sum()
        alpha = gamma / (alpha_de + eps)
        beta_de = ((y - f @ m) ** 2).sum()
        beta = (n - gamma) / (beta_de + eps)
        new_lam = alpha / beta
        if abs(new_lam - lam) / lam < 0.01:
            break
        lam = new_lam
    evidence = (d / 2.0 * np.log(alpha) + n / 2.0 * np.log(beta) - 0.5 * np.sum(np.log(alpha + beta * s))
                - beta / 2.0 * (beta_de + eps) - alpha / 2.0 * (alpha_de + eps) - n / 2.0 * np.log(2 * np.pi))
    return evidence / n


def leep(source_probs: np.ndarray, labels: np.ndarray) -> float:
    """LEEP from the source model's softmax outputs theta (N x Z) and target labels."""
    theta = np.asarray(source_probs, dtype=np.float64)
    y = _dense_labels(labels)
    n = len(y)
    joint = np.zeros((y.max() + 1, theta.shape[1]))
    np.add.at(joint, y, theta)
    joint /= n
    cond = joint / np.clip(joint.sum(0, keepdims=True), 1e-300, None)  # P(y | z)
    expected = (theta * cond[y]).sum(1)  # sum_z P(y_i | z) theta_i(z)
    return float(np.mean(np.log(np.clip(expected, 1e-300, None))))


def nce(source_labels: np.ndarray, labels: np.ndarray) -> float:
    """NCE = -H(Y | Z) from the source model's hard predictions z and target labels y."""
    z = _dense_labels(source_labels)
    y = _dense_labels(labels)
    joint = np.zeros((y.max() + 1, z.max() + 1))
    np.add.at(joint, (y, z), 1.0)
    joint /= len(y)
    pz = joint.sum(0, keepdims=True)
    nz = joint > 0
    return float(np.sum(joint[nz] * np.log((joint / np.clip(pz, 1e-300, None))[nz])))


def hscore(features: np.ndarray, labels: np.ndarray) -> float:
    """H-score = tr(cov(f)^+ cov(g)) with g(x) the mean feature of x's class."""
    f = np.asarray(features, dtype=np.float64)
    y = _dense_labels(labels)
    f = f - f.mean(0)
    cov_f = f.T @ f / len(f)
    means = np.zeros((y.max() + 1, f.shape[1]))
    np.add.at(means, y, f)
    means /= np.bincount(y)[:, None]
    g = means[y]
    cov_g = g.T @ g / len(g)
    return float(np.trace(np.linalg.pinv(cov_f, rcond=1e-10, hermitian=True) @ cov_g))


def knn_accuracy(features: np.ndarray, labels: np.ndarray, k: int = 5, folds: int = 5, seed: int = 0) -> float:
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.neighbors import KNeighborsClassifier
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import Normalizer

    y = _dense_labels(labels)
    folds = _folds(y, folds)
    model = make_pipeline(Normalizer(), KNeighborsClassifier(n_neighbors=min(k, len(y) - len(y) // folds - 1)))
    cv = StratifiedKFold(folds, shuffle=True, random_state=seed)
    return float(cross_val_score(model, features, y, cv=cv).mean())


def linear_probe_accuracy(features: np.ndarray, labels: np.ndarray, folds: int = 5, seed: int = 0) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    y = _dense_labels(labels)
    cv = StratifiedKFold(_folds(y, folds), shuffle=True, random_state=seed)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, C=0.1))
    return float(cross_val_score(model, features, y, cv=cv).mean())


def bootstrap(score: Callable[[np.ndarray], float], n: int, rounds: int = 20, seed: int = 0) -> tuple[float, float]:
    """(score on all samples, standard deviation over bootstrap resamples of the sample indices)."""
    rng = np.random.default_rng(seed)
    full = score(np.arange(n))
    draws = [score(rng.integers(0, n, n)) for _ in range(rounds)]
    return full, float(np.std(draws))


def _dense_labels(labels) -> np.ndarray:
    _, y = np.unique(np.asarray(labels), return_inverse=True)
    return y.astype(np.int64)


def _folds(y: np.ndarray, folds: int) -> int:
    smallest = int(np.bincount(y).min())
    if smallest < 2:
        from .errors import DataError

        raise DataError("Cross-validated scores need at least 2 examples of every class.")
    return max(2, min(folds, smallest))
