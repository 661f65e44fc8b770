import json

import numpy as np
import pytest
import torch
from conftest import TINY, make_images

from headstart import TransferClassifier, load
from headstart.device import cpu_has_fast_bf16
from headstart.errors import DataError, HeadstartError


@pytest.fixture
def fitted(tiny_data, tmp_path):
    x, y = tiny_data
    clf = TransferClassifier(TINY, strategy="two-stage", pretrained=False, epochs=2, head_epochs=4, head_min_steps=0,
                             batch_size=8, precision="fp32")
    clf.fit(x, y, out=tmp_path / "run")
    return clf, tmp_path / "run"


def test_save_load_round_trip_predictions_equal(fitted, tiny_data):
    clf, run = fitted
    x, _ = tiny_data
    again = load(run)
    np.testing.assert_array_equal(again.predict_proba(x), clf.predict_proba(x))
    assert list(again.predict(x)) == list(clf.predict(x))
    assert again.classes_ == clf.classes_ == ["bright", "dark"]


@pytest.mark.parametrize("precision,tol", [
    ("fp32", 1e-5),
    pytest.param("bf16", 0.05, marks=pytest.mark.skipif(not cpu_has_fast_bf16(), reason="no bf16 on this CPU"))])
def test_predict_on_the_fast_path_matches_the_plain_forward(fitted, tiny_data, precision, tol):
    """predict_proba runs the backbone through the inference fast path (BatchNorm folded, channels_last,
    bf16 weights for bf16); the probabilities equal the model's own fp32 forward within that precision."""
    from headstart.data import as_examples, decode_all
    from headstart.features.fastpath import _EXTRACTORS

    clf, _ = fitted
    x, _ = tiny_data
    clf.set_params(precision=precision)  # an inference setting: predict reads it now
    probs = clf.predict_proba(x)
    assert any(k[0] == precision for k in _EXTRACTORS[clf.model_])  # the extractor really ran
    pixels = decode_all(as_examples(x), clf.preprocess_).pixels
    with torch.no_grad():
        ref = torch.softmax(clf.model_.eval()(pixels).float(), 1).numpy()
    np.testing.assert_allclose(probs, ref, atol=tol)


def test_run_directory_contents(fitted):
    clf, run = fitted
    meta = json.loads((run / "headstart.json").read_text())
    assert meta["backbone"]["spec"] == TINY and len(meta["backbone"]["weights_sha256"]) == 64
    assert meta["classes"] == ["bright", "dark"]
    assert meta["preprocess"]["input_size"] == clf.preprocess_.input_size
    assert meta["config"]["strategy"] == "two-stage"
    assert {"torch", "timm", "headstart"} <= set(meta["library_versions"])
    assert "val_acc" in meta["metrics"]
    lines = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert [l["phase"] for l in lines] == ["head"] * 4 + ["finetune"] * 2
    from safetensors.torch import load_file

    keys = load_file(str(run / "model.safetensors")).keys()
    assert any(k.startswith("head.") for k in keys) and any(k.startswith("backbone.") for k in keys)


def test_tampered_weights_are_refused(fitted):
    _, run = fitted
    data = bytearray((run / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (run / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(HeadstartError, match="sha256"):
        load(run)


def test_load_of_non_run_dir(tmp_path):
    with pytest.raises(HeadstartError, match="not a headstart run"):
        load(tmp_path)


def test_predict_accepts_paths_pil_and_arrays(fitted, tmp_path):
    from PIL import Image

    clf, _ = fitted
    x, _ = make_images(1)
    Image.fromarray(x[0]).save(tmp_path / "a.png")
    p1 = clf.predict_proba([str(tmp_path / "a.png")])
    p2 = clf.predict_proba([Image.fromarray(x[0])])
    p3 = clf.predict_proba(x[:1])
    np.testing.assert_allclose(p1, p2)
    np.testing.assert_allclose(p1, p3)
    assert p1.shape == (1, 2) and np.isclose(p1.sum(), 1.0)


def test_predict_unreadable_file_names_it(fitted, tmp_path):
    clf, _ = fitted
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff garbage")
    with pytest.raises(DataError, match="bad.jpg"):
        clf.predict([str(tmp_path / "bad.jpg")])


def test_evaluate_report(fitted, tiny_data):
    clf, _ = fitted
    rep = clf.evaluate(*tiny_data)
    assert set(rep) >= {"accuracy", "macro_f1", "per_class", "confusion_matrix"}
    assert np.asarray(rep["confusion_matrix"]).sum() == len(tiny_data[1])
    assert clf.score(*tiny_data) == rep["accuracy"]


def test_unfitted_use_is_explained():
    with pytest.raises(HeadstartError, match="not fitted"):
        TransferClassifier(TINY).predict(np.zeros((1, 8, 8), dtype=np.uint8))


def test_integer_labels_round_trip(tmp_path):
    x, _ = make_images(6)
    y = np.array([3] * 6 + [7] * 6)
    clf = TransferClassifier(TINY, strategy="linear-probe", pretrained=False, head_epochs=2, head_min_steps=0, precision="fp32")
    clf.fit(x, y, out=tmp_path / "r")
    assert load(tmp_path / "r").classes_ == [3, 7]
    assert set(clf.predict(x)) <= {3, 7}


def test_unwritable_output_fails_before_training(tiny_data, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    clf = TransferClassifier(TINY, strategy="linear-probe", pretrained=False)
    with pytest.raises(HeadstartError, match="Cannot write to output directory"):
        clf.fit(*tiny_data, out=blocker / "run")
    assert not hasattr(clf, "model_")


def test_bf16_features_match_fp32():
    from headstart.device import cpu_has_fast_bf16
    from headstart.encoders import get_backbone
    from headstart.encoders.model import TransferModel
    from headstart.features.cache import compute_features

    if not cpu_has_fast_bf16():
        pytest.skip("no bf16 on this CPU")
    bb = get_backbone("timm:tf_efficientnet_lite0")
    model = TransferModel(bb.module, bb.num_features, 2, bb.preprocess, stages=bb.stages)
    import skimage.data as sd

    from headstart.data import load_image, preprocess

    photos = ["chelsea", "coffee", "astronaut", "rocket", "camera", "cat"]
    x = torch.stack([preprocess(load_image(getattr(sd, n)()), bb.preprocess) for n in photos])
    f32 = compute_features(model, x, precision="fp32", device=torch.device("cpu"))
    b16 = compute_features(model, x, precision="bf16", device=torch.device("cpu"))
    cos = torch.nn.functional.cosine_similarity(f32, b16)
    # bf16 keeps 8 mantissa bits; over 16 blocks the pooled features stay within 0.1% in angle on
    # average (the worst photo, 'rocket', sits at ~0.9989).
    assert cos.mean() >= 0.999 and cos.min() >= 0.998, cos


def test_feature_cache_hits_and_invalidates(tiny_data):
    from headstart.data import as_examples, decode_all
    from headstart.encoders import get_backbone
    from headstart.encoders.model import TransferModel
    from headstart.features.cache import cached_features

    bb = get_backbone(TINY, pretrained=False)
    model = TransferModel(bb.module, bb.num_features, 2, bb.preprocess, stages=bb.stages)
    px = decode_all(as_examples(*tiny_data), bb.preprocess).pixels
    kw = dict(preprocess=bb.preprocess, precision="fp32", device=torch.device("cpu"))
    f1, hit1 = cached_features(model, px, **kw)
    f2, hit2 = cached_features(model, px, **kw)
    assert (hit1, hit2) == (False, True) and torch.equal(f1, f2)
    # change the data, the weights, or the preprocessing: never the stale entry
    _, hit = cached_features(model, px.flip(0), **kw)
    assert not hit
    with torch.no_grad():
        model.backbone.conv_stem.weight.mul_(1.5)
    f3, hit = cached_features(model, px, **kw)
    assert not hit and not torch.equal(f3, f1)
    from dataclasses import replace

    _, hit = cached_features(model, px, **{**kw, "preprocess": replace(bb.preprocess, crop_pct=1.0)})
    assert not hit
