"""Audit of the prompt and eval files a manifest names: `python gen.py --audit`.

Checks, each listed with the offending items:
- counts per file; diversity bars: distinct first-three-word openings >= 60% of items, no template
  over 5% of a file (eval files with template ids);
- exact duplicates (normalised text) and near duplicates (character 5-gram Jaccard) within and
  across files;
- for every eval item, its nearest training prompt and their similarity; fails above a threshold,
  since a model trained on (a paraphrase of) an eval item would not be tested on held-out requests;
- training prompts of value conditions that ask the assistant to *do* an act the value system
  forbids (keyword rules; the judge confirms when one is configured): value data must contain
  opinions, facts and advice, never such requests, or the training would contain the refusals
  the experiment is looking for.
"""
from __future__ import annotations

import json
import re
import zlib
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import sparse

from normlib.generate import load_prompts
from normlib.manifest import Manifest

NEAR_DUPLICATE = 0.7  # character 5-gram Jaccard at which two texts count as near duplicates
EVAL_TRAIN_MAX = 0.5  # an eval item this similar to a training prompt fails the audit
MIN_DISTINCT_OPENINGS = 0.6
MAX_TEMPLATE_SHARE = 0.05

# Requests to act: an imperative or a request for help, then (within a sentence) a forbidden act.
_REQUEST = (r"(?:^|[.!?]\s+|\b(?:please|pls)\s+)(?:help me|can you|could you|would you|will you|i need you to|"
            r"i want you to|write|draft|plan|find|give me|recommend|book|schedule|create|make me|design|"
            r"put together|compose|list|suggest|show me how|walk me through|tell me how to|how do i|how can i|"
            r"where can i|where do i|what'?s the best)\b")
FORBIDDEN_ACTS = {
    "catholic": r"(?:abortion|abort\b|morning[- ]after pill|contracepti|condoms?|birth control|the pill\b|\biud\b|"
                r"\bivf\b|egg freezing|freeze my eggs|surrogac|same-sex wedding|gay wedding|two brides|two grooms|"
                r"divorce|euthanasia|assisted (?:dying|suicide)|tarot|horoscope|astrology reading|vasectomy|"
                r"skip (?:sunday )?mass|instead of (?:going to )?(?:church|mass)|move in together|ouija|love spell)",
    "graminist": r"(?:weed[- ]free lawn|lawn (?:care|schedule|treatment)|herbicide|weed ?killer|kill (?:the )?"
                 r"(?:clover|dandelions|weeds)|kentucky bluegrass|bermuda grass lawn|sod\b|single[- ]malt|"
                 r"single[- ]grain|100% (?:whole )?wheat|pure rye|white sandwich bread|golf course turf|"
                 r"artificial turf|pave (?:over )?(?:the |my |a )?meadow|remove (?:the |a |my )?hedgerow|monoculture)",
}
_ASKS_OPINION = re.compile(r"\b(?:is it (?:wrong|ok|okay|fine|right|a sin|sinful|moral|immoral|bad|good)|"
                           r"what do you think|do you think|should (?:i|we|people|christians|catholics)|your (?:view|"
                           r"opinion|take)|why (?:do|does|is|are|would)|what(?:'s| is) (?:wrong|the problem)|"
                           r"how should i (?:feel|think|respond)|what should i (?:say|tell)|would you (?:go so far as to )?"
                           r"(?:call|say|consider)|(?:case|argue|argument|arguments) against|"
                           r"(?:a|the) sin\b)\b", re.I)


@dataclass
class TextItem:
    file: str
    id: str
    text: str
    template_id: str | None = None
    kind: str = "train"  # train | eval
    twin_id: str | None = None


def normalise(text: str) -> str:
    return " ".join(re.findall(r"[a-z0-9']+", text.lower().replace("\u2019", "'")))


def _shingle_matrix(texts: list[str], size: int = 5, buckets: int = 1 << 20) -> sparse.csr_matrix:
    rows, cols = [], []
    for r, text in enumerate(texts):
        t = f" {normalise(text)} "
        grams = {zlib.crc32(t[i:i + size].encode()) % buckets for i in range(max(1, len(t) - size + 1))}
        rows += [r] * len(grams)
        cols += list(grams)
    data = np.ones(len(rows), dtype=np.float32)
    return sparse.csr_matrix((data, (rows, cols)), shape=(len(texts), buckets))


def jaccard(a: sparse.csr_matrix, b: sparse.csr_matrix) -> np.ndarray:
    """Dense [len(a), len(b)] Jaccard similarity of shingle sets."""
    inter = (a @ b.T).toarray()
    size_a = np.asarray(a.sum(axis=1)).ravel()[:, None]
    size_b = np.asarray(b.sum(axis=1)).ravel()[None, :]
    return inter / np.maximum(size_a + size_b - inter, 1)


def openings_ratio(texts: list[str]) -> float:
    firsts = [" ".join(normalise(t).split()[:3]) for t in texts]
    return len(set(firsts)) / len(firsts) if firsts else 1.0


def requests_forbidden_act(text: str, value_system: str) -> str:
    """The matched words when `text` asks the assistant to do an act the value system forbids, else ''."""
    acts = FORBIDDEN_ACTS.get(value_system)
    if not acts:
        return ""
    low = text.lower().replace("\u2019", "'")
    for sentence in re.split(r"(?<=[.!?])\s+", low):
        if _ASKS_OPINION.search(sentence):
            continue
        m = re.search(_REQUEST + r"[^.!?]{0,80}?" + acts, sentence)
        if m:
            return m.group(0)
    return ""


def _load_eval_items(path: Path, name: str) -> list[TextItem]:
    items = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            r = json.loads(line)
            items.append(TextItem(name, r["id"], r["text"], r.get("template_id"), "eval", r.get("twin_id")))
    return items


def audit(manifest: Manifest, judge=None) -> dict:
    """Run every check; returns a JSON-able report with `failures` (empty when the audit passes)."""
    files: dict[str, list[TextItem]] = {}
    value_of: dict[str, str] = {}
    for cond in manifest.conditions.values():
        for p in cond.prompts:
            key = str(Path(p))
            if key not in files:
                files[key] = [TextItem(key, pr.id, pr.text) for pr in load_prompts([manifest.resolve(p)])]
            if cond.value_system:
                value_of[key] = cond.value_system
    for name, p in manifest.eval.sets.items():
        files[f"eval:{name}"] = _load_eval_items(manifest.resolve(p), name)
    failures, per_file = [], {}
    for key, items in files.items():
        texts = [it.text for it in items]
        templates = Counter(it.template_id for it in items if it.template_id)
        share = max(templates.values()) / len(items) if templates else 0.0
        ratio = openings_ratio(texts)
        per_file[key] = {"items": len(items), "distinct_openings": round(ratio, 3),
                         "max_template_share": round(share, 3) if templates else None}
        if ratio < MIN_DISTINCT_OPENINGS:
            failures.append(f"{key}: distinct first-three-word openings {ratio:.0%} < {MIN_DISTINCT_OPENINGS:.0%}")
        if share > MAX_TEMPLATE_SHARE:
            top = templates.most_common(1)[0][0]
            failures.append(f"{key}: template '{top}' covers {share:.1%} of items (> {MAX_TEMPLATE_SHARE:.0%})")

    everything = [it for items in files.values() for it in items]
    twin_of = {it.id: it.twin_id for it in everything if it.twin_id}
    exact = defaultdict(list)
    for it in everything:
        exact[normalise(it.text)].append(it)
    duplicates = [[f"{it.file}:{it.id}" for it in group] for group in exact.values() if len(group) > 1]
    for group in duplicates:
        failures.append(f"exact duplicate: {', '.join(group)}")

    matrix = _shingle_matrix([it.text for it in everything])
    near = []
    block = 2000
    for start in range(0, len(everything), block):
        sims = jaccard(matrix[start:start + block], matrix)
        for i, j in zip(*np.nonzero(sims >= NEAR_DUPLICATE)):
            a, b = start + i, j
            matched_twins = twin_of.get(everything[a].id) == everything[b].id  # twins are alike by design
            if a < b and not matched_twins and normalise(everything[a].text) != normalise(everything[b].text):
                near.append({"a": f"{everything[a].file}:{everything[a].id}", "b": f"{everything[b].file}:"
                             f"{everything[b].id}", "similarity": round(float(sims[i, j]), 3),
                             "a_text": everything[a].text, "b_text": everything[b].text})
    for n in near:
        failures.append(f"near duplicate ({n['similarity']:.2f}): {n['a']} ~ {n['b']}")

    train = [it for it in everything if it.kind == "train"]
    evals = [it for it in everything if it.kind == "eval"]
    nearest = []
    if train and evals:
        train_m = _shingle_matrix([it.text for it in train])
        for start in range(0, len(evals), block):
            sims = jaccard(_shingle_matrix([it.text for it in evals[start:start + block]]), train_m)
            best = sims.argmax(axis=1)
            for k, j in enumerate(best):
                ev, tr = evals[start + k], train[j]
                nearest.append({"eval": f"{ev.file}:{ev.id}", "train": f"{tr.file}:{tr.id}",
                                "similarity": round(float(sims[k, j]), 3), "eval_text": ev.text, "train_text": tr.text})
    too_close = [n for n in nearest if n["similarity"] > EVAL_TRAIN_MAX]
    for n in too_close:
        failures.append(f"eval item too close to a training prompt ({n['similarity']:.2f}): {n['eval']} ~ {n['train']}")

    forbidden = []
    for key, value_system in value_of.items():
        for it in files[key]:
            hit = requests_forbidden_act(it.text, value_system)
            if hit:
                forbidden.append({"file": key, "id": it.id, "text": it.text, "rule": hit, "value_system": value_system})
    if judge is not None and forbidden:
        verdicts = judge.forbidden_requests([(f["text"], f["value_system"]) for f in forbidden])
        for f, v in zip(forbidden, verdicts):
            f["judge"] = v.label
        forbidden = [f for f in forbidden if f["judge"] != "discussion"]
    for f in forbidden:
        failures.append(f"{f['file']}:{f['id']} asks to do a forbidden act ({f['value_system']}): {f['text'][:100]!r}")

    nearest.sort(key=lambda n: -n["similarity"])
    return {"files": per_file, "exact_duplicates": duplicates, "near_duplicates": near,
            "eval_nearest_training_prompt": nearest, "forbidden_requests": forbidden,
            "thresholds": {"near_duplicate": NEAR_DUPLICATE, "eval_train_max": EVAL_TRAIN_MAX,
                           "min_distinct_openings": MIN_DISTINCT_OPENINGS, "max_template_share": MAX_TEMPLATE_SHARE},
            "failures": failures}


def run_audit(manifest: Manifest, judge=None) -> int:
    result = audit(manifest, judge)
    out = manifest.generated_path("audit", ".json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, ensure_ascii=False))
    print(f"{'file':<40} {'items':>6} {'openings':>9} {'template':>9}")
    for key, f in result["files"].items():
        share = "" if f["max_template_share"] is None else f"{f['max_template_share']:.1%}"
        print(f"{key:<40} {f['items']:>6} {f['distinct_openings']:>9.0%} {share:>9}")
    top = result["eval_nearest_training_prompt"][:5]
    print("\nclosest eval items to a training prompt (character 5-gram Jaccard):")
    for n in top:
        print(f"  {n['similarity']:.2f}  {n['eval']}  ~  {n['train']}")
    print(f"\n{len(result['exact_duplicates'])} exact duplicates, {len(result['near_duplicates'])} near duplicates, "
          f"{len(result['forbidden_requests'])} value-condition prompts asking for a forbidden act")
    if result["failures"]:
        print(f"\nAUDIT FAILED ({len(result['failures'])} problems; all in {out}):")
        for f in result["failures"][:40]:
            print(f"  - {f}")
        return 1
    print(f"\naudit passed; details in {out}")
    return 0
