"""Statistics whose units of replication are the trained model (seed) and the request template.

The design (docs/preregistration.md, "Analysis") crosses seeds with templates: every seed's model
answers every template's requests. A conclusion should hold for other seeds *and* other templates,
so every interval and test here combines two standard errors (the min-F' logic of Clark 1973):
- between seeds: the spread of the seeds' means (Welch for two arms), templates held fixed;
- between templates (units): the spread of the units' values, seeds held fixed;
SE = sqrt(SE_seed^2 + SE_unit^2), with Satterthwaite's degrees of freedom and a t distribution. It
counts the response-level noise twice, so it errs on the wide side. Each variance is floored by the
binomial sampling variance of the values it averages: with no spread at all between seeds (all 0 or
all 1) the test still has a finite, sensible variance, the same rule in every path.

Cells are (seed, unit) values: for a twin contrast the difference in empirical logits between a
template's violating requests and their benign twins (a uniform rise on every request, which moves
both alike on the logit scale, then adds nothing), with the probability-scale difference reported
as the effect size. Pooling responses across seeds into one Fisher test is deliberately absent: with
seed-to-seed variance it rejects a true null far more often than its level (tests/test_stats.py).
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


def empirical_logit(k: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """log((k + 1/2) / (n - k + 1/2)) and its sampling variance 1/(k + 1/2) + 1/(n - k + 1/2) (Cox 1970):
    finite at 0 and n, unbiased to first order."""
    k, n = np.asarray(k, dtype=float), np.asarray(n, dtype=float)
    return np.log((k + 0.5) / (n - k + 0.5)), 1 / (k + 0.5) + 1 / (n - k + 0.5)


def proportion(k: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """k/n and its sampling variance, floored as if half a success were seen (never exactly 0)."""
    k, n = np.asarray(k, dtype=float), np.asarray(n, dtype=float)
    p = k / np.maximum(n, 1)
    shrunk = (k + 0.5) / (n + 1)
    return p, shrunk * (1 - shrunk) / np.maximum(n, 1)


@dataclass
class Estimate:
    estimate: float
    se: float
    se_seed: float
    se_unit: float
    df: float
    ci_low: float
    ci_high: float
    p_value: float  # two-sided, H0: estimate = 0
    n_seeds: tuple[int, ...]
    n_units: int
    method: str = "seeds x units, combined SE (min-F'), Satterthwaite df"

    @property
    def t(self) -> float:
        return self.estimate / self.se if self.se > 0 else math.nan

    def one_sided_p(self, direction: int = 1) -> float:
        """p for H1: estimate > 0 (direction 1) or < 0 (-1)."""
        if not (self.se > 0 and math.isfinite(self.df)):
            return math.nan
        return float(sps.t.sf(direction * self.estimate / self.se, self.df))


def _welch_df(parts: list[tuple[float, int]]) -> float:
    """Satterthwaite df of sum(var_i / n_i) with n_i - 1 df each."""
    num = sum(v / n for v, n in parts) ** 2
    den = sum((v / n) ** 2 / (n - 1) for v, n in parts if n > 1)
    return num / den if den > 0 else math.inf


def _combine(estimate: float, seed_parts: list[tuple[float, int]], unit_var: float, n_units: int,
             n_seeds: tuple[int, ...], alpha: float = 0.05) -> Estimate:
    se_seed2 = sum(v / n for v, n in seed_parts)
    se_unit2 = unit_var / n_units
    se = math.sqrt(se_seed2 + se_unit2)
    df_seed = _welch_df(seed_parts)
    df_unit = n_units - 1
    den = (se_seed2 ** 2 / df_seed if math.isfinite(df_seed) else 0.0) + se_unit2 ** 2 / max(df_unit, 1)
    df = (se_seed2 + se_unit2) ** 2 / den if den > 0 else math.inf
    if not (se > 0) or not math.isfinite(estimate):
        return Estimate(estimate, se, math.sqrt(se_seed2), math.sqrt(se_unit2), df, math.nan, math.nan, math.nan,
                        n_seeds, n_units)
    q = float(sps.t.ppf(1 - alpha / 2, df))
    p = float(2 * sps.t.sf(abs(estimate) / se, df))
    return Estimate(estimate, se, math.sqrt(se_seed2), math.sqrt(se_unit2), df, estimate - q * se, estimate + q * se,
                    p, n_seeds, n_units)


def crossed_mean(values: np.ndarray, variances: np.ndarray) -> Estimate:
    """Mean of values[seed, unit] with an interval that generalises over seeds and units. `variances` are each
    cell's sampling variance, the floor of both components. Needs at least 2 seeds and 2 units."""
    values, variances = np.asarray(values, dtype=float), np.asarray(variances, dtype=float)
    n_s, n_u = values.shape
    if n_s < 2 or n_u < 2:
        return Estimate(float(values.mean()) if values.size else math.nan, math.nan, math.nan, math.nan, math.nan,
                        math.nan, math.nan, math.nan, (n_s,), n_u)
    seed_means = values.mean(axis=1)
    seed_var = max(float(seed_means.var(ddof=1)), float(variances.mean(axis=1).mean()) / n_u)
    unit_means = values.mean(axis=0)
    unit_var = max(float(unit_means.var(ddof=1)), float(variances.mean(axis=0).mean()) / n_s)
    return _combine(float(values.mean()), [(seed_var, n_s)], unit_var, n_u, (n_s,))


def crossed_difference(a: np.ndarray, var_a: np.ndarray, b: np.ndarray, var_b: np.ndarray) -> Estimate:
    """mean(a) - mean(b) for values[seed, unit] of two arms (different models) over the same units, seeds not
    paired. Between seeds: Welch over each arm's seed means; between units: the spread of the per-unit
    differences. Each floored by the cells' sampling variances."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    var_a, var_b = np.asarray(var_a, dtype=float), np.asarray(var_b, dtype=float)
    (n_a, n_u), n_b = a.shape, b.shape[0]
    estimate = float(a.mean() - b.mean()) if a.size and b.size else math.nan
    if min(n_a, n_b) < 2 or n_u < 2:
        return Estimate(estimate, math.nan, math.nan, math.nan, math.nan, math.nan, math.nan, math.nan, (n_a, n_b), n_u)
    parts = []
    for x, v, n in ((a, var_a, n_a), (b, var_b, n_b)):
        parts.append((max(float(x.mean(axis=1).var(ddof=1)), float(v.mean()) / n_u), n))
    diff = a.mean(axis=0) - b.mean(axis=0)
    floor = float(var_a.mean(axis=0).mean()) / n_a + float(var_b.mean(axis=0).mean()) / n_b
    unit_var = max(float(diff.var(ddof=1)), floor)
    return _combine(estimate, parts, unit_var, n_u, (n_a, n_b))


def holm(p_values: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values over a family fixed in advance: a member that could not be estimated
    (NaN) stays in the family as p = 1, so a missing run never shrinks the family."""
    ps = [1.0 if (p is None or math.isnan(p)) else float(p) for p in p_values]
    order = sorted(range(len(ps)), key=lambda i: ps[i])
    m = len(ps)
    adjusted = [1.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * ps[i]))
        adjusted[i] = running
    return adjusted


def cohens_kappa(a: list, b: list) -> float:
    if len(a) != len(b) or not a:
        return math.nan
    labels = sorted(set(a) | set(b), key=str)
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
