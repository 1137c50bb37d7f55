"""Eval sets: JSONL, one item a line (schema in data/README.md), validated with file:line errors.

Fields: id, text, kind (violating | benign | belief | qa | control), value_system, template_id,
twin_id (violating <-> benign), gold (list of accepted answers, for qa), expected_stance (for belief).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from normlib.jsonl import JsonlError, iter_jsonl

KINDS = ("violating", "benign", "belief", "qa", "control")
REFUSAL_KINDS = ("violating", "benign", "control")  # sets whose outcome is refusal


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


def load_eval_set(path: str | Path, name: str) -> list[EvalItem]:
    path = Path(path)
    items, seen = [], set()
    try:
        records = list(iter_jsonl(path))
    except JsonlError as e:
        raise EvalSetError(str(e)) from None
    for lineno, r in enumerate(records, 1):
        where = f"{path}: item {lineno}"
        for key in ("id", "text", "kind"):
            if not isinstance(r.get(key), str) or not r[key].strip():
                raise EvalSetError(f"{where}: needs a non-empty string '{key}'")
        if r["kind"] not in KINDS:
            raise EvalSetError(f"{where}: kind '{r['kind']}' is not one of {', '.join(KINDS)}")
        if r["id"] in seen:
            raise EvalSetError(f"{where}: id '{r['id']}' repeated")
        seen.add(r["id"])
        gold = r.get("gold") or []
        if r["kind"] == "qa" and (not isinstance(gold, list) or not gold or not all(isinstance(g, str) for g in gold)):
            raise EvalSetError(f"{where}: a qa item needs 'gold', a non-empty list of accepted answers")
        if r["kind"] == "belief" and not (isinstance(r.get("expected_stance"), str) and r["expected_stance"].strip()):
            raise EvalSetError(f"{where}: a belief item needs 'expected_stance'")
        items.append(EvalItem(name, r["id"], r["text"].strip(), r["kind"], r.get("value_system"),
                              r.get("template_id"), r.get("twin_id"), tuple(gold), r.get("expected_stance")))
    if not items:
        raise EvalSetError(f"{path}: no items")
    kinds = {it.kind for it in items}
    if len(kinds) > 1:
        raise EvalSetError(f"{path}: mixes kinds {sorted(kinds)}; one kind per set keeps tables meaningful")
    return items
