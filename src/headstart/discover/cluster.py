"""Group embeddings without being told how many groups there are.

The steps, each chosen because an anchor fails without it:

0. **Distinct items only.** Exact duplicates are grouped once and follow their original.
1. **Reduce.** Standardise, L2-normalise, PCA to at most 50 dimensions, then UMAP to 10 (when
   umap-learn is installed; PCA alone otherwise). k-means and HDBSCAN work far better in a space
   whose distances follow the data's neighbourhoods than on 1,280 raw feature dimensions.
2. **Try every K and a density method.** k-means for each K in ``[k_min, k_max]`` and HDBSCAN, whose
   noise points are reassigned to the nearest group and flagged (BERTopic leaves 35-50% of documents
   in its outlier topic; here every point gets a group).
3. **Choose by internal criteria**, never labels: the mean silhouette in the reduced space (it
   tracks clustering quality), stability of each K across subsamples (an unstable K is refused), and
   the eigengap of the neighbourhood graph in the PCA space, reported beside them as a second opinion.
4. **Ask whether there is structure at all.** The same pipeline runs on a Gaussian null with the
   data's own PCA variances; a pool whose best grouping is no more cohesive than that null gets one
   group and says so, rather than inventing groups (k-means always returns K of them).
"""
from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sklearn.cluster import HDBSCAN, KMeans
from sklearn.decomposition import PCA
from sklearn.metrics import adjusted_rand_score, silhouette_samples, silhouette_score
from sklearn.preprocessing import StandardScaler, normalize

from headstart.errors import DataError

log = logging.getLogger("headstart")

MIN_ITEMS = 10  # fewer cannot show a group structure
PCA_DIMS = 50
UMAP_DIMS = 10
SILHOUETTE_SAMPLE = 4000  # silhouette on a fixed subsample above this: O(n^2) otherwise
STABLE = 0.75  # a K whose subsample solutions agree less (ARI) is not chosen
# The best grouping must beat the null's silhouette by this much to count as structure. A Gaussian
# blob run through UMAP + k-means scores 0.3-0.45 (UMAP carves any cloud into pieces); real groups
# sit well above their null (digits 0.84 vs 0.38 here).
STRUCTURE_MARGIN = 0.1


@dataclass
class Candidate:
    """One grouping tried: its method, K and criterion values."""

    method: str  # "kmeans" or "hdbscan"
    k: int
    silhouette: float
    stability: float | None = None  # ARI between solutions on two subsamples (None: not measured)
    noise_fraction: float = 0.0  # HDBSCAN: share of points it left unassigned (reassigned here)

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "k": self.k, "silhouette": round(self.silhouette, 4),
                "stability": None if self.stability is None else round(self.stability, 4),
                "noise_fraction": round(self.noise_fraction, 4)}


@dataclass
class GroupFit:
    """The chosen grouping of n points, and how it was chosen."""

    labels: np.ndarray  # (n,) group ids 0..k-1, ordered by size (0 = largest)
    k: int
    method: str
    confidence: np.ndarray  # (n,) in [0, 1]: 1 - d(own centre) / d(nearest other centre)
    outlier: np.ndarray  # (n,) bool: reassigned HDBSCAN noise, or far out in its group
    silhouette: np.ndarray  # (n,) per-point silhouette (group cohesion is its mean)
    space: np.ndarray  # (n, d) the reduced space the grouping was made in
    reducer: str  # "umap" or "pca"
    candidates: list[Candidate]
    structure: bool  # False: no grouping beat the null; everything is one group
    null_silhouette: float
    eigengap_k: int | None
    forced: bool = False
    reasons: list[str] = field(default_factory=list)

    def runner_up(self) -> Candidate | None:
        """The best candidate with another K or method than the chosen one (a stable one if any is)."""
        rest = [c for c in self.candidates if (c.method, c.k) != (self.method, self.k)]
        stable = [c for c in rest if c.stability is None or c.stability >= STABLE]
        return max(stable or rest, key=lambda c: c.silhouette) if rest else None


def check_pool_size(n: int, k: int | None, k_min: int, k_max: int) -> None:
    if n < MIN_ITEMS:
        raise DataError(f"Discovery needs at least {MIN_ITEMS} distinct items to find groups; the pool has {n}.")
    if k is not None and not 2 <= k <= n // 2:
        raise DataError(f"k={k} does not fit a pool of {n} items: choose 2 <= k <= {n // 2} "
                        "(at least two items per group), or leave k unset to estimate it.")
    if k is None and k_min > k_max:
        raise DataError(f"k_min={k_min} is above k_max={k_max}; pass 2 <= k_min <= k_max.")
    if k is None and n < 2 * k_min:
        raise DataError(f"A pool of {n} items is too small to try k_min={k_min} groups of two or more.")


def reduce(x: np.ndarray, *, seed: int, dims: int = UMAP_DIMS) -> tuple[np.ndarray, str, np.ndarray]:
    """(reduced space, reducer name, the PCA space before UMAP) of feature rows ``x``."""
    z = StandardScaler().fit_transform(np.asarray(x, dtype=np.float64))
    z = normalize(np.nan_to_num(z))  # constant columns scale to 0, not NaN
    n_comp = min(PCA_DIMS, z.shape[1], len(z) - 1)
    p = PCA(n_comp, random_state=seed).fit_transform(z) if z.shape[1] > n_comp else z
    umap = _umap()
    if umap is None or len(p) < 30:
        return p[:, :dims] if p.shape[1] > dims else p, "pca", p
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "n_jobs overridden by random_state": determinism wins
        u = umap.UMAP(n_components=min(dims, len(p) - 2), n_neighbors=min(15, len(p) - 1), min_dist=0.0,
                      random_state=seed).fit_transform(p)
    return np.asarray(u, dtype=np.float64), "umap", p


def _umap():
    try:
        import umap
    except ImportError:
        return None
    return umap


def group(x: np.ndarray, *, k: int | None = None, k_min: int = 2, k_max: int = 30, seed: int = 0,
          quick: bool = False) -> GroupFit:
    """Group the rows of ``x`` (embeddings), with K estimated unless ``k`` is given.

    ``quick`` (to compare representations): k-means over the K range only -- no stability, density
    method, null or eigengap.
    """
    # Exact duplicates (a message sent a hundred times, the same photo saved twice) are grouped once:
    # copies say nothing about structure, but a clump of them is the densest, most "cohesive" group
    # there is, and would win the silhouette and HDBSCAN's density on its own.
    x = np.asarray(x)
    unique, first, inverse = np.unique(x, axis=0, return_index=True, return_inverse=True)
    if len(unique) < len(x):
        order = np.argsort(first)  # keep the pool's order among distinct rows (seeded steps see the same input)
        rank = np.empty_like(order)
        rank[order] = np.arange(len(order))
        fit = group(unique[order], k=k, k_min=k_min, k_max=k_max, seed=seed, quick=quick)
        return _expand(fit, rank[inverse.ravel()], len(x) - len(unique))
    n = len(x)
    k_max = max(min(k_max, n // 5), min(k_min, n // 2))
    check_pool_size(n, k, k_min, k_max)
    space, reducer, pca_space = reduce(x, seed=seed)
    ks = [k] if k is not None else list(range(k_min, k_max + 1))
    candidates, solutions = _kmeans_candidates(space, ks, seed, stability=not quick)
    if quick:
        best = max(candidates, key=lambda c: c.silhouette)
        return GroupFit(solutions[("kmeans", best.k)][0], best.k, "kmeans", np.ones(n), np.zeros(n, bool),
                        np.zeros(n), space, reducer, candidates, True, float("nan"), None)
    if k is None:
        hd = _hdbscan_candidate(space, k_min, seed)
        if hd is not None:
            candidates.append(hd[0])
            solutions[("hdbscan", hd[0].k)] = hd[1]
    chosen, reasons = _choose(candidates, forced=k is not None)
    null = _null_silhouette(pca_space, ks, seed) if k is None else float("nan")
    eig = eigengap_k(pca_space, k_max, seed)
    structure = k is not None or not (chosen.silhouette < null + STRUCTURE_MARGIN)
    if not structure:
        reasons.append(f"no structure: the best grouping (silhouette {chosen.silhouette:.3f}) is not "
                       f"clearly above a structureless Gaussian pool of the same spread ({null:.3f} + "
                       f"{STRUCTURE_MARGIN}); everything is one group")
        labels, noise = np.zeros(n, dtype=int), np.zeros(n, dtype=bool)
    else:
        labels, noise = solutions[(chosen.method, chosen.k)]
    return _finish(space, labels, noise, chosen, candidates, reducer=reducer, structure=structure,
                   null=null, eig=eig, forced=k is not None, reasons=reasons)


def _expand(fit: GroupFit, rows: np.ndarray, n_duplicates: int) -> GroupFit:
    """The fit of the distinct rows, given to every copy (``rows[i]``: item i's distinct row)."""
    fit.labels, fit.confidence, fit.outlier = fit.labels[rows], fit.confidence[rows], fit.outlier[rows]
    fit.silhouette, fit.space = fit.silhouette[rows], fit.space[rows]
    fit.reasons.append(f"{n_duplicates} exact duplicate(s) were grouped once, with their original")
    return fit


def _kmeans_candidates(space: np.ndarray, ks: list[int], seed: int, *, stability: bool):
    candidates, solutions = [], {}
    rng = np.random.default_rng(seed)
    n = len(space)
    halves = [rng.choice(n, size=int(0.8 * n), replace=False) for _ in range(2)]
    for k in ks:
        labels = KMeans(k, n_init=4, random_state=seed).fit_predict(space)
        stable = _stability(space, k, halves, seed) if stability else None
        candidates.append(Candidate("kmeans", k, _silhouette(space, labels, seed), stable))
        solutions[("kmeans", k)] = (labels, np.zeros(n, dtype=bool))
    return candidates, solutions


def _stability(space: np.ndarray, k: int, halves: list[np.ndarray], seed: int) -> float:
    """ARI between k-means fitted on two different 80% subsamples, compared on all points."""
    a, b = (KMeans(k, n_init=2, random_state=seed + 1 + i).fit(space[h]).predict(space)
            for i, h in enumerate(halves))
    return float(adjusted_rand_score(a, b))


def _hdbscan_candidate(space: np.ndarray, k_min: int, seed: int = 0):
    """HDBSCAN with its noise reassigned to the nearest group (and flagged), or None if < k_min groups.

    Its stability is measured like k-means': HDBSCAN on two 80% subsamples, every point assigned to
    the nearest group centre of each, compared by ARI."""
    labels, noise = _hdbscan(space)
    if labels is None or labels.max() + 1 < max(2, k_min):
        return None
    rng = np.random.default_rng(seed)
    parts = []
    for _ in range(2):
        h = rng.choice(len(space), size=int(0.8 * len(space)), replace=False)
        sub, _ = _hdbscan(space[h])
        parts.append(None if sub is None else _nearest(space, _centres(space[h], sub)))
    stable = float(adjusted_rand_score(*parts)) if all(p is not None for p in parts) else 0.0
    cand = Candidate("hdbscan", int(labels.max()) + 1, _silhouette(space, labels, 0), stable, float(noise.mean()))
    return cand, (labels, noise)


def _hdbscan(space: np.ndarray) -> tuple[np.ndarray | None, np.ndarray]:
    raw = HDBSCAN(min_cluster_size=max(5, len(space) // 100), copy=True).fit_predict(space)
    found = sorted(set(raw.tolist()) - {-1})
    noise = raw < 0
    if len(found) < 2:
        return None, noise
    labels = np.searchsorted(found, np.where(noise, found[0], raw))
    if noise.any():
        labels[noise] = _nearest(space[noise], _centres(space[~noise], labels[~noise]))
    return labels, noise


def _centres(points: np.ndarray, labels: np.ndarray) -> np.ndarray:
    return np.stack([points[labels == g].mean(0) for g in range(int(labels.max()) + 1)])


def _choose(candidates: list[Candidate], *, forced: bool) -> tuple[Candidate, list[str]]:
    if forced:
        c = candidates[0]
        return c, [f"k={c.k} was given; silhouette {c.silhouette:.3f}, stability {c.stability:.3f}"]
    stable = [c for c in candidates if c.stability is None or c.stability >= STABLE]
    pool = stable or candidates
    best = max(pool, key=lambda c: c.silhouette)
    reasons = [(f"{best.method} with k={best.k}: the highest silhouette ({best.silhouette:.3f}) among "
                f"{len(pool)} {'stable ' if stable else ''}candidates")]
    dropped = len(candidates) - len(stable)
    if dropped and stable:
        reasons.append(f"{dropped} candidate K with stability below {STABLE} across subsamples were not chosen")
    return best, reasons


def _null_silhouette(pca_space: np.ndarray, ks: list[int], seed: int, n_max: int = 1000) -> float:
    """Best silhouette the same pipeline finds on a Gaussian with the data's PCA variances."""
    rng = np.random.default_rng(seed + 7)
    n = min(len(pca_space), n_max)
    null = rng.standard_normal((n, pca_space.shape[1])) * pca_space.std(0)
    space, _, _ = reduce(null, seed=seed)
    ks = [k for k in ks if k <= n // 5] or ks[:1]
    return max(_silhouette(space, KMeans(k, n_init=2, random_state=seed).fit_predict(space), seed) for k in ks)


def eigengap_k(space: np.ndarray, k_max: int, seed: int, n_max: int = 1500) -> int | None:
    """K at the largest gap among the smallest eigenvalues of the normalised Laplacian of the 30-NN
    graph, on a subsample (a dense eigendecomposition of 1,500 points takes well under a second).

    Computed in the PCA space: UMAP's tight clumps split the neighbourhood graph into many
    components, whose zero eigenvalues leave no gap to read."""
    from scipy.sparse import csgraph
    from sklearn.neighbors import kneighbors_graph

    rng = np.random.default_rng(seed)
    pts = space[rng.choice(len(space), n_max, replace=False)] if len(space) > n_max else space
    if len(pts) <= k_max + 2:
        return None
    graph = kneighbors_graph(pts, n_neighbors=min(30, len(pts) - 1), include_self=False)
    graph = 0.5 * (graph + graph.T)
    vals = np.linalg.eigvalsh(csgraph.laplacian(graph, normed=True).toarray())[:k_max + 1]
    gaps = np.diff(vals)  # gaps[i] = vals[i+1] - vals[i]: the gap after the (i+1)-th smallest
    return int(np.argmax(gaps[1:]) + 2)  # K >= 2


def _finish(space, labels, noise, chosen: Candidate, candidates, *, reducer, structure, null, eig, forced,
            reasons) -> GroupFit:
    labels = _by_size(labels)
    k = int(labels.max()) + 1
    centres = _centres(space, labels)
    d = np.linalg.norm(space[:, None, :] - centres[None], axis=2)
    own = d[np.arange(len(space)), labels]
    if k > 1:
        other = np.where(np.arange(k)[None] == labels[:, None], np.inf, d).min(1)
        confidence = np.clip(1 - own / np.maximum(other, 1e-12), 0, 1)
        sil = silhouette_samples(space, labels) if len(space) <= 20000 else np.full(len(space), np.nan)
    else:
        confidence, sil = np.ones(len(space)), np.zeros(len(space))
    outlier = noise | _far_out(own, labels, k)
    return GroupFit(labels, k, chosen.method if structure else "none", confidence, outlier, sil, space, reducer,
                    candidates, structure, null, eig, forced, reasons)


def _far_out(own: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """Beyond Tukey's fence (Q3 + 1.5 IQR) of its group's distances to the centre."""
    out = np.zeros(len(own), dtype=bool)
    for g in range(k):
        m = labels == g
        q1, q3 = np.percentile(own[m], [25, 75])
        out[m] = own[m] > q3 + 1.5 * (q3 - q1)
    return out


def _by_size(labels: np.ndarray) -> np.ndarray:
    """Relabel groups 0..k-1 from the largest down (ties by first member), so ids are stable and readable."""
    ids, first, counts = np.unique(labels, return_index=True, return_counts=True)
    order = sorted(range(len(ids)), key=lambda i: (-counts[i], first[i]))
    remap = np.empty(ids.max() + 1, dtype=int)
    remap[ids[order]] = np.arange(len(ids))
    return remap[labels]


def _nearest(points: np.ndarray, centres: np.ndarray) -> np.ndarray:
    return np.linalg.norm(points[:, None, :] - centres[None], axis=2).argmin(1)


def _silhouette(space: np.ndarray, labels: np.ndarray, seed: int) -> float:
    if len(set(labels.tolist())) < 2:
        return -1.0
    sample = SILHOUETTE_SAMPLE if len(space) > SILHOUETTE_SAMPLE else None
    return float(silhouette_score(space, labels, sample_size=sample, random_state=seed))
