"""Statistics whose unit of replication is the trained model (seed), not the response (DESIGN-NOTES 4).

- Wilson score intervals for one model's rate over its responses;
- a two-level cluster bootstrap for an arm's mean rate: resample seeds, then items;
- contrasts between arms: a paired t-test over seeds (pairs share the seed, hence the data order), a
  Welch test when the arms' seeds differ, and a per-item paired t-test when there is only one seed
  (labelled as such: it ignores model-to-model variance);
- Holm's step-down correction over the declared contrasts; Cohen's kappa for agreement.
Pooling responses across seeds into one Fisher test is deliberately absent: with seed-to-seed
variance it rejects a true null far more often than its nominal level (tests/test_stats.py shows it).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps

Z95 = 1.959963984540054


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    if n == 0:
        return (math.nan, math.nan)
    p = successes / n
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # at 0 or n successes the bound is exactly 0 or 1; rounding would leave it just inside
    low = 0.0 if successes == 0 else max(0.0, center - half)
    high = 1.0 if successes == n else min(1.0, center + half)
    return (low, high)


def cluster_bootstrap_mean(rates: np.ndarray, samples: int, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of the mean of rates[seed, item], resampling seeds, then items."""
    rates = np.asarray(rates, dtype=float)
    n_seeds, n_items = rates.shape
    rng = np.random.default_rng(seed)
    means = np.empty(samples)
    for b in range(samples):
        s = rng.integers(n_seeds, size=n_seeds)
        i = rng.integers(n_items, size=n_items)
        means[b] = rates[np.ix_(s, i)].mean()
    return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def bootstrap_difference(a: np.ndarray, b: np.ndarray, paired_seeds: bool, samples: int,
                         seed: int = 0) -> tuple[float, float]:
    """95% interval of mean(a) - mean(b) for per-[seed, item] values of two arms over the same items:
    items are resampled once per replicate for both arms; seeds jointly when paired, else separately."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    rng = np.random.default_rng(seed)
    n_items = a.shape[1]
    diffs = np.empty(samples)
    for r in range(samples):
        items = rng.integers(n_items, size=n_items)
        sa = rng.integers(a.shape[0], size=a.shape[0])
        sb = sa if paired_seeds else rng.integers(b.shape[0], size=b.shape[0])
        diffs[r] = a[np.ix_(sa, items)].mean() - b[np.ix_(sb, items)].mean()
    return float(np.quantile(diffs, 0.025)), float(np.quantile(diffs, 0.975))


@dataclass
class TestResult:
    p_value: float
    statistic: float
    method: str
    n: int


def _one_sample_t(diffs: np.ndarray, method: str) -> TestResult:
    diffs = np.asarray(diffs, dtype=float)
    n = len(diffs)
    if n < 2:
        return TestResult(math.nan, math.nan, method + " (too few units)", n)
    if np.allclose(diffs, diffs[0]):
        # no variance: the t statistic is undefined; fall back to the exact two-sided sign test
        p = 1.0 if diffs[0] == 0 else min(1.0, 2 * 0.5 ** n)
        return TestResult(p, math.inf if diffs[0] else 0.0, method + " (zero variance: sign test)", n)
    res = sps.ttest_1samp(diffs, 0.0)
    return TestResult(float(res.pvalue), float(res.statistic), method, n)


def contrast_test(a: np.ndarray, b: np.ndarray, seeds_a: list, seeds_b: list) -> TestResult:
    """Test mean(a) != mean(b) for per-[seed, item] values. The seed is the unit when there are several."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(seeds_a) >= 2 and len(seeds_b) >= 2:
        if list(seeds_a) == list(seeds_b):
            return _one_sample_t(a.mean(axis=1) - b.mean(axis=1), "paired t-test over seeds")
        res = sps.ttest_ind(a.mean(axis=1), b.mean(axis=1), equal_var=False)
        return TestResult(float(res.pvalue), float(res.statistic), "Welch t-test over seeds",
                          len(seeds_a) + len(seeds_b))
    # one seed: the only replication left is the item (twin pair); model variance is not captured
    return _one_sample_t(a.mean(axis=0) - b.mean(axis=0), "paired t-test over items (one seed)")


def holm(p_values: list[float]) -> list[float]:
    """Holm step-down adjusted p-values (NaN stays NaN and is not counted in the family)."""
    indexed = [(p, i) for i, p in enumerate(p_values) if not math.isnan(p)]
    indexed.sort()
    m = len(indexed)
    adjusted = [math.nan] * len(p_values)
    running = 0.0
    for rank, (p, i) in enumerate(indexed):
        running = max(running, min(1.0, (m - rank) * p))
        adjusted[i] = running
    return adjusted


def cohens_kappa(a: list, b: list) -> float:
    if len(a) != len(b) or not a:
        return math.nan
    labels = sorted(set(a) | set(b))
    n = len(a)
    observed = sum(x == y for x, y in zip(a, b)) / n
    expected = sum((a.count(c) / n) * (b.count(c) / n) for c in labels)
    if expected >= 1.0:
        return math.nan  # a single class in both: agreement is trivial, kappa undefined
    return (observed - expected) / (1 - expected)


def confusion_matrix(gold: list, predicted: list, labels: list) -> list[list[int]]:
    index = {label: i for i, label in enumerate(labels)}
    matrix = [[0] * len(labels) for _ in labels]
    for g, p in zip(gold, predicted):
        matrix[index[g]][index[p]] += 1
    return matrix


def pooled_fisher_p(k_a: int, n_a: int, k_b: int, n_b: int) -> float:
    """Fisher's exact test on pooled responses: shown in tests to be invalid with seed variance; not used."""
    return float(sps.fisher_exact([[k_a, n_a - k_a], [k_b, n_b - k_b]]).pvalue)
