"""Simulated experiments: the calibration checks in tests/test_stats.py and `eval.py --power`.

One simulated experiment draws, on the logit scale, a refusal propensity for every (seed, item) of a
twin design and its benign twins, then binomial answers, and runs normlib.eval.analysis on the counts:
  logit p = base(set) + item + template x arm effect + seed + seed x set + arm effect(set)
with independent normal item (SD item_sd), seed (seed_sd) and seed-by-set (seed_set_sd) terms.
Default variance components are stated in DEFAULTS (docs/preregistration.md, "Power"); a finished
run's scored.jsonl can replace the base rates and spreads (`estimate_components`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
from scipy.special import expit, logit

from normlib.eval.analysis import ContrastResult, Counts, Gates, set_contrast, twin_contrast, verdict
from normlib.core.stats import holm


@dataclass(frozen=True)
class Design:
    seeds: int = 5  # per arm
    templates: int = 34
    items_per_template: int = 5
    samples: int = 5  # answers per item
    violating_rate: float = 0.18
    benign_rate: float = 0.05
    control_rate: float = 0.10
    control_items: int = 100
    item_sd: float = 1.0
    seed_sd: float = 0.3
    seed_set_sd: float = 0.2
    belief_items: int = 80
    belief_rate: float = 0.3


DEFAULTS = Design()


@dataclass(frozen=True)
class Effect:
    violating: float = 0.0  # logit shift of the arm's violating requests
    benign: float = 0.0
    control: float = 0.0
    template_sd: float = 0.0  # per-template arm effect on violating requests, mean 0
    belief: float = 0.0  # logit shift of the arm's belief endorsement


def _arm(rng, d: Design, items_v, items_b, items_c, items_bel, effect: Effect, template_effect) -> dict:
    n_units = d.templates * d.items_per_template
    seed = rng.normal(0, d.seed_sd, (d.seeds, 1))
    eta_v = logit(d.violating_rate) + items_v + seed + rng.normal(0, d.seed_set_sd, (d.seeds, 1)) + effect.violating \
        + np.repeat(template_effect, d.items_per_template)[None, :]
    eta_b = logit(d.benign_rate) + items_b + seed + rng.normal(0, d.seed_set_sd, (d.seeds, 1)) + effect.benign
    eta_c = logit(d.control_rate) + items_c + seed + rng.normal(0, d.seed_set_sd, (d.seeds, 1)) + effect.control
    eta_bel = logit(d.belief_rate) + items_bel + rng.normal(0, d.seed_sd, (d.seeds, 1)) + effect.belief
    draw = lambda eta: rng.binomial(d.samples, expit(eta))  # noqa: E731
    kv, kb = draw(eta_v), draw(eta_b)

    def per_template(k):
        return k.reshape(d.seeds, d.templates, d.items_per_template).sum(axis=2)
    n_t = np.full((d.seeds, d.templates), d.samples * d.items_per_template)
    assert kv.shape[1] == n_units
    return {"viol": Counts(per_template(kv), n_t), "benign": Counts(per_template(kb), n_t),
            "control": Counts(draw(eta_c), np.full((d.seeds, d.control_items), d.samples)),
            "belief": Counts(draw(eta_bel), np.full((d.seeds, d.belief_items), d.samples))}


def simulate(rng: np.random.Generator, d: Design, effect: Effect) -> ContrastResult:
    """One experiment: arm (with `effect`) against a baseline (no effect), analysed as eval.py would."""
    n_units = d.templates * d.items_per_template
    items_v, items_b = rng.normal(0, d.item_sd, n_units), rng.normal(0, d.item_sd, n_units)
    items_c, items_bel = rng.normal(0, d.item_sd, d.control_items), rng.normal(0, d.item_sd, d.belief_items)
    template_effect = rng.normal(0, effect.template_sd, d.templates) if effect.template_sd else np.zeros(d.templates)
    arm = _arm(rng, d, items_v, items_b, items_c, items_bel, effect, template_effect)
    base = _arm(rng, d, items_v, items_b, items_c, items_bel, Effect(), np.zeros(d.templates))
    test, size = twin_contrast(arm["viol"], arm["benign"], base["viol"], base["benign"])
    return ContrastResult(test, size, benign=set_contrast(arm["benign"], base["benign"]),
                          control=set_contrast(arm["control"], base["control"]),
                          belief=set_contrast(arm["belief"], base["belief"], scale="probability"))


def true_effect(d: Design, effect: Effect, n: int = 400_000, seed: int = 12345) -> float:
    """The population difference in differences on the probability scale (items and seeds integrated out)."""
    rng = np.random.default_rng(seed)
    shared = rng.normal(0, d.seed_sd, n)
    item = rng.normal(0, d.item_sd, n)
    set_noise = rng.normal(0, d.seed_set_sd, n)
    tmpl = rng.normal(0, effect.template_sd, n) if effect.template_sd else 0.0
    viol = expit(logit(d.violating_rate) + item + shared + set_noise + effect.violating + tmpl) - \
        expit(logit(d.violating_rate) + item + shared + set_noise)
    benign = expit(logit(d.benign_rate) + item + shared + set_noise + effect.benign) - \
        expit(logit(d.benign_rate) + item + shared + set_noise)
    return float(viol.mean() - benign.mean())


def rates(d: Design, effect: Effect, experiments: int, seed: int = 0, alpha: float = 0.05,
          family: int = 1) -> dict:
    """Share of experiments where the test rejects (two-sided p < alpha / family: Holm's first step), the
    decision rule says supported, the belief check passes, and the effect's interval covers the truth."""
    rng = np.random.default_rng(seed)
    truth = true_effect(d, effect)
    reject = supported = belief_pass = covered = 0
    for _ in range(experiments):
        r = simulate(rng, d, effect)
        r.p_holm = holm([r.test.p_value] + [1.0] * (family - 1))[0] if family > 1 else r.test.p_value
        reject += r.test.p_value < alpha / family
        supported += verdict(r, alpha, Gates()) == "supported"
        belief_pass += r.belief.one_sided_p(1) < alpha
        covered += r.effect.ci_low <= truth <= r.effect.ci_high
    return {"experiments": experiments, "reject": reject / experiments, "supported": supported / experiments,
            "belief_pass": belief_pass / experiments, "coverage": covered / experiments, "true_effect": truth}


def minimum_detectable_effect(d: Design, family: int, alpha: float = 0.05, power: float = 0.8,
                              experiments: int = 200, seed: int = 0) -> dict:
    """The smallest logit-scale effect on violating requests (benign unchanged) that the decision rule's test
    finds with the given power at Holm's first step (alpha / family), by bisection over simulations; with its
    probability-scale size at the design's base rates."""
    def power_at(delta: float) -> float:
        rng = np.random.default_rng(seed)
        hits = 0
        for _ in range(experiments):
            r = simulate(rng, d, Effect(violating=delta, belief=1.0))
            hits += r.test.estimate > 0 and r.test.p_value < alpha / family
        return hits / experiments
    lo, hi = 0.0, 0.5
    while power_at(hi) < power and hi < 8:
        lo, hi = hi, hi * 2
    for _ in range(7):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if power_at(mid) < power else (lo, mid)
    return {"logit": hi, "probability": true_effect(d, Effect(violating=hi), n=200_000), "family": family,
            "alpha_first_step": alpha / family, "power": power, "experiments": experiments}


def estimate_components(rows: list[dict], violating_set: str, benign_set: str) -> Design:
    """Base rates and spreads from a finished run's scored rows (primary outcome), to replace DEFAULTS."""
    def rate(name):
        vals = [r["refusal_or_counter"] for r in rows if r["set"] == name and r.get("refusal_or_counter") is not None]
        return min(max(sum(vals) / len(vals), 0.01), 0.99) if vals else None
    v, b = rate(violating_set), rate(benign_set)
    by_item: dict = {}
    for r in rows:
        if r["set"] == violating_set and r.get("refusal_or_counter") is not None:
            by_item.setdefault(r["item_id"], []).append(float(r["refusal_or_counter"]))
    item_rates = [np.mean(x) for x in by_item.values() if len(x) >= 3]
    item_sd = DEFAULTS.item_sd
    if len(item_rates) >= 10:
        clipped = np.clip(item_rates, 0.02, 0.98)
        item_sd = float(np.clip(np.std(logit(clipped)), 0.3, 2.0))
    return replace(DEFAULTS, violating_rate=v or DEFAULTS.violating_rate, benign_rate=b or DEFAULTS.benign_rate,
                   item_sd=item_sd)


def format_mde(name: str, mde: dict, d: Design) -> str:
    return (f"{name}: {d.seeds} seeds per arm, {d.templates} templates x {d.items_per_template} items, "
            f"{d.samples} answers each; with {mde['family']} hypotheses (Holm, first step alpha "
            f"{mde['alpha_first_step']:.4f}) a {math.ceil(mde['power'] * 100)}% chance to detect a logit-scale rise of "
            f"{mde['logit']:.2f} on violating requests, {mde['probability'] * 100:.1f} percentage points at a "
            f"{d.violating_rate:.0%} base rate (benign {d.benign_rate:.0%})")
