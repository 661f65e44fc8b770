"""The robustness audit: attacks checked against hand-computed gradients, budgets, determinism, and the
whole audit on a tiny run whose "public" base weights are a local file."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import make_images, write_folder
from torch import nn

from headstart.audit.attacks import (
    _apgd_checkpoints,
    apgd,
    feature_attack,
    fgsm,
    pgd,
    random_noise,
)


def tiny_linear(seed: int = 0, classes: int = 3, side: int = 6) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * side * side, classes)).eval()


def batch(n: int = 8, side: int = 6, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, side, side, generator=g), torch.randint(0, 3, (n,), generator=g)


def test_fgsm_step_is_the_sign_of_the_hand_computed_gradient():
    model = tiny_linear()
    x, y = batch()
    w, b = model[1].weight, model[1].bias
    logits = x.flatten(1) @ w.T + b
    grad = (torch.softmax(logits, 1) - F.one_hot(y, 3).float()) @ w  # d CE / d x of a linear model
    expected = (x + 0.03 * grad.view_as(x).sign()).clamp(0, 1)
    torch.testing.assert_close(fgsm(model, x, y, 0.03), expected)


@pytest.mark.parametrize("attack", ["fgsm", "pgd", "pgd-l2", "apgd", "feature", "noise"])
def test_attacks_stay_within_the_budget_and_inside_0_1(attack):
    model = tiny_linear()
    x, y = batch()
    eps = 1.0 if attack == "pgd-l2" else 8 / 255
    run = {"fgsm": lambda e: fgsm(model, x, y, e), "pgd": lambda e: pgd(model, x, y, e, steps=5, restarts=2),
           "pgd-l2": lambda e: pgd(model, x, y, e, norm="l2", steps=5),
           "apgd": lambda e: apgd(model, x, y, e, steps=12), "feature": lambda e: feature_attack(model, x, e, steps=4),
           "noise": lambda e: random_noise(x, e)}[attack]
    adv = run(eps)
    assert adv.min() >= 0 and adv.max() <= 1
    delta = (adv - x).flatten(1)
    if attack == "pgd-l2":
        assert delta.norm(dim=1).max() <= eps + 1e-5
    else:
        assert delta.abs().max() <= eps + 1e-6
    if attack != "noise":
        assert torch.equal(run(0.0), x)  # eps = 0 changes nothing
    assert torch.equal(run(eps), adv)  # the same seed, the same perturbation


def test_stronger_attacks_are_at_least_as_strong_on_a_trained_model():
    x, y = batch(64, seed=1)
    model = tiny_linear(seed=1)
    opt = torch.optim.Adam(model.parameters(), 0.05)
    for _ in range(200):  # a model that fits its points, so there is something to attack
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()

    def acc(z):
        with torch.no_grad():
            return float((model(z).argmax(1) == y).float().mean())

    eps = 2 / 255
    clean, a_fgsm, a_pgd = acc(x), acc(fgsm(model, x, y, eps)), acc(pgd(model, x, y, eps, steps=20, restarts=2))
    a_apgd = acc(apgd(model, x, y, eps, steps=40, restarts=2))
    assert clean == 1.0 and a_pgd <= a_fgsm + 1 / 64 and a_apgd <= a_pgd + 1 / 64
    assert acc(pgd(model, x, y, 64 / 255, steps=20)) == 0.0  # a large budget breaks a linear model


def test_apgd_checkpoints_follow_the_paper():
    assert _apgd_checkpoints(100) == [0, 22, 41, 57, 70, 80, 87, 93, 99]


# ----------------------------------------------------------------------------- the whole audit
@pytest.fixture(scope="module")
def audited_run(tmp_path_factory):
    """A run fine-tuned from a local base network (the stand-in for published weights: a file:)."""
    import timm

    from headstart import TransferClassifier
    from headstart.storage import save_safetensors

    root = tmp_path_factory.mktemp("audit")
    base = root / "base"
    base.mkdir()
    torch.manual_seed(0)
    net = timm.create_model("test_efficientnet", pretrained=False, num_classes=0).eval()
    save_safetensors(net.state_dict(), base / "model.safetensors")
    (base / "config.json").write_text(json.dumps({"architecture": "test_efficientnet",
                                                  "preprocess": {"input_size": 32, "crop_pct": 1.0}}))
    x, y = make_images(n_per_class=16, classes=("a", "b"), size=32)
    train = write_folder(root / "train", x, y)
    xt, yt = make_images(n_per_class=8, classes=("a", "b"), size=32, seed=5)
    test = write_folder(root / "test", xt, yt)
    TransferClassifier(f"file:{base}", strategy="linear-probe", head_min_steps=50, precision="fp32",
                       baselines=False).fit(str(train), out=root / "run")
    return root / "run", test


def test_audit_reports_every_attack_the_teacher_and_both_controls(audited_run):
    from headstart import load
    from headstart.audit import audit

    run, test = audited_run
    result = audit(load(run), str(test), eps=(4 / 255, 16 / 255), l2_eps=(1.0,), n=16, pgd_steps=4, apgd_steps=8,
                   feature_steps=3, control_seconds=2)
    assert result.applies and result.threat_model["n_points"] == 16 and result.clean_acc is not None
    names = {(r["attack"], r["norm"], r["eps"]) for r in result.white_box}
    assert names == {(a, "linf", e) for a in ("fgsm", "pgd", "apgd-ce") for e in (4 / 255, 16 / 255)} | \
        {("pgd", "l2", 1.0)}
    assert all(0 <= r["accuracy"] <= result.clean_acc + 1e-9 or r["attack"] == "fgsm" for r in result.white_box)
    assert [r["eps"] for r in result.teacher_only] == [4 / 255, 16 / 255]
    row = result.teacher_only[-1]
    assert {"teacher_success", "random_noise_success", "unrelated_success"} <= set(row)
    assert "ScratchNet" in row["unrelated"]
    assert {c["check"].split(" (")[0] for c in result.sanity} >= {"PGD accuracy does not rise as eps grows",
                                                                    "accuracy near 0 at a large eps"}
    assert "public base weights" in result.statement
    again = audit(load(run), str(test), eps=(4 / 255, 16 / 255), l2_eps=(1.0,), n=16, pgd_steps=4, apgd_steps=8,
                  feature_steps=3, control_seconds=2)
    assert again.white_box == [dict(r, seconds=a["seconds"]) for r, a in zip(result.white_box, again.white_box)]


def test_the_teacher_only_attack_never_reads_the_head(audited_run):
    """The perturbation is computed from the base network alone: changing the run's head changes nothing."""
    from headstart import load
    from headstart.audit import AuditConfig, _points
    from headstart.audit.harden import teacher_features

    run, test = audited_run
    a, b = load(run), load(run)
    with torch.no_grad():
        b.model_.head[-1].weight.mul_(-3.0)
    x, _ = _points(a, str(test), None, AuditConfig(n=6))
    adv_a = feature_attack(teacher_features(a.backbone_info_["spec"], a.preprocess_), x, 4 / 255, steps=3)
    adv_b = feature_attack(teacher_features(b.backbone_info_["spec"], b.preprocess_), x, 4 / 255, steps=3)
    assert torch.equal(adv_a, adv_b)


def test_cli_audit_saves_json_and_a_text_run_says_what_applies(audited_run, tmp_path):
    run, test = audited_run
    out = tmp_path / "audit.json"
    r = subprocess.run([sys.executable, "-m", "headstart.cli", "audit", str(run), str(test), "--out", str(out),
                        "--quick", "--n", "8", "--eps", "4/255", "--control-seconds", "2"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    saved = json.loads(out.read_text())
    assert saved["applies"] and saved["threat_model"]["quick"] and saved["threat_model"]["linf_eps_255"] == [4.0]
    assert "teacher-only" in r.stdout and "apgd-ce" in r.stdout and "audit took" in r.stdout

    from headstart.audit import audit
    from headstart.text import TextClassifier

    texts = ["good film", "great plot", "bad film", "awful plot"] * 4
    words = ["good", "great", "bad", "awful", "film", "plot"]
    rng = np.random.default_rng(0)
    (tmp_path / "v.txt").write_text("\n".join(w + " " + " ".join(f"{v:.3f}" for v in rng.normal(0, 1, 4))
                                              for w in words) + "\n")
    clf = TextClassifier(f"vectors:{tmp_path / 'v.txt'}", strategy="linear-probe", head_min_steps=5,
                         baselines=False).fit(texts, ["p", "p", "n", "n"] * 4)
    result = audit(clf, texts, ["p", "p", "n", "n"] * 4)
    assert not result.applies and "token ids" in result.statement


# ----------------------------------------------------------------------------- --harden
def test_paired_images_get_the_same_crop_and_flip_as_the_image():
    from headstart.data import augment
    from headstart.train.loop import _augment_together

    x = torch.randint(0, 256, (6, 3, 16, 16), dtype=torch.uint8)
    twin = x.flip(1)  # the same pixels, channels reversed: per-channel crops must match exactly
    gen = torch.Generator().manual_seed(3)
    out, extra = _augment_together(lambda b: augment(b, gen), x, {"twin": twin, "other": torch.arange(6)}, ("twin",))
    assert not torch.equal(out, x)  # something was cropped or flipped
    assert torch.equal(extra["twin"], out.flip(1)) and torch.equal(extra["other"], torch.arange(6))
    alone = augment(x, torch.Generator().manual_seed(3))
    assert torch.equal(alone, out)  # the draw does not depend on how many images ride along


def test_teacher_perturbations_stay_in_budget_on_the_uint8_grid():
    from headstart.audit.harden import teacher_perturbed

    model = tiny_linear()
    pixels = torch.randint(0, 256, (10, 3, 6, 6), dtype=torch.uint8)
    adv = teacher_perturbed(lambda z: model[1](z.flatten(1)), pixels, 8 / 255, steps=3, seed=0, batch_size=4)
    assert adv.dtype == torch.uint8 and (adv.int() - pixels.int()).abs().max() <= 8
    assert (adv != pixels).float().mean() > 0.5
    assert torch.equal(adv, teacher_perturbed(lambda z: model[1](z.flatten(1)), pixels, 8 / 255, steps=3, seed=0))


def test_harden_objectives_swap_only_while_the_backbone_trains_on_pixels():
    from headstart.audit.harden import (
        TEACHER_ADV,
        AdversarialObjective,
        TeacherTransferObjective,
    )
    from headstart.train.objectives import Batch
    from headstart.train.strategies import Phase

    phase = Phase("finetune", 0, 1)
    seen = []
    model = tiny_linear()

    def spy(x):
        seen.append(x.clone())
        return model(x.float() / 255 if x.dtype == torch.uint8 else x)

    x = torch.randint(0, 256, (8, 3, 6, 6), dtype=torch.uint8)
    y = torch.randint(0, 3, (8,))
    adv = x.clone()
    adv[:, 0] = 0
    TeacherTransferObjective(mix=1.0).loss(spy, Batch(x, y, {TEACHER_ADV: adv}), phase=phase)
    assert torch.equal(seen[-1], adv)
    feats = torch.randn(8, 5)
    TeacherTransferObjective(mix=1.0).loss(lambda f: seen.append(f) or f[:, :3], Batch(feats, y, {TEACHER_ADV: adv}),
                                           phase=Phase("head", 9, 1))
    assert torch.equal(seen[-1], feats)  # a head-only batch of cached features is left alone

    seen.clear()
    out = AdversarialObjective(eps=4 / 255, steps=2, mix=1.0).loss(spy, Batch(x, y), phase=phase)
    trained_on = seen[-1]
    delta = trained_on - x.float() / 255
    assert delta.abs().max() <= 4 / 255 + 1e-6 and delta.abs().max() > 1 / 255
    clean = F.cross_entropy(model(x.float() / 255), y)
    assert out.loss > clean  # the examples it trains on are harder than the clean ones


def test_harden_refuses_what_it_cannot_do():
    from headstart.config import TrainConfig
    from headstart.errors import HeadstartError

    with pytest.raises(HeadstartError, match="two-stage"):
        TrainConfig(harden=True, strategy="linear-probe")
    with pytest.raises(HeadstartError, match="pass 8 for 8/255"):
        TrainConfig(harden_eps=8 / 255)
    with pytest.raises(HeadstartError, match="harden_method"):
        TrainConfig(harden_method="magic")


@pytest.mark.parametrize("method", ["teacher", "adversarial"])
def test_harden_trains_saves_and_audits_from_the_cli(audited_run, tmp_path, method):
    from headstart import load

    run, test = audited_run
    base = load(run).backbone_info_["spec"]
    train = run.parent / "train"
    out = tmp_path / f"hard-{method}"
    r = subprocess.run([sys.executable, "-m", "headstart.cli", "train", str(train), "--backbone", base, "--out",
                        str(out), "--harden", "--harden-method", method, "--harden-eps", "8", "--epochs", "2",
                        "--head-min-steps", "20", "--precision", "fp32", "--no-baselines"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    clf = load(out)
    record = clf.meta_["hardening"]
    assert record["method"] == method and record["eps_255"] == 8 and record["steps"] == (5 if method == "teacher" else 1)
    assert record["validation"]["n"] > 0 and 0 <= record["validation"]["teacher_only_success"] <= 1
    assert "hardened (" + method in " ".join((r.stdout + r.stderr).split())
    assert any(p["name"] == "finetune" for p in clf.meta_["history"]["phases"])
    result = clf.audit(str(test), eps=(8 / 255,), l2_eps=(), n=8, quick=True, control_seconds=1)
    assert result.applies and len(result.teacher_only) == 1
    result.save(out / "audit.json")  # where `headstart audit` saves it: the report reads it from there

    from headstart.report import write_report

    page, _ = write_report(out)
    text = page.read_text()
    section = text[text.index('<section id="robustness">'):]
    assert f"Hardened ({method})" in section and "teacher-only success" in section and "8/255" in section
    assert "apgd-ce" in section and "sanity check" in section


@pytest.mark.parametrize("attack", ["pgd", "apgd"])
def test_a_fooled_point_is_kept_and_not_attacked_further(attack):
    model = tiny_linear()
    x, y = batch(n=16)
    forwarded = []

    def counting(z):
        forwarded.append(len(z))
        return model(z)

    run = pgd if attack == "pgd" else apgd
    adv = run(counting, x, y, 0.5, steps=10)  # a budget that fools a linear model at once
    assert (model(adv).argmax(1) != y).all()
    assert sum(forwarded) < 16 * 10 / 2  # most points left after their first pass
    assert (adv - x).abs().max() <= 0.5 + 1e-6


def test_adversarial_hardening_attacks_pixels_even_where_a_prefix_cache_would_run(audited_run, monkeypatch):
    """partial + no augmentation normally trains the suffix on cached prefix activations; an attack in pixel
    space must get the pixels instead."""
    from headstart import TransferClassifier, load
    from headstart.audit import harden

    seen = []
    real = harden.AdversarialObjective._perturb

    def spy(self, model, x, y):
        seen.append(tuple(x.shape[1:]))
        return real(self, model, x, y)

    monkeypatch.setattr(harden.AdversarialObjective, "_perturb", spy)
    run, _ = audited_run
    TransferClassifier(load(run).backbone_info_["spec"], strategy="partial", freeze_stages=1, augment=False, harden=True,
                       harden_method="adversarial", epochs=1, head_epochs=0, baselines=False, precision="fp32",
                       val_fraction=0).fit(str(run.parent / "train"))
    assert seen and all(s[0] == 3 for s in seen)  # (3, S, S) images, not activations
