"""Transferability scores: hand-computed cases and the properties the papers state."""
import math

import numpy as np
import pytest

from headstart.assess import transferability as T


def _blobs(separation: float, n: int = 60, d: int = 8, k: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(k), n // k)
    centers = rng.normal(size=(k, d)) * separation
    return centers[y] + rng.normal(size=(len(y), d)), y


def test_leep_hand_computed():
    # two source classes, two target classes, three samples
    theta = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
    y = np.array([0, 1, 0])
    joint = np.array([[0.9 + 0.6, 0.1 + 0.4], [0.2, 0.8]]) / 3
    cond = joint / joint.sum(0)
    expected = np.mean([math.log(theta[i] @ cond[y[i]]) for i in range(3)])
    assert T.leep(theta, y) == pytest.approx(expected)


def test_leep_is_zero_for_a_perfect_one_to_one_source_head():
    theta = np.eye(3)[[0, 1, 2, 1]]
    assert T.leep(theta, [5, 7, 9, 7]) == pytest.approx(0.0)


def test_nce_bounds():
    y = np.array([0, 0, 1, 1, 2, 2])
    assert T.nce(y, y) == pytest.approx(0.0)  # labels fully determined by source predictions
    assert T.nce(np.zeros(6, dtype=int), y) == pytest.approx(-math.log(3))  # no information


def test_nce_hand_computed():
    z, y = np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1])
    # P(y|z=0) = (1/2, 1/2), P(y|z=1) = (0, 1): H(Y|Z) = 0.5 * log 2
    assert T.nce(z, y) == pytest.approx(-0.5 * math.log(2))


def test_hscore_hand_computed_1d():
    f = np.array([[0.0], [2.0], [10.0], [12.0]])
    y = np.array([0, 0, 1, 1])
    # var(f) = 26.0; class means 1 and 11 → var of g = 25.0; H = 25 / 26
    assert T.hscore(f, y) == pytest.approx(25.0 / 26.0)


def test_hscore_invariant_to_invertible_linear_maps():
    f, y = _blobs(2.0)
    a = np.random.default_rng(1).normal(size=(f.shape[1], f.shape[1])) + 3 * np.eye(f.shape[1])
    assert T.hscore(f @ a + 5.0, y) == pytest.approx(T.hscore(f, y), rel=1e-6)


@pytest.mark.parametrize("score", [T.logme, T.hscore, T.knn_accuracy, T.linear_probe_accuracy])
def test_separable_features_score_higher(score):
    separable, y = _blobs(5.0)
    noisy, _ = _blobs(0.1)
    assert score(separable, y) > score(noisy, y)


def test_logme_matches_reference_values_on_a_fixed_case():
    """Independent re-derivation: evidence of y under y = f m + noise, maximised over alpha, beta."""
    f, y = _blobs(3.0, n=30, d=4, k=2, seed=3)
    n, d = f.shape
    ours = T.logme(f, y)
    # brute force: maximise the closed-form evidence (full D x D algebra) over a grid of (alpha, beta) per class
    best = []
    for k in range(2):
        t = (y == k).astype(float)
        vals = []
        for la in np.linspace(-6, 6, 121):
            for lb in np.linspace(-6, 6, 121):
                alpha, beta = math.exp(la), math.exp(lb)
                a = alpha * np.eye(d) + beta * f.T @ f
                m = beta * np.linalg.solve(a, f.T @ t)
                ev = (d / 2 * la + n / 2 * lb - 0.5 * np.linalg.slogdet(a)[1] - beta / 2 * ((t - f @ m) ** 2).sum()
                      - alpha / 2 * (m @ m) - n / 2 * math.log(2 * math.pi))
                vals.append(ev / n)
        best.append(max(vals))
    assert ours == pytest.approx(np.mean(best), abs=2e-3)


def test_logme_with_fewer_samples_than_features_matches_the_full_d_by_d_algebra():
    """The thin-SVD form against the paper's updates written with D x D matrices (N = 12 < D = 20)."""
    f, y = _blobs(0.5, n=12, d=20, k=2, seed=4)
    n, d = f.shape
    evidences = []
    for k in range(2):
        t = (y == k).astype(float)
        alpha, beta = 1.0, 1.0
        for _ in range(1000):
            a = alpha * np.eye(d) + beta * f.T @ f
            m = beta * np.linalg.solve(a, f.T @ t)
            gamma = np.trace(beta * f.T @ f @ np.linalg.inv(a))
            m2, res2 = m @ m, ((t - f @ m) ** 2).sum()
            new_alpha, new_beta = gamma / (m2 + 1e-5), (n - gamma) / (res2 + 1e-5)
            done = abs(new_alpha / new_beta - alpha / beta) / (alpha / beta) < 1e-9
            alpha, beta = new_alpha, new_beta
            if done:
                break
        a = alpha * np.eye(d) + beta * f.T @ f
        m = beta * np.linalg.solve(a, f.T @ t)
        ev = (d / 2 * math.log(alpha) + n / 2 * math.log(beta) - 0.5 * np.linalg.slogdet(a)[1]
              - beta / 2 * (((t - f @ m) ** 2).sum() + 1e-5) - alpha / 2 * (m @ m + 1e-5) - n / 2 * math.log(2 * math.pi))
        evidences.append(ev / n)
    assert T.logme(f, y) == pytest.approx(np.mean(evidences), rel=1e-3)


def test_hscore_shrinkage_matches_the_direct_ledoit_wolf_formula():
    from sklearn.covariance import LedoitWolf, ledoit_wolf_shrinkage

    f, y = _blobs(1.0, n=30, d=50)
    fc = f - f.mean(0)
    lw = LedoitWolf(assume_centered=True).fit(fc)
    g = np.stack([fc[y == k].mean(0) for k in range(3)])[y]
    direct = np.trace(np.linalg.inv(lw.covariance_) @ ((1 - lw.shrinkage_) * g.T @ g / len(y)))
    assert T.hscore(f, y, shrinkage="auto") == pytest.approx(direct, rel=1e-9)
    for data in (fc, fc[:, :10]):  # fewer and more samples than features
        assert T._ledoit_wolf(data, T.thin_svd(data)[1]) == pytest.approx(ledoit_wolf_shrinkage(data, assume_centered=True))
    assert T.hscore(f, y, shrinkage=0.0) == pytest.approx(T.hscore(f, y))
    with pytest.raises(ValueError, match="shrinkage"):
        T.hscore(f, y, shrinkage=1.5)


def test_plain_hscore_is_constant_with_few_samples_but_shrinkage_still_ranks():
    separable, y = _blobs(5.0, n=30, d=64)
    noisy, _ = _blobs(0.1, n=30, d=64)
    # N <= D + 1: any labelling is separable, so the plain score is C - 1 for both feature sets
    assert T.hscore(separable, y) == pytest.approx(2.0) and T.hscore(noisy, y) == pytest.approx(2.0)
    assert T.hscore(separable, y, shrinkage="auto") > T.hscore(noisy, y, shrinkage="auto")


def test_bootstrap_reports_spread():
    f, y = _blobs(1.0)
    value, std = T.bootstrap(lambda i: T.hscore(f[i], y[i]), len(y), rounds=10)
    assert value == pytest.approx(T.hscore(f, y)) and std > 0


def test_rank_orders_candidates_and_recommends(tiny_data):
    from headstart.assess.rank import rank, recommendation

    x, y = tiny_data
    rows = rank(x, ["timm:test_efficientnet", "timm:test_resnet"], y=y, pretrained=False, bootstrap_rounds=3)
    assert [r["logme"] for r in rows] == sorted((r["logme"] for r in rows), reverse=True)
    assert {"logme", "logme_std", "hscore", "knn_acc", "linear_acc", "params_m"} <= set(rows[0])
    assert rows[0]["backbone"] in recommendation(rows)


def test_plan_rules():
    from headstart.assess.plan import StageProfile, make_plan

    rows = [StageProfile(i, f"s{i}", 8, 0.0, acc, dist) for i, (acc, dist) in
            enumerate([(0.5, 0.1), (0.6, 0.4), (0.8, 1.2), (0.85, 1.8), (0.84, 1.9)])]
    few = make_plan(rows, per_class=10)
    # stage 3 beats the top stage, which is cut off (truncation): the 4 kept stages stay frozen
    assert (few.strategy, few.freeze_stages, few.cut_stage) == ("linear-probe", 4, 3)
    mid = make_plan(rows, per_class=100)
    assert (mid.strategy, mid.freeze_stages, mid.backbone_lr_ratio, mid.best_feature_stage) == ("two-stage", 2, 0.3, 3)
    assert any("stages above 3 add nothing" in r for r in mid.reasons)
    many = make_plan(rows, per_class=1000)
    assert many.freeze_stages == 1


def test_profile_and_auto_strategy_end_to_end(tiny_data, tmp_path):
    import json

    from headstart import TransferClassifier, load

    x, y = tiny_data
    # baselines off: the plan alone (with them, auto may keep the from-scratch net instead: test_candidates.py)
    clf = TransferClassifier("timm:test_efficientnet", strategy="auto", pretrained=False, epochs=1, head_epochs=2,
                             head_min_steps=0, precision="fp32", baselines=False)
    clf.fit(x, y, out=tmp_path / "run")
    assert len(clf.profile_) == 6 and all(0 <= r.domain_distance <= 2 for r in clf.profile_)
    assert clf.plan_.strategy == "linear-probe"  # 12 labels per class: too few to fine-tune
    meta = json.loads((tmp_path / "run" / "headstart.json").read_text())
    assert meta["plan"]["strategy"] == meta["config"]["strategy"] == "linear-probe"
    assert load(tmp_path / "run").predict(x[:2]).shape == (2,)

    # `headstart plan` on the same labelled data gives the very plan auto followed (same profile)
    from dataclasses import asdict

    from headstart.assess.plan import plan_for_data
    from headstart.data import as_examples
    from headstart.encoders import get_backbone

    bb = get_backbone("timm:test_efficientnet", pretrained=False)
    bb.module.load_state_dict(clf.model_.backbone.state_dict())  # linear probe: the backbone did not move
    rows, plan = plan_for_data(as_examples(x, y), bb, precision="fp32")
    assert plan.to_dict() == clf.plan_.to_dict()
    assert [asdict(r) for r in rows] == [asdict(r) for r in clf.profile_]
    # and auto is exactly its plan run directly: profiling does not shift the random numbers training draws
    plain = TransferClassifier("timm:test_efficientnet", strategy="linear-probe", pretrained=False, epochs=1,
                               head_epochs=2, head_min_steps=0, precision="fp32", baselines=False).fit(x, y)
    np.testing.assert_array_equal(plain.predict_proba(x), clf.predict_proba(x))
