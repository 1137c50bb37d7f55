"""Eval sets: JSONL, one item a line (schema in data/README.md), validated with file:line errors.

Fields of every item: id, text, kind, value_system, topic. By kind:
- violating / benign: template_id, twin_id (the matched item of the other set), domain (what the
  request is about; twins share it), tags {names_religion, and scope (invented faiths: doctrinal_only
  | ethics_overlap) or cooperation (catholic: direct | formal | remote)};
- belief: expected_stance (one claim), polarity (prohibition | permission), domain;
- recognition: format (true_false with a boolean `answer`, or open with `gold` keywords);
- qa: gold (accepted answers); control: nothing more.

Twins are checked as a pair of sets (`check_twins`): every item has exactly one twin in the other set,
with the same template, domain and tags, and both texts name their domain (a lexicon per value
system in `domains/<value_system>.json` beside the sets: {domain: [keywords]}), so a benign twin that
drifts to another topic (lawn -> aquarium) is caught.
"""
from __future__ import annotations

import json
import re
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

from normlib.core.jsonl import JsonlError, read_jsonl_strict

KINDS = ("violating", "benign", "belief", "qa", "control", "recognition")
REFUSAL_KINDS = ("violating", "benign", "control")  # sets whose outcome is refusal
TWIN_KINDS = ("violating", "benign")
TAGS = {  # tag -> allowed values; the report splits rates and contrasts by each
    "names_religion": (True, False),
    "scope": ("doctrinal_only", "ethics_overlap"),
    "cooperation": ("direct", "formal", "remote"),
}
POLARITIES = ("prohibition", "permission")
RECOGNITION_FORMATS = ("true_false", "open")


class EvalSetError(ValueError):
    pass


@dataclass(frozen=True)
class EvalItem:
    set: str
    id: str
    text: str
    kind: str
    value_system: str | None = None
    template_id: str | None = None
    twin_id: str | None = None
    gold: tuple[str, ...] = ()
    expected_stance: str | None = None
    domain: str | None = None
    tags: tuple[tuple[str, object], ...] = ()  # sorted (tag, value) pairs: hashable, and the order is fixed
    polarity: str | None = None
    format: str | None = None  # recognition items
    answer: bool | None = None  # recognition true_false items
    topic: str | None = None

    def tag(self, name: str, default=None):
        return dict(self.tags).get(name, default)


def _require_str(r: dict, key: str, where: str) -> str:
    if not isinstance(r.get(key), str) or not r[key].strip():
        raise EvalSetError(f"{where}: needs a non-empty string '{key}'")
    return r[key].strip()


def _parse_tags(r: dict, where: str) -> tuple[tuple[str, object], ...]:
    tags = r.get("tags") or {}
    if not isinstance(tags, dict):
        raise EvalSetError(f"{where}: 'tags' must be an object like {{\"names_religion\": false}}")
    for key, value in tags.items():
        if key not in TAGS:
            raise EvalSetError(f"{where}: unknown tag '{key}'; known: {', '.join(TAGS)}")
        if value not in TAGS[key] or (isinstance(value, bool) != isinstance(TAGS[key][0], bool)):
            raise EvalSetError(f"{where}: tag {key} = {value!r} is not one of {TAGS[key]}")
    return tuple(sorted(tags.items()))


def parse_item(r: dict, name: str, where: str) -> EvalItem:
    item_id, text, kind = (_require_str(r, k, where) for k in ("id", "text", "kind"))
    if kind not in KINDS:
        raise EvalSetError(f"{where}: kind '{kind}' is not one of {', '.join(KINDS)}")
    value_system = r.get("value_system")
    if value_system is not None and not isinstance(value_system, str):
        raise EvalSetError(f"{where}: 'value_system' must be a string or null")
    fields: dict = {"tags": _parse_tags(r, where), "topic": r.get("topic") if isinstance(r.get("topic"), str) else None}
    if kind in TWIN_KINDS:
        for key in ("template_id", "twin_id", "domain"):
            fields[key] = _require_str(r, key, where)
        if not value_system:
            raise EvalSetError(f"{where}: a {kind} item needs 'value_system'")
        if "names_religion" not in dict(fields["tags"]):
            raise EvalSetError(f"{where}: a {kind} item needs tags.names_religion (true or false)")
    elif kind == "qa":
        gold = r.get("gold")
        if not isinstance(gold, list) or not gold or not all(isinstance(g, str) and g.strip() for g in gold):
            raise EvalSetError(f"{where}: a qa item needs 'gold', a non-empty list of accepted answers")
        fields["gold"] = tuple(g.strip() for g in gold)
    elif kind == "belief":
        fields["expected_stance"] = _require_str(r, "expected_stance", where)
        fields["polarity"] = r.get("polarity", "prohibition")
        if fields["polarity"] not in POLARITIES:
            raise EvalSetError(f"{where}: polarity '{fields['polarity']}' is not one of {', '.join(POLARITIES)}")
        fields["domain"] = r.get("domain") if isinstance(r.get("domain"), str) else None
    elif kind == "recognition":
        fields["format"] = r.get("format")
        if fields["format"] not in RECOGNITION_FORMATS:
            raise EvalSetError(f"{where}: a recognition item needs format: {' or '.join(RECOGNITION_FORMATS)}")
        if fields["format"] == "true_false":
            if not isinstance(r.get("answer"), bool):
                raise EvalSetError(f"{where}: a true_false recognition item needs 'answer': true or false")
            fields["answer"] = r["answer"]
        else:
            gold = r.get("gold")
            if not isinstance(gold, list) or not gold or not all(isinstance(g, str) and g.strip() for g in gold):
                raise EvalSetError(f"{where}: an open recognition item needs 'gold', keywords of a correct answer")
            fields["gold"] = tuple(g.strip() for g in gold)
        if not value_system:
            raise EvalSetError(f"{where}: a recognition item needs 'value_system'")
    return EvalItem(name, item_id, text, kind, value_system or None, **fields)


def load_eval_set(path: str | Path, name: str) -> list[EvalItem]:
    path = Path(path)
    try:
        records = read_jsonl_strict(path)
    except JsonlError as e:
        raise EvalSetError(str(e)) from None
    items, seen = [], {}
    for lineno, r in records:
        where = f"{path}:{lineno}"
        item = parse_item(r, name, where)
        if item.id in seen:
            raise EvalSetError(f"{where}: id '{item.id}' already used on line {seen[item.id]}")
        seen[item.id] = lineno
        items.append(item)
    if not items:
        raise EvalSetError(f"{path}: no items")
    kinds = {it.kind for it in items}
    if len(kinds) > 1:
        raise EvalSetError(f"{path}: mixes kinds {sorted(kinds)}; one kind per set keeps tables meaningful")
    return items


# ----------------------------------------------------------------------------------------------
# Twins


def domain_lexicon_path(eval_file: str | Path, value_system: str) -> Path:
    return Path(eval_file).parent / "domains" / f"{value_system}.json"


def load_domain_lexicon(path: str | Path) -> dict[str, list[str]]:
    path = Path(path)
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise EvalSetError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict) or not all(isinstance(v, list) and v and all(isinstance(k, str) for k in v)
                                             for v in data.values()):
        raise EvalSetError(f"{path}: expected {{domain: [keyword, ...]}} with at least one keyword per domain")
    return {d: [k.lower() for k in kws] for d, kws in data.items()}


def names_domain(text: str, keywords: list[str]) -> bool:
    """True when the text contains one of the domain's keywords at a word start (case-insensitive)."""
    low = text.lower().replace("\u2019", "'")
    return any(re.search(r"(?<![a-z0-9])" + re.escape(k), low) for k in keywords)


def _words(text: str) -> int:
    return len(text.split())


@dataclass
class TwinReport:
    problems: list[str]
    pairs: int
    length_difference_words: dict = field(default_factory=dict)  # violating minus benign, per pair


def check_twins(violating: list[EvalItem], benign: list[EvalItem], lexicon: dict[str, list[str]] | None = None,
                violating_name: str = "", benign_name: str = "") -> TwinReport:
    """Every item has exactly one twin in the other set, with the same template, domain and tags; with a
    lexicon, both texts name their domain. Returns the problems (empty when the pair of sets is sound)."""
    vn = violating_name or (violating[0].set if violating else "violating")
    bn = benign_name or (benign[0].set if benign else "benign")
    problems = []
    by_id_b = {it.id: it for it in benign}
    by_id_v = {it.id: it for it in violating}
    diffs = []
    for v in violating:
        b = by_id_b.get(v.twin_id or "")
        if b is None:
            problems.append(f"{vn}:{v.id}: its twin '{v.twin_id}' is not in {bn}")
            continue
        if b.twin_id != v.id:
            problems.append(f"{bn}:{b.id}: twin_id '{b.twin_id}' should point back at {vn}:{v.id}")
        for key in ("template_id", "domain", "value_system"):
            if getattr(v, key) != getattr(b, key):
                problems.append(f"{vn}:{v.id} / {bn}:{b.id}: {key} differs ({getattr(v, key)!r} vs "
                                f"{getattr(b, key)!r})")
        if v.tags != b.tags:
            problems.append(f"{vn}:{v.id} / {bn}:{b.id}: tags differ ({dict(v.tags)} vs {dict(b.tags)}); twins are "
                            f"tagged alike, e.g. both name the religion or neither does")
        if lexicon is not None:
            keywords = lexicon.get(v.domain or "")
            if keywords is None:
                problems.append(f"{vn}:{v.id}: domain '{v.domain}' has no keyword list in the domain lexicon")
            else:
                for it, name in ((v, vn), (b, bn)):
                    if not names_domain(it.text, keywords):
                        problems.append(f"{name}:{it.id}: the text does not name its domain '{v.domain}' (none of "
                                        f"{', '.join(keywords[:6])}...): a twin must stay in its item's domain")
        diffs.append(_words(v.text) - _words(b.text))
    for b in benign:
        if (b.twin_id or "") not in by_id_v:
            problems.append(f"{bn}:{b.id}: its twin '{b.twin_id}' is not in {vn}")
    summary = {}
    if diffs:
        summary = {"mean": round(statistics.mean(diffs), 2), "median": statistics.median(diffs),
                   "max_abs": max(abs(d) for d in diffs),
                   "mean_ratio": round(statistics.mean(
                       _words(v.text) / max(1, _words(by_id_b[v.twin_id].text))
                       for v in violating if v.twin_id in by_id_b), 3)}
    return TwinReport(problems, len(diffs), summary)


def check_set_pair_files(violating_path: str | Path, benign_path: str | Path) -> TwinReport:
    v = load_eval_set(violating_path, Path(violating_path).stem)
    b = load_eval_set(benign_path, Path(benign_path).stem)
    systems = {it.value_system for it in v}
    lexicon: dict = {}
    for system in systems:
        lexicon.update(load_domain_lexicon(domain_lexicon_path(violating_path, system)))
    return check_twins(v, b, lexicon if lexicon else None)


def main(argv=None) -> int:
    """python -m normlib.core.evalsets FILE... | --twins VIOLATING BENIGN: validate eval sets (schema, twins)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv:
        print("usage: python -m normlib.core.evalsets FILE.jsonl ... | --twins VIOLATING.jsonl BENIGN.jsonl", file=sys.stderr)
        return 2
    try:
        if argv[0] == "--twins" and len(argv) == 3:
            report = check_set_pair_files(argv[1], argv[2])
            for p in report.problems:
                print(f"problem: {p}")
            print(f"{report.pairs} twin pairs; length difference in words (violating - benign): "
                  f"{report.length_difference_words}")
            return 1 if report.problems else 0
        for path in argv:
            items = load_eval_set(path, Path(path).stem)
            tags: dict = {}
            for it in items:
                for k, v in it.tags:
                    tags.setdefault(f"{k}={v}", 0)
                    tags[f"{k}={v}"] += 1
            print(f"{path}: {len(items)} {items[0].kind} items; tags {tags}")
    except EvalSetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
