"""`discover`: group unlabelled pools with K estimated, every item assigned, and a baseline beside it.

The grouping core runs on synthetic embeddings (known K, a structureless cloud, noise); the
pipeline on synthetic images through a tiny random timm model and on texts through real GloVe;
the integration test on real digits through the real Lite0 weights.
"""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from conftest import TINY
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_mutual_info_score as ami

from headstart.discover import discover, read_grouping
from headstart.discover.cluster import _hdbscan_candidate, group
from headstart.errors import DataError


# ----------------------------------------------------------------------------- the grouping core
def test_known_k_is_recovered_and_every_point_assigned():
    x, y = make_blobs(500, n_features=48, centers=5, random_state=0)
    fit = group(x, seed=0)
    assert fit.k == 5 and fit.structure
    assert len(fit.labels) == 500 and fit.labels.min() == 0  # nobody left out
    assert ami(y, fit.labels) > 0.98
    assert 0 <= fit.confidence.min() and fit.confidence.max() <= 1
    sizes = np.bincount(fit.labels)
    assert list(sizes) == sorted(sizes, reverse=True)  # group 0 is the largest


def test_a_structureless_pool_is_one_group_not_invented_ones():
    rng = np.random.default_rng(0)
    fit = group(rng.standard_normal((600, 64)) * np.linspace(3, 0.2, 64), seed=0)
    assert fit.k == 1 and not fit.structure and fit.method == "none"
    assert (fit.labels == 0).all()
    assert any("no structure" in r for r in fit.reasons)
    # It did look: the best k-means silhouette was measured and compared with the null.
    assert fit.null_silhouette > 0 and max(c.silhouette for c in fit.candidates) < fit.null_silhouette + 0.1


def test_forced_k_is_kept_even_when_another_scores_higher():
    x, _ = make_blobs(300, n_features=16, centers=4, random_state=1)
    fit = group(x, k=7, seed=0)
    assert fit.k == 7 and fit.forced and [c.k for c in fit.candidates] == [7]


def test_density_noise_is_reassigned_and_flagged_not_dropped():
    x, _ = make_blobs(400, n_features=10, centers=3, cluster_std=0.5, random_state=2)
    rng = np.random.default_rng(0)
    noise = rng.uniform(x.min(), x.max(), (40, 10))
    cand, (labels, flagged) = _hdbscan_candidate(np.vstack([x, noise]), k_min=2)
    assert labels.min() >= 0 and len(labels) == 440  # every point has a group
    assert flagged.any() and cand.noise_fraction == pytest.approx(flagged.mean())


def test_without_umap_the_pca_space_still_groups(monkeypatch):
    from headstart.discover import cluster

    monkeypatch.setattr(cluster, "_umap", lambda: None)
    x, y = make_blobs(300, n_features=40, centers=4, random_state=5)
    fit = group(x, seed=0)
    assert fit.reducer == "pca" and fit.k == 4 and ami(y, fit.labels) > 0.95


def test_same_seed_same_groups():
    x, _ = make_blobs(300, n_features=20, centers=3, random_state=3)
    a, b = group(x, seed=4), group(x, seed=4)
    assert (a.labels == b.labels).all() and a.k == b.k


def test_exact_duplicates_are_grouped_once_and_share_their_group():
    x, y = make_blobs(200, n_features=16, centers=4, random_state=6)
    copies = np.repeat(x[:1], 150, axis=0)  # one item sent 150 times: the densest clump there is
    fit = group(np.vstack([x, copies]), seed=0)
    assert fit.k == 4 and (fit.labels[200:] == fit.labels[0]).all()
    assert ami(y, fit.labels[:200]) > 0.95
    assert any("150 exact duplicate" in r for r in fit.reasons)
    with pytest.raises(DataError, match="distinct"):
        group(np.repeat(x[:3], 10, axis=0))


@pytest.mark.parametrize("n, k, why", [(5, None, "at least 10"), (40, 25, "k=25 does not fit"),
                                       (40, 1, "k=1 does not fit")])
def test_tiny_pools_and_impossible_k_are_clear_errors(n, k, why):
    x = np.random.default_rng(0).standard_normal((n, 8))
    with pytest.raises(DataError, match=why):
        group(x, k=k)


# ----------------------------------------------------------------------------- the pipeline: images
def colour_pool(n_per: int = 16, size: int = 20, seed: int = 0):
    """Three kinds of image a random network still tells apart: reddish, greenish and bluish noise."""
    rng = np.random.default_rng(seed)
    xs, ys = [], []
    for c in range(3):
        img = rng.integers(0, 60, (n_per, size, size, 3))
        img[..., c] += 180
        xs.append(img.astype(np.uint8))
        ys += [c] * n_per
    return np.concatenate(xs), np.asarray(ys)


def write_flat(root, x):
    from PIL import Image

    (root / "nested").mkdir(parents=True)
    paths = []
    for i, img in enumerate(x):  # flat and nested at once: a pool has no class layout
        p = root / ("nested" if i % 2 else ".") / f"p{i:03d}.png"
        Image.fromarray(img).save(p)
        paths.append(p.resolve())
    return paths


def test_image_pool_groups_saves_exports_and_trains(tmp_path):
    x, y = colour_pool()
    paths = write_flat(tmp_path / "pool", x)
    g = discover(tmp_path / "pool", backbone=TINY, pretrained=False, seed=0)
    truth = np.asarray([y[paths.index(p.resolve())] for p in map(__import__("pathlib").Path, g.items)])
    assert g.k_ == 3 and ami(truth, g.labels_) > 0.95
    assert (g.labels_ >= 0).all() and g.prototypes_.shape[0] == 3
    assert g.summary["baseline"]["name"] == "raw pixels" and len(g.baseline_labels_) == len(x)
    assert g.summary["runner_up"] is not None and g.summary["criteria"]["silhouette"] > 0.5

    out = g.save(tmp_path / "groups")
    meta = read_grouping(out)
    assert meta["k"] == 3 and meta["n_grouped"] == len(x) and len(meta["groups"]) == 3
    with open(out / "groups.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(x) and {r["group"] for r in rows} == {gr["name"] for gr in meta["groups"]}
    for gr in meta["groups"]:
        assert (out / "sheets" / f"{gr['name']}.png").is_file()
        assert gr["typical"][0] not in gr["borderline"][:1] or gr["size"] == 1
    assert (out / "sheets" / "overview.png").is_file()

    sorted_dir = g.export_folders(tmp_path / "sorted")
    folders = sorted(p for p in sorted_dir.iterdir())
    assert [f.name for f in folders] == [gr["name"] for gr in meta["groups"]]
    assert sum(len(list(f.iterdir())) for f in folders) == len(x)
    with pytest.raises(DataError, match="not empty"):
        g.export_folders(tmp_path / "sorted")

    from headstart import TransferClassifier

    clf = TransferClassifier(TINY, strategy="linear-probe", pretrained=False, head_epochs=2, head_min_steps=0,
                             baselines=False, precision="fp32").fit(sorted_dir)
    assert sorted(clf.classes_) == [gr["name"] for gr in meta["groups"]]


def test_links_instead_of_copies(tmp_path):
    x, _ = colour_pool(n_per=8)
    write_flat(tmp_path / "pool", x)
    g = discover(tmp_path / "pool", backbone=TINY, pretrained=False, k=3, baseline=False)
    out = g.export_folders(tmp_path / "sorted", link=True)
    files = [p for f in out.iterdir() for p in f.iterdir()]
    assert len(files) == len(x) and all(p.is_symlink() and p.resolve().is_file() for p in files)


def test_duplicated_images_land_in_the_same_group():
    x, _ = colour_pool(n_per=10)
    pool = np.concatenate([x, x])
    g = discover(pool, backbone=TINY, pretrained=False, baseline=False)
    n = len(x)
    assert (g.labels_[:n] == g.labels_[n:]).all()


def test_unreadable_images_are_skipped_and_reported(tmp_path):
    x, _ = colour_pool(n_per=8)
    write_flat(tmp_path / "pool", x)
    (tmp_path / "pool" / "broken.png").write_bytes(b"not a png")
    g = discover(tmp_path / "pool", backbone=TINY, pretrained=False, k=3, baseline=False)
    broken = [i for i, item in enumerate(g.items) if item.endswith("broken.png")]
    assert len(broken) == 1 and g.labels_[broken[0]] == -1
    assert g.to_dict()["n_skipped"] == 1 and (g.labels_ >= 0).sum() == len(x)


def test_features_come_from_the_cache_the_second_time(tmp_path, monkeypatch):
    x, _ = colour_pool(n_per=8)
    first = discover(x, backbone=TINY, pretrained=False, baseline=False)
    from headstart.assess import plan

    def no_forward(*a, **k):
        raise AssertionError("stage features were recomputed instead of read from the cache")

    monkeypatch.setattr(plan, "stage_features", no_forward)
    second = discover(x, backbone=TINY, pretrained=False, baseline=False)
    assert (first.labels_ == second.labels_).all()


def test_pools_are_embedded_in_chunks_with_the_same_result(monkeypatch):
    from headstart.discover import embedding

    x, _ = colour_pool(n_per=8)
    whole = discover(x, backbone=TINY, pretrained=False, baseline=False, precision="fp32")
    monkeypatch.setattr(embedding, "CHUNK", 7)  # 24 images in chunks of 7: memory stays flat for big pools
    chunked = discover(x, backbone=TINY, pretrained=False, baseline=False, precision="fp32")
    assert np.allclose(whole.embeddings_, chunked.embeddings_, atol=1e-5)
    assert (whole.labels_ == chunked.labels_).all()


def test_a_runs_fine_tuned_backbone_can_embed_the_pool(tmp_path):
    import torch

    from headstart import TransferClassifier
    from headstart.data import as_examples, decode_all

    x, y = colour_pool(n_per=8)
    clf = TransferClassifier(TINY, strategy="full", pretrained=False, epochs=1, head_epochs=1, head_min_steps=0,
                             baselines=False, precision="fp32").fit(x, [str(v) for v in y], out=tmp_path / "run")
    g = discover(x, backbone=str(tmp_path / "run"), stage="pooled", baseline=False, precision="fp32")
    assert g.summary["backbone"] == str(tmp_path / "run") and g.summary["representation"].startswith("pooled")
    with torch.no_grad():  # the run's own fine-tuned features, not the registry's random ones
        expected = clf.model_.eval().features(decode_all(as_examples(x), clf.preprocess_).pixels)
    assert np.allclose(g.embeddings_, expected.numpy(), atol=1e-4)


def test_bad_pools_get_clear_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no images"):
        discover(tmp_path / "empty", backbone=TINY, pretrained=False)
    with pytest.raises(DataError, match="does not exist"):
        discover(tmp_path / "missing", backbone=TINY, pretrained=False)
    with pytest.raises(DataError, match="at least 10"):
        discover(colour_pool(n_per=2)[0], backbone=TINY, pretrained=False)
    with pytest.raises(Exception, match="stage"):
        discover(colour_pool(n_per=4)[0], backbone=TINY, pretrained=False, stage="blocks.99")


# ----------------------------------------------------------------------------- texts
TOPICS = {
    "sport": "football match goal team league player score season coach stadium referee striker",
    "food": "recipe bake flour sugar oven butter dinner sauce garlic pasta soup delicious",
    "computer": "software laptop keyboard programming code server database compiler linux memory",
}


def topic_texts(n_per: int = 20, seed: int = 0):
    rng = np.random.default_rng(seed)
    texts, ys = [], []
    for t, words in TOPICS.items():
        w = words.split()
        for _ in range(n_per):
            texts.append("the " + " ".join(rng.choice(w, 6)) + " today")
            ys.append(t)
    return texts, ys


def test_texts_group_by_topic_with_terms_and_train_from_the_export(tmp_path):
    texts, ys = topic_texts()
    g = discover(texts, backbone="vectors:glove-6b-50d", seed=0)
    assert g.k_ == 3 and ami(ys, g.labels_) > 0.9
    assert g.summary["baseline"]["name"] == "tf-idf"
    for gr in g.groups:  # each group is named by its topic's words
        topic = {ys[i] for i in gr["typical"][:5]}
        assert len(topic) == 1 and set(gr["terms"][:3]) <= set(TOPICS[topic.pop()].split())
        assert gr["examples"] and all(e in texts for e in gr["examples"])
    out = g.export_folders(tmp_path / "sorted")
    with open(out / "texts.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(texts)
    from headstart import TransferClassifier

    clf = TransferClassifier("vectors:glove-6b-50d", strategy="linear-probe", head_epochs=2, head_min_steps=0,
                             baselines=False).fit(str(out / "texts.csv"))
    assert len(clf.classes_) == 3


# ----------------------------------------------------------------------------- CLI
def test_cli_discover_writes_and_prints(tmp_path):
    from typer.testing import CliRunner

    from headstart.cli import app

    x, _ = colour_pool(n_per=8)
    write_flat(tmp_path / "pool", x)
    r = CliRunner().invoke(app, ["discover", str(tmp_path / "pool"), "--backbone", TINY, "--random-init",
                                 "--out", str(tmp_path / "groups"), "--export-folders", str(tmp_path / "sorted")])
    assert r.exit_code == 0, r.output
    assert "group_01" in r.output and "baseline on raw pixels" in r.output and "headstart train" in r.output
    assert (tmp_path / "groups" / "discovery.json").is_file() and (tmp_path / "sorted" / "group_01").is_dir()
    r = CliRunner().invoke(app, ["discover", str(tmp_path / "pool"), "--backbone", TINY, "--random-init",
                                 "--k", "4", "--no-baseline", "--json"])
    assert r.exit_code == 0, r.output
    meta = json.loads(r.stdout)
    assert meta["k"] == 4 and meta["forced_k"] and meta["baseline"] is None


def test_cli_discover_a_text_table_ignores_its_labels(tmp_path):
    from typer.testing import CliRunner

    from headstart.cli import app

    texts, _ = topic_texts(n_per=15)
    table = tmp_path / "pool.csv"
    with open(table, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["label", "body"])
        w.writerows(zip(["?"] * len(texts), texts))  # a label column of junk must not matter
    r = CliRunner().invoke(app, ["discover", str(table), "--backbone", "vectors:glove-6b-50d", "--text-column",
                                 "body", "--out", str(tmp_path / "g"), "--export-folders", str(tmp_path / "s")])
    assert r.exit_code == 0, r.output
    assert "distinctive terms" in r.output and "texts.csv" in r.output
    meta = read_grouping(tmp_path / "g")
    assert meta["modality"] == "text" and meta["k"] == 3 and meta["baseline"]["name"] == "tf-idf"
    assert not (tmp_path / "g" / "sheets").exists()  # contact sheets are for images


# ----------------------------------------------------------------------------- real weights, real digits
@pytest.mark.integration
def test_real_digits_subset_k_near_ten_and_above_chance():
    from sklearn.datasets import load_digits

    d = load_digits()
    keep = np.random.default_rng(0).choice(len(d.images), 600, replace=False)
    imgs = (d.images[keep] * 255 / 16).round().astype(np.uint8)
    g = discover(imgs, backbone="timm:tf_efficientnet_lite0", seed=0)
    score = ami(d.target[keep], g.labels_)
    assert 8 <= g.k_ <= 12, g.summary["reasons"]
    assert score > 0.75, (score, g.summary["representation"])
    assert g.summary["representation"].endswith("32 px")  # small images: the small-size candidate won
