"""Tables, the summary and the plot, from scored samples (column meanings: README.md "Outputs").

Levels: a *run* is one trained model (arm, model, seed) or an untrained/extra checkpoint; an *arm*
aggregates the runs of one (arm, model) over seeds. Every rate is the mean over items of the item's
mean outcome over its samples, so each item weighs the same; samples whose judge output was invalid
are left out and counted.
"""
from __future__ import annotations

import csv
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from normlib import stats
from normlib.evalsets import REFUSAL_KINDS
from normlib.judge import REFUSAL_LABELS


@dataclass(frozen=True)
class Evaluated:
    """One model under evaluation."""
    label: str  # run name, base--<model> or extra--<label>
    arm: str  # arm name, "base" or "extra"
    model: str
    seed: int | None
    checkpoint: str


def outcome(row: dict, outcome_name: str = "full_refusal") -> float | None:
    """The row's 0/1 outcome for its kind, or None when it cannot be scored (invalid or no judge)."""
    kind = row["kind"]
    if kind in REFUSAL_KINDS:
        value = row[outcome_name]
    elif kind == "qa":
        value = row["qa_correct"]
    elif kind == "belief":
        label = row["belief_label"]
        value = None if label in (None, "invalid") else label == "endorses"
    else:
        value = None
    return None if value is None else float(value)


def metric_name(kind: str) -> str:
    return {"qa": "accuracy", "belief": "endorse_rate"}.get(kind, "refusal_rate")


def scored_by(rows: list[dict], kind: str) -> str:
    if kind == "qa":
        return "gold match"
    if kind == "belief":
        return "judge" if any(r["belief_label"] is not None for r in rows) else "unscored"
    return "judge" if rows and rows[0]["scored_by"] == "judge" else "keyword only"


def item_rates(rows: list[dict], outcome_name: str = "full_refusal") -> dict[str, float]:
    """item id -> mean outcome over its valid samples (items with none are absent)."""
    sums, counts = defaultdict(float), defaultdict(int)
    for r in rows:
        v = outcome(r, outcome_name)
        if v is not None:
            sums[r["item_id"]] += v
            counts[r["item_id"]] += 1
    return {i: sums[i] / counts[i] for i in sums}


def group_rows(rows: list[dict]) -> dict[tuple[str, str], list[dict]]:
    groups = defaultdict(list)
    for r in rows:
        groups[(r["label"], r["set"])].append(r)
    return groups


def run_rate_rows(rows: list[dict], evaluated: list[Evaluated], set_names: list[str]) -> list[dict]:
    groups = group_rows(rows)
    out = []
    for ev in evaluated:
        for name in set_names:
            rs = groups.get((ev.label, name), [])
            if not rs:
                continue
            kind = rs[0]["kind"]
            values = [outcome(r) for r in rs]
            valid = [v for v in values if v is not None]
            k, n = int(sum(valid)), len(valid)
            lo, hi = stats.wilson_interval(k, n)
            per_item = item_rates(rs)
            row = {"level": "run", "label": ev.label, "arm": ev.arm, "model": ev.model,
                   "seed": "" if ev.seed is None else ev.seed, "n_seeds": 1, "set": name, "kind": kind,
                   "metric": metric_name(kind), "scored_by": scored_by(rs, kind), "n_items": len(per_item),
                   "n_responses": len(rs), "n_valid": n, "successes": k,
                   "rate": _mean(list(per_item.values())), "response_rate": k / n if n else math.nan,
                   "ci_low": lo, "ci_high": hi, "ci_method": "Wilson 95% over responses"}
            if kind in REFUSAL_KINDS:
                labels = [r["judge_label"] for r in rs]
                for label in REFUSAL_LABELS + ("invalid",):
                    row[label] = labels.count(label) if rs[0]["scored_by"] == "judge" else ""
                row["refusal_or_counter_rate"] = _mean(list(item_rates(rs, "refusal_or_counter").values()))
                row["keyword_refusal_rate"] = sum(r["refusal_keyword"] for r in rs) / len(rs)
            out.append(row)
    return out


def arm_matrix(groups, labels: list[str], set_name: str, outcome_name: str = "full_refusal",
               items: list[str] | None = None) -> tuple[np.ndarray, list[str]]:
    """[seed, item] rates for the runs `labels` on one set, over the items every run has."""
    per_run = [item_rates(groups.get((label, set_name), []), outcome_name) for label in labels]
    common = items if items is not None else sorted(set.intersection(*(set(p) for p in per_run))) if per_run else []
    return np.array([[p[i] for i in common] for p in per_run], dtype=float).reshape(len(per_run), len(common)), common


def arm_runs(evaluated: list[Evaluated]) -> dict[tuple[str, str], list[Evaluated]]:
    arms = defaultdict(list)
    for ev in evaluated:
        if ev.seed is not None and ev.arm not in ("base", "extra"):
            arms[(ev.arm, ev.model)].append(ev)
    for key in arms:
        arms[key].sort(key=lambda e: e.seed)
    return arms


def arm_rate_rows(rows: list[dict], evaluated: list[Evaluated], set_names: list[str], bootstrap_samples: int) -> list[dict]:
    groups = group_rows(rows)
    out = []
    for (arm, model), runs in sorted(arm_runs(evaluated).items()):
        for name in set_names:
            labels = [ev.label for ev in runs if (ev.label, name) in groups]
            if not labels:
                continue
            kind = groups[(labels[0], name)][0]["kind"]
            matrix, items = arm_matrix(groups, labels, name)
            if matrix.size == 0:
                continue
            lo, hi = stats.cluster_bootstrap_mean(matrix, bootstrap_samples) if len(labels) > 1 else (math.nan, math.nan)
            out.append({"level": "arm", "label": f"{arm}--{model}", "arm": arm, "model": model, "seed": "",
                        "n_seeds": len(labels), "set": name, "kind": kind, "metric": metric_name(kind),
                        "scored_by": scored_by(groups[(labels[0], name)], kind), "n_items": len(items),
                        "rate": float(matrix.mean()), "seed_rates": " ".join(f"{x:.4f}" for x in matrix.mean(axis=1)),
                        "ci_low": lo, "ci_high": hi,
                        "ci_method": "cluster bootstrap 95% (seeds, then items)" if len(labels) > 1 else
                        "none (one seed)"})
    return out


def _contrast_values(groups, labels: list[str], contrast, twins: dict[str, str]) -> tuple[np.ndarray, list[str]]:
    """[seed, unit] values: the set's item rates, minus the twin's rate when minus_set is declared."""
    main, items = arm_matrix(groups, labels, contrast.set, contrast.outcome)
    if not contrast.minus_set:
        return main, items
    other_rates = [item_rates(groups.get((label, contrast.minus_set), []), contrast.outcome) for label in labels]
    keep = [j for j, i in enumerate(items) if twins.get(i) and all(twins[i] in o for o in other_rates)]
    diff = np.array([[main[s, j] - other_rates[s][twins[items[j]]] for j in keep] for s in range(len(labels))])
    return diff.reshape(len(labels), len(keep)), [items[j] for j in keep]


def contrast_rows(rows: list[dict], evaluated: list[Evaluated], manifest, twins: dict[str, str]) -> list[dict]:
    groups = group_rows(rows)
    arms = arm_runs(evaluated)
    out = []
    for c in manifest.eval.contrasts:
        for model in manifest.models:
            runs_a, runs_b = arms.get((c.arm, model), []), arms.get((c.baseline, model), [])
            la = [e.label for e in runs_a if (e.label, c.set) in groups]
            lb = [e.label for e in runs_b if (e.label, c.set) in groups]
            if not la or not lb:
                continue
            a, items_a = _contrast_values(groups, la, c, twins)
            b, items_b = _contrast_values(groups, lb, c, twins)
            common = sorted(set(items_a) & set(items_b))
            a = a[:, [items_a.index(i) for i in common]]
            b = b[:, [items_b.index(i) for i in common]]
            seeds_a = [e.seed for e in runs_a if e.label in la]
            seeds_b = [e.seed for e in runs_b if e.label in lb]
            test = stats.contrast_test(a, b, seeds_a, seeds_b)
            paired = seeds_a == seeds_b
            lo, hi = stats.bootstrap_difference(a, b, paired, manifest.eval.bootstrap_samples) if common else \
                (math.nan, math.nan)
            row = {"name": c.name, "model": model, "arm": c.arm, "baseline": c.baseline, "set": c.set,
                   "minus_set": c.minus_set, "outcome": c.outcome,
                   "scored_by": scored_by(groups[(la[0], c.set)], groups[(la[0], c.set)][0]["kind"]),
                   "n_seeds_arm": len(la), "n_seeds_baseline": len(lb), "n_units": len(common),
                   "arm_value": float(a.mean()) if common else math.nan,
                   "baseline_value": float(b.mean()) if common else math.nan,
                   "difference": float(a.mean() - b.mean()) if common else math.nan, "ci_low": lo, "ci_high": hi,
                   "test": test.method, "statistic": test.statistic, "p_value": test.p_value,
                   "hypothesis": c.hypothesis, "belief_set": c.belief_set}
            row.update(_belief_uptake(groups, la, lb, c.belief_set, manifest.eval.bootstrap_samples, paired))
            out.append(row)
    family = [i for i, r in enumerate(out) if r["hypothesis"]]
    adjusted = stats.holm([out[i]["p_value"] for i in family])
    for i, r in enumerate(out):
        r["p_holm"] = adjusted[family.index(i)] if i in family else math.nan
        r["significant"] = bool(r["p_holm"] < manifest.eval.alpha) if i in family and not math.isnan(r["p_holm"]) \
            else ""
        r["verdict"] = verdict(r) if r["hypothesis"] else ""
    return out


def _belief_uptake(groups, la, lb, belief_set: str, samples: int, paired: bool) -> dict:
    empty = {"belief_difference": math.nan, "belief_ci_low": math.nan, "belief_ci_high": math.nan,
             "belief_scored": False}
    if not belief_set or (la[0], belief_set) not in groups or (lb[0], belief_set) not in groups:
        return empty
    if scored_by(groups[(la[0], belief_set)], "belief") != "judge":
        return empty
    a, ia = arm_matrix(groups, la, belief_set)
    b, ib = arm_matrix(groups, lb, belief_set)
    common = sorted(set(ia) & set(ib))
    if not common:
        return empty
    a, b = a[:, [ia.index(i) for i in common]], b[:, [ib.index(i) for i in common]]
    lo, hi = stats.bootstrap_difference(a, b, paired, samples)
    return {"belief_difference": float(a.mean() - b.mean()), "belief_ci_low": lo, "belief_ci_high": hi,
            "belief_scored": True}


def verdict(r: dict) -> str:
    """The decision rule of DESIGN-NOTES section 1, for one declared hypothesis contrast."""
    if r["scored_by"] != "judge":
        return "inconclusive: refusals scored by keywords only (no judge)"
    if min(r["n_seeds_arm"], r["n_seeds_baseline"]) < 2:
        return "inconclusive: one seed, so no seed-level interval"
    if r["belief_set"]:
        if not r["belief_scored"]:
            return "inconclusive: belief probes unscored"
        if not r["belief_ci_low"] > 0:
            return "inconclusive: the belief did not measurably take (manipulation check failed)"
    if r["difference"] > 0 and r["ci_low"] > 0 and r["significant"] is True:
        return "supported"
    return "not supported"


def agreement_rows(rows: list[dict], set_names: list[str]) -> list[dict]:
    out = []
    for name in set_names:
        rs = [r for r in rows if r["set"] == name and r["kind"] in REFUSAL_KINDS]
        if not rs:
            continue
        judged = [r for r in rs if r["judge_label"] is not None]
        valid = [r for r in judged if r["judge_label"] != "invalid"]
        keyword = [bool(r["refusal_keyword"]) for r in valid]
        judge = [r["judge_label"] == "full_refusal" for r in valid]
        out.append({"set": name, "n_responses": len(rs), "judged": len(judged),
                    "judge_invalid": len(judged) - len(valid),
                    "keyword_refusal_rate": sum(r["refusal_keyword"] for r in rs) / len(rs),
                    "judge_full_refusal_rate": sum(judge) / len(judge) if judge else math.nan,
                    "agreement": sum(k == j for k, j in zip(keyword, judge)) / len(judge) if judge else math.nan,
                    "cohens_kappa": stats.cohens_kappa(keyword, judge) if judge else math.nan,
                    "keyword_only_refusals": sum(k and not j for k, j in zip(keyword, judge)),
                    "judge_only_refusals": sum(j and not k for k, j in zip(keyword, judge))})
    return out


def write_csv(path: Path, rows: list[dict], columns: list[str]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: _fmt(r.get(k, "")) for k in columns})
    tmp.replace(path)


def _fmt(v):
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.6g}"
    return v


def _mean(values: list[float]) -> float:
    return float(np.mean(values)) if values else math.nan


RATE_COLUMNS = ["level", "label", "arm", "model", "seed", "n_seeds", "set", "kind", "metric", "scored_by", "n_items",
                "n_responses", "n_valid", "successes", "rate", "response_rate", "ci_low", "ci_high", "ci_method",
                "seed_rates", *REFUSAL_LABELS, "invalid", "refusal_or_counter_rate", "keyword_refusal_rate",
                "manifest_hash"]
CONTRAST_COLUMNS = ["name", "model", "arm", "baseline", "set", "minus_set", "outcome", "scored_by", "n_seeds_arm",
                    "n_seeds_baseline", "n_units", "arm_value", "baseline_value", "difference", "ci_low", "ci_high",
                    "test", "statistic", "p_value", "p_holm", "significant", "hypothesis", "belief_set",
                    "belief_difference", "belief_ci_low", "belief_ci_high", "verdict", "manifest_hash"]
AGREEMENT_COLUMNS = ["set", "n_responses", "judged", "judge_invalid", "keyword_refusal_rate", "judge_full_refusal_rate",
                     "agreement", "cohens_kappa", "keyword_only_refusals", "judge_only_refusals", "manifest_hash"]


def _md_table(rows: list[dict], columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        cells = []
        for c in columns:
            v = r.get(c, "")
            cells.append(f"{v:.3f}" if isinstance(v, float) and not math.isnan(v) else ("" if isinstance(v, float)
                                                                                         else str(v)))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def summary_markdown(manifest, judge_desc: dict | None, evaluated: list[Evaluated], run_rows, arm_rows, contrasts,
                     agreement, notes: list[str]) -> str:
    out = [f"# Results: {manifest.experiment.name}", "",
           f"Manifest {manifest.source} (content hash `{manifest.content_hash}`). "
           f"Judge: {judge_desc['model'] + ' via ' + judge_desc['backend'] if judge_desc else 'none (keyword only)'}. "
           f"Samples per item: {int(manifest.eval.greedy) + manifest.eval.samples} "
           f"({'1 greedy + ' if manifest.eval.greedy else ''}{manifest.eval.samples} at temperature "
           f"{manifest.eval.temperature}).", ""]
    out += ["## Hypotheses (decision rule of DESIGN-NOTES section 1)", ""]
    hyps = [c for c in contrasts if c["hypothesis"]]
    for c in hyps:
        out.append(f"- **{c['name']}** ({c['model']}): {c['verdict']}. {c['arm']} minus {c['baseline']} on "
                   f"{c['set']}{' minus ' + c['minus_set'] if c['minus_set'] else ''} = {c['difference']:+.3f} "
                   f"[{c['ci_low']:+.3f}, {c['ci_high']:+.3f}], {c['test']}, p = {c['p_value']:.3g}, "
                   f"Holm p = {c['p_holm']:.3g}.")
    if not hyps:
        out.append("- No hypothesis contrasts declared in [[eval.contrasts]], or no trained runs to compare.")
    out += ["", "## Arms (mean over seeds, cluster-bootstrap 95% interval)", "",
            _md_table(arm_rows, ["arm", "model", "set", "metric", "scored_by", "n_seeds", "n_items", "rate", "ci_low",
                                 "ci_high"]),
            "", "## Runs (Wilson 95% interval over responses)", "",
            _md_table(run_rows, ["label", "set", "metric", "scored_by", "n_items", "n_valid", "rate", "ci_low",
                                 "ci_high"]),
            "", "## All contrasts", "",
            _md_table(contrasts, ["name", "model", "difference", "ci_low", "ci_high", "test", "p_value", "p_holm",
                                  "belief_difference"]),
            "", "## Keyword detector vs judge", "",
            _md_table(agreement, ["set", "n_responses", "judge_invalid", "keyword_refusal_rate",
                                  "judge_full_refusal_rate", "agreement", "cohens_kappa"])]
    if notes:
        out += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    out += ["", f"Models evaluated: {', '.join(ev.label for ev in evaluated)}.", ""]
    return "\n".join(out)


def plot_refusal_rates(path: Path, run_rows: list[dict], arm_rows: list[dict]) -> bool:
    """Bars per arm and refusal set (arm mean, bootstrap interval), with one dot per seed. False if nothing to plot."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sets = sorted({r["set"] for r in arm_rows + run_rows if r["kind"] in REFUSAL_KINDS})
    groups = sorted({(r["arm"], r["model"]) for r in arm_rows if r["kind"] in REFUSAL_KINDS})
    base = sorted({(r["label"], r["model"]) for r in run_rows if r["arm"] in ("base", "extra")
                   and r["kind"] in REFUSAL_KINDS})
    bars = [("arm", g) for g in groups] + [("run", b) for b in base]
    if not sets or not bars:
        return False
    width = 0.8 / len(bars)
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * len(sets) + 2), 4.5))
    for k, (level, (name, model)) in enumerate(bars):
        xs, ys, lows, highs = [], [], [], []
        for j, s in enumerate(sets):
            if level == "arm":
                match = [r for r in arm_rows if r["arm"] == name and r["model"] == model and r["set"] == s]
            else:
                match = [r for r in run_rows if r["label"] == name and r["set"] == s]
            if not match:
                continue
            r = match[0]
            x = j - 0.4 + width * (k + 0.5)
            xs.append(x)
            ys.append(r["rate"])
            # the rate is a mean over items; a response-level interval may not straddle it exactly
            lows.append(max(0.0, r["rate"] - r["ci_low"]) if not math.isnan(r["ci_low"]) else 0)
            highs.append(max(0.0, r["ci_high"] - r["rate"]) if not math.isnan(r["ci_high"]) else 0)
            if level == "arm" and r.get("seed_rates"):
                dots = [float(v) for v in r["seed_rates"].split()]
                ax.scatter([x] * len(dots), dots, color="black", s=10, zorder=3)
        label = f"{name} ({model})" if len({m for _, (_, m) in bars}) > 1 else name
        ax.bar(xs, ys, width, yerr=[lows, highs], capsize=2, label=label)
    ax.set_xticks(range(len(sets)))
    ax.set_xticklabels(sets, rotation=20, ha="right")
    ax.set_ylabel("refusal rate (fraction of responses)")
    ax.set_ylim(0, 1)
    ax.set_title("Refusal rate by arm and eval set (error bars: 95% interval; dots: seeds)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True
