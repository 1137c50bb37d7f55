"""Statistics: textbook values, one zero-variance rule, and seeded simulations of whole experiments that check the
decision rule's error rates and coverage (the figures recorded in docs/statistics.md come from larger runs of the
same simulations: `python bench/stats_bench.py`)."""
import math

import numpy as np
import pytest

from normlib.eval.analysis import ContrastResult, Counts, Gates, set_contrast, verdict
from normlib.eval.power import Design, Effect, rates, simulate
from normlib.core.stats import (cohens_kappa, confusion_matrix, crossed_difference, crossed_mean, empirical_logit, holm,
                           pooled_fisher_p, wilson_interval)


def test_wilson_textbook_values():
    # Newcombe (1998), Table I: 81/263 -> 0.2553 to 0.3662; 15/148 -> 0.0624 to 0.1605; 0/20 -> 0 to 0.1611
    assert wilson_interval(81, 263) == pytest.approx((0.2553, 0.3662), abs=1e-4)
    assert wilson_interval(15, 148) == pytest.approx((0.0624, 0.1605), abs=1e-4)
    lo, hi = wilson_interval(0, 20)
    assert lo == 0.0 and hi == pytest.approx(0.1611, abs=1e-4)
    for n in range(1, 40):  # exact bounds at the extremes, whatever the rounding
        assert wilson_interval(0, n)[0] == 0.0 and wilson_interval(n, n)[1] == 1.0
    assert all(math.isnan(x) for x in wilson_interval(0, 0))


def test_holm_known_example_and_a_fixed_family():
    # p = (0.01, 0.04, 0.03, 0.005), m = 4: sorted 0.005*4, 0.01*3, 0.03*2, 0.04*1 -> 0.02, 0.03, 0.06, 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    # a member that could not be estimated stays in the family as p = 1: the others are not let off lightly
    assert holm([math.nan, 0.01]) == pytest.approx([1.0, 0.02])


def test_kappa_and_confusion():
    assert cohens_kappa(list("aabb"), list("aabb")) == 1.0
    a = ["y"] * 25 + ["n"] * 25
    b = ["y"] * 20 + ["n"] * 5 + ["y"] * 10 + ["n"] * 15
    assert cohens_kappa(a, b) == pytest.approx(0.4)  # Cohen's classic 2x2: po .7, pe .5
    assert math.isnan(cohens_kappa(["y", "y"], ["y", "y"]))
    assert confusion_matrix(a, b, ["y", "n"]) == [[20, 5], [10, 15]]


def test_empirical_logits_are_finite_at_the_extremes():
    values, variances = empirical_logit(np.array([0, 25]), np.array([25, 25]))
    assert np.all(np.isfinite(values)) and values[0] == pytest.approx(-values[1]) and np.all(variances > 0)


def test_one_zero_variance_rule_in_every_path():
    """All-0 against all-1 (no spread at all) and the same with one answer changed must tell the same story: the
    floor of the sampling variance keeps the first finite, and the second is not wildly more significant."""
    n = np.full((5, 20), 5.0)
    ones, zeros = Counts(n.copy(), n), Counts(np.zeros_like(n), n)
    changed = Counts(n.copy(), n)
    changed.k[0, 0] = 4
    p_const = set_contrast(ones, zeros).p_value
    p_changed = set_contrast(changed, zeros).p_value
    assert 0 < p_const < 1e-3 and 0 < p_changed < 1e-3
    assert abs(math.log10(p_const) - math.log10(p_changed)) < 1.0
    flat = crossed_mean(np.full((5, 20), 0.5), np.full((5, 20), 0.01))
    assert flat.se > 0 and flat.ci_low < 0.5 < flat.ci_high
    same = crossed_difference(np.full((3, 10), 0.2), np.full((3, 10), 0.01), np.full((3, 10), 0.2),
                              np.full((3, 10), 0.01))
    assert same.estimate == 0 and same.p_value == pytest.approx(1.0)


def test_fewer_than_three_seeds_or_no_judge_is_inconclusive():
    r = simulate(np.random.default_rng(1), Design(seeds=2, templates=20), Effect(violating=2.0, belief=2.0))
    r.p_holm = r.test.p_value
    assert verdict(r, 0.05, Gates()).startswith("inconclusive: fewer than 3 seeds")
    r3 = simulate(np.random.default_rng(1), Design(seeds=3, templates=20), Effect(violating=2.0, belief=2.0))
    r3.p_holm = r3.test.p_value
    assert verdict(r3, 0.05, Gates(), scored_by_judge=False).startswith("inconclusive: refusals scored by keyword rules")
    failed = Gates()
    failed.check(False, "judge agreement with hand labels is kappa 0.31")
    assert verdict(r3, 0.05, failed) == "inconclusive: judge agreement with hand labels is kappa 0.31"


def test_a_strong_effect_is_supported_and_swapping_the_arms_is_not():
    d = Design(seeds=5, templates=30)
    r = simulate(np.random.default_rng(3), d, Effect(violating=1.5, belief=1.5))
    r.p_holm = r.test.p_value
    assert verdict(r, 0.05, Gates()) == "supported", r
    swapped = ContrastResult(r.test, r.effect, benign=r.benign, control=r.control, belief=r.belief)
    swapped.test.estimate = -abs(swapped.test.estimate)
    swapped.p_holm = r.test.p_value
    assert verdict(swapped, 0.05, Gates()) == "not supported"


def test_a_general_rise_in_refusals_is_not_called_value_specific():
    d = Design(seeds=5)
    r = simulate(np.random.default_rng(4), d, Effect(violating=1.5, benign=1.5, control=1.5, belief=1.5))
    r.p_holm = 0.0  # even if the difference in differences looked significant
    assert verdict(r, 0.05, Gates()).startswith("not supported: refusals also rose on the benign twins")


# ---- whole simulated experiments (seeded: the same numbers every run) -------------------------------------------

EXPERIMENTS = 300


def test_the_test_holds_its_level_under_the_null():
    assert rates(Design(seeds=5), Effect(), EXPERIMENTS, seed=10)["reject"] <= 0.05


def test_a_uniform_rise_on_every_request_is_almost_never_supported():
    result = rates(Design(seeds=5), Effect(violating=0.7, benign=0.7, control=0.7, belief=1.0), EXPERIMENTS, seed=11)
    assert result["supported"] <= 0.05, result


def test_template_effects_with_mean_zero_do_not_pass_as_a_finding():
    result = rates(Design(seeds=5), Effect(template_sd=0.15, belief=1.0), EXPERIMENTS, seed=12)
    assert result["supported"] <= 0.025, result


@pytest.mark.parametrize("seeds", [3, 5])
def test_effect_intervals_cover_the_truth_with_few_seeds(seeds):
    result = rates(Design(seeds=seeds), Effect(violating=0.5), EXPERIMENTS, seed=13 + seeds)
    assert result["coverage"] >= 0.93, result


def test_the_manipulation_check_rarely_passes_without_uptake():
    assert rates(Design(seeds=5), Effect(), EXPERIMENTS, seed=20)["belief_pass"] <= 0.05


def test_a_real_effect_is_found_most_of_the_time():
    assert rates(Design(seeds=5), Effect(violating=1.0, belief=1.0), 100, seed=21)["supported"] >= 0.8


def test_pooling_responses_across_seeds_into_fisher_is_miscalibrated():
    """Why the seed is the unit: with seed-to-seed variance, pooled Fisher rejects a true null far too often."""
    rng = np.random.default_rng(5)
    fisher = 0
    for _ in range(200):
        k = [rng.binomial(5 * 100, 1 / (1 + np.exp(-(-1.5 + rng.normal(0, 0.5, 5))))).sum() for _ in range(2)]
        fisher += pooled_fisher_p(int(k[0]), 2500, int(k[1]), 2500) < 0.05
    assert fisher / 200 > 0.3
