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
  variance. Higher is better. Ranking uses its shrinkage form (Ibrahim et al., 2022), which stays
  informative when there are fewer images than feature dimensions.
* cross-validated k-NN and linear-probe accuracy (scikit-learn).
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from headstart.errors import DataError


def logme(features: np.ndarray, labels: np.ndarray) -> float:
    """LogME, with the paper's fixed-point updates of alpha and beta, per class one-vs-rest.

    Everything the updates need is in the thin SVD F = U diag(s) V^T, which costs O(N D min(N, D)):
    with a few hundred images and 1,280 features that is ~100x cheaper than decomposing the D x D
    matrix F^T F, and it is exact -- the D - k eigenvalues of F^T F that are zero enter only through
    log det(alpha I + beta F^T F), as (D - k) log alpha.
    """
    f = np.asarray(features, dtype=np.float64)
    y = _dense_labels(labels)
    n, d = f.shape
    u, s, _ = thin_svd(f)
    sigma = s * s  # the non-zero part of the spectrum of F^T F
    evidences = []
    for k in range(y.max() + 1):
        target = (y == k).astype(np.float64)
        evidences.append(_evidence(u.T @ target, float(target @ target), sigma, n, d))
    return float(np.mean(evidences))


def _evidence(x, y2, sigma, n, d, eps: float = 1e-5, max_iter: int = 100) -> float:
    """Maximised log evidence / N of one target y, from x = U^T y and y2 = |y|^2."""
    x2 = x * x
    rest = max(y2 - x2.sum(), 0.0)  # the part of y outside the column space of F
    alpha, beta = 1.0, 1.0
    # Usually converges in a few steps (the paper's observation), but with D > N it can take dozens; the
    # paper's 11 iterations then stop short of the maximum. Each step is O(k), so iterate to convergence.
    for _ in range(max_iter):
        t = alpha / beta
        gamma = (sigma / (sigma + t)).sum()
        m2 = (sigma * x2 / (sigma + t) ** 2).sum()  # |m|^2 with m the posterior mean weights
        res2 = (x2 * (t / (sigma + t)) ** 2).sum() + rest  # |y - F m|^2
        alpha = gamma / (m2 + eps)
        beta = (n - gamma) / (res2 + eps)
        if abs(alpha / beta - t) / t < 1e-3:
            break
    # recompute m and the residual at the final alpha, beta
    t = alpha / beta
    m2 = (sigma * x2 / (sigma + t) ** 2).sum()
    res2 = (x2 * (t / (sigma + t)) ** 2).sum() + rest
    logdet = np.sum(np.log(alpha + beta * sigma)) + (d - len(sigma)) * np.log(alpha)
    evidence = (d / 2.0 * np.log(alpha) + n / 2.0 * np.log(beta) - 0.5 * logdet
                - beta / 2.0 * (res2 + eps) - alpha / 2.0 * (m2 + eps) - n / 2.0 * np.log(2 * np.pi))
    return evidence / n


def thin_svd(x: np.ndarray, rcond: float = 1e-10) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x = U diag(s) V^T over the singular values above ``rcond`` x the largest (numerically non-zero).

    Through the eigen-decomposition of the smaller Gram matrix (X X^T or X^T X) rather than LAPACK's
    SVD: on a busy 2-core machine OpenBLAS's threaded SVD of a 240 x 1280 matrix took 2-5 s against
    0.02 s for this (which loses only precision in singular values below ~1e-8 of the largest --
    numerically zero for these scores anyway).
    """
    n, d = x.shape
    small = x @ x.T if n <= d else x.T @ x
    eig, vec = np.linalg.eigh(small)
    keep = eig > rcond * max(eig.max(), 0.0) if len(eig) else eig > 0
    eig, vec = eig[keep][::-1], vec[:, keep][:, ::-1]
    s = np.sqrt(eig)
    if n <= d:
        u = vec
        vt = (u.T @ x) / s[:, None]
    else:
        vt = vec.T
        u = (x @ vec) / s
    return u, s, vt


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


def hscore(features: np.ndarray, labels: np.ndarray, shrinkage: float | str | None = None) -> float:
    """H-score = tr(cov(f)^+ cov(g)) with g(x) the mean feature of x's class (Bao et al., 2019).

    With N <= D + 1 samples the feature covariance is singular, every labelling is linearly
    separable and the plain H-score is the constant C - 1 whatever the features: it cannot rank
    anything. ``shrinkage`` fixes that the way Ibrahim et al. (ECML 2022, "Newer is not always better")
    do: cov(f) is replaced by (1 - a) cov(f) + a mu I (mu = tr(cov(f)) / D) and cov(g) by (1 - a) cov(g),
    with ``a`` a number in [0, 1] or ``"auto"`` for the Ledoit-Wolf estimate. ``None`` (or 0) is the
    paper's pseudo-inverse. Computed from the thin SVD of the centred features, O(N D min(N, D)).
    """
    f = np.asarray(features, dtype=np.float64)
    y = _dense_labels(labels)
    n, d = f.shape
    f = f - f.mean(0)
    means = np.zeros((y.max() + 1, d))
    np.add.at(means, y, f)
    means /= np.bincount(y)[:, None]
    _, s, vt = thin_svd(f)
    eig = s * s / n  # the non-zero spectrum of cov(f); eigenvectors are the rows of vt
    # cov(g) = G^T G / n lives in the row space of the centred features, so only these directions count
    between = np.bincount(y, minlength=len(means)) @ (means @ vt.T) ** 2 / n  # v_i^T cov(g) v_i
    a = _shrinkage(f, s, shrinkage)
    if a == 0.0:
        return float(np.sum(between / eig))
    mu = eig.sum() / d
    return float(np.sum((1 - a) * between / ((1 - a) * eig + a * mu)))


def _shrinkage(centred: np.ndarray, s: np.ndarray, shrinkage) -> float:
    if shrinkage is None:
        return 0.0
    if shrinkage == "auto":
        return _ledoit_wolf(centred, s)
    a = float(shrinkage)
    if not 0.0 <= a <= 1.0:
        raise ValueError(f"H-score shrinkage must be None, 'auto' or a number in [0, 1]; got {shrinkage!r}.")
    return a


def _ledoit_wolf(x: np.ndarray, s: np.ndarray) -> float:
    """scikit-learn's ``ledoit_wolf_shrinkage(x, assume_centered=True)``, from the singular values ``s`` of x.

    sklearn forms the D x D matrix X^T X block by block; its squared Frobenius norm is sum(s^4), so
    nothing D x D is needed (tests check the two agree).
    """
    n, d = x.shape
    trace = float(np.sum(s * s)) / n  # tr(S), S = X^T X / n
    mu = trace / d
    frob2 = float(np.sum(s ** 4)) / n ** 2  # |S|_F^2
    fourth = float(np.sum(np.sum(x * x, axis=1) ** 2))  # sum_k |x_k|^4
    beta = (fourth / n - frob2) / (d * n)
    delta = (frob2 - 2.0 * mu * trace + d * mu * mu) / d
    beta = min(beta, delta)
    return 0.0 if beta == 0 else beta / delta


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
    """Cross-validated accuracy of standardised features -> L2-regularised logistic regression (C=0.1)."""
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    y = _dense_labels(labels)
    cv = StratifiedKFold(_folds(y, folds), shuffle=True, random_state=seed)
    return float(cross_val_score(l2_logistic(C=0.1), features, y, cv=cv).mean())


def l2_logistic(C: float = 0.1, max_iter: int = 1000):
    """StandardScaler -> RowSpace -> LogisticRegression: the same model as without RowSpace, faster."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), RowSpace(), LogisticRegression(max_iter=max_iter, C=C))


class RowSpace:
    """Coordinates in the span of the training rows: X -> X V, V from the thin SVD of the training X.

    An L2-penalised linear model's weights lie in the span of its training rows (representer
    theorem), and |V z| = |z|, so a logistic regression fitted on X V makes the same predictions as one
    fitted on X -- but with min(N, D) instead of D inputs: ~5x faster on 1,280 features of a few
    hundred images. With N >= D it is a rotation and is skipped.
    """

    def fit(self, x, y=None):
        x = np.asarray(x, dtype=np.float64)
        self.basis_ = None
        if len(x) < x.shape[1]:
            self.basis_ = thin_svd(x)[2].T
        return self

    def transform(self, x):
        x = np.asarray(x, dtype=np.float64)
        return x if self.basis_ is None else x @ self.basis_

    def fit_transform(self, x, y=None):
        return self.fit(x, y).transform(x)

    def get_params(self, deep=True):
        return {}

    def set_params(self, **params):
        return self


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

        raise DataError("Cross-validated scores need at least 2 examples of every class.")
    return max(2, min(folds, smallest))
