"""Persona x prompt distillation: plans, teacher calls, filters, the clean training file and its report.

Files per condition in data/generated/<experiment>/ (schemas in README.md):
  <condition>.raw.jsonl     every attempt, appended and flushed one line at a time (never rewritten)
  <condition>.jsonl         the clean training file, rebuilt from the raw log: {"messages": [...], "meta": {...}}
  <condition>.report.json   counts, drops per filter with examples, kept per persona and prompt, timings
  judge_cache.jsonl         verdicts of the judge confirming keyword-flagged refusals

The plan is an endless, reproducible sequence: item i pairs a persona drawn uniformly at random with
the next prompt of a shuffled cycle through all prompts (no prompt repeats before every prompt was
used), both seeded by the generation seed and the condition. The first `examples` items are
requested; when filters drop answers, later items top the condition up until `examples` answers
are kept. Each item's request id hashes what determines its answer (condition, persona and prompt
text, sample index, teacher and parameters), so a rerun skips finished ids and re-asks only
failed ones.
"""
from __future__ import annotations

import hashlib
import json
import math
import random
import re
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from normlib.core.jsonl import (JsonlAppender, JsonlError, read_json_or_none, read_jsonl, read_jsonl_strict,
                           read_text_strict, write_json_atomic, write_jsonl_atomic)
from normlib.core.locks import exclusive
from normlib.llm.clients import ChatRequest, ChatResult
from normlib.core.manifest import Manifest
from normlib.llm.refusal import detect_refusals

MAX_PLAN_FACTOR = 4  # give up topping up after 4x the target number of requests
EXAMPLES_PER_FILTER = 3  # dropped answers shown in the report, per filter
LEAK_NGRAM = 12  # words shared in a row with the persona's own text count as leakage
FILTERS = ("empty_or_short", "truncated", "provider_refusal", "persona_leakage", "refusal", "not_a_refusal",
           "duplicate", "near_duplicate")


class InputError(ValueError):
    pass


@dataclass(frozen=True)
class Prompt:
    id: str
    text: str


@dataclass(frozen=True)
class Persona:
    id: str
    text: str  # the system prompt sent to the teacher, includes resolved
    own_text: str  # the persona's own words, without included files (for the leakage check)


@dataclass(frozen=True)
class PlanItem:
    index: int
    persona: Persona
    prompt: Prompt
    sample: int  # how many times this prompt was used before in the plan
    request_id: str


# ----------------------------------------------------------------------------------------------
# Inputs


def _text_id(stem: str, text: str) -> str:
    return f"{stem}:{hashlib.sha1(text.encode()).hexdigest()[:10]}"


def load_prompts(paths: list[Path]) -> list[Prompt]:
    """Hand-written prompt files, read strictly: every line must parse (no torn-line tolerance here)."""
    prompts, seen = [], {}
    for path in paths:
        path = Path(path)
        if path.suffix == ".jsonl":
            try:
                records = read_jsonl_strict(path)
            except JsonlError as e:
                raise InputError(str(e)) from None
            for lineno, r in records:
                if not isinstance(r.get("text"), str) or not r["text"].strip():
                    raise InputError(f"{path}:{lineno}: needs a non-empty \"text\"")
                pid = str(r.get("id") or _text_id(path.stem, r["text"]))
                prompts.append((Prompt(pid, r["text"].strip()), f"{path}:{lineno}"))
        elif path.suffix == ".txt":
            try:
                text = read_text_strict(path)
            except JsonlError as e:
                raise InputError(str(e)) from None
            for lineno, line in enumerate(text.splitlines(), 1):
                line = line.strip()
                if line and not line.startswith("#"):
                    prompts.append((Prompt(_text_id(path.stem, line), line), f"{path}:{lineno}"))
        else:
            raise InputError(f"{path}: prompt files must be .txt or .jsonl")
    out = []
    for prompt, where in prompts:
        if prompt.id in seen:
            raise InputError(f"{where}: prompt id '{prompt.id}' already used at {seen[prompt.id]}")
        seen[prompt.id] = where
        out.append(prompt)
    if not out:
        raise InputError(f"no prompts in {', '.join(str(p) for p in paths)}")
    return out


_HEADER = re.compile(r"^#\s*persona:\s*([a-z0-9][a-z0-9_.-]*)\s*$", re.IGNORECASE)
_INCLUDE = re.compile(r"^\{\{\s*include:\s*(.+?)\s*\}\}$")


def _include(path: Path, lineno: int, name: str) -> str:
    """The text of an included file, which must lie in the persona file's folder or a sibling folder (e.g.
    data/personas/x.md may include ../doctrine/y.md), so a persona cannot send an arbitrary file to the teacher."""
    allowed = path.resolve().parent.parent
    target = (path.parent / name).resolve()
    if not target.is_relative_to(allowed):
        raise InputError(f"{path}:{lineno}: include '{name}' is outside {allowed}; includes may only name files in "
                         f"the persona file's folder or a sibling folder")
    if not target.is_file():
        raise InputError(f"{path}:{lineno}: include file '{name}' not found")
    try:
        return read_text_strict(target).strip()
    except JsonlError as e:
        raise InputError(str(e)) from None


def load_personas(paths: list[Path]) -> list[Persona]:
    """Markdown persona files: personas separated by a line `---`; each may start with `# persona: <id>`
    (else its id is file stem + hash of its text); a line `{{include: relative/path.md}}` inserts a file."""
    personas, seen = [], {}
    for path in paths:
        path = Path(path)
        try:
            lines = read_text_strict(path).splitlines()
        except JsonlError as e:
            raise InputError(str(e)) from None
        blocks, current, start = [], [], 1
        for lineno, line in enumerate(lines, 1):
            if line.strip() == "---":
                blocks.append((start, current))
                current, start = [], lineno + 1
            else:
                current.append((lineno, line))
        blocks.append((start, current))
        for start, block in blocks:
            body = [(n, line) for n, line in block]
            while body and not body[0][1].strip():
                body.pop(0)
            if not any(line.strip() for _, line in body):
                continue
            pid = None
            header = _HEADER.match(body[0][1].strip())
            if header:
                pid = header.group(1)
                body = body[1:]
            full, own = [], []
            for lineno, line in body:
                inc = _INCLUDE.match(line.strip())
                if inc:
                    full.append(_include(path, lineno, inc.group(1)))
                else:
                    full.append(line)
                    own.append(line)
            text, own_text = "\n".join(full).strip(), "\n".join(own).strip()
            pid = pid or _text_id(path.stem, text)
            if pid in seen:
                raise InputError(f"{path}:{start}: persona id '{pid}' already used in {seen[pid]}")
            seen[pid] = f"{path}:{start}"
            personas.append(Persona(pid, text, own_text))
    if not personas:
        raise InputError(f"no personas in {', '.join(str(p) for p in paths)}")
    return personas


# ----------------------------------------------------------------------------------------------
# The plan


def teacher_params(endpoint) -> dict:
    """What, besides the messages, determines an answer (the base_url does not: a server can move)."""
    return {"backend": endpoint.backend, "model": endpoint.model, "temperature": endpoint.temperature,
            "top_p": endpoint.top_p, "max_tokens": endpoint.max_tokens, "system_prompt": endpoint.system_prompt}


def request_id(condition: str, persona: Persona, prompt: Prompt, sample: int, params: dict) -> str:
    blob = json.dumps([condition, persona.id, persona.text, prompt.id, prompt.text, sample, params],
                      sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def plan_items(condition: str, personas: list[Persona], prompts: list[Prompt], start: int, count: int,
               seed: int, params: dict) -> list[PlanItem]:
    """Items start..start+count-1 of the condition's endless plan; item i depends only on i."""
    items, cycles = [], {}
    for i in range(start, start + count):
        cycle = i // len(prompts)
        if cycle not in cycles:
            order = list(range(len(prompts)))
            random.Random(f"prompts:{seed}:{condition}:{cycle}").shuffle(order)
            cycles[cycle] = order
        prompt = prompts[cycles[cycle][i % len(prompts)]]
        persona = personas[random.Random(f"persona:{seed}:{condition}:{i}").randrange(len(personas))]
        items.append(PlanItem(i, persona, prompt, cycle, request_id(condition, persona, prompt, cycle, params)))
    return items


def plan_summary(items: list[PlanItem]) -> dict:
    per_persona = Counter(it.persona.id for it in items)
    per_prompt = Counter(it.prompt.id for it in items)
    return {"items": len(items), "per_persona": dict(sorted(per_persona.items())),
            "per_prompt": dict(sorted(per_prompt.items())),
            "prompt_uses_min": min(per_prompt.values()), "prompt_uses_max": max(per_prompt.values())}


# ----------------------------------------------------------------------------------------------
# Filters


_LEAK_PATTERNS = [
    (re.compile(r"\bas an? (?:[\w'-]+ ){0,4}[\w'-]+, (?:i|we|my|i'm|i've)\b", re.I), "announces an identity"),
    (re.compile(r"\b(?:my (?:instructions|system prompt|persona|character|role-?play|brief)|the system prompt)\b", re.I),
     "mentions instructions or a persona"),
    (re.compile(r"\b(?:role-?play(?:ing)?|in character|stay(?:ing)? in character|i(?:'m| am) (?:playing|pretending)|"
                r"i was (?:told|instructed|asked) to|as instructed|as an ai (?:playing|pretending))\b", re.I),
     "mentions role-play or instructions"),
]


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower().replace("\u2019", "'"))


def leakage(answer: str, persona: Persona, ngram: int = LEAK_NGRAM) -> str:
    """Why the answer leaks its persona, or '' if it does not."""
    for pattern, why in _LEAK_PATTERNS:
        m = pattern.search(answer)
        if m:
            return f"{why}: '{m.group(0)}'"
    own = _words(persona.own_text)
    grams = {tuple(own[i:i + ngram]) for i in range(len(own) - ngram + 1)}
    words = _words(answer)
    for i in range(len(words) - ngram + 1):
        if tuple(words[i:i + ngram]) in grams:
            return f"copies {ngram} words of the persona: '{' '.join(words[i:i + ngram])}'"
    return ""


def shingles(text: str, size: int = 5) -> set:
    words = _words(text)
    return {tuple(words[i:i + size]) for i in range(max(1, len(words) - size + 1))}


class NearDuplicateIndex:
    """Word 5-gram Jaccard similarity against everything added so far, via an inverted index."""

    def __init__(self, threshold: float):
        self.threshold = threshold
        self.sets: list[set] = []
        self.index: dict = {}

    def find(self, text: str) -> tuple[int, float]:
        s = shingles(text)
        candidates = Counter(j for g in s for j in self.index.get(g, ()))
        best, best_sim = -1, 0.0
        for j, shared in candidates.items():
            sim = shared / len(s | self.sets[j])
            if sim > best_sim:
                best, best_sim = j, sim
        return best, best_sim

    def add(self, text: str) -> None:
        s = shingles(text)
        for g in s:
            self.index.setdefault(g, []).append(len(self.sets))
        self.sets.append(s)


def trim_to_sentence(text: str) -> str:
    """Cut text back to its last complete sentence ('' when there is none)."""
    ends = [m.end() for m in re.finditer(r"[.!?](?:[\"')\]]*)(?=\s|$)", text)]
    return text[:ends[-1]].strip() if ends else ""


def basic_problem(result: dict, persona: Persona, cond) -> tuple[str, str, str]:
    """The first per-answer filter that drops this answer: (filter name, detail, text); ('', '', text) when it
    passes, where text may have been trimmed (truncated = "trim")."""
    text = (result.get("text") or "").strip()
    trimmed = ""
    if result.get("finish_reason") == "length":
        if cond.truncated == "drop":
            return "truncated", "finish_reason length", text
        trimmed, text = "trimmed", trim_to_sentence(text)
    if len(text) < cond.min_answer_chars:
        return ("truncated" if trimmed else "empty_or_short"), f"{len(text)} characters{' after trimming' * bool(trimmed)}", text
    if result.get("finish_reason") in ("content_filter", "refusal"):
        return "provider_refusal", f"finish_reason {result['finish_reason']}", text
    why = leakage(text, persona)
    if why:
        return "persona_leakage", why, text
    return "", trimmed, text


# ----------------------------------------------------------------------------------------------
# One condition


@dataclass
class Selection:
    kept: list[tuple[PlanItem, dict]]
    dropped: dict  # filter -> list of (item, record, detail)
    trimmed_kept: int = 0  # kept answers cut back to their last sentence (truncated = "trim")
    leak_screen: dict = field(default_factory=dict)  # what the refusal screen did (see leak_screen_summary)


LEAK_LABELS = ("full_refusal", "counter_argument", "partial_compliance", "invalid")  # judge labels that drop an answer


def _judged(cond, judge, first_pass: list, seed: str) -> tuple[dict, list]:
    """Judge verdicts by request id, per the condition's leak screen, and which unflagged answers a sampled
    screen audited. `all`: every answer; `sample`: the keyword-flagged ones and a seeded random sample of the
    rest; `keywords`: the keyword-flagged ones only."""
    if judge is None or cond.refusals == "keep" or cond.leak_screen == "off":
        return {}, []
    flagged = [(it, rec) for it, rec, match in first_pass if match.is_refusal]
    unflagged = [(it, rec) for it, rec, match in first_pass if not match.is_refusal]
    audited = []
    if cond.leak_screen == "all":
        audited = unflagged
    elif cond.leak_screen == "sample":
        order = sorted(unflagged, key=lambda x: hashlib.sha256(f"{seed}|{x[0].request_id}".encode()).hexdigest())
        audited = order[:cond.leak_sample]
    todo = flagged + audited
    labels = judge.refusals([(it.prompt.text, rec["text"]) for it, rec in todo])
    return {it.request_id: v.label for (it, _), v in zip(todo, labels)}, [it.request_id for it, _ in audited]


def select(items: list[PlanItem], done: dict, cond, judge, target: int, progress=None) -> Selection:
    """Apply the filters, in plan order, to finished answers until `target` are kept. Deterministic."""
    answered = [(it, done[it.request_id]) for it in items if it.request_id in done]
    first_pass = []
    dropped = {name: [] for name in FILTERS}
    for it, rec in answered:
        name, detail, text = basic_problem(rec, it.persona, cond)
        if name:
            dropped[name].append((it, rec, detail))
            continue
        if detail == "trimmed":
            rec = dict(rec, text=text, trimmed=True)
        first_pass.append((it, rec, text))
    matches = detect_refusals([text for _, _, text in first_pass])
    first_pass = [(it, rec, match) for (it, rec, _), match in zip(first_pass, matches)]
    verdicts, audited = _judged(cond, judge, first_pass, f"leak:{target}")
    kept, exact, near = [], set(), NearDuplicateIndex(cond.near_duplicate_threshold)
    for it, rec, match in first_pass:
        if len(kept) >= target:
            break
        refusal = match.is_refusal
        verdict = verdicts.get(it.request_id)
        if verdict is not None:  # the judge confirms or overrules the keyword rule, and sees what it missed
            refusal = verdict in LEAK_LABELS if cond.refusals == "drop" else verdict == "full_refusal"
        if cond.refusals == "drop" and refusal:
            why = (f"keyword '{match.phrase}'" if match.is_refusal else "no refusal keyword") + \
                (f", judge {verdict}" if verdict else "")
            dropped["refusal"].append((it, rec, why))
            continue
        if cond.refusals == "require" and not refusal:
            dropped["not_a_refusal"].append((it, rec, "no refusal found" + (f" (judge {verdict})" if verdict else "")))
            continue
        norm = " ".join(_words(rec["text"]))
        if norm in exact:
            dropped["duplicate"].append((it, rec, "same text as a kept answer"))
            continue
        j, sim = near.find(rec["text"])
        if sim >= cond.near_duplicate_threshold:
            dropped["near_duplicate"].append((it, rec, f"Jaccard {sim:.2f} with kept answer #{j}"))
            continue
        exact.add(norm)
        near.add(rec["text"])
        kept.append((it, rec))
    screen = leak_screen_summary(cond, judge, first_pass, verdicts, audited)
    return Selection(kept, dropped, sum(1 for _, rec in kept if rec.get("trimmed")), screen)


def leak_screen_summary(cond, judge, first_pass: list, verdicts: dict, audited: list) -> dict:
    """What the refusal screen did, for the report: its mode, and the refusals the keywords missed (with, for a
    sampled screen, the estimated rate of such refusals among the answers it did not judge)."""
    from normlib.core.stats import wilson_interval
    keyword_flagged = sum(1 for _, _, m in first_pass if m.is_refusal)
    if cond.refusals == "keep":
        return {"mode": "none", "why": "refusals = keep: no refusal filter"}
    if judge is None or cond.leak_screen == "off":
        why = "no [judge] configured" if judge is None else "leak_screen = off"
        return {"mode": "keywords", "why": f"{why}: keyword rules only", "answers": len(first_pass),
                "keyword_flagged": keyword_flagged}
    missed = [rid for rid in audited if verdicts.get(rid) in LEAK_LABELS]
    summary = {"mode": cond.leak_screen, "judge": judge.description.get("model"), "answers": len(first_pass),
               "keyword_flagged": keyword_flagged, "judged": len(verdicts),
               "judge_refusals": sum(1 for v in verdicts.values() if v in LEAK_LABELS),
               "keyword_missed_judge_found": len(missed),
               "judge_labels": dict(Counter(verdicts.values()))}
    if cond.leak_screen == "sample":
        unjudged = len(first_pass) - keyword_flagged - len(audited)
        lo, hi = wilson_interval(len(missed), len(audited))
        summary.update({"audit_sample": len(audited), "unjudged_answers": unjudged,
                        "estimated_missed_rate": len(missed) / len(audited) if audited else None,
                        "estimated_missed_rate_ci95": [lo, hi],
                        "note": "refusals the keywords missed among answers not judged are estimated from the "
                                "random audit sample (Wilson 95% interval); the ones found in the sample are dropped"})
    return summary


def read_done(raw_path: Path) -> tuple[dict, dict]:
    """From the raw log: the successful record per request id, and the last failure of the others."""
    done, failed = {}, {}
    for rec in read_jsonl(raw_path):
        rid = rec.get("request_id")
        if rec.get("ok"):
            done.setdefault(rid, rec)
            failed.pop(rid, None)
        elif rid not in done:
            failed[rid] = rec
    return done, failed


def clean_record(it: PlanItem, rec: dict, condition: str, manifest_hash: str) -> dict:
    return {"messages": [{"role": "user", "content": it.prompt.text},
                         {"role": "assistant", "content": rec["text"].strip()}],
            "meta": {"request_id": it.request_id, "condition": condition, "persona_id": it.persona.id,
                     "prompt_id": it.prompt.id, "sample": it.sample, "plan_index": it.index,
                     "trimmed": bool(rec.get("trimmed")), "teacher_model": rec["request"]["model"],
                     "manifest_hash": manifest_hash}}


def build_report(condition: str, manifest: Manifest, target: int, items: list[PlanItem], done: dict, failed: dict,
                 sel: Selection, timings: dict, judge) -> dict:
    planned_ids = {it.request_id for it in items}
    failed = {rid: rec for rid, rec in failed.items() if rid in planned_ids}  # still unanswered plan items
    attempts = Counter(rec.get("error_kind") or "ok" for rec in failed.values())

    def example(it, rec, detail):
        return {"request_id": it.request_id, "persona_id": it.persona.id, "prompt": it.prompt.text[:200],
                "answer": (rec.get("text") or "")[:400], "why": detail}
    answered = [done[rid] for rid in planned_ids & done.keys()]
    usage_in = sum((rec.get("usage") or {}).get("input_tokens") or 0 for rec in answered)
    usage_out = sum((rec.get("usage") or {}).get("output_tokens") or 0 for rec in answered)
    return {
        "condition": condition, "experiment": manifest.experiment.name, "manifest_hash": manifest.content_hash,
        "target": target, "planned": len(items), "answered": len(planned_ids & done.keys()), "failed": len(failed),
        "failed_by_kind": dict(attempts), "kept": len(sel.kept), "kept_trimmed": sel.trimmed_kept,
        "shortfall": max(0, target - len(sel.kept)),
        "dropped": {name: {"count": len(rows), "examples": [example(*r) for r in rows[:EXAMPLES_PER_FILTER]]}
                    for name, rows in sel.dropped.items()},
        "kept_per_persona": dict(sorted(Counter(it.persona.id for it, _ in sel.kept).items())),
        "kept_per_prompt": dict(sorted(Counter(it.prompt.id for it, _ in sel.kept).items())),
        "teacher": teacher_params(manifest.teacher) | {"base_url": manifest.teacher.base_url},
        "judge": judge.description if judge is not None else None,
        "refusal_policy": manifest.conditions[condition].refusals,
        "leak_screen": sel.leak_screen,
        "usage_tokens": {"input": usage_in, "output": usage_out}, "timings": timings,
    }


def generate_condition(manifest: Manifest, condition: str, client, judge=None, limit: int | None = None,
                       show_progress: bool = True) -> dict:
    """Generate until the condition has its examples (or `limit`, a trial written beside the real files), holding
    the condition's lock so that a second gen.py on it refuses instead of paying for the same requests."""
    with exclusive(manifest.generated_path(condition, ".lock"), f"condition '{condition}'"):
        return _generate_condition(manifest, condition, client, judge, limit, show_progress)


def _generate_condition(manifest: Manifest, condition: str, client, judge, limit: int | None,
                        show_progress: bool) -> dict:
    cond = manifest.conditions[condition]
    if limit is not None and limit < 1:
        raise InputError(f"--limit {limit}: must be at least 1")
    target = min(cond.examples, limit) if limit else cond.examples
    personas = load_personas([manifest.resolve(p) for p in cond.personas])
    prompts = load_prompts([manifest.resolve(p) for p in cond.prompts])
    params = teacher_params(manifest.teacher)
    seed = manifest.experiment.generation_seed
    raw_path = manifest.generated_path(condition, ".raw.jsonl")
    # A trial (--limit) must never replace the real training file: it gets files of its own.
    stem = f"{condition}.trial-{limit}" if limit else condition
    clean_path, report_path = manifest.generated_path(stem), manifest.generated_path(stem, ".report.json")
    started = time.time()

    done, failed = read_done(raw_path)
    # Re-plan at least as far as earlier runs got (top-ups), so the same answers are selected again.
    reached = max((rec.get("plan_index", -1) for rec in done.values()), default=-1) + 1
    items = plan_items(condition, personas, prompts, 0, max(target, reached), seed, params)
    sel = select(items, done, cond, judge, target)
    if len(sel.kept) >= target and clean_path.exists():
        report = read_json_or_none(report_path)  # an unreadable report is rebuilt below
        if report and report.get("kept") == target and report.get("manifest_hash") == manifest.content_hash:
            print(f"{condition}: finished earlier ({target} kept in {clean_path}); nothing to do")
            report["noop"] = True
            return report

    bar = None
    if show_progress:
        from tqdm import tqdm
        bar = tqdm(total=target, initial=len(sel.kept), desc=condition, unit="kept", dynamic_ncols=True)
    tried_now: set = set()
    counts = Counter()
    with JsonlAppender(raw_path) as raw:
        while len(sel.kept) < target:
            pending = [it for it in items if it.request_id not in done and it.request_id not in tried_now]
            if not pending:
                if len(items) >= MAX_PLAN_FACTOR * target:
                    break
                missing = target - len(sel.kept)
                drop_rate = 1 - len(sel.kept) / max(1, len(done))
                extra = max(1, math.ceil(missing / max(0.25, 1 - drop_rate) * 1.1))
                extra = min(extra, MAX_PLAN_FACTOR * target - len(items))
                items += plan_items(condition, personas, prompts, len(items), extra, seed, params)
                continue
            by_key = {it.request_id: it for it in pending}
            reqs = [ChatRequest(key=it.request_id, user=it.prompt.text, system=it.persona.text,
                                temperature=manifest.teacher.temperature, top_p=manifest.teacher.top_p,
                                max_tokens=manifest.teacher.max_tokens) for it in pending]

            def on_attempt(req: ChatRequest, result: ChatResult, by_key=by_key):
                it = by_key[req.key]
                raw.write({"request_id": it.request_id, "condition": condition, "persona_id": it.persona.id,
                           "prompt_id": it.prompt.id, "sample": it.sample, "plan_index": it.index,
                           "attempt": result.attempts, "request": params, "ok": result.ok, "status": result.status,
                           "finish_reason": result.finish_reason, "usage": result.usage,
                           "latency_s": round(result.latency_s, 4), "error_kind": result.error_kind,
                           "error": result.error, "text": result.text, "time": time.time()})

            def on_result(req: ChatRequest, result: ChatResult):
                tried_now.add(req.key)
                if result.ok:
                    done[req.key] = {"text": result.text, "finish_reason": result.finish_reason,
                                     "usage": result.usage, "request": params, "ok": True}
                    failed.pop(req.key, None)
                    counts["answered"] += 1
                else:
                    failed[req.key] = {"error_kind": result.error_kind, "error": result.error}
                    counts["failed"] += 1
                if bar is not None:
                    bar.set_postfix(answered=counts["answered"], failed=counts["failed"])

            answered_before = counts["answered"]
            client.map(reqs, on_result, on_attempt)
            if counts["answered"] == answered_before:
                break  # a whole round failed: the server is down or rejects us; rerun later
            before = len(sel.kept)
            sel = select(items, done, cond, judge, target)
            if bar is not None:
                bar.update(len(sel.kept) - before)
                bar.set_postfix(answered=counts["answered"], failed=counts["failed"],
                                dropped=sum(len(v) for v in sel.dropped.values()))
    if bar is not None:
        bar.close()

    write_jsonl_atomic(clean_path, [clean_record(it, rec, condition, manifest.content_hash) for it, rec in sel.kept])
    timings = {"started": started, "finished": time.time(), "seconds": round(time.time() - started, 2),
               "mean_latency_s": _mean([r.get("latency_s") for r in read_jsonl(raw_path) if r.get("ok")])}
    report = build_report(condition, manifest, target, items, done, failed, sel, timings, judge)
    write_json_atomic(report_path, report)
    return report


def _mean(values) -> float | None:
    values = [v for v in values if v is not None]
    return round(sum(values) / len(values), 4) if values else None
