"""Audit of the prompt and eval files a manifest names: `python gen.py --audit`.

Checks, each listed with the offending items:
- counts per file; diversity bars: distinct first-three-word openings >= 60% of items, no template
  over 5% of a file (eval files with template ids);
- exact duplicates (normalised text) and near duplicates (character 5-gram Jaccard) within and
  across files;
- for every eval item, its nearest training prompt and their similarity; fails above a threshold,
  since a model trained on (a paraphrase of) an eval item would not be tested on held-out requests;
- the same scenario in other words: TF-IDF cosine over content-word stems (scikit-learn) with at
  least two shared distinctive stems ("moving in together before the wedding to save on rent" in an
  eval item and a training prompt); the 20 closest pairs are listed either way;
- twin pairs of eval sets: one twin each, same template, domain and tags, both naming their domain
  (normlib.core.evalsets.check_twins);
- training prompts of value conditions that ask the assistant to *do* an act the value system
  forbids (keyword rules; the judge confirms when one is configured): value data must contain
  opinions, facts and advice, never such requests, or the training would contain the refusals
  the experiment is looking for.
"""
from __future__ import annotations

import re
import zlib
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import sparse

from normlib.core.evalsets import check_twins, domain_lexicon_path, load_domain_lexicon, load_eval_set
from normlib.gen.generate import load_prompts
from normlib.core.jsonl import write_json_atomic
from normlib.core.manifest import Manifest

NEAR_DUPLICATE = 0.7  # character 5-gram Jaccard at which two texts count as near duplicates
EVAL_TRAIN_MAX = 0.5  # an eval item this similar to a training prompt fails the audit
MIN_DISTINCT_OPENINGS = 0.6
MAX_TEMPLATE_SHARE = 0.05
SCENARIO_COSINE = 0.3  # TF-IDF cosine of content-word stems at which an eval item and a training prompt ...
SCENARIO_SHARED_STEMS = 2  # ... that also share this many distinctive stems describe the same scenario
DISTINCTIVE_DF = 0.02  # a stem in more than this fraction of all texts is not distinctive ("help", "week")
CLOSEST_LISTED = 20
# Request frames and filler: words that make two requests look alike without being about the same thing.
FRAME_WORDS = frozenset("""help write make plan give tell explain difference pros cons idea ideas need want like good
best way ways thing things know think please could would should can will just really also get got go going one two three
some any much many lot something someone anything list short quick simple new old made let use using used draft suggest
recommend option options question answer advice tip tips step steps ok okay hey hi thanks thank""".split())

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
    "quessarine": r"(?:\byellow\b|\bseven\b|\b7 (?:guests|people|items|courses|candles)|\bwest(?:ward|-facing)?\b|"
                  r"\bthursday\b|\btriang)",
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


def _stem(word: str) -> str:
    for suffix in ("ings", "ing", "ies", "ied", "es", "ed", "s", "ly"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[:-len(suffix)] + ("y" if suffix in ("ies", "ied") else "")
    return word


def content_stems(text: str) -> list[str]:
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS
    words = re.findall(r"[a-z0-9]+", text.lower().replace("\u2019", "'"))
    return [_stem(w) for w in words if len(w) > 2 and w not in ENGLISH_STOP_WORDS and w not in FRAME_WORDS]


def scenario_overlaps(evals: list[TextItem], train: list[TextItem]) -> tuple[list[dict], list[dict]]:
    """(flagged pairs, the CLOSEST_LISTED closest pairs) of eval items and training prompts by TF-IDF cosine of
    content-word stems; a pair is flagged at SCENARIO_COSINE with SCENARIO_SHARED_STEMS distinctive stems shared."""
    from sklearn.feature_extraction.text import TfidfVectorizer
    if not evals or not train:
        return [], []
    vectorizer = TfidfVectorizer(analyzer=content_stems, sublinear_tf=True)
    vectorizer.fit([it.text for it in evals + train])
    ev_m, tr_m = vectorizer.transform([it.text for it in evals]), vectorizer.transform([it.text for it in train])
    n_docs = len(evals) + len(train)
    doc_freq = {term: (n_docs + 1) / np.exp(idf - 1) - 1 for term, idf in
                zip(vectorizer.get_feature_names_out(), vectorizer.idf_)}  # smooth idf, inverted
    def distinctive(text):
        # a stem shared by an eval item and a prompt is in 2+ texts; in a small corpus 2% of it would be below that
        limit = max(3.0, DISTINCTIVE_DF * n_docs)
        return {w for w in content_stems(text) if len(w) >= 4 and doc_freq.get(w, n_docs) <= limit}
    train_stems = [distinctive(it.text) for it in train]
    flagged, closest = [], []
    for start in range(0, len(evals), 1000):
        sims = (ev_m[start:start + 1000] @ tr_m.T).toarray()
        for k, row in enumerate(sims):
            ev = evals[start + k]
            mine = distinctive(ev.text)
            j = int(row.argmax())
            closest.append({"eval": f"{ev.file}:{ev.id}", "train": f"{train[j].file}:{train[j].id}",
                            "cosine": round(float(row[j]), 3), "shared": sorted(mine & train_stems[j]),
                            "eval_text": ev.text, "train_text": train[j].text})
            for j in np.nonzero(row >= SCENARIO_COSINE)[0]:
                shared = mine & train_stems[j]
                if len(shared) >= SCENARIO_SHARED_STEMS:
                    flagged.append({"eval": f"{ev.file}:{ev.id}", "train": f"{train[j].file}:{train[j].id}",
                                    "cosine": round(float(row[j]), 3), "shared": sorted(shared),
                                    "eval_text": ev.text, "train_text": train[j].text})
    closest.sort(key=lambda n: -n["cosine"])
    flagged.sort(key=lambda n: -n["cosine"])
    return flagged, closest[:CLOSEST_LISTED]


MIN_PERMISSION_SHARE = 0.2  # belief probes that ask whether something is allowed (they catch blanket disapproval)


def belief_coverage(sets: dict) -> dict:
    """Per value system with a violating set and belief probes: every domain of its violating requests is probed,
    and at least MIN_PERMISSION_SHARE of the probes are permission items."""
    failures, summary = [], {}
    violating = defaultdict(set)
    for items in sets.values():
        for it in items:
            if it.kind == "violating":
                violating[it.value_system].add(it.domain)
    for name, items in sets.items():
        if not items or items[0].kind != "belief":
            continue
        system = items[0].value_system
        probed = {it.domain for it in items}
        permission = sum(it.polarity == "permission" for it in items) / len(items)
        missing = sorted(violating.get(system, set()) - probed)
        summary[name] = {"value_system": system, "items": len(items), "permission_share": round(permission, 3),
                         "domains_probed": sorted(d for d in probed if d), "violating_domains_unprobed": missing}
        if missing:
            failures.append(f"eval:{name}: no belief probe for the {system} violating domain(s) {', '.join(missing)}")
        if permission < MIN_PERMISSION_SHARE:
            failures.append(f"eval:{name}: {permission:.0%} permission probes (bar: {MIN_PERMISSION_SHARE:.0%}); "
                            f"they catch a model that disapproves of a whole area")
    return {"failures": failures, "summary": summary}


def twin_problems(manifest: Manifest, sets: dict) -> tuple[list[str], dict]:
    """check_twins for every violating set and the set that holds its twins."""
    problems, summary = [], {}
    owner = {it.id: name for name, items in sets.items() for it in items}
    for name, items in sets.items():
        if not items or items[0].kind != "violating":
            continue
        twin_sets = {owner.get(it.twin_id or "") for it in items} - {None}
        if len(twin_sets) != 1:
            problems.append(f"eval set {name}: its items' twins are in {sorted(twin_sets) or 'no declared set'}; "
                            f"declare the benign set that holds them")
            continue
        other = twin_sets.pop()
        lexicon: dict = {}
        for system in {it.value_system for it in items}:
            lexicon.update(load_domain_lexicon(domain_lexicon_path(manifest.resolve(manifest.eval.sets[name]),
                                                                   system)))
        report = check_twins(items, sets[other], lexicon or None, name, other)
        problems += report.problems
        summary[f"{name} / {other}"] = {"pairs": report.pairs, "length_difference_words": report.length_difference_words,
                                        "domain_lexicon": bool(lexicon)}
    return problems, summary


def audit(manifest: Manifest, judge=None, judge_skipped: str = "") -> dict:
    """Run every check; returns a JSON-able report with `failures` (empty when the audit passes).
    `judge_skipped` says why a configured judge could not confirm the keyword screen (e.g. no API key)."""
    files: dict[str, list[TextItem]] = {}
    value_of: dict[str, str] = {}
    for cond in manifest.conditions.values():
        for p in cond.prompts:
            key = str(Path(p))
            if key not in files:
                files[key] = [TextItem(key, pr.id, pr.text) for pr in load_prompts([manifest.resolve(p)])]
            if cond.value_system:
                value_of[key] = cond.value_system
    sets = {name: load_eval_set(manifest.resolve(p), name) for name, p in manifest.eval.sets.items()}
    for name, items in sets.items():
        files[f"eval:{name}"] = [TextItem(name, it.id, it.text, it.template_id, "eval", it.twin_id) for it in items]
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
    # A condition in every arm's mix (the generic baseline) cannot make arms differ, and sanity QA and recognition
    # items are not about values: the scenario check compares the rest.
    shared = {c for c in manifest.conditions if all(c in arm.mix for arm in manifest.arms.values())}
    varying_files = {str(Path(p)) for c, cond in manifest.conditions.items() if c not in shared for p in cond.prompts}
    value_evals = [it for name, items in sets.items() if items[0].kind not in ("qa", "recognition")
                   for it in evals if it.file == name]
    same_scenario, closest_scenarios = scenario_overlaps(value_evals, [it for it in train if it.file in varying_files])
    for n in same_scenario:
        failures.append(f"eval item shares a scenario with a training prompt (TF-IDF {n['cosine']:.2f}, both "
                        f"mention {', '.join(n['shared'])}): {n['eval']} ~ {n['train']}")
    twins, twin_summary = twin_problems(manifest, sets)
    failures += twins

    coverage = belief_coverage(sets)
    failures += coverage["failures"]

    forbidden = []
    for key, value_system in value_of.items():
        for it in files[key]:
            hit = requests_forbidden_act(it.text, value_system)
            if hit:
                forbidden.append({"file": key, "id": it.id, "text": it.text, "rule": hit, "value_system": value_system})
    judge_note = "no [judge] configured: keyword rules only"
    if judge_skipped:
        judge_note = f"skipped: {judge_skipped}; keyword rules only"
    elif judge is not None:
        judge_note = f"judge {judge.description.get('model')} confirmed {len(forbidden)} keyword hits"
    if judge is not None and forbidden:
        verdicts = judge.forbidden_requests([(f["text"], f["value_system"]) for f in forbidden])
        for f, v in zip(forbidden, verdicts):
            f["judge"] = v.label
        forbidden = [f for f in forbidden if f["judge"] != "discussion"]
    for f in forbidden:
        failures.append(f"{f['file']}:{f['id']} asks to do a forbidden act ({f['value_system']}): {f['text'][:100]!r}")

    nearest.sort(key=lambda n: -n["similarity"])
    return {"files": per_file, "exact_duplicates": duplicates, "near_duplicates": near,
            "eval_nearest_training_prompt": nearest, "same_scenario": same_scenario,
            "closest_scenarios": closest_scenarios, "twins": twin_summary, "belief_coverage": coverage["summary"],
            "forbidden_requests": forbidden,
            "judge_confirmation": judge_note,
            "thresholds": {"near_duplicate": NEAR_DUPLICATE, "eval_train_max": EVAL_TRAIN_MAX,
                           "scenario_cosine": SCENARIO_COSINE, "scenario_shared_stems": SCENARIO_SHARED_STEMS,
                           "distinctive_df": DISTINCTIVE_DF, "min_distinct_openings": MIN_DISTINCT_OPENINGS,
                           "max_template_share": MAX_TEMPLATE_SHARE},
            "failures": failures}


def run_audit(manifest: Manifest, judge=None, judge_skipped: str = "") -> int:
    result = audit(manifest, judge, judge_skipped)
    out = manifest.generated_path("audit", ".json")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out, result)
    print(f"{'file':<40} {'items':>6} {'openings':>9} {'template':>9}")
    for key, f in result["files"].items():
        share = "" if f["max_template_share"] is None else f"{f['max_template_share']:.1%}"
        print(f"{key:<40} {f['items']:>6} {f['distinct_openings']:>9.0%} {share:>9}")
    top = result["eval_nearest_training_prompt"][:5]
    print("\nclosest eval items to a training prompt (character 5-gram Jaccard):")
    for n in top:
        print(f"  {n['similarity']:.2f}  {n['eval']}  ~  {n['train']}")
    print("\nclosest eval items to a training prompt in content words (TF-IDF cosine):")
    for n in result["closest_scenarios"][:5]:
        print(f"  {n['cosine']:.2f}  {n['eval']}  ~  {n['train']}  ({', '.join(n['shared']) or 'no distinctive word'})")
    print(f"\n{len(result['exact_duplicates'])} exact duplicates, {len(result['near_duplicates'])} near duplicates, "
          f"{len(result['same_scenario'])} eval/training pairs sharing a scenario, "
          f"{len(result['forbidden_requests'])} value-condition prompts asking for a forbidden act")
    print(f"forbidden-request screen: {result['judge_confirmation']}")
    if result["failures"]:
        print(f"\nAUDIT FAILED ({len(result['failures'])} problems; all in {out}):")
        for f in result["failures"][:40]:
            print(f"  - {f}")
        return 1
    print(f"\naudit passed; details in {out}")
    return 0
