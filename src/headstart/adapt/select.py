"""Choosing an adapted model without target labels: three scores, a vote, and source-only as the fallback.

Label-free selection is where domain adaptation fails in practice (SKADA-Bench: entropy picked a model
at 0.392 when the best was 0.920), so no single score decides:

- **DEV** (You et al. 2019): the source validation loss, importance-weighted by how target-like each
  source example is (a domain classifier's odds, trained once on the source-only features), with the
  control variate that keeps its variance down. Lower is better; it is the score that sees labels.
- **entropy** of the target predictions (lower is better): confident predictions on the target.
- **SND** (Saito et al. 2021, soft neighbourhood density): whether target predictions form dense
  neighbourhoods (higher is better).

A method is kept only when at least two of the three scores say it beats source-only, and DEV does not
say it hurts: otherwise the source model stays. Among those kept, the best mean rank wins.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

DIRECTIONS = {"dev": -1, "entropy": -1, "snd": +1}  # +1: higher is better


def domain_weights(source_feats: torch.Tensor, target_feats: torch.Tensor, query: torch.Tensor,
                   seed: int = 0) -> np.ndarray:
    """p_target(x) / p_source(x) at ``query`` (source validation features), from a logistic domain
    classifier on standardised features, its class prior removed, clipped to [0.01, 100]."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    x = torch.cat([source_feats, target_feats]).numpy()
    d = np.r_[np.zeros(len(source_feats)), np.ones(len(target_feats))]
    scaler = StandardScaler().fit(x)
    clf = LogisticRegression(C=0.1, max_iter=1000, random_state=seed).fit(scaler.transform(x), d)
    p = clf.predict_proba(scaler.transform(query.numpy()))[:, 1].clip(1e-6, 1 - 1e-6)
    odds = p / (1 - p) * (len(source_feats) / len(target_feats))
    return odds.clip(0.01, 100.0)


def dev_risk(losses: np.ndarray, weights: np.ndarray) -> float:
    """Deep Embedded Validation: mean(w l) + eta mean(w) - eta, eta = -Cov(w l, w) / Var(w)."""
    wl = weights * losses
    var = weights.var(ddof=1) if len(weights) > 1 else 0.0
    eta = -np.cov(wl, weights)[0, 1] / var if var > 0 else 0.0
    return float(wl.mean() + eta * weights.mean() - eta)


def mean_entropy(probs: torch.Tensor) -> float:
    return float(-(probs * torch.log(probs + 1e-12)).sum(1).mean())


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


def scores(target_probs: torch.Tensor, val_probs: torch.Tensor | None, val_y: torch.Tensor | None,
           weights: np.ndarray | None, seed: int = 0) -> dict[str, float | None]:
    out = {"entropy": round(mean_entropy(target_probs), 5), "snd": round(snd(target_probs, seed=seed), 5),
           "dev": None}
    if val_probs is not None and weights is not None and len(val_y):
        losses = F.nll_loss(torch.log(val_probs + 1e-12), val_y, reduction="none").numpy()
        out["dev"] = round(dev_risk(losses, weights), 5)
        out["source_val_acc"] = round(float((val_probs.argmax(1) == val_y).float().mean()), 5)
    return out


def decide(rows: dict[str, dict], baseline: str = "source-only") -> tuple[str, str, dict[str, int]]:
    """The method to keep, why, and each method's votes (how many scores favour it over ``baseline``)."""
    base = rows[baseline]
    votes, harmful = {}, set()
    for name, s in rows.items():
        if name == baseline:
            continue
        v = 0
        for score, direction in DIRECTIONS.items():
            if s.get(score) is None or base.get(score) is None:
                continue
            better = (s[score] - base[score]) * direction > 0
            v += better
            if score == "dev" and not better:
                harmful.add(name)
        votes[name] = v
    eligible = [n for n, v in votes.items() if v >= 2 and n not in harmful]
    if not eligible:
        why = ("no method won at least two of the three label-free scores without DEV predicting harm "
               f"(votes: {_fmt(votes)}): the source model is kept")
        return baseline, why, votes
    ranks = _mean_ranks({n: rows[n] for n in eligible + [baseline]})
    winner = min(eligible, key=lambda n: (ranks[n], n))
    why = (f"{winner} won {votes[winner]} of the 3 label-free scores against source-only and has the best mean "
           f"rank of the methods that did (votes: {_fmt(votes)})")
    return winner, why, votes


def _mean_ranks(rows: dict[str, dict]) -> dict[str, float]:
    ranks = {n: [] for n in rows}
    for score, direction in DIRECTIONS.items():
        have = [n for n in rows if rows[n].get(score) is not None]
        for r, n in enumerate(sorted(have, key=lambda n: -direction * rows[n][score])):
            ranks[n].append(r)
    return {n: float(np.mean(r)) if r else float("inf") for n, r in ranks.items()}


def _fmt(votes: dict[str, int]) -> str:
    return ", ".join(f"{n} {v}/3" for n, v in votes.items()) or "none"
