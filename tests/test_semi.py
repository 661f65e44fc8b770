"""Semi-supervised training (``--unlabeled``): pseudo-label selection, the methods on embeddings where
the answer is known, the choice on validation, leakage, the estimator, the saved run, text, the CLI.

Unit tests use synthetic embeddings and tiny random models; the real Fashion-MNIST figures (100
labels/class + 59,000 unlabelled) are in benchmarks/bench_semi.py.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import TINY, make_images, write_folder
from test_cli import run as cli
from test_text import corpus, glove_txt  # noqa: F401  (fixtures)
from torch import nn

from headstart import TransferClassifier, load
from headstart.config import TrainConfig
from headstart.data import as_examples
from headstart.errors import DataError, HeadstartError
from headstart.semi import drop_labelled
from headstart.semi.methods import (
    Feats,
    HeadCandidate,
    accuracy,
    choose,
    confident_share,
    label_propagation,
    self_training,
    train_head,
)

FAST = dict(pretrained=False, precision="fp32", baselines=False, head_epochs=5, head_min_steps=50)


# ------------------------------------------------------------------ pseudo-label selection

def test_confident_share_takes_the_top_share_of_each_predicted_class_above_the_threshold():
    probs = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.6, 0.4], [0.55, 0.45],  # four predicted class 0
                          [0.3, 0.7], [0.45, 0.55]])  # two predicted class 1
    idx, labels = confident_share(probs, 0.5, threshold=0.0)
    assert idx.tolist() == [0, 1, 4] and labels.tolist() == [0, 0, 1]  # ceil(0.5 * 4), ceil(0.5 * 2)
    idx, labels = confident_share(probs, 1.0, threshold=0.6)
    assert idx.tolist() == [0, 1, 2, 4] and labels.tolist() == [0, 0, 0, 1]  # 0.55 < 0.6: never taken
    idx, _ = confident_share(probs, 0.25, threshold=0.0)
    assert idx.tolist() == [0, 4]  # the unsure class still gets its most confident row


# ------------------------------------------------------------------ the methods, where the answer is known

def _clusters(n_labelled: int = 2, n_pool: int = 400, n_val: int = 200, seed: int = 0):
    """Three elongated Gaussian clusters in 16-d: two labels per class fit a bad line; the pool's shape
    shows the right one (the classic case self-training and label propagation are for)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[0.0, 0.0], [4.0, 0.0], [8.0, 0.0]])

    def draw(n):
        y = torch.arange(n) % 3
        x = torch.randn(n, 16, generator=g) * 0.4
        x[:, :2] += centres[y]
        x[:, 1] += torch.randn(n, generator=g) * 3.0  # long along the axis the labels do not separate
        return x, y

    xl, yl = draw(3 * n_labelled)
    xu, _ = draw(n_pool)
    xv, yv = draw(n_val)
    return Feats(train=xl, y_train=yl, pool=xu, val=xv, y_val=yv)


def _head(dim: int = 16, classes: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Identity(), nn.Linear(dim, classes))


def test_both_methods_use_the_pool_to_beat_the_supervised_head():
    f = _clusters()
    cfg = TrainConfig(head_min_steps=200, lr=1e-2, seed=0)
    supervised = train_head(_head(), f, None, None, cfg, seed=0)
    base = accuracy(supervised, f.val, f.y_val)
    st = self_training(supervised, f, cfg)
    lp = label_propagation(supervised, f, cfg)
    assert st.val_acc > base + 0.03 and lp.val_acc > base + 0.03, (base, st.val_acc, lp.val_acc)
    assert sum(lp.per_class) == lp.n_pseudo and len(lp.per_class) == 3
    assert [r["round"] for r in st.rounds] == list(range(1, cfg.ssl_rounds + 1))
    assert st.rounds[0]["n_pseudo"] < st.rounds[-1]["n_pseudo"] <= len(f.pool)  # the curriculum grows


def test_train_head_is_deterministic_and_leaves_the_given_head_alone():
    f = _clusters()
    cfg = TrainConfig(head_min_steps=60)
    head = _head()
    before = [p.detach().clone() for p in head.parameters()]
    idx = torch.arange(50)
    a = train_head(head, f, idx, torch.zeros(50, dtype=torch.long), cfg, seed=3)
    b = train_head(head, f, idx, torch.zeros(50, dtype=torch.long), cfg, seed=3)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert all(torch.equal(p, q) for p, q in zip(head.parameters(), before))


def test_choose_keeps_the_supervised_head_unless_a_method_beats_it():
    h = _head()
    sup, st, lp = (HeadCandidate("supervised", h, 0.80), HeadCandidate("self-training", h, 0.80),
                   HeadCandidate("label-propagation", h, 0.79))
    winner, reason = choose([sup, st, lp], "auto")
    assert winner is sup and "no method beat" in reason  # a tie is not a gain
    st.val_acc = lp.val_acc = 0.85
    winner, reason = choose([sup, st, lp], "auto")
    assert winner is st and "0.8500 vs 0.8000" in reason  # tied methods: the simpler one
    winner, reason = choose([sup, lp], "label-propagation")
    assert winner is lp and "asked for" in reason  # a named method is kept even when it loses
    sup.val_acc = None
    winner, reason = choose([sup, st], "auto")
    assert winner is sup and "no validation" not in reason and "there is none" in reason


# ------------------------------------------------------------------ leakage

def test_pool_copies_of_labelled_examples_are_dropped_by_content(tmp_path):
    import shutil

    x, y = make_images(n_per_class=4)
    train = write_folder(tmp_path / "train", x, y)
    labelled = as_examples(train)
    (tmp_path / "pool").mkdir()
    for i, src in enumerate(labelled.items[:3]):  # the same files under other names
        shutil.copy(src, tmp_path / "pool" / f"copy{i}.png")
    write_folder(tmp_path / "pool", [np.flipud(x[1]).copy()], ["new"])
    from headstart.data.sources import from_pool

    pool = from_pool(tmp_path / "pool")
    kept, dropped = drop_labelled(pool, [labelled])
    assert dropped == 3 and len(kept) == 1 and "new" in kept.items[0]
    arrays = as_examples([x[0], np.flipud(x[1]).copy()])
    assert drop_labelled(arrays, [as_examples(list(x), y)])[1] == 1  # arrays: by their bytes
    from headstart.data.texts import TextExamples

    a = TextExamples(["a  good film", "new text"], None, "pool")
    b = TextExamples(["a good film "], ["pos"], "train")
    assert drop_labelled(a, [b])[1] == 1  # the same words with other spacing: one text


def test_validation_examples_in_the_pool_never_get_a_pseudo_label():
    x, y = make_images(n_per_class=20, classes=("a", "b", "c"), seed=1)
    xv, yv = make_images(n_per_class=6, classes=("a", "b", "c"), seed=2)
    xu, _ = make_images(n_per_class=30, classes=("a", "b", "c"), seed=3)
    pool = list(xu) + list(xv) + list(x[:5])  # the user pointed --unlabeled at everything they have
    clf = TransferClassifier(TINY, strategy="linear-probe", **FAST)
    clf.fit(list(x), y, validation=(list(xv), yv), unlabeled=pool)
    rec = clf.semi_supervised_
    assert rec["n_pool"] == len(pool) and rec["n_dropped_labelled"] == len(xv) + 5 and rec["n_used"] == len(xu)
    assert all(c["n_pseudo"] <= len(xu) for c in rec["candidates"])


# ------------------------------------------------------------------ the estimator and the saved run

def test_fit_with_a_pool_saves_the_record_and_the_kept_head(tmp_path):
    x, y = make_images(n_per_class=15, classes=("a", "b", "c"), seed=1)
    xu, _ = make_images(n_per_class=40, classes=("a", "b", "c"), seed=4)
    write_folder(tmp_path / "pool" / "nested", xu, ["x"] * len(xu))  # nested, any subfolders ignored
    clf = TransferClassifier(TINY, strategy="linear-probe", ssl_method="label-propagation", **FAST)
    clf.fit(list(x), y, unlabeled=tmp_path / "pool", out=tmp_path / "run")
    rec = clf.semi_supervised_
    assert rec["method"] == "label-propagation" and rec["n_used"] == len(xu)
    assert [c["name"] for c in rec["candidates"]] == ["supervised", "label-propagation"]
    meta = json.loads((tmp_path / "run" / "headstart.json").read_text())
    assert meta["semi_supervised"]["method"] == "label-propagation"
    assert meta["metrics"]["val_acc"] == rec["val_acc"] and meta["metrics"]["supervised"]["phase"] == "head"
    reloaded = load(tmp_path / "run")
    assert reloaded.semi_supervised_ == meta["semi_supervised"]
    probe = list(x[:6])
    np.testing.assert_allclose(reloaded.predict_proba(probe), clf.predict_proba(probe), atol=1e-6)
    kept = clf.ssl_heads_["label-propagation"]
    assert all(torch.equal(a, b.to(a.device)) for a, b in zip(kept.state_dict().values(),
                                                              clf.model_.head.state_dict().values()))


def test_a_fine_tuned_backbone_embeds_the_pool_too():
    x, y = make_images(n_per_class=10, classes=("a", "b"), seed=1)
    xu, _ = make_images(n_per_class=20, classes=("a", "b"), seed=5)
    clf = TransferClassifier(TINY, strategy="two-stage", epochs=1, **FAST)
    clf.fit(list(x), y, unlabeled=list(xu))
    rec = clf.semi_supervised_
    assert rec["n_used"] == len(xu) and {c["name"] for c in rec["candidates"]} == {
        "supervised", "self-training", "label-propagation"}


def test_texts_use_a_pool_of_unlabelled_texts(glove_txt, tmp_path):  # noqa: F811
    texts, labels = corpus()
    pool = tmp_path / "pool.csv"
    pool.write_text("text\n" + "\n".join(f"{w} story number {i}" for i in range(5)
                                          for w in ("loved it superb", "dreadful and dull", "a great", "awful hated"))
                    + "\n")
    clf = TransferClassifier(f"vectors:{glove_txt}", strategy="linear-probe", precision="fp32", baselines=False)
    clf.fit(texts, labels, unlabeled=pool)
    rec = clf.semi_supervised_
    assert rec["n_pool"] == 20 and rec["n_used"] == 20 and rec["method"] in ("supervised", "self-training",
                                                                            "label-propagation")


def test_bad_pools_and_options_fail_before_training(tmp_path):
    x, y = make_images(n_per_class=6)
    clf = TransferClassifier(TINY, strategy="linear-probe", **FAST)
    with pytest.raises(DataError, match="does not exist"):
        clf.fit(list(x), y, unlabeled=tmp_path / "nowhere")
    with pytest.raises(DataError, match="is a copy of a labelled one"):
        clf.fit(list(x), y, unlabeled=list(x[:4]))
    with pytest.raises(HeadstartError, match="Did you mean 'self-training'"):
        TrainConfig(ssl_method="self-trainig")
    with pytest.raises(HeadstartError, match=r"ssl_threshold is a confidence in \[0, 1\); got 1.5"):
        TrainConfig(ssl_threshold=1.5)


# ------------------------------------------------------------------ the CLI

def test_cli_train_with_unlabeled_prints_and_saves_the_choice(tmp_path):
    x, y = make_images(n_per_class=10)
    xu, _ = make_images(n_per_class=30, seed=7)
    train = write_folder(tmp_path / "train", x, y)
    pool = write_folder(tmp_path / "pool", xu, ["u"] * len(xu))
    out = tmp_path / "run"
    p = cli("train", train, "--backbone", TINY, "--random-init", "--strategy", "linear-probe", "--unlabeled", pool,
            "--ssl-rounds", "2", "--no-baselines", "--precision", "fp32", "--out", out)
    said = p.stdout + p.stderr
    assert "unlabelled pool: 60 used of 60" in said and "kept: supervised" in said
    meta = json.loads((out / "headstart.json").read_text())
    assert meta["semi_supervised"]["rounds"] == 2 and meta["config"]["ssl_rounds"] == 2
    args = json.loads((out / "train_args.json").read_text())
    assert args["unlabeled"] == str(pool)  # `headstart resume` trains with the same pool


# ------------------------------------------------------------------ crash safety

def test_kill_9_during_a_run_with_a_pool_then_resume_equals_the_unbroken_run(tmp_path):
    import os
    import signal
    import subprocess

    from safetensors.torch import load_file
    from test_resume import ARGS, _cli, _wait_for_checkpoint

    x, y = make_images(n_per_class=24, size=48, seed=3)
    xu, _ = make_images(n_per_class=40, size=48, seed=8)
    data = write_folder(tmp_path / "data", x, y)
    pool = write_folder(tmp_path / "pool", xu, ["u"] * len(xu))
    args = [*ARGS, "--unlabeled", pool]
    ref, run = tmp_path / "reference", tmp_path / "killed"
    subprocess.run(_cli("train", data, "--out", ref, *args), check=True, capture_output=True)
    proc = subprocess.Popen(_cli("train", data, "--out", run, *args), env={**os.environ},
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert _wait_for_checkpoint(run / "checkpoint.pt", proc, phase_index=1), "run ended before the kill"
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    done = subprocess.run(_cli("resume", run), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    a, b = load_file(str(ref / "model.safetensors")), load_file(str(run / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # the semi-supervised head too
    semi = [json.loads((d / "headstart.json").read_text())["semi_supervised"] for d in (ref, run)]
    strip = [{k: v for k, v in s.items() if "seconds" not in k and k != "candidates"} for s in semi]
    assert strip[0] == strip[1] and semi[0]["n_used"] == len(xu)


# ------------------------------------------------------------------ fixmatch: the backbone learns from the pool

def test_strong_augmentation_perturbs_every_image_and_keeps_the_batch_shape():
    from headstart.semi.fixmatch import strong_augment

    torch.manual_seed(0)
    batch = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    out = strong_augment(batch)
    assert out.shape == batch.shape and out.dtype == torch.uint8
    assert all(not torch.equal(a, b) for a, b in zip(out, batch))  # the cutout alone changes each image


def test_fixmatch_labels_only_the_confident_strong_views():
    from headstart.semi.fixmatch import FixMatchObjective
    from headstart.train.objectives import Batch

    class Fixed(nn.Module):  # predicts class 0 with 0.99 for bright images, near-uniform for dark ones
        def forward(self, x):
            bright = (x.float().mean((1, 2, 3)) > 127).float()
            return torch.stack([bright * 6.0, torch.zeros_like(bright), torch.zeros_like(bright)], 1)

    def objective(value):
        pool = torch.full((4, 3, 8, 8), value, dtype=torch.uint8)
        return FixMatchObjective(pool, threshold=0.95, ratio=4, label_smoothing=0.0, seed=0, augment=None)

    x, y = torch.zeros(2, 3, 8, 8, dtype=torch.uint8), torch.tensor([1, 2])
    sure, unsure = objective(250), objective(5)
    out = sure.loss(Fixed(), Batch(x, y), phase=None)
    unsure_out = unsure.loss(Fixed(), Batch(x, y), phase=None)
    assert (sure.confident, sure.drawn, sure.mask_rate()) == (8, 8, 1.0) and out.logits.shape == (2, 3)
    assert (unsure.confident, unsure.drawn, unsure.mask_rate()) == (0, 8, 0.0)
    # nothing confident: the loss is the labelled cross-entropy alone
    ce = torch.nn.functional.cross_entropy(Fixed()(x), y)
    assert torch.allclose(unsure_out.loss, ce) and out.loss > ce  # strong views labelled 0 add to it
    obj = sure
    head_only = obj.loss(nn.Linear(4, 3), Batch(torch.randn(2, 4), torch.tensor([0, 1])), phase=None)
    assert obj.drawn == 8 and head_only.loss.dim() == 0  # features of a head-only phase: labels only


def test_fit_with_fixmatch_trains_the_backbone_on_the_pool_and_records_it(tmp_path):
    x, y = make_images(n_per_class=10, classes=("a", "b", "c"), seed=1)
    xu, _ = make_images(n_per_class=12, classes=("a", "b", "c"), seed=4)
    clf = TransferClassifier(TINY, strategy="two-stage", epochs=2, batch_size=8, ssl_method="fixmatch",
                             fixmatch_threshold=0.34, **FAST)
    clf.fit(list(x), y, unlabeled=list(xu), out=tmp_path / "run")
    rec = clf.semi_supervised_
    assert rec["method"] == "fixmatch" and rec["n_used"] == len(xu) and rec["mask_rate"] is not None
    assert 0 < rec["mask_rate"] <= 1 and rec["val_acc"] == clf.final_metrics_()["val_acc"]
    assert json.loads((tmp_path / "run" / "headstart.json").read_text())["semi_supervised"] == rec
    plain = TransferClassifier(TINY, strategy="two-stage", epochs=2, batch_size=8, **FAST).fit(list(x), y)
    a, b = (torch.cat([p.flatten() for p in m.model_.backbone.parameters()]) for m in (clf, plain))
    assert not torch.equal(a, b)  # the pool moved the backbone itself


def test_fixmatch_is_refused_where_it_cannot_work(glove_txt):  # noqa: F811
    x, y = make_images(n_per_class=6)
    with pytest.raises(HeadstartError, match="strategy 'linear-probe' does not train it"):
        TransferClassifier(TINY, strategy="linear-probe", ssl_method="fixmatch", **FAST).fit(list(x), y,
                                                                                            unlabeled=list(x[:2]))
    texts, labels = corpus()
    with pytest.raises(HeadstartError, match="fixmatch needs images"):
        TransferClassifier(f"vectors:{glove_txt}", strategy="two-stage", ssl_method="fixmatch",
                           baselines=False).fit(texts, labels, unlabeled=texts[:3] + ["a new one"])
