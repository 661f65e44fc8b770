"""The negative-transfer check: linear probe and from-scratch baselines beside every fit."""
import json
import logging
import os
import subprocess
import sys

import numpy as np
import torch
from conftest import TINY, make_images

from headstart import TransferClassifier

# "simple" names the no-pretraining entry ("scratch" here, "tfidf_logreg" for texts): one schema for both.
KEYS = {"n_val", "budget_seconds", "transfer", "linear_probe", "scratch", "simple", "compute_saved", "verdict",
        "warnings", "seconds"}


def test_report_is_saved_with_the_expected_keys(tmp_path, tiny_data):
    x, y = tiny_data
    clf = TransferClassifier(TINY, strategy="two-stage", pretrained=False, epochs=1, head_epochs=2, head_min_steps=0,
                             batch_size=8, precision="fp32", baseline_seconds=0.01)
    clf.fit(x, y, out=tmp_path / "run")
    rep = json.loads((tmp_path / "run" / "headstart.json").read_text())["baselines"]
    assert set(rep) == KEYS
    assert rep["n_val"] == 4 and rep["budget_seconds"] == 0.01
    assert rep["transfer"]["val_acc"] == clf.final_metrics_()["val_acc"]
    assert rep["linear_probe"]["source"] == "the run's head phase" and 0 <= rep["linear_probe"]["val_acc"] <= 1
    sc = rep["scratch"]
    assert sc["epochs"] == 1 and sc["input_size"] == 32 and len(sc["curve"]) == 1 and 0 <= sc["val_acc"] <= 1
    assert {"measure", "transfer_seconds", "scratch_seconds_to_transfer_acc", "summary"} <= set(rep["compute_saved"])


def test_strategies_without_a_head_phase_train_a_linear_probe_on_the_pretrained_weights(tiny_data):
    x, y = tiny_data
    clf = TransferClassifier(TINY, strategy="full", pretrained=False, epochs=1, batch_size=8, precision="fp32",
                             head_min_steps=0, head_epochs=2, baseline_seconds=0.01)
    clf.fit(x, y)
    lp = clf.baselines_["linear_probe"]
    assert lp["source"].startswith("trained on cached features") and 0 <= lp["val_acc"] <= 1


def test_warning_when_transfer_loses_to_a_model_trained_from_scratch(caplog):
    """A genuine case: random (not pretrained) features give a linear probe at chance, while the small
    network trained from scratch learns this easy brightness task in one (seeded) epoch."""
    x, y = make_images(n_per_class=100)  # 40 validation images: enough for a verdict
    clf = TransferClassifier(TINY, strategy="linear-probe", pretrained=False, head_epochs=4, head_min_steps=0,
                             precision="fp32", baseline_seconds=0.01)
    with caplog.at_level(logging.WARNING, logger="headstart"):
        clf.fit(x, y)
    rep = clf.baselines_
    assert rep["scratch"]["epochs"] == 1
    assert rep["transfer"]["val_acc"] == 0.5 and rep["scratch"]["val_acc"] == 1.0
    v = rep["verdict"]
    assert v["outcome"] == "worse" and v["n"] == 40 and v["only_simple_right"] == 20 and v["p_value"] < 1e-4
    assert any(w.startswith("NEGATIVE TRANSFER") for w in rep["warnings"])
    assert "NEGATIVE TRANSFER" in caplog.text and "McNemar" in caplog.text


def test_no_advice_on_a_handful_of_validation_images(caplog):
    """The reported case: 12 validation images, from-scratch 12/12, transfer 11/12, standard error 0.000:
    the old rule said NEGATIVE TRANSFER and told the user to drop pretraining."""
    from headstart.modalities.scratch import Baselines
    from headstart.modalities.verdict import compare

    b = Baselines.__new__(Baselines)
    b.finetunes = False
    v = compare([True] * 11 + [False], [True] * 12)
    assert v.outcome == "too few to tell" and "too few validation examples to tell" in v.why
    assert b._warnings(11 / 12, {"val_acc": None}, {"val_acc": 1.0, "seconds": 3.0}, v) == []
    # Enough examples, but one disagreement: still no advice.
    one = compare([True] * 99 + [False], [True] * 100)
    assert one.outcome == "too few to tell" and "disagree on fewer than 2" in one.why


def test_warning_rules():
    from types import SimpleNamespace

    from headstart.modalities.scratch import Baselines
    from headstart.modalities.verdict import compare

    b = Baselines.__new__(Baselines)
    b.finetunes = True
    scratch = {"val_acc": 0.70, "seconds": 30.0}

    def paired(transfer_right: int, scratch_right: int, both: int, n: int = 200):
        """n validation images; both right on ``both``, each alone right on the rest of its count."""
        t = np.zeros(n, bool)
        s = np.zeros(n, bool)
        t[:both] = s[:both] = True
        t[both:transfer_right] = True
        s[transfer_right:transfer_right + scratch_right - both] = True
        return compare(t, s)

    # McNemar's p equals scipy's exact binomial test on the disagreements.
    from scipy.stats import binomtest

    assert abs(paired(120, 140, 100).p_value - binomtest(20, 60, 0.5).pvalue) < 1e-12
    kinds = lambda acc, lp, v: [w.split(":")[0] for w in b._warnings(acc, lp, scratch, v)]  # noqa: E731
    assert b._warnings(0.90, {"val_acc": 0.85}, scratch, paired(180, 140, 130)) == []  # better
    assert kinds(0.60, {"val_acc": 0.50}, paired(120, 140, 100)) == ["NEGATIVE TRANSFER"]  # 20 vs 40: p 0.013
    worse = paired(100, 140, 90)  # 10 vs 50 disagreements
    assert worse.outcome == "worse" and kinds(0.50, {"val_acc": 0.40}, worse) == ["NEGATIVE TRANSFER"]
    assert kinds(0.69, {"val_acc": 0.50}, paired(138, 140, 120)) == ["TRANSFER DID NOT HELP"]  # within the noise
    assert kinds(0.70, {"val_acc": 0.60}, paired(140, 140, 120)) == ["TRANSFER DID NOT HELP"]  # a tie
    better = paired(180, 140, 130)
    assert b._warnings(0.85, {"val_acc": 0.85}, scratch, better)[0].startswith("Fine-tuning did not beat")
    b.finetunes = False  # a linear-probe run *is* the linear probe
    assert b._warnings(0.85, {"val_acc": 0.85}, scratch, better) == []
    from headstart.modalities.scratch import _compute_saved

    hist = SimpleNamespace(seconds=10.0, phases=[{"name": "head", "seconds": 10.0, "features_seconds": 4.0}],
                           epochs=[{"phase_index": 0, "seconds": 1.0, "val_acc": 0.6},
                                   {"phase_index": 0, "seconds": 1.0, "val_acc": 0.8}])
    never = _compute_saved(hist, 0.8, {"val_acc": 0.6, "seconds": 10.0, "curve": [[5.0, 0.5], [10.0, 0.6]]})
    assert never["scratch_seconds_to_transfer_acc"] is None and never["transfer_seconds_to_scratch_acc"] == 7.0
    assert "never reached" in never["summary"]
    late = _compute_saved(hist, 0.8, {"val_acc": 0.8, "seconds": 30.0, "curve": [[10.0, 0.5], [25.0, 0.8]]})
    assert late["saved_seconds"] == 15.0


def test_no_validation_split_skips_with_a_reason(tiny_data):
    x, y = tiny_data
    clf = TransferClassifier(TINY, strategy="linear-probe", pretrained=False, head_epochs=2, head_min_steps=0,
                             precision="fp32", val_fraction=0.0)
    clf.fit(x, y)
    assert "no validation split" in clf.baselines_["skipped"]


def test_scratch_net_and_its_augmentation():
    from headstart.modalities.scratch import ScratchNet, crop_flip, resize_pixels

    px = torch.randint(0, 256, (5, 3, 160, 160), dtype=torch.uint8)
    small = resize_pixels(px, 32)
    assert small.shape == (5, 3, 32, 32) and small.dtype == torch.uint8
    aug = crop_flip(small, torch.Generator().manual_seed(0))
    assert aug.shape == (5, 3, 32, 32) and 0 <= aug.min() and aug.max() <= 1
    assert ScratchNet(3)(aug).shape == (5, 3)


def test_cli_prints_the_comparison_and_no_baselines_skips_it(image_folder, tmp_path):
    env = {**os.environ, "COLUMNS": "200"}
    common = [sys.executable, "-m", "headstart.cli", "train", str(image_folder), "--backbone", TINY, "--random-init",
              "--strategy", "linear-probe", "--head-epochs", "2", "--head-min-steps", "0", "--quiet"]
    p = subprocess.run([*common, "--out", str(tmp_path / "a"), "--baseline-seconds", "0.01"],
                       capture_output=True, text=True, env=env)
    assert p.returncode == 0, p.stderr
    assert "from scratch" in p.stderr and "linear probe" in p.stderr
    assert json.loads((tmp_path / "a" / "headstart.json").read_text())["baselines"]["scratch"]["epochs"] == 1
    p = subprocess.run([*common, "--out", str(tmp_path / "b"), "--no-baselines"], capture_output=True, text=True, env=env)
    assert p.returncode == 0, p.stderr
    assert "from scratch" not in p.stderr
    assert json.loads((tmp_path / "b" / "headstart.json").read_text())["baselines"] is None


def test_cli_shows_where_a_cut_would_leave_the_backbone():
    cmd = [sys.executable, "-m", "headstart.cli", "backbones", "--stages", "timm:tf_efficientnet_lite0"]
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "COLUMNS": "200"}).stdout
    assert "output channels" in out and "--cut-stage" in out
    row = next(line for line in out.splitlines() if "blocks.4" in line)
    assert "112" in row and "700,768" in row  # cut after blocks.4: 112 features, 0.7 M of 3.4 M parameters


def test_paired_interval_is_honest_at_the_edges_and_matches_wald_when_large():
    from headstart.modalities.verdict import newcombe_paired, wilson

    lo, hi = newcombe_paired(12, 0, 0, 0)  # 12/12 both: the binomial standard error says 0.000
    assert lo < -0.2 and hi > 0.2  # Newcombe: the data cannot pin the difference that tightly
    for cells in [(5, 3, 1, 2), (0, 4, 0, 0), (0, 0, 6, 0), (40, 7, 2, 1)]:
        n = sum(cells)
        d = (cells[1] - cells[2]) / n
        lo, hi = newcombe_paired(*cells)
        assert -1 <= lo <= d <= hi <= 1, cells
    # Large n: close to the Wald interval of the paired difference.
    both, b, c, neither = 6000, 900, 700, 2400
    n = both + b + c + neither
    d = (b - c) / n
    se = np.sqrt(b + c - (b - c) ** 2 / n) / n
    lo, hi = newcombe_paired(both, b, c, neither)
    assert abs(lo - (d - 1.96 * se)) < 2e-3 and abs(hi - (d + 1.96 * se)) < 2e-3
    assert wilson(0, 10)[0] == 0 and 0.25 < wilson(0, 10)[1] < 0.35  # the rule of three, roughly
