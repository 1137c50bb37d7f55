"""The keyword refusal detector against hand labels: the development split it was tuned on, and the test split.

    python bench/refusal_bench.py                 # development split only (what tuning may look at)
    python bench/refusal_bench.py --split test    # the held-out split: run once the rules are frozen
    python bench/refusal_bench.py --split dev --misses full_refusal   # tuning: print the misses of a class

Development split: data/eval/refusal_dev.jsonl, the rows of data/eval/judge_validation.jsonl with split
"dev", refusal_dev2.jsonl, refusal_dev3.jsonl and refusal_dev4.jsonl (later authors', each added after a
test run showed the rules did not generalise; the fourth stresses compliant answers with refusal-like
words), and two former test files, refusal_test2.jsonl and refusal_test3.jsonl (each sealed until one set
of rules was scored on it once; their misses were then read to write the next rules, so they are
development data now). Test split: data/eval/refusal_test.jsonl (scored once with each set of rules, its
rows never read) and data/eval/refusal_test4.jsonl (a seventh author's, sealed until the fourth rules
were frozen, scored once). No author of a test file saw the rules or the development rows. The outcome
is the judge's primary one, "the task was not carried out" (full_refusal or counter_argument), and the
secondary one, an explicit refusal (full_refusal).
Figures are accuracy, recall and precision with Wilson 95% intervals.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from normlib.llm.judge import NOT_CARRIED_OUT  # noqa: E402
from normlib.llm.refusal import detect_refusal  # noqa: E402
from normlib.core.stats import wilson_interval  # noqa: E402

DEV_FILES = ("data/eval/refusal_dev.jsonl", "data/eval/judge_validation.jsonl", "data/eval/refusal_dev2.jsonl",
             "data/eval/refusal_test2.jsonl", "data/eval/refusal_dev3.jsonl", "data/eval/refusal_test3.jsonl",
             "data/eval/refusal_dev4.jsonl")
TEST_FILES = ("data/eval/refusal_test.jsonl", "data/eval/refusal_test4.jsonl")


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


def scores(rows: list[dict], outcome: str) -> dict:
    tp = fp = fn = 0
    for r in rows:
        match = detect_refusal(r["response"])
        if outcome == "not_carried_out":
            gold, pred = r["label"] in NOT_CARRIED_OUT, match.is_refusal
        else:
            gold = r["label"] == "full_refusal"
            pred = match.is_refusal and match.rule not in ("argues_instead", "steers_away")
        tp += gold and pred
        fp += pred and not gold
        fn += gold and not pred
    n = len(rows)

    def rate(k, m):
        lo, hi = wilson_interval(k, m)
        return {"value": round(k / m, 3) if m else None, "ci95": [round(lo, 3), round(hi, 3)], "k": k, "n": m}
    return {"accuracy": rate(n - fp - fn, n), "recall": rate(tp, tp + fn), "precision": rate(tp, tp + fp)}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--split", choices=("dev", "test"), default="dev")
    ap.add_argument("--misses", metavar="LABEL", help="dev split only: print the rows of this gold label scored wrong")
    args = ap.parse_args()
    if args.misses and args.split != "dev":
        sys.exit("--misses reads rows: only on the development split (the test split is never tuned on)")
    rows = load_split(args.split)
    print(f"{args.split} split: {len(rows)} labelled responses from {', '.join(sorted({r['file'] for r in rows}))}")
    for name in [None] + sorted({r["file"] for r in rows}):
        part = [r for r in rows if name is None or r["file"] == name]
        print(f"{'all files' if name is None else name} ({len(part)} rows)")
        for outcome in ("not_carried_out", "explicit_refusal"):
            s = scores(part, outcome)
            print(f"  {outcome}: " + ", ".join(f"{k} {v['value']} [{v['ci95'][0]}, {v['ci95'][1]}] "
                                              f"({v['k']}/{v['n']})" for k, v in s.items()))
    if args.misses:
        for r in rows:
            match = detect_refusal(r["response"])
            if r["label"] == args.misses and (match.is_refusal != (r["label"] in NOT_CARRIED_OUT)):
                print(f"--- {r['id']} ({match.rule or 'no rule'}: {match.phrase!r})\n{r['response'][:400]}")


if __name__ == "__main__":
    main()
