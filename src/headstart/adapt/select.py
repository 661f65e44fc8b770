"""Choosing an adapted model without target labels: several scores, a vote, and source-only as the fallback.

Label-free selection is where domain adaptation fails in practice (SKADA-Bench: entropy picked a model
at 0.392 when the best was 0.920), so no single score decides, and a score whose assumption visibly
fails on this data abstains instead of voting:

- **DEV** (You et al. 2019): the source validation loss, importance-weighted by how target-like each
  source example is (a domain classifier's odds, trained once on the source-only features), with the
  control variate that keeps its variance down. Lower is better; the one score that sees labels. It
  assumes the domains overlap: when a linear classifier tells source from target features apart 98 %
  of the time (held out), or the weights' effective sample size is under 10 % of the source
  validation split (a handful of source examples would decide), DEV abstains.
- **entropy** of the target predictions (lower is better): confident predictions.
- **IM** (the information-maximisation score): the entropy of the mean target prediction minus the mean
  entropy, the mutual information between input and predicted class (higher is better). Unlike
  entropy alone it penalises a model that puts every target example into a few classes.
- **SND** (Saito et al. 2021, soft neighbourhood density): whether target predictions form dense
  neighbourhoods (higher is better).
- **ClassAMI** (Musgrave et al. 2022): the adjusted mutual information between the predicted classes and
  a k-means clustering (k = number of classes) of the model's own target features (higher is better):
  does the classifier agree with the structure the features see?

A method is kept only when a majority of the scores that vote say it beats source-only, and DEV (when it
votes) does not say it hurts: otherwise the source model stays. Among those kept, the best mean rank wins.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

DIRECTIONS = {"dev": -1, "entropy": -1, "im": +1, "snd": +1, "class_ami": +1}  # +1: higher is better
MIN_ESS = 0.1  # DEV abstains below this effective sample size (share of the source validation split)
MAX_DOMAIN_ACC = 0.98  # ... or when a linear classifier tells the domains apart this well (held out)


def domain_weights(source_feats: torch.Tensor, target_feats: torch.Tensor, query: torch.Tensor,
                   seed: int = 0) -> tuple[np.ndarray, dict[str, float]]:
    """p_target(x) / p_source(x) at ``query`` (source validation features), from a logistic domain
    classifier on standardised features, its class prior removed, clipped to [0.01, 100]; and how far
    to trust them: the classifier's held-out accuracy at telling the domains apart (``domain_acc``: near
    1, the supports barely overlap) and the effective sample size of the unclipped weights as a share of
    ``query`` (``ess``, Kish: (sum w)^2 / sum w^2)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    x = torch.cat([source_feats, target_feats]).numpy()
    d = np.r_[np.zeros(len(source_feats)), np.ones(len(target_feats))]
    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=1000, random_state=seed))
    held_out = float(cross_val_score(model, x, d, cv=2, scoring="balanced_accuracy").mean())
    model.fit(x, d)
    p = model.predict_proba(query.numpy())[:, 1].clip(1e-6, 1 - 1e-6)
    odds = p / (1 - p) * (len(source_feats) / len(target_feats))
    ess = float(odds.sum() ** 2 / (odds ** 2).sum() / len(odds)) if len(odds) else 0.0
    return odds.clip(0.01, 100.0), {"domain_acc": round(held_out, 5), "ess": round(ess, 5)}


def dev_risk(losses: np.ndarray, weights: np.ndarray) -> float:
    """Deep Embedded Validation: mean(w l) + eta mean(w) - eta, eta = -Cov(w l, w) / Var(w)."""
    wl = weights * losses
    var = weights.var(ddof=1) if len(weights) > 1 else 0.0
    eta = -np.cov(wl, weights)[0, 1] / var if var > 0 else 0.0
    return float(wl.mean() + eta * weights.mean() - eta)


def mean_entropy(probs: torch.Tensor) -> float:
    return float(-(probs * torch.log(probs + 1e-12)).sum(1).mean())


def information_score(probs: torch.Tensor) -> float:
    mean = probs.mean(0)
    return float(-(mean * torch.log(mean + 1e-12)).sum()) - mean_entropy(probs)


def class_ami(feats: torch.Tensor, probs: torch.Tensor, max_points: int = 5000, seed: int = 0) -> float:
    """Adjusted mutual information between predicted classes and k-means clusters of the features."""
    from sklearn.cluster import KMeans
    from sklearn.metrics import adjusted_mutual_info_score

    if len(feats) > max_points:
        keep = torch.randperm(len(feats), generator=torch.Generator().manual_seed(seed))[:max_points]
        feats, probs = feats[keep], probs[keep]
    z = F.normalize(feats.double(), dim=1).numpy()
    clusters = KMeans(n_clusters=probs.shape[1], n_init=3, random_state=seed).fit_predict(z)
    return float(adjusted_mutual_info_score(clusters, probs.argmax(1).numpy()))


def snd(probs: torch.Tensor, temperature: float = 0.05, max_points: int = 2000, seed: int = 0) -> float:
    """Soft neighbourhood density: the mean entropy of each target prediction's softmax similarity to
    the others (L2-normalised prediction vectors, temperature 0.05 as in the paper)."""
    if len(probs) > max_points:
        probs = probs[torch.randperm(len(probs), generator=torch.Generator().manual_seed(seed))[:max_points]]
    z = F.normalize(probs.double(), dim=1)
    sim = z @ z.T / temperature
    sim.fill_diagonal_(float("-inf"))
    p = torch.softmax(sim, 1)
    return float(-(p * torch.log(p + 1e-12)).sum(1).mean())


def scores(target_feats: torch.Tensor, target_probs: torch.Tensor, val_probs: torch.Tensor | None,
           val_y: torch.Tensor | None, weights: np.ndarray | None, seed: int = 0) -> dict[str, float | None]:
    out = {"entropy": round(mean_entropy(target_probs), 5), "im": round(information_score(target_probs), 5),
           "snd": round(snd(target_probs, seed=seed), 5),
           "class_ami": round(class_ami(target_feats, target_probs, seed=seed), 5), "dev": None}
    if val_probs is not None and weights is not None and len(val_y):
        losses = F.nll_loss(torch.log(val_probs + 1e-12), val_y, reduction="none").numpy()
        out["dev"] = round(dev_risk(losses, weights), 5)
        out["source_val_acc"] = round(float((val_probs.argmax(1) == val_y).float().mean()), 5)
    return out


def decide(rows: dict[str, dict], baseline: str = "source-only", abstain: tuple[str, ...] = ()
           ) -> tuple[str, str, dict[str, int]]:
    """The method to keep, why, and each method's votes (how many scores favour it over ``baseline``).
    ``abstain``: scores whose assumptions failed on this data (they are reported, never counted)."""
    base = rows[baseline]
    voting = [k for k in DIRECTIONS if k not in abstain and base.get(k) is not None]
    votes, harmful = {}, set()
    for name, s in rows.items():
        if name == baseline:
            continue
        v = 0
        for score in voting:
            if s.get(score) is None:
                continue
            better = (s[score] - base[score]) * DIRECTIONS[score] > 0
            v += better
            if score == "dev" and not better:
                harmful.add(name)
        votes[name] = v
    need = len(voting) // 2 + 1
    eligible = [n for n, v in votes.items() if v >= need and n not in harmful]
    of = f"{len(voting)} voting scores ({', '.join(voting)})"
    if not eligible:
        why = (f"no method won a majority ({need}) of the {of} against source-only"
               + (" without DEV predicting harm" if "dev" in voting else "")
               + f" (votes: {_fmt(votes, len(voting))}): the source model is kept")
        return baseline, why, votes
    ranks = _mean_ranks({n: rows[n] for n in eligible + [baseline]}, voting)
    winner = min(eligible, key=lambda n: (ranks[n], n))
    why = (f"{winner} won {votes[winner]} of the {of} against source-only and has the best mean rank of the "
           f"methods that won a majority (votes: {_fmt(votes, len(voting))})")
    return winner, why, votes


def _mean_ranks(rows: dict[str, dict], voting: list[str]) -> dict[str, float]:
    ranks = {n: [] for n in rows}
    for score in voting:
        have = [n for n in rows if rows[n].get(score) is not None]
        for r, n in enumerate(sorted(have, key=lambda n: -DIRECTIONS[score] * rows[n][score])):
            ranks[n].append(r)
    return {n: float(np.mean(r)) if r else float("inf") for n, r in ranks.items()}


def _fmt(votes: dict[str, int], of: int) -> str:
    return ", ".join(f"{n} {v}/{of}" for n, v in votes.items()) or "none"
