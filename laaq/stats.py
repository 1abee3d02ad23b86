"""The statistics every compared number needs: intervals on accuracies, paired tests between variants.

Why these three:

* **Wilson score interval** for an accuracy k/n — unlike the normal ("Wald") interval it stays inside
  [0, 1] and keeps its coverage near 0 % and 100 %, where robust accuracies of weak models and
  ε-curves live.
* **McNemar's exact test** for two classifiers scored on the *same* images: only the discordant
  images (right for one, wrong for the other) carry information about which is better, and under the
  null hypothesis each discordant image goes either way with probability ½ — a binomial test. Far more
  sensitive than comparing two independent intervals, and the right test for paired outcomes.
* **Paired, hierarchical bootstrap** for a difference of means over seeds × images: resample seeds,
  then images within each seed, with the *same* image draw for both methods, so both sources of noise
  (training/search seed and test sample) enter the interval.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats as _st

Z95 = 1.959963984540054


def wilson(k: int | float, n: int, z: float = Z95) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion k/n (n = 0 gives the uninformative (0, 1))."""
    if n <= 0:
        return 0.0, 1.0
    p = k / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return max(0.0, centre - half), min(1.0, centre + half)


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts b (only A right) and c (only B right)."""
    n = b + c
    if n == 0:
        return 1.0
    return float(min(1.0, 2.0 * _st.binom.cdf(min(b, c), n, 0.5)))


@dataclass(frozen=True)
class PairedTest:
    """Outcome of comparing two per-image correctness vectors on the same images."""

    only_a: int  # images A gets right and B gets wrong
    only_b: int
    n: int
    p_value: float

    @property
    def acc_diff(self) -> float:
        """Accuracy of A minus accuracy of B (the discordant counts decide it)."""
        return (self.only_a - self.only_b) / self.n if self.n else 0.0

    def significant(self, alpha: float = 0.05) -> bool:
        return self.p_value < alpha

    def verdict(self, a: str = "A", b: str = "B", alpha: float = 0.05) -> str:
        if not self.significant(alpha):
            return f"not distinguishable (p={self.p_value:.2g}, {self.only_a} vs {self.only_b} discordant)"
        better = a if self.only_a > self.only_b else b
        return f"{better} more accurate (p={self.p_value:.2g}, {self.only_a} vs {self.only_b} discordant)"


def paired_test(correct_a: np.ndarray, correct_b: np.ndarray) -> PairedTest:
    """McNemar's exact test on two boolean per-image outcome vectors of the same images."""
    a = np.asarray(correct_a, dtype=bool)
    b = np.asarray(correct_b, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"paired outcomes need the same images: shapes {a.shape} and {b.shape}")
    only_a, only_b = int((a & ~b).sum()), int((~a & b).sum())
    return PairedTest(only_a, only_b, int(a.size), mcnemar_exact(only_a, only_b))


@dataclass(frozen=True)
class DiffInterval:
    """Mean difference (A − B) over seeds with a 95 % interval; "not distinguishable" when it covers 0."""

    mean: float
    lo: float
    hi: float
    n_seeds: int
    method: str

    @property
    def distinguishable(self) -> bool:
        return self.lo > 0 or self.hi < 0

    def describe(self, scale: float = 100.0, unit: str = " pts") -> str:
        core = f"{scale * self.mean:+.1f}{unit} [{scale * self.lo:+.1f}, {scale * self.hi:+.1f}]"
        return core + ("" if self.distinguishable else " — not distinguishable")


def paired_bootstrap(a: list[np.ndarray], b: list[np.ndarray], reps: int = 2000, seed: int = 0,
                     level: float = 0.95) -> DiffInterval:
    """Hierarchical paired bootstrap of mean(A) − mean(B).

    ``a[s]`` and ``b[s]`` are per-image scores (0/1, or a mean over draws) of the two methods on the
    same images for seed ``s``. Each replicate resamples seeds, then images inside each chosen seed,
    using one image draw for both methods (paired).
    """
    if len(a) != len(b) or not a:
        raise ValueError("paired bootstrap needs the same, non-empty list of seeds for both methods")
    diffs = [np.asarray(x, float) - np.asarray(y, float) for x, y in zip(a, b, strict=True)]
    point = float(np.mean([d.mean() for d in diffs]))
    rng = np.random.default_rng(seed)
    s = len(diffs)
    out = np.empty(reps)
    for r in range(reps):
        picks = rng.integers(0, s, s)
        out[r] = np.mean([diffs[i][rng.integers(0, diffs[i].size, diffs[i].size)].mean() for i in picks])
    tail = (1 - level) / 2
    lo, hi = np.quantile(out, [tail, 1 - tail])
    return DiffInterval(point, float(lo), float(hi), s, f"paired bootstrap over seeds x images ({reps} reps)")


def crossed_bootstrap(a: list[np.ndarray], b: list[np.ndarray], reps: int = 2000, seed: int = 0,
                      level: float = 0.95, margin: float = 0.0) -> tuple[DiffInterval, float]:
    """Paired bootstrap of mean(A) − mean(B) when every seed scored the **same** images: each replicate resamples
    seeds and draws **one** image sample shared by all of them (crossed design), and the one-sided p-value
    of "the difference is at most ``margin``" (replicates at or below it, +1 smoothed).

    Why: :func:`paired_bootstrap` draws images independently per seed, as if each seed had its own test set;
    with one shared test set the image noise is common to all seeds, and independent draws average it away
    (the method issue measured the VGG8 study's 3-bit margin at +3.8 [+0.8, +7.6] with a shared draw)."""
    if len(a) != len(b) or not a:
        raise ValueError("paired bootstrap needs the same, non-empty list of seeds for both methods")
    diffs = np.stack([np.asarray(x, float) - np.asarray(y, float) for x, y in zip(a, b, strict=True)])
    point = float(diffs.mean())
    rng = np.random.default_rng(seed)
    s, n = diffs.shape
    out = np.empty(reps)
    for r in range(reps):
        picks = rng.integers(0, s, s)
        images = rng.integers(0, n, n)
        out[r] = diffs[np.ix_(picks, images)].mean()
    tail = (1 - level) / 2
    lo, hi = np.quantile(out, [tail, 1 - tail])
    p = float((np.sum(out <= margin) + 1) / (reps + 1))
    return DiffInterval(point, float(lo), float(hi), s, f"crossed paired bootstrap, seeds x one image draw "
                                                        f"({reps} reps)"), p


def holm(p_values: list[float], alpha: float = 0.05) -> list[bool]:
    """Holm's step-down correction: which of the hypotheses are rejected at family-wise level ``alpha``."""
    order = sorted(range(len(p_values)), key=lambda i: p_values[i])
    rejected = [False] * len(p_values)
    for rank, i in enumerate(order):
        if p_values[i] > alpha / (len(p_values) - rank):
            break
        rejected[i] = True
    return rejected


def t_interval(diffs: np.ndarray, level: float = 0.95) -> DiffInterval:
    """Student-t interval of the mean of per-seed paired differences (ddof = 1)."""
    d = np.asarray(diffs, float)
    n = d.size
    if n < 2:
        return DiffInterval(float(d.mean()) if n else float("nan"), -math.inf, math.inf, n, "t (one seed: no interval)")
    half = _st.t.ppf(0.5 + level / 2, n - 1) * d.std(ddof=1) / math.sqrt(n)
    return DiffInterval(float(d.mean()), float(d.mean() - half), float(d.mean() + half), n, "t over seeds")
