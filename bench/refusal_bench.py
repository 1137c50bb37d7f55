"""The refusal detector against hand labels: the development split it was tuned on, and the test split.

    python bench/refusal_bench.py                 # development split only (what tuning may look at)
    python bench/refusal_bench.py --split test    # the held-out split: run once the detector is frozen
    python bench/refusal_bench.py --split dev --misses full_refusal   # tuning: print the misses of a class
    python bench/refusal_bench.py --cv            # the classifier refitted leaving out one development file at a time
    python bench/refusal_bench.py --fit           # refit data/refusal_classifier.json on the development split

The detector is the keyword rules checked by a learned classifier (normlib/llm/refusal.py); `--detector rules`
scores the rules alone. Development split: data/eval/refusal_dev.jsonl, the rows of
data/eval/judge_validation.jsonl with split "dev", refusal_dev2.jsonl, refusal_dev3.jsonl and refusal_dev4.jsonl
(later authors', each added after a test run showed the rules did not generalise; the fourth stresses compliant
answers with refusal-like words), refusal_dev5.jsonl (small models' answers, added when the demo's showed the
classifier a style it had not seen), and two former test files, refusal_test2.jsonl and refusal_test3.jsonl (each
sealed until one set of rules was scored on it once; their misses were then read to write the next rules, so
they are development data now). Test split: data/eval/refusal_test.jsonl (scored with each set of rules, its
rows never read), refusal_test4.jsonl (sealed until the fourth rules were frozen, scored once with them, its
rows never read), and refusal_test5.jsonl and refusal_test6.jsonl (two further authors', sealed until the
classifier was first frozen, scored with both fifth-round versions, rows never read). No author of a test
file saw the rules or the development rows. The outcome is the
judge's primary one, "the task was not carried out" (full_refusal or counter_argument), and the secondary one,
an explicit refusal (full_refusal). Figures are accuracy, recall and precision with Wilson 95% intervals.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import hashlib  # noqa: E402

from normlib.llm.judge import NOT_CARRIED_OUT  # noqa: E402
from normlib.llm.refusal import classifier_text, detect_refusals, match_rules  # noqa: E402
from normlib.llm.refusal_classifier import (CLASSIFIER_PATH, classifier_from_dict,  # noqa: E402
                                            fit_classifier)
from normlib.core.stats import wilson_interval  # noqa: E402

DEV_FILES = ("data/eval/refusal_dev.jsonl", "data/eval/judge_validation.jsonl", "data/eval/refusal_dev2.jsonl",
             "data/eval/refusal_test2.jsonl", "data/eval/refusal_dev3.jsonl", "data/eval/refusal_test3.jsonl",
             "data/eval/refusal_dev4.jsonl", "data/eval/refusal_dev5.jsonl")
TEST_FILES = ("data/eval/refusal_test.jsonl", "data/eval/refusal_test4.jsonl", "data/eval/refusal_test5.jsonl",
              "data/eval/refusal_test6.jsonl")


def load_split(split: str) -> list[dict]:
    """The labelled rows of one split. Rows of a file that marks splits are taken only from the asked split."""
    rows = []
    for name in (DEV_FILES if split == "dev" else TEST_FILES):
        for line in (ROOT / name).read_text(encoding="utf-8").splitlines():
            if line.strip():
                r = json.loads(line)
                if r.get("split", split) == split:
                    rows.append(dict(r, file=name))
    return rows


def detect(rows: list[dict], detector: str = "combined", classifier=None) -> list:
    if detector == "rules":
        return [match_rules(r["response"]) for r in rows]
    return detect_refusals([r["response"] for r in rows], classifier)


def scores(rows: list[dict], outcome: str, matches: list | None = None) -> dict:
    matches = matches if matches is not None else detect(rows)
    tp = fp = fn = 0
    for r, match in zip(rows, matches):
        if outcome == "not_carried_out":
            gold, pred = r["label"] in NOT_CARRIED_OUT, match.is_refusal
        else:
            gold, pred = r["label"] == "full_refusal", match.is_refusal and match.explicit
        tp += gold and pred
        fp += pred and not gold
        fn += gold and not pred
    n = len(rows)

    def rate(k, m):
        lo, hi = wilson_interval(k, m)
        return {"value": round(k / m, 3) if m else None, "ci95": [round(lo, 3), round(hi, 3)], "k": k, "n": m}
    return {"accuracy": rate(n - fp - fn, n), "recall": rate(tp, tp + fn), "precision": rate(tp, tp + fp)}


def fit(rows: list[dict]) -> dict:
    """The classifier file fitted on these (development) rows, recording which files and rows it saw."""
    files = []
    for name in sorted({r["file"] for r in rows}):
        files.append({"path": name, "sha256": hashlib.sha256((ROOT / name).read_bytes()).hexdigest(),
                      "rows": sum(r["file"] == name for r in rows)})
    return fit_classifier([classifier_text(r["response"]) for r in rows], [r["label"] for r in rows],
                          training={"files": files, "rows": len(rows)})


def cross_validated(rows: list[dict]) -> list:
    """Each development file scored by a classifier fitted on the other files (the rules stay in-sample)."""
    matches = [None] * len(rows)
    for name in sorted({r["file"] for r in rows}):
        held = [i for i, r in enumerate(rows) if r["file"] == name]
        classifier = classifier_from_dict(fit([r for r in rows if r["file"] != name]), f"fit without {name}")
        for i, m in zip(held, detect([rows[i] for i in held], classifier=classifier)):
            matches[i] = m
    return matches


def report(rows: list[dict], matches: list) -> None:
    for name in [None] + sorted({r["file"] for r in rows}):
        part = [(r, m) for r, m in zip(rows, matches) if name is None or r["file"] == name]
        print(f"{'all files' if name is None else name} ({len(part)} rows)")
        for outcome in ("not_carried_out", "explicit_refusal"):
            s = scores([r for r, _ in part], outcome, [m for _, m in part])
            print(f"  {outcome}: " + ", ".join(f"{k} {v['value']} [{v['ci95'][0]}, {v['ci95'][1]}] "
                                              f"({v['k']}/{v['n']})" for k, v in s.items()))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--split", choices=("dev", "test"), default="dev")
    ap.add_argument("--detector", choices=("combined", "rules"), default="combined",
                    help="the shipped detector (rules checked by the classifier), or the keyword rules alone")
    ap.add_argument("--misses", metavar="LABEL", help="dev split only: print the rows of this gold label scored wrong")
    ap.add_argument("--cv", action="store_true", help="dev split only: leave-one-file-out classifier figures")
    ap.add_argument("--fit", action="store_true", help=f"refit {CLASSIFIER_PATH.relative_to(ROOT)} on the dev split")
    args = ap.parse_args()
    if (args.misses or args.cv or args.fit) and args.split != "dev":
        sys.exit("--misses, --cv and --fit read rows: only on the development split (the test split is never tuned on)")
    rows = load_split(args.split)
    if args.fit:
        content = fit(rows)
        tmp = CLASSIFIER_PATH.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(content, separators=(",", ":")) + "\n", encoding="utf-8")
        tmp.replace(CLASSIFIER_PATH)
        print(f"wrote {CLASSIFIER_PATH.relative_to(ROOT)}: {len(rows)} rows, "
              f"{sum(len(v['vocabulary']) for v in content['vectorizers'].values())} n-gram features")
        return
    print(f"{args.split} split ({args.detector}{', leave-one-file-out' if args.cv else ''}): {len(rows)} labelled "
          f"responses from {', '.join(sorted({r['file'] for r in rows}))}")
    matches = cross_validated(rows) if args.cv else detect(rows, args.detector)
    report(rows, matches)
    if args.misses:
        for r, match in zip(rows, matches):
            if r["label"] == args.misses and (match.is_refusal != (r["label"] in NOT_CARRIED_OUT)):
                print(f"--- {r['id']} ({match.rule or 'no rule'}: {match.phrase!r})\n{r['response'][:400]}")


if __name__ == "__main__":
    main()
