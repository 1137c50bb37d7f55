"""results/<experiment>/report.html: one page to read the results and the answers behind them.

The page opens from disk with no network: styles, scripts, plots (PNG as data URIs) and data are inline.
It shows the verdicts and quality gates first, then the arm and contrast tables, the plots, an answer
browser, and the training side (loss curves, compositions, generation reports).

The answer browser works per declared contrast and model: each twin pair (a violating request and its
benign twin) with every arm's answers under it, the judge's label and explanation and the keyword match,
sortable by how much the pair contributes to the effect. Answer data is compact JSON (strings shared
through tables) parsed only when a contrast is opened. When all answers together exceed EMBED_LIMIT bytes
(a full experiment: ~500k answers), each contrast's data goes to `report_data/<contrast>.js` beside the
page, loaded by a script tag when opened (a file:// page may load scripts, not fetch files), so the page
itself stays small; the folder must travel with report.html.
"""
from __future__ import annotations

import base64
import html
import json
import math
import re
import time
from collections import defaultdict
from pathlib import Path

from normlib.core.jsonl import read_jsonl, write_text_atomic
from normlib.eval.contrasts import outcome_value, unit_of
from normlib.eval.report import arm_runs

EMBED_LIMIT = 20_000_000  # bytes of answer data embedded in report.html itself
TEMPLATE = Path(__file__).with_name("report_template.html")
EXPLANATION_CHARS = 600
LOSS_POINTS = 200


def write_html_report(manifest, out_dir: Path, evaluated: list, rows: list[dict], outputs: dict, notes: list[str],
                      embed_limit: int = EMBED_LIMIT) -> dict:
    """Write report.html (and report_data/ when the answers are large); returns {path, bytes, data_files}."""
    page = {
        "meta": {"experiment": manifest.experiment.name, "manifest": str(manifest.source),
                 "manifest_hash": manifest.content_hash, "written": time.strftime("%Y-%m-%d %H:%M:%S"),
                 "alpha": manifest.eval.alpha, "samples_per_item": int(manifest.eval.greedy) + manifest.eval.samples,
                 "judge": (f"{manifest.judge.model} ({manifest.judge.backend})" if manifest.judge else "none")},
        "hypotheses": [_contrast_view(c) for c in outputs["contrasts"] if c["hypothesis"]],
        "contrasts": [_contrast_view(c) for c in outputs["contrasts"]],
        "arms": [_pick(r, ARM_COLUMNS) for r in outputs["arms"]],
        "agreement": [_pick(r, AGREEMENT_COLUMNS) for r in outputs["agreement"]],
        "notes": notes,
        "plots": {name: _data_uri(out_dir / f"{name}.png") for name in ("refusal_rates", "belief_uptake",
                                                                         "learning_curves")
                  if (out_dir / f"{name}.png").exists()},
        "training": training_view(manifest, evaluated),
        "generation": generation_view(manifest),
    }
    browsers = browser_data(manifest, evaluated, rows)
    page["browser"] = [{"key": b["key"], "title": b["title"], "pairs": len(b["pairs"]), "answers": b["n_answers"]}
                       for b in browsers]
    data_dir = out_dir / "report_data"
    total = sum(len(json.dumps(b, separators=(",", ":"))) for b in browsers)
    embedded, files = {}, []
    if total <= embed_limit:
        embedded = {b["key"]: b for b in browsers}
        if data_dir.is_dir():
            for stale in data_dir.glob("*.js"):
                stale.unlink()
    else:
        data_dir.mkdir(parents=True, exist_ok=True)
        for b in browsers:
            path = data_dir / f"{b['key']}.js"
            write_text_atomic(path, "window.NORMLIB_DATA = window.NORMLIB_DATA || {};\nwindow.NORMLIB_DATA["
                              + json.dumps(b["key"]) + "] = " + _script_json(b) + ";\n")
            files.append(path)
    page["data_mode"] = "embedded" if embedded else "files"
    text = TEMPLATE.read_text(encoding="utf-8")
    text = text.replace("/*PAGE_JSON*/", _script_json(page)).replace("/*ANSWERS_JSON*/", _script_json(embedded))
    text = text.replace("<!--TITLE-->", html.escape(f"normlib results: {manifest.experiment.name}"))
    path = out_dir / "report.html"
    write_text_atomic(path, text)
    return {"path": path, "bytes": path.stat().st_size, "data_files": files,
            "data_bytes": sum(f.stat().st_size for f in files)}


# ---- tables ------------------------------------------------------------------------------------------

ARM_COLUMNS = ["arm", "model", "set", "kind", "metric", "scored_by", "n_seeds", "n_items", "rate", "ci_low", "ci_high",
               "seed_rates"]
AGREEMENT_COLUMNS = ["set", "n_responses", "judge_invalid", "keyword_refusal_rate", "judge_not_carried_out_rate",
                     "agreement", "cohens_kappa"]
CONTRAST_COLUMNS = ["name", "model", "arm", "baseline", "set", "minus_set", "where", "hypothesis", "n_seeds_arm",
                    "n_seeds_baseline", "n_units", "difference", "ci_low", "ci_high", "logit_difference", "p_value",
                    "p_holm", "benign_logit_rise", "control_logit_rise", "belief_difference", "gates_failed", "verdict"]


def _clean(v):
    if isinstance(v, float):
        return None if math.isnan(v) or math.isinf(v) else round(v, 4)
    return v


def _pick(row: dict, columns: list[str]) -> dict:
    return {c: _clean(row.get(c)) for c in columns}


def _contrast_view(c: dict) -> dict:
    return _pick(c, CONTRAST_COLUMNS)


def _data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def _script_json(data) -> str:
    """JSON safe inside a <script> element: '</' and line separators escaped."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return text.replace("</", "<\\/").replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


# ---- the answer browser --------------------------------------------------------------------------------


def _explanation(raw) -> str:
    """The judge's own words before its verdict line (or the JSON it returned), shortened."""
    if not raw:
        return ""
    text = str(raw)
    cut = list(re.finditer(r"VERDICT\s*:", text, re.I))
    if cut:
        text = text[:cut[-1].start()]
    return text.strip()[:EXPLANATION_CHARS]


def browser_data(manifest, evaluated: list, rows: list[dict]) -> list[dict]:
    """Per declared contrast (its first declaration per (arm, baselines, sets)) and model: pairs, runs, answers."""
    by_label_set = defaultdict(list)
    for r in rows:
        by_label_set[(r["label"], r["set"])].append(r)
    runs_by_arm_model = arm_runs(evaluated)  # final models of trained runs, by (arm, model key)
    out, seen = [], set()
    for c in manifest.eval.contrasts:
        for model in manifest.model_keys():
            arms = [c.arm] + list(c.baseline)
            ident = (tuple(arms), c.set, c.minus_set, model)
            if ident in seen:
                continue
            seen.add(ident)
            runs = [ev for arm in arms for ev in runs_by_arm_model.get((arm, model), [])]
            if not runs:
                continue
            out.append(_one_browser(c, model, arms, runs, by_label_set))
    return out


def _one_browser(c, model: str, arms: list[str], runs: list, by_label_set) -> dict:
    strings: dict[str, int] = {}

    def sid(text: str) -> int:
        if text not in strings:
            strings[text] = len(strings)
        return strings[text]

    sides = [c.set] + ([c.minus_set] if c.minus_set else [])
    items: dict[str, dict] = {}  # item id -> {text, tags, twin, template}
    for ev in runs:
        for side in sides:
            for r in by_label_set.get((ev.label, side), []):
                items.setdefault(r["item_id"], {"set": side, "text": r["prompt"], "tags": r.get("tags") or {},
                                                "twin": r.get("twin_id"), "unit": unit_of(r)})
    pairs, pair_of = [], {}
    for item_id, it in sorted(items.items()):
        if it["set"] != c.set:
            continue
        twin = it["twin"] if it["twin"] in items else None
        pair_of[item_id] = (len(pairs), 0)
        if twin:
            pair_of[twin] = (len(pairs), 1)
        pairs.append({"v": item_id, "b": twin, "vt": sid(it["text"]), "bt": sid(items[twin]["text"]) if twin else None,
                      "u": it["unit"], "tags": {k: str(v).lower() for k, v in it["tags"].items()}})
    run_views = [{"label": ev.label, "arm": ev.arm, "seed": ev.seed} for ev in runs]
    answers = []
    # per pair, arm and side: [declined, valid] for the item-level rates and the pair's effect
    tallies = defaultdict(lambda: [0, 0])
    for ri, ev in enumerate(runs):
        for side in sides:
            for r in by_label_set.get((ev.label, side), []):
                where = pair_of.get(r["item_id"])
                if where is None:
                    continue
                value = outcome_value(r, c.outcome)
                if value is not None:
                    cell = tallies[(where[0], ev.arm, where[1])]
                    cell[0] += int(value)
                    cell[1] += 1
                kw = bool(r.get("refusal_keyword"))
                label = r.get("judge_label") or r.get("belief_label") or ""
                answers.append([where[0], where[1], ri, r.get("sample_index", 0), sid(label), int(kw),
                                sid(r.get("refusal_keyword_phrase") or ""), sid(r.get("response") or ""),
                                sid(_explanation(r.get("judge_raw") or r.get("belief_raw"))),
                                -1 if value is None else int(value)])
    for p_index, pair in enumerate(pairs):
        rates = {}
        for arm in arms:
            v = tallies.get((p_index, arm, 0))
            b = tallies.get((p_index, arm, 1))
            rates[arm] = [_rate(v), _rate(b)]
        pair["rates"] = rates
        base = [rates[b] for b in arms[1:]]
        diffs = []
        for bv, bb in base:
            av, ab = rates[arms[0]]
            if None not in (av, bv):
                diffs.append((av - (ab or 0.0)) - (bv - (bb or 0.0)) if c.minus_set else av - bv)
        pair["effect"] = round(min(diffs), 4) if diffs else None  # against every baseline: the smallest
    key = re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{c.name}--{model}")
    title = (f"{c.name} ({model}): {c.arm} vs {' and '.join(c.baseline)} on {c.set}"
             + (f" minus {c.minus_set}" if c.minus_set else ""))
    return {"key": key, "title": title, "contrast": c.name, "model": model, "arms": arms, "sets": sides,
            "outcome": c.outcome, "runs": run_views, "pairs": pairs, "strings": list(strings),
            "answers": answers, "n_answers": len(answers),
            "columns": ["pair", "side", "run", "sample", "label", "keyword", "keyword_phrase", "response",
                        "explanation", "declined"]}


def _rate(cell) -> float | None:
    return None if not cell or not cell[1] else round(cell[0] / cell[1], 4)


# ---- the training and generation side -----------------------------------------------------------------


def training_view(manifest, evaluated: list) -> list[dict]:
    out = []
    for run in manifest.runs():
        run_dir = manifest.run_dir(run)
        if not (run_dir / "run.json").exists():
            continue
        log = [r for r in read_jsonl(run_dir / "train_log.jsonl") if isinstance(r.get("loss"), (int, float))
               and math.isfinite(r["loss"])]
        stride = max(1, len(log) // LOSS_POINTS)
        try:
            composition = json.loads((run_dir / "composition.json").read_text())
            info = json.loads((run_dir / "run.json").read_text())
        except (OSError, ValueError):
            continue
        out.append({"run": run.name, "arm": run.arm, "model": run.model, "seed": run.seed,
                    "loss": [[r["step"], round(r["loss"], 4)] for r in log[::stride]],
                    "selected": composition.get("selected", {}),
                    "supervised_tokens": composition.get("supervised_tokens", {}),
                    "steps": info.get("steps"), "final_loss": _clean(info.get("final_loss")),
                    "minutes": _clean((info.get("wall_seconds_this_session") or 0) / 60),
                    "device": info.get("device"), "finished_at": info.get("finished_at")})
    return out


def generation_view(manifest) -> list[dict]:
    out = []
    for name in manifest.conditions:
        path = manifest.generated_path(name, ".report.json")
        try:
            rep = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        dropped = {k: {"count": v.get("count", 0), "examples": [str(e)[:400] for e in v.get("examples", [])[:3]]}
                   for k, v in (rep.get("dropped") or {}).items()}
        out.append({"condition": name, "target": rep.get("target"), "kept": rep.get("kept"),
                    "answered": rep.get("answered"), "failed": rep.get("failed"), "dropped": dropped,
                    "leak_screen": rep.get("leak_screen")})
    return out
