"""One estimator for every modality: scikit-learn's contract, the modality it asks, and the typed run."""
from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import TINY, make_images
from sklearn.base import clone

from headstart import TrainConfig, TransferClassifier, load
from headstart.errors import HeadstartError
from headstart.io.run import FORMAT_VERSION, Run
from headstart.modalities import IMAGE, TEXT, modality_for


def test_init_only_stores_parameters_and_clone_round_trips():
    cfg = TrainConfig(epochs=3)
    clf = TransferClassifier(TINY, strategy="linear-probe", config=cfg, pretrained=False, lr=0.01, head_epochs=2)
    params = clf.get_params()
    assert params["config"] is cfg and params["lr"] == 0.01 and params["strategy"] == "linear-probe"
    assert not [k for k in vars(clf) if k.endswith("_") and not k.startswith("_")]  # nothing fitted yet
    twin = clone(clf)  # sklearn checks every parameter comes back as the very object passed in
    assert twin.get_params() == params and twin is not clf
    assert twin.resolved_config() == cfg.replace(strategy="linear-probe", lr=0.01, head_epochs=2)


def test_help_shows_every_training_option_with_its_default():
    import dataclasses
    import inspect
    import pydoc

    sig = inspect.signature(TransferClassifier)
    assert not [p for p in sig.parameters.values() if p.kind is p.VAR_KEYWORD]  # no opaque **train_options
    for f in dataclasses.fields(TrainConfig):
        assert f.name in sig.parameters and sig.parameters[f.name].default == (
            "two-stage" if f.name == "strategy" else f.default), f.name
    assert "head_min_steps" in pydoc.render_doc(TransferClassifier)
    clf = TransferClassifier(TINY, epochs=3)
    assert "epochs=3" in repr(clf) and "lr=" not in repr(clf)  # sklearn's repr: only what differs
    assert clone(clf).get_params()["epochs"] == 3


def test_no_validation_split_warns_that_nothing_stops_early(caplog):
    x, y = make_images(6)
    with caplog.at_level("WARNING", logger="headstart"):
        TransferClassifier(TINY, strategy="linear-probe", pretrained=False, head_epochs=1, head_min_steps=0,
                           val_fraction=0, precision="fp32").fit(x, y)
    assert "No validation split (val_fraction=0 (CLI: --val-fraction 0)): nothing stops training early" in caplog.text


def test_set_params_reaches_every_training_option_and_names_a_typo():
    clf = TransferClassifier(TINY).set_params(batch_size=4, strategy="full")
    assert clf.resolved_config().batch_size == 4 and clf.resolved_config().strategy == "full"
    assert clone(clf).resolved_config().batch_size == 4
    with pytest.raises(HeadstartError, match="Did you mean 'batch_size'"):
        clf.set_params(batchsize=4)
    with pytest.raises(HeadstartError, match="Did you mean 'epochs'"):
        TransferClassifier(TINY, epoch=2)


def test_bad_values_are_refused_at_fit_with_the_parameter_named(tiny_data):
    clf = TransferClassifier(TINY, pretrained=False, epochs=-1)  # stored as given
    with pytest.raises(HeadstartError, match="'epochs' parameter must be >= 0; got -1"):
        clf.fit(*tiny_data)


def test_the_backbone_decides_the_modality():
    assert modality_for(TINY) is IMAGE and modality_for("file:some/run") is IMAGE
    assert modality_for("hf:all-minilm-l6-v2") is TEXT and modality_for("vectors:glove-6b-50d") is TEXT
    assert TransferClassifier("hf:x").modality is TEXT


def test_one_schema_for_both_modalities_read_through_run(tmp_path):
    x, y = make_images(8)
    opts = dict(strategy="linear-probe", head_epochs=2, head_min_steps=0, precision="fp32")
    TransferClassifier(TINY, pretrained=False, **opts).fit(x, y, out=tmp_path / "img")
    texts = ["good film", "great plot", "fine acting", "bad film", "awful plot", "dull acting"] * 4
    labels = ["pos"] * 3 * 4 + ["neg"] * 3 * 4
    vec = tmp_path / "v.txt"
    words = sorted({w for t in texts for w in t.split()})
    vec.write_text("".join(f"{w} {i} {len(w)}\n" for i, w in enumerate(words)))
    TransferClassifier(f"vectors:{vec}", text_column=None, **opts).fit(texts, labels, out=tmp_path / "txt")
    img, txt = Run.open(tmp_path / "img"), Run.open(tmp_path / "txt")
    raw = [json.loads((r.path / "headstart.json").read_text()) for r in (img, txt)]
    assert [m["format_version"] for m in raw] == [FORMAT_VERSION] * 2
    assert set(raw[0]) == set(raw[1])  # the same keys, whatever the modality
    assert (img.modality, txt.modality) == ("image", "text")
    for run, simple in ((img, "scratch"), (txt, "tfidf_logreg")):
        assert run.data.n_train + run.data.n_val == (16 if run is img else 24)
        assert run.baselines.simple == simple and run.baselines.simple_val_acc is not None
        assert run.baselines.transfer_val_acc == run.metrics["val_acc"]
        assert [e["phase"] for e in run.epochs()] == ["head"] * len(run.epochs())
        assert run.config.strategy == "linear-probe"
    assert "vocabulary_coverage" in txt.data.extra and txt.data.extra["vocabulary_coverage"] == 1.0
    again = load(tmp_path / "txt")
    np.testing.assert_array_equal(again.predict(texts[:3]), again.predict(texts[:3]))
    assert again.run_.modality == "text" and again.modality is TEXT


def test_format_1_runs_read_in_the_current_schema():
    from pathlib import Path

    root = Path(__file__).parent / "fixtures" / "runs_v1"
    img, txt = Run.open(root / "image"), Run.open(root / "text-vectors")
    assert img.meta["saved_format_version"] == 1 and img.meta["format_version"] == FORMAT_VERSION
    assert (img.modality, txt.modality) == ("image", "text")
    assert txt.inputs == {} and img.data.n_train == 16


def test_a_loaded_run_saved_again_keeps_what_its_fit_measured(tmp_path):
    x, y = make_images(8)
    TransferClassifier(TINY, strategy="linear-probe", pretrained=False, head_epochs=2, head_min_steps=0,
                       precision="fp32", baseline_seconds=0.01).fit(x, y, out=tmp_path / "a")
    load(tmp_path / "a").save(tmp_path / "b")
    a, b = Run.open(tmp_path / "a"), Run.open(tmp_path / "b")
    for key in ("data", "baselines", "metrics", "classes", "config", "modality", "inputs"):
        assert a.meta[key] == b.meta[key], key
    np.testing.assert_array_equal(load(tmp_path / "b").predict_proba(x), load(tmp_path / "a").predict_proba(x))
