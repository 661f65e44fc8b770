"""Did transfer help? A paired comparison with a simple model on the same validation examples.

Both models are scored on the very same examples, so what matters is where they disagree: ``b``
examples only the transfer model gets right, ``c`` only the simple one. McNemar's exact test asks
whether ``b`` and ``c`` differ by more than a fair coin would make them (a binomial test on ``b + c``
discordant pairs); the 95 % interval of the accuracy difference is Newcombe's for paired proportions
(method 10, from Wilson score intervals), which stays inside [-1, 1] and is honest at small counts, where
the binomial standard error is not: at 12/12 correct it is 0.000, and a one-example difference looked
significant.

Below :data:`MIN_EXAMPLES` validation examples, or when the two models disagree on fewer than
:data:`MIN_DISAGREEMENTS` of them, the verdict is "too few to tell" and carries no advice.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

MIN_EXAMPLES = 30  # fewer validation examples than this: no verdict either way
MIN_DISAGREEMENTS = 2  # a one-example difference is never advice
ALPHA = 0.05
Z = 1.959963984540054  # the two-sided 95 % normal quantile


@dataclass(frozen=True)
class Verdict:
    """The comparison of transfer with a simple model on ``n`` shared validation examples."""

    outcome: str  # "better" | "worse" | "no difference" | "too few to tell"
    n: int
    transfer_acc: float
    simple_acc: float
    only_transfer_right: int  # b
    only_simple_right: int  # c
    difference: float  # transfer_acc - simple_acc
    ci95: tuple[float, float]  # of the difference (Newcombe, paired)
    p_value: float  # exact McNemar, two-sided
    why: str

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ci95"] = [round(v, 4) for v in self.ci95]
        d["test"] = "exact McNemar on the disagreements; Newcombe 95 % interval of the paired difference"
        return d


def compare(transfer_correct, simple_correct) -> Verdict:
    """The verdict from two boolean arrays: example i right (True) or wrong for each model."""
    t = np.asarray(transfer_correct, dtype=bool)
    s = np.asarray(simple_correct, dtype=bool)
    if t.shape != s.shape or t.ndim != 1:
        raise ValueError(f"compare() needs two 1-d arrays of the same length, got {t.shape} and {s.shape}")
    n = len(t)
    b, c = int((t & ~s).sum()), int((~t & s).sum())
    acc_t, acc_s = (float(t.mean()), float(s.mean())) if n else (0.0, 0.0)
    p = mcnemar_exact(b, c)
    ci = newcombe_paired(int((t & s).sum()), b, c, int((~t & ~s).sum()))
    counts = (f"{n} validation examples: transfer {int(t.sum())}/{n} right, the simple model {int(s.sum())}/{n}; "
              f"they disagree on {b + c} ({b} only transfer, {c} only the simple model)")
    if n < MIN_EXAMPLES or b + c < MIN_DISAGREEMENTS:
        few = (f"fewer than {MIN_EXAMPLES} examples" if n < MIN_EXAMPLES
               else f"the models disagree on fewer than {MIN_DISAGREEMENTS} of them")
        return Verdict("too few to tell", n, acc_t, acc_s, b, c, acc_t - acc_s, ci, p,
                       f"too few validation examples to tell ({few}); {counts}")
    outcome = "no difference" if p >= ALPHA else ("better" if b > c else "worse")
    why = (f"{counts}; difference {acc_t - acc_s:+.4f} (95 % interval {ci[0]:+.4f} to {ci[1]:+.4f}), "
           f"McNemar p = {p:.3g}")
    return Verdict(outcome, n, acc_t, acc_s, b, c, acc_t - acc_s, ci, p, why)


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value: P(a split of b + c fair coin flips at least this uneven)."""
    m = b + c
    if m == 0:
        return 1.0
    k = min(b, c)
    tail = sum(math.comb(m, i) for i in range(k + 1)) / 2.0 ** m
    return min(1.0, 2.0 * tail)


def wilson(successes: int, n: int, z: float = Z) -> tuple[float, float]:
    """Wilson score interval of a proportion."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def newcombe_paired(both: int, b: int, c: int, neither: int, z: float = Z) -> tuple[float, float]:
    """95 % interval of p1 - p2 for paired proportions (Newcombe 1998, method 10).

    p1 = (both + b) / n is the transfer model's accuracy, p2 = (both + c) / n the simple model's.
    """
    n = both + b + c + neither
    if n == 0:
        return -1.0, 1.0
    p1, p2 = (both + b) / n, (both + c) / n
    l1, u1 = wilson(both + b, n, z)
    l2, u2 = wilson(both + c, n, z)
    d = p1 - p2
    # phi: the correlation of the paired outcomes, with Newcombe's correction of the numerator.
    num = both * neither - b * c
    den = math.sqrt((both + b) * (c + neither) * (both + c) * (b + neither))
    if den == 0:
        phi = 0.0
    else:
        num = max(num - n / 2, 0.0) if num > 0 else num
        phi = num / den
    dl = math.sqrt(max((p1 - l1) ** 2 - 2 * phi * (p1 - l1) * (u2 - p2) + (u2 - p2) ** 2, 0.0))
    du = math.sqrt(max((u1 - p1) ** 2 - 2 * phi * (u1 - p1) * (p2 - l2) + (p2 - l2) ** 2, 0.0))
    return max(-1.0, d - dl), min(1.0, d + du)
