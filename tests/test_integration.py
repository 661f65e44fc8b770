"""Integration: the real Lite0 ImageNet weights and the real Fashion-MNIST data (offline)."""
import numpy as np
import pytest
import torch

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def lite0():
    from headstart.encoders import get_backbone

    return get_backbone("timm:tf_efficientnet_lite0")


@pytest.mark.parametrize("photo, classes", [("chelsea", range(281, 286)), ("coffee", [967])])
def test_imagenet_predictions_through_our_pipeline(lite0, photo, classes):
    """Our decode → resize/crop → in-model normalisation must match how the weights were trained."""
    import skimage.data

    from headstart.data import load_image, preprocess
    from headstart.encoders.model import TransferModel

    model = TransferModel(lite0.module, lite0.num_features, 2, lite0.preprocess, stages=lite0.stages).eval()
    x = preprocess(load_image(getattr(skimage.data, photo)()), lite0.preprocess).unsqueeze(0)
    with torch.no_grad():
        top = lite0.source_head(model.features(x)).argmax(1).item()
    assert top in classes


def test_short_real_fine_tune_beats_raw_pixel_logistic_regression(tmp_path):
    from sklearn.linear_model import LogisticRegression

    from headstart import TransferClassifier, load
    from headstart.data.datasets import fashion_mnist, per_class_subset

    x, y = fashion_mnist("train")
    xt, yt = fashion_mnist("test")
    idx = per_class_subset(y, 30, seed=0)
    xt, yt = xt[:600], yt[:600]
    baseline = LogisticRegression(max_iter=2000).fit(x[idx].reshape(len(idx), -1) / 255.0, y[idx])
    base_acc = baseline.score(xt.reshape(len(xt), -1) / 255.0, yt)

    clf = TransferClassifier("timm:tf_efficientnet_lite0", strategy="two-stage", freeze_stages=5,
                             augment=False, epochs=3, head_epochs=40, baselines=False)  # test_baselines.py covers them
    clf.fit(x[idx], y[idx], out=tmp_path / "run")
    acc = clf.score(xt, yt)
    assert acc > base_acc + 0.02, (acc, base_acc)
    # the saved run reproduces the predictions offline
    np.testing.assert_array_equal(load(tmp_path / "run").predict(xt[:32]), clf.predict(xt[:32]))


def test_demo_command_runs_end_to_end(tmp_path):
    import subprocess
    import sys

    p = subprocess.run([sys.executable, "-m", "headstart.cli", "demo", "--per-class", "5", "--test-limit", "100",
                        "--out", str(tmp_path)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert "linear-probe" in p.stdout and "two-stage" in p.stdout
    assert (tmp_path / "two-stage" / "headstart.json").is_file()
    html = (tmp_path / "two-stage" / "report.html").read_text()  # the demo writes a report per run
    assert 'id="calibration"' in html and html.count('src="data:image/png;base64,') >= 12


@pytest.fixture(scope="module")
def fashion_folder(tmp_path_factory):
    from conftest import write_folder

    from headstart.data.datasets import (
        FASHION_MNIST_CLASSES,
        fashion_mnist,
        per_class_subset,
    )

    x, y = fashion_mnist("train")
    idx = per_class_subset(y, 8, seed=1)[:40]  # 8 images of each of the first 5 classes
    names = [FASHION_MNIST_CLASSES[i].replace("/", "-") for i in y[idx]]
    return write_folder(tmp_path_factory.mktemp("fmnist") / "train", x[idx], names)


def _cli(*args):
    import subprocess
    import sys

    p = subprocess.run([sys.executable, "-m", "headstart.cli", *map(str, args)], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    return p.stdout


def test_rank_cli_scores_real_backbones(fashion_folder):
    import json

    rows = json.loads(_cli("rank", fashion_folder, "--backbones",
                           "timm:tf_efficientnet_lite0,timm:tf_efficientnet_lite1", "--json"))
    assert {r["backbone"] for r in rows} == {"timm:tf_efficientnet_lite0", "timm:tf_efficientnet_lite1"}
    for r in rows:
        assert r["leep"] < 0 and r["nce"] <= 0 and 0 < r["linear_acc"] <= 1 and r["logme_std"] >= 0
    assert "Recommended" in _cli("rank", fashion_folder, "--backbones", "timm:tf_efficientnet_lite0")


def test_plan_cli_profiles_every_stage(fashion_folder):
    import json

    out = json.loads(_cli("plan", fashion_folder, "--json"))
    assert len(out["profile"]) == 8
    # grayscale clothing on black is far from natural photos at the top of the network
    assert out["profile"][-1]["domain_distance"] > 1.0
    assert out["plan"]["strategy"] == "linear-probe"  # 8 labels per class
