"""The negative-transfer check: linear probe and from-scratch baselines beside every fit."""
import json
import logging
import os
import subprocess
import sys

import torch
from conftest import TINY, make_images

from headstart import TransferClassifier

# "simple" names the no-pretraining entry ("scratch" here, "tfidf_logreg" for texts): one schema for both.
KEYS = {"n_val", "budget_seconds", "transfer", "linear_probe", "scratch", "simple", "compute_saved", "warnings",
        "seconds"}


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
    x, y = make_images(n_per_class=20)
    clf = TransferClassifier(TINY, strategy="linear-probe", pretrained=False, head_epochs=4, head_min_steps=0,
                             precision="fp32", baseline_seconds=0.01)
    with caplog.at_level(logging.WARNING, logger="headstart"):
        clf.fit(x, y)
    rep = clf.baselines_
    assert rep["scratch"]["epochs"] == 1
    assert rep["transfer"]["val_acc"] == 0.5 and rep["scratch"]["val_acc"] == 1.0
    assert any(w.startswith("NEGATIVE TRANSFER") for w in rep["warnings"])
    assert "NEGATIVE TRANSFER" in caplog.text


def test_warning_rules():
    from types import SimpleNamespace

    from headstart.modalities.scratch import Baselines

    b = Baselines.__new__(Baselines)
    b.finetunes = True
    scratch = {"val_acc": 0.70, "seconds": 30.0}  # standard error on 200 images: 0.032
    assert b._warnings(0.90, {"val_acc": 0.85}, scratch, 200) == []
    kinds = lambda *args: [w.split(":")[0] for w in b._warnings(*args)]  # noqa: E731
    assert kinds(0.60, {"val_acc": 0.50}, scratch, 200) == ["NEGATIVE TRANSFER"]  # worse by 3 standard errors
    assert kinds(0.69, {"val_acc": 0.50}, scratch, 200) == ["TRANSFER DID NOT HELP"]  # within the noise
    assert kinds(0.70, {"val_acc": 0.60}, scratch, 200) == ["TRANSFER DID NOT HELP"]  # a tie
    assert b._warnings(0.85, {"val_acc": 0.85}, scratch, 200)[0].startswith("Fine-tuning did not beat the linear probe")
    b.finetunes = False  # a linear-probe run *is* the linear probe
    assert b._warnings(0.85, {"val_acc": 0.85}, scratch, 200) == []
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
