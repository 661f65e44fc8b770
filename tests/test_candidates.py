"""--strategy auto keeps the better model: transfer, the simple model, or (texts) the hybrid."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import TINY, make_images, write_folder

from headstart.candidates import TRANSFER, Candidate, choose

FILLER = ("the of and to in is it that was for on are with as at be this have from or one had by but not what all "
          "were when we there can an your which their said if do will each about how up out them then she many "
          "some so these would other into has more her two like him see time could no make than first been its "
          "who now people my made over did down only way find use may water long little very after words called "
          "just where most know get through back much before go good new write our used me man too any day same "
          "right look think also around another came come work three word must because does part even place well")
KEYS = {"alpha": "zebra", "beta": "quartz", "gamma": "violin"}


def keyword_texts(n_per_class: int, seed: int = 0):
    """Six random filler words and one class keyword: the words decide, not what the text means."""
    rng = np.random.default_rng(seed)
    words = FILLER.split()
    texts, labels = [], []
    for label, key in KEYS.items():
        for _ in range(n_per_class):
            w = list(rng.choice(words, 6))
            w.insert(int(rng.integers(0, 6)), key)
            texts.append(" ".join(w))
            labels.append(label)
    return texts, labels


@pytest.fixture(scope="module")
def filler_bert(tmp_path_factory):
    """A random 2-layer BERT whose vocabulary holds the filler words and keywords."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    root = tmp_path_factory.mktemp("filler-bert")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + sorted(set(FILLER.split()) | set(KEYS.values()))
    (root / "vocab.txt").write_text("\n".join(vocab) + "\n")
    # transformers 5 ignores vocab_file= (every word would be [UNK]): pass the table itself
    BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}).save_pretrained(root)
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=64, max_position_embeddings=64)).save_pretrained(root)
    return root


# ----------------------------------------------------------------------------- the TF-IDF module
@pytest.mark.parametrize("n_classes", [2, 3])
def test_tfidf_module_gives_scikit_learns_probabilities(n_classes):
    from headstart.candidates.text import tfidf_candidate
    from headstart.data.texts import TextExamples
    from headstart.modalities import modality_named
    from headstart.modalities.tfidf import fit_tfidf

    texts, labels = keyword_texts(10)
    keep = [i for i, v in enumerate(labels) if v in list(KEYS)[:n_classes]]
    texts, labels = [texts[i] for i in keep], [labels[i] for i in keep]
    pipe = fit_tfidf(texts, labels)
    classes = sorted(set(labels), reverse=True)  # an order other than scikit-learn's
    cand = tfidf_candidate(pipe, classes, seconds=0.0)
    new = keyword_texts(4, seed=1)[0][: 4 * n_classes] + ["", "zebra zebra ZEBRA quartz", "words nobody knew"]
    ex = TextExamples(new, [classes[0]] * len(new), origin="test")
    pred = modality_named("text").predict(cand.model, cand.tokenizer, cand.preprocess, ex, precision="fp32")
    expected = pipe.predict_proba(new)[:, [list(pipe.classes_).index(c) for c in classes]]
    np.testing.assert_allclose(pred.probs, expected, atol=1e-5)


def test_choose_keeps_transfer_on_ties_and_the_simpler_after_it():
    right = np.array([True] * 30 + [False] * 10)
    better = right.copy()
    better[-3:] = True
    cands = [Candidate(TRANSFER, "t", right, 1.0), Candidate("tfidf_logreg", "s", right.copy(), 1.0),
             Candidate("hybrid", "h", right.copy(), 1.0)]
    assert choose(cands)[0].name == TRANSFER
    cands[2].val_correct, cands[1].val_correct = better, better.copy()
    winner, record = choose(cands)
    assert winner.name == "tfidf_logreg" and record["winner"] == "tfidf_logreg"
    assert "3 more of 40 right" in record["reason"] and record["verdict_vs_transfer"]["only_simple_right"] == 3
    assert [c["name"] for c in record["candidates"]] == [TRANSFER, "tfidf_logreg", "hybrid"]
    with pytest.raises(ValueError, match="scored on 39"):
        choose([Candidate(TRANSFER, "t", right, 1.0), Candidate("scratch", "s", right[:-1], 1.0)])


# ----------------------------------------------------------------------------- texts end to end
def test_text_auto_keeps_tfidf_when_the_words_decide_and_the_run_works_like_any(filler_bert, tmp_path):
    """A random encoder cannot find the keyword in its mean-pooled embedding; TF-IDF can: auto saves TF-IDF
    (or the hybrid, which holds the same features) as the run, and predict/evaluate/load/CLI all use it."""
    import pandas as pd

    from headstart import load
    from headstart.text import TextClassifier

    texts, labels = keyword_texts(30)
    clf = TextClassifier(f"hf:{filler_bert}", strategy="auto", head_epochs=3, head_min_steps=0, precision="fp32")
    clf.fit(texts, labels, out=tmp_path / "run")
    sel = clf.selection_
    scores = {c["name"]: c["val_acc"] for c in sel["candidates"]}
    assert set(scores) == {TRANSFER, "tfidf_logreg", "hybrid"}
    assert scores["tfidf_logreg"] >= 0.9 and scores[TRANSFER] < 0.7, scores
    if scores["hybrid"] <= scores["tfidf_logreg"]:  # ties go to the simpler model
        assert sel["winner"] == "tfidf_logreg"
    meta = json.loads((tmp_path / "run" / "headstart.json").read_text())
    assert meta["selection"]["winner"] == sel["winner"] != TRANSFER
    assert meta["backbone"]["spec"] in ("tfidf", f"hybrid:hf:{filler_bert}")
    assert meta["metrics"]["model"] == sel["winner"] and meta["metrics"]["val_acc"] == max(scores.values())
    assert meta["preprocess"]["ngrams"] == 2

    test_texts, test_labels = keyword_texts(5, seed=7)
    again = load(tmp_path / "run")
    np.testing.assert_allclose(again.predict_proba(test_texts), clf.predict_proba(test_texts), atol=1e-6)
    assert again.score(test_texts, test_labels) >= 0.9
    pd.DataFrame({"text": test_texts, "label": test_labels}).to_csv(tmp_path / "test.csv", index=False)
    cli = [sys.executable, "-m", "headstart.cli"]
    r = subprocess.run(cli + ["evaluate", str(tmp_path / "run"), str(tmp_path / "test.csv"), "--json"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["accuracy"] == again.score(test_texts, test_labels)


def test_text_auto_hybrid_saves_and_reloads(filler_bert, tmp_path):
    """The hybrid candidate, forced to win by scoring: it is a real module that reloads to the same outputs."""
    from headstart import load
    from headstart.candidates import score
    from headstart.candidates.text import hybrid_candidate, tfidf_candidate
    from headstart.data.texts import TextExamples
    from headstart.modalities.tfidf import fit_tfidf
    from headstart.text import TextClassifier

    texts, labels = keyword_texts(8)
    clf = TextClassifier(f"hf:{filler_bert}", strategy="linear-probe", head_epochs=1, head_min_steps=0,
                         precision="fp32", baselines=False).fit(texts, labels)
    pipe = fit_tfidf(texts, labels)
    hybrid = hybrid_candidate(clf, pipe, texts, labels)
    val = TextExamples(*keyword_texts(3, seed=5), origin="val")
    score(hybrid, clf, val)
    assert hybrid.val_acc == 1.0 and hybrid.details["embedding_weight"] in (1.0, 2.0)
    simple = score(tfidf_candidate(pipe, clf.classes_, 0.0), clf, val)
    # the hybrid's features are the TF-IDF vector and the embedding side by side
    with torch.no_grad():
        feats = hybrid.model.backbone(hybrid.tokenizer(val.texts[:4]))
        alone = simple.model.backbone(simple.tokenizer(val.texts[:4]))
    np.testing.assert_allclose(feats[:, : simple.model.backbone.num_features].numpy(), alone.numpy(), atol=1e-6)
    clf.model_, clf.preprocess_, clf.tokenizer_ = hybrid.model, hybrid.preprocess, hybrid.tokenizer
    clf.backbone_info_ = hybrid.backbone_info
    clf.save(tmp_path / "hybrid")
    again = load(tmp_path / "hybrid")
    assert again.preprocess_.ngrams == 2 and again.backbone_info_["spec"].startswith("hybrid:hf:")
    np.testing.assert_allclose(again.predict_proba(val.texts), clf.predict_proba(val.texts), atol=1e-5)


def test_text_auto_needs_the_baselines(filler_bert):
    from headstart.errors import HeadstartError
    from headstart.text import TextClassifier

    with pytest.raises(HeadstartError, match="--no-baselines"):
        TextClassifier(f"hf:{filler_bert}", strategy="auto", baselines=False).fit(*keyword_texts(4))


@pytest.mark.integration
def test_text_auto_keeps_transfer_when_no_two_texts_share_a_word(tmp_path):
    """Every text names a different animal or vehicle: TF-IDF has nothing to generalise from, MiniLM knows."""
    from headstart.text import TextClassifier

    animals = ("cat dog horse cow sheep goat pig rabbit mouse lion tiger bear wolf fox deer monkey elephant "
               "giraffe zebra camel donkey squirrel hamster otter badger beaver kangaroo panda leopard cheetah "
               "hedgehog moose").split()
    vehicles = ("car bus truck tram train bicycle motorcycle scooter van taxi lorry tractor ambulance jeep "
                "limousine minibus trolleybus motorbike pickup sedan hatchback convertible coupe caravan "
                "moped locomotive forklift bulldozer snowmobile tanker").split()
    texts = [f"a picture of a {w}" for w in animals + vehicles]
    labels = ["animal"] * len(animals) + ["vehicle"] * len(vehicles)
    clf = TextClassifier("hf:all-minilm-l6-v2", strategy="auto", head_min_steps=200, seed=0)
    clf.fit(texts, labels, out=tmp_path / "run")
    scores = {c["name"]: c["val_acc"] for c in clf.selection_["candidates"]}
    assert scores[TRANSFER] > scores["tfidf_logreg"] + 0.2, scores
    assert clf.selection_["winner"] in (TRANSFER, "hybrid"), clf.selection_["reason"]
    assert clf.predict(["a picture of a crocodile", "a picture of a helicopter"]).tolist() == ["animal", "vehicle"]


# ----------------------------------------------------------------------------- images
def test_image_auto_keeps_the_scratch_net_when_it_wins_and_it_reloads(tmp_path):
    """A random-weight backbone whose head barely trains loses to the from-scratch net: that net is the run."""
    from headstart import TransferClassifier, load

    x, y = make_images(n_per_class=20, classes=("a", "b", "c"), size=32)
    clf = TransferClassifier(TINY, strategy="auto", pretrained=False, epochs=1, head_epochs=1, head_min_steps=0,
                             lr=1e-6, precision="fp32", baseline_seconds=4)
    clf.fit(x, y, out=tmp_path / "run")
    scores = {c["name"]: c["val_acc"] for c in clf.selection_["candidates"]}
    assert set(scores) == {TRANSFER, "scratch"}
    assert scores["scratch"] > scores[TRANSFER], scores
    assert clf.selection_["winner"] == "scratch"
    meta = json.loads((tmp_path / "run" / "headstart.json").read_text())
    assert meta["backbone"]["spec"] == "scratch:small" and meta["preprocess"]["input_size"] == 32
    again = load(tmp_path / "run")
    np.testing.assert_allclose(again.predict_proba(x[:6]), clf.predict_proba(x[:6]), atol=1e-5)
    xt, yt = make_images(n_per_class=5, classes=("a", "b", "c"), size=32, seed=3)
    assert again.score(xt, yt) >= 0.9
    folder = write_folder(tmp_path / "test", xt, yt)
    r = subprocess.run([sys.executable, "-m", "headstart.cli", "predict", str(tmp_path / "run"), str(folder)],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(rows) == 15 and np.mean([row["label"] == row["path"].split("/")[-2] for row in rows]) >= 0.9


# ----------------------------------------------------------------------------- long texts
def long_texts(n_per_class: int, seed: int = 0):
    """80 filler words, then the class keyword 30 times: the first 64 tokens say nothing about the class."""
    rng = np.random.default_rng(seed)
    words = FILLER.split()
    texts, labels = [], []
    for label, key in list(KEYS.items())[:2]:
        for _ in range(n_per_class):
            texts.append(" ".join(list(rng.choice(words, 80)) + [key] * 30))
            labels.append(label)
    return texts, labels


def test_windows_cover_the_whole_text_and_pool_every_token(filler_bert):
    from headstart.encoders import get_backbone

    bb = get_backbone(f"hf:{filler_bert}")
    tok, enc = bb.tokenizer, bb.module
    assert bb.preprocess.max_length == 64 and bb.preprocess.windows == 1
    texts = long_texts(1)[0][:1] + ["the water was good"]
    plain = tok(texts)
    tok.windows, tok.stride, enc.window = 8, 16, 64
    win = tok(texts)
    n = tok.n_tokens(texts)[0]
    assert n > 100 and win.shape[-1] == 64 * int(np.ceil((n - 64) / (64 - 16 - 2)) + 1)
    assert torch.equal(win[0, :, :64], plain[0, :, :64])  # the first window is the truncated text
    assert win[1, 1].sum() == plain[1, 1].sum() and win[1, 1, 64:].sum() == 0  # a short text: one window
    with torch.no_grad():
        pooled = enc(win)
        wider = torch.nn.functional.pad(win, (0, 10))  # as the hybrid's packing pads it: the same embedding
        assert torch.allclose(enc(wider), pooled, atol=1e-5)
        enc.window = 0
        assert torch.allclose(pooled[1], enc(plain[1:2])[0], atol=1e-5)  # one window: exactly as before
        # mean pooling over every real token of every window of the long text
        k = win.shape[-1] // 64
        parts = win[0].view(2, k, 64).permute(1, 0, 2)
        hidden = [enc.model(input_ids=p[0:1, p[1].bool()], attention_mask=p[1:2, p[1].bool()]).last_hidden_state[0]
                  for p in parts if p[1].sum()]
        expected = torch.cat(hidden).mean(0)
    assert torch.allclose(pooled[0], expected, atol=1e-5)


@pytest.mark.parametrize("long_texts_option, accurate", [("window", True), ("truncate", False)])
def test_long_texts_are_read_to_the_end_unless_truncation_is_asked_for(filler_bert, tmp_path, long_texts_option,
                                                                       accurate):
    from headstart import load
    from headstart.text import TextClassifier

    texts, labels = long_texts(16)
    clf = TextClassifier(f"hf:{filler_bert}", strategy="linear-probe", head_min_steps=300, precision="fp32",
                         long_texts=long_texts_option, baselines=False)
    clf.fit(texts, labels, out=tmp_path / "run")
    meta = json.loads((tmp_path / "run" / "headstart.json").read_text())
    assert meta["preprocess"]["windows"] == (8 if accurate else 1)
    assert any("long texts" in n for n in meta["backbone"]["notes"]) == accurate
    test = long_texts(10, seed=4)
    acc = load(tmp_path / "run").score(*test)
    assert (acc >= 0.9) if accurate else (acc <= 0.75), acc


def test_a_tfidf_run_exports_to_onnx_and_matches_its_predictions(tmp_path):
    import onnxruntime as ort

    from headstart.candidates.text import tfidf_candidate
    from headstart.export import export
    from headstart.modalities.tfidf import fit_tfidf
    from headstart.text import TextClassifier

    texts, labels = keyword_texts(10)
    # only to hold the fitted parts (the TF-IDF model is the run); fp32, as the exported graph computes
    clf = TextClassifier("vectors:glove-6b-50d", precision="fp32")
    clf.modality_ = __import__("headstart.modalities", fromlist=["modality_named"]).modality_named("text")
    cand = tfidf_candidate(fit_tfidf(texts, labels), sorted(set(labels)), 0.0)
    clf.model_, clf.preprocess_, clf.tokenizer_, clf.backbone_info_ = (cand.model, cand.preprocess, cand.tokenizer,
                                                                       cand.backbone_info)
    clf.classes_, clf.fitted_config_, clf.history_ = sorted(set(labels)), clf.resolved_config(), None
    clf.data_info_ = clf.baselines_ = clf.plan_ = None
    clf.meta_ = {"metrics": {}}
    clf.save(tmp_path / "run")
    result = export(tmp_path / "run", tmp_path / "t.onnx", data=texts, parity_inputs=60)
    assert result.report["parity"]["passed"] and "TfidfVectorizer" in result.report["how_to_prepare"]
    x = cand.tokenizer(texts[:6])
    session = ort.InferenceSession(str(result.model), providers=["CPUExecutionProvider"])
    probs = session.run(["probabilities"], {"input_ids": x[:, 0].numpy(), "attention_mask": x[:, 1].numpy()})[0]
    np.testing.assert_allclose(probs, clf.predict_proba(texts[:6]), atol=1e-5)
