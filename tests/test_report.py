"""`headstart report`: one cached prediction pass, every section, calibration, determinism, a real browser."""
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import TINY, make_images, write_folder

from headstart import TransferClassifier, load
from headstart.assess.calibration import apply_temperature, fit_temperature, reliability
from headstart.errors import HeadstartError
from headstart.report import write_report

pytest.importorskip("matplotlib")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SECTIONS = ["summary", "curves", "classes", "losses", "calibration", "baselines"]


def _softmax(z):
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def test_ece_by_hand():
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.6, 0.4]])
    truth = np.array([0, 1, 0, 0])
    # Two bins hold the examples: conf 0.9 with accuracy 0.5, conf 0.6 with accuracy 1.0.
    assert reliability(probs, truth).ece == pytest.approx(0.5 * 0.4 + 0.5 * 0.4)


def test_temperature_keeps_the_argmax_and_is_recovered():
    rng = np.random.default_rng(0)
    z = rng.normal(0, 1.5, (4000, 5))
    truth = np.array([rng.choice(5, p=p) for p in _softmax(z)])  # labels drawn from softmax(z): calibrated
    overconfident = _softmax(3.0 * z)  # what an over-confident model reports
    t = fit_temperature(overconfident, truth)
    assert t == pytest.approx(3.0, rel=0.1)
    fixed = apply_temperature(overconfident, t)
    assert (fixed.argmax(1) == overconfident.argmax(1)).all()
    assert reliability(fixed, truth).ece < 0.5 * reliability(overconfident, truth).ece
    np.testing.assert_array_equal(apply_temperature(overconfident, 1.0), overconfident)


@pytest.fixture(scope="module")
def image_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    x, y = make_images(n_per_class=35, classes=("dark", "mid", "bright"))  # 21 validation images: T can be fitted
    test = write_folder(root / "test", *make_images(n_per_class=6, classes=("dark", "mid", "bright"), seed=1))
    clf = TransferClassifier(TINY, strategy="two-stage", pretrained=False, epochs=2, baseline_seconds=2)
    clf.fit(x, y, out=root / "run")
    return root / "run", test


def test_the_fit_saves_its_validation_pass_and_the_report_reads_it(image_run, tmp_path):
    run, _ = image_run
    assert list((run / "predictions").glob("validation-*.npz"))
    path, summary = write_report(run, out=tmp_path / "r.html")
    html = path.read_text()
    assert summary["evaluated_on"] == "validation" and summary["n"] == 21
    for s in SECTIONS:
        assert f'id="{s}"' in html
    assert html.count("<svg") >= 3  # curves, confusion matrix, reliability diagram
    assert "pass TEST for an unbiased estimate" in html
    # Self-contained: nothing fetched (XML namespaces are names, not requests), no scripts.
    assert not any(f'{a}="http' in html for a in ("src", "href")) and "url(http" not in html and "<script" not in html


def test_test_data_are_predicted_once_and_the_file_is_byte_identical(image_run, tmp_path, monkeypatch):
    run, test = image_run
    first, s1 = write_report(run, str(test), out=tmp_path / "a.html")
    assert s1["evaluated_on"] == "test" and s1["n"] == 18 and not s1["cached_predictions"]

    def no_inference(*a, **k):
        raise AssertionError("the second report must read the cached pass")
    monkeypatch.setattr(TransferClassifier, "predict_examples", no_inference)
    second, s2 = write_report(run, str(test), out=tmp_path / "b.html")
    assert s2["cached_predictions"]
    assert first.read_bytes() == second.read_bytes()
    html = first.read_text()
    assert html.count('src="data:image/png;base64,') >= 12  # the top losses as thumbnails
    assert "Most confused pairs" in html and "95 % CI" in html


def test_calibrate_stores_the_temperature_and_predictions_use_it(image_run, tmp_path):
    src, test = image_run
    run = tmp_path / "run"
    shutil.copytree(src, run)
    raw = load(run).predict_proba(str(test))
    _, summary = write_report(run, str(test), calibrate=True)
    t = summary["temperature"]
    assert t and t != 1.0
    clf = load(run)
    assert clf.calibration_["temperature"] == t
    calibrated = clf.predict_proba(str(test))
    np.testing.assert_allclose(calibrated, apply_temperature(raw, t), atol=1e-5)
    assert (calibrated.argmax(1) == raw.argmax(1)).all()
    assert "yes, predictions use it" in (run / "report.html").read_text()


def test_a_text_run_reports_its_sentences(tmp_path):
    texts = ["a great film", "loved it", "superb acting", "brilliant and moving", "wonderful fun",
             "terrible plot", "hated it", "awful acting", "dull and tedious", "the worst"] * 4
    labels = (["pos"] * 5 + ["neg"] * 5) * 4
    vec = tmp_path / "vec.txt"
    words = sorted({w for t in texts for w in t.split()})
    rng = np.random.default_rng(0)
    vec.write_text("\n".join(w + " " + " ".join(f"{v:.4f}" for v in rng.normal(0, 1, 8)) for w in words) + "\n")
    clf = TransferClassifier(f"vectors:{vec}", strategy="linear-probe", baselines=False)
    clf.fit(texts, labels, out=tmp_path / "run")
    path, summary = write_report(tmp_path / "run")
    html = path.read_text()
    assert summary["evaluated_on"] == "validation"
    assert "<q>" in html  # top losses shown as their sentences
    assert any(t in html for t in set(texts))


def test_a_run_without_validation_needs_test_data(tmp_path):
    x, y = make_images(n_per_class=6)
    TransferClassifier(TINY, strategy="linear-probe", pretrained=False, val_fraction=0.0,
                       baselines=False).fit(x, y, out=tmp_path / "run")
    with pytest.raises(HeadstartError, match="pass test data"):
        write_report(tmp_path / "run")


def _cli(*args: str) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "headstart.cli", *args], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    return r


def test_cli_report_prints_the_path(image_run, tmp_path):
    run, test = image_run
    out = tmp_path / "cli.html"
    r = _cli("report", str(run), str(test), "--out", str(out), "--json")
    assert json.loads(r.stdout)["report"] == str(out) and out.is_file()


def test_cli_evaluate_writes_the_report_from_the_same_pass(image_run, tmp_path):
    run, test = image_run
    out = tmp_path / "eval.html"
    r = _cli("evaluate", str(run), str(test), "--report", str(out), "--json")
    assert f"report: {out}" in r.stderr and out.is_file()
    assert json.loads(r.stdout)["accuracy"] == load(run).evaluate(str(test))["accuracy"]


@pytest.mark.skipif(CHROMIUM is None, reason="Debian chromium is not installed (.ci/run installs it)")
def test_the_report_in_headless_chromium(image_run, tmp_path):
    playwright = pytest.importorskip("playwright.sync_api")
    run, test = image_run
    path, _ = write_report(run, str(test), out=tmp_path / "report.html")
    errors = []
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(path.as_uri(), timeout=30_000)
        for s in SECTIONS:
            assert page.query_selector(f"section#{s} h2") is not None, s
        assert len(page.query_selector_all("svg")) >= 3
        thumbs = page.query_selector_all("#losses img")
        assert len(thumbs) >= 12
        # Every thumbnail decoded: a broken data URL has naturalWidth 0.
        assert all(img.evaluate("i => i.complete && i.naturalWidth > 0") for img in thumbs)
        page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        browser.close()
    assert (tmp_path / "report.png").stat().st_size > 10_000
    assert not errors, errors


def test_a_calibrated_run_serves_and_exports_the_calibrated_probabilities(image_run, tmp_path):
    import torch

    from headstart.data.images import load_image, preprocess
    from headstart.export.graph import graph_for, temperature_of
    from headstart.serve.predictor import Predictor

    src, test = image_run
    run = tmp_path / "run"
    shutil.copytree(src, run)
    write_report(run, str(test), calibrate=True)
    clf = load(run)
    t = temperature_of(clf)
    assert t != 1.0
    files = sorted(test.rglob("*.png"))[:6]
    batch = torch.stack([preprocess(load_image(p), clf.preprocess_) for p in files])  # what serve decodes
    served = Predictor.build(clf, engine="torch", precision="fp32")(list(batch))
    np.testing.assert_allclose(served, clf.predict_proba([str(p) for p in files]), atol=1e-4)
    with torch.inference_mode():
        logits, exported = graph_for(clf.model_.cpu(), "nchw", t)(batch)  # what export writes
    np.testing.assert_allclose(exported.numpy(), served, atol=1e-5)
    assert np.abs(served - torch.softmax(logits, 1).numpy()).max() > 1e-4  # the temperature changed them
