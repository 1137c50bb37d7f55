"""Statistics: textbook values, and calibration of the seed-level contrast test under the null."""
import math

import numpy as np
import pytest

from normlib.stats import (bootstrap_difference, cluster_bootstrap_mean, cohens_kappa, confusion_matrix,
                           contrast_test, holm, pooled_fisher_p, wilson_interval)


def test_wilson_textbook_values():
    # Newcombe (1998), Table I: 81/263 -> 0.2553 to 0.3662; 15/148 -> 0.0624 to 0.1605; 0/20 -> 0 to 0.1611
    assert wilson_interval(81, 263) == pytest.approx((0.2553, 0.3662), abs=1e-4)
    assert wilson_interval(15, 148) == pytest.approx((0.0624, 0.1605), abs=1e-4)
    lo, hi = wilson_interval(0, 20)
    assert lo == 0.0 and hi == pytest.approx(0.1611, abs=1e-4)
    assert wilson_interval(20, 20)[1] == 1.0
    for n in range(1, 40):  # exact bounds at the extremes, whatever the rounding
        assert wilson_interval(0, n)[0] == 0.0 and wilson_interval(n, n)[1] == 1.0
    assert all(math.isnan(x) for x in wilson_interval(0, 0))


def test_holm_known_example():
    # p = (0.01, 0.04, 0.03, 0.005), m = 4: sorted 0.005*4, 0.01*3, 0.03*2, 0.04*1 -> 0.02, 0.03, 0.06, 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert math.isnan(holm([math.nan, 0.01])[0]) and holm([math.nan, 0.01])[1] == 0.01


def test_kappa_and_confusion():
    assert cohens_kappa(list("aabb"), list("aabb")) == 1.0
    assert cohens_kappa(list("abab"), list("baba")) == -1.0
    # Cohen's classic 2x2: 20 yes-yes, 5 yes-no, 10 no-yes, 15 no-no -> po .7, pe .5, kappa .4
    a = ["y"] * 25 + ["n"] * 25
    b = ["y"] * 20 + ["n"] * 5 + ["y"] * 10 + ["n"] * 15
    assert cohens_kappa(a, b) == pytest.approx(0.4)
    assert math.isnan(cohens_kappa(["y", "y"], ["y", "y"]))
    assert confusion_matrix(a, b, ["y", "n"]) == [[20, 5], [10, 15]]


def test_bootstrap_intervals_cover_the_mean_and_widen_with_seed_variance():
    rng = np.random.default_rng(0)
    tight = rng.random((5, 100)) * 0.1 + 0.3
    lo, hi = cluster_bootstrap_mean(tight, 500)
    assert lo < tight.mean() < hi
    spread = tight + np.array([[-0.2], [0.0], [0.2], [0.1], [-0.1]])
    lo2, hi2 = cluster_bootstrap_mean(spread, 500)
    assert hi2 - lo2 > 3 * (hi - lo)
    d_lo, d_hi = bootstrap_difference(tight + 0.2, tight, True, 500)
    assert d_lo == pytest.approx(0.2) and d_hi == pytest.approx(0.2)


def simulate_arm(rng, n_seeds, n_items, n_samples, mean_logit, seed_sd, item_effects):
    """Per-[seed, item] refusal rates and counts: each seed is a model with its own propensity."""
    seed_shift = rng.normal(0, seed_sd, size=(n_seeds, 1))
    p = 1 / (1 + np.exp(-(mean_logit + seed_shift + item_effects[None, :])))
    k = rng.binomial(n_samples, p)
    return k / n_samples, k


def test_seed_level_test_is_calibrated_and_pooled_fisher_is_not():
    rng = np.random.default_rng(12345)
    n_seeds, n_items, n_samples, runs = 5, 60, 4, 500
    ours = fisher = 0
    for _ in range(runs):
        items = rng.normal(0, 1.0, size=n_items)
        a_rates, a_k = simulate_arm(rng, n_seeds, n_items, n_samples, -1.0, 0.6, items)
        b_rates, b_k = simulate_arm(rng, n_seeds, n_items, n_samples, -1.0, 0.6, items)  # the null is true
        ours += contrast_test(a_rates, b_rates, list(range(n_seeds)), list(range(n_seeds))).p_value < 0.05
        n = n_seeds * n_items * n_samples
        fisher += pooled_fisher_p(int(a_k.sum()), n, int(b_k.sum()), n) < 0.05
    assert ours / runs <= 0.07, ours / runs
    assert fisher / runs >= 0.3, fisher / runs  # pooling responses across seeds is badly anticonservative


def test_contrast_test_detects_a_real_seed_level_effect():
    rng = np.random.default_rng(7)
    items = rng.normal(0, 1.0, size=60)
    a, _ = simulate_arm(rng, 5, 60, 4, 0.5, 0.2, items)
    b, _ = simulate_arm(rng, 5, 60, 4, -1.0, 0.2, items)
    result = contrast_test(a, b, [0, 1, 2, 3, 4], [0, 1, 2, 3, 4])
    assert result.p_value < 0.01 and result.method == "paired t-test over seeds"


def test_one_seed_falls_back_to_items_and_labels_it():
    a = np.array([[1.0, 1.0, 0.0, 1.0]])
    b = np.array([[0.0, 0.0, 0.0, 1.0]])
    result = contrast_test(a, b, [0], [0])
    assert result.method == "paired t-test over items (one seed)" and result.n == 4
    assert contrast_test(a, a, [0], [0]).p_value == 1.0
