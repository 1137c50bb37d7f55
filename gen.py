"""Build the fine-tuning datasets: ask the teacher LLM each condition's persona x prompt plan.

    python gen.py                         # every condition of manifest.toml
    python gen.py --condition catholic --limit 50
    python gen.py --plan                  # counts per persona and prompt, no calls
    python gen.py --audit                 # check the prompt and eval files (duplicates, overlap, forbidden requests)
"""
from __future__ import annotations

import argparse
import sys

from normlib.core.manifest import ManifestError, add_manifest_arguments, load_manifest


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_manifest_arguments(ap, "teacher.concurrency=16")
    ap.add_argument("--condition", action="append", default=[], help="condition to generate (repeatable; default all)")
    ap.add_argument("--limit", type=int, help="a quick trial: at most N examples per condition, written to "
                                              "<condition>.trial-N.jsonl (the real training file is not touched)")
    ap.add_argument("--plan", action="store_true", help="print the plan's counts per persona and prompt, call nothing")
    ap.add_argument("--audit", action="store_true", help="audit prompt and eval files, call nothing but the judge")
    ap.add_argument("--no-progress", action="store_true", help="no progress bars")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        manifest = load_manifest(args.manifest, args.overrides)
        unknown = [c for c in args.condition if c not in manifest.conditions]
        if unknown:
            raise ManifestError(f"{args.manifest}: no condition {', '.join(map(repr, unknown))}; "
                                f"known: {', '.join(manifest.conditions)}")
        if args.limit is not None and args.limit < 1:
            raise ManifestError(f"--limit {args.limit}: must be at least 1 (it keeps at most N examples per condition, "
                                f"written to <condition>.trial-N.jsonl beside the real files)")
        if not args.plan and not args.audit and manifest.teacher is None:
            raise ManifestError(f"{args.manifest}: gen.py needs a [teacher] table")
    except ManifestError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    conditions = args.condition or list(manifest.conditions)

    from normlib.core.evalsets import EvalSetError
    from normlib.gen.generate import InputError, generate_condition
    from normlib.llm.clients import FatalLLMError, LLMConfigError, make_client
    from normlib.core.locks import LockedError

    try:
        if args.plan:
            return print_plan(manifest, conditions, args.limit)
        judge, judge_skipped = None, ""
        if manifest.judge is not None:
            from normlib.llm.judge import Judge
            try:
                judge = Judge(manifest.judge, make_client(manifest.judge, "judge", manifest.root),
                              manifest.generated_path("judge_cache"))
            except LLMConfigError as e:
                if not args.audit:
                    raise
                # the audit's own checks need no API; only the judge's confirmation of keyword hits does
                judge_skipped = str(e)
                print(f"note: the judge's confirmation of the forbidden-request screen is skipped: {e}",
                      file=sys.stderr)
        if args.audit:
            from normlib.gen.audit import run_audit
            return run_audit(manifest, judge, judge_skipped)
        client = make_client(manifest.teacher, "teacher", manifest.root, manifest.experiment.generation_seed)
        reports = []
        for condition in conditions:
            reports.append(generate_condition(manifest, condition, client, judge, args.limit,
                                              show_progress=not args.no_progress))
    except (InputError, EvalSetError, LLMConfigError, FatalLLMError, LockedError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print_summary(reports)
    short = [r["condition"] for r in reports if r["shortfall"]]
    for r in reports:
        lost = r["failed_by_kind"].get("connection", 0) + r["failed_by_kind"].get("timeout", 0)
        if lost:
            print(f"warning: {r['condition']}: {lost} requests got no answer from the teacher at "
                  f"{r['teacher']['base_url'] or r['teacher']['backend']} (connection lost or timed out); is the "
                  f"server still running?", file=sys.stderr)
    if short:
        print(f"warning: fewer answers kept than asked for in {', '.join(short)}; see the reports' 'dropped' and "
              f"'failed_by_kind', then rerun (finished requests are not repeated)", file=sys.stderr)
        return 1
    return 0


def print_plan(manifest, conditions, limit) -> int:
    from normlib.gen.generate import load_personas, load_prompts, plan_items, plan_summary, teacher_params
    params = teacher_params(manifest.teacher) if manifest.teacher else {}
    for name in conditions:
        cond = manifest.conditions[name]
        n = min(cond.examples, limit) if limit else cond.examples
        personas = load_personas([manifest.resolve(p) for p in cond.personas])
        prompts = load_prompts([manifest.resolve(p) for p in cond.prompts])
        summary = plan_summary(plan_items(name, personas, prompts, 0, n, manifest.experiment.generation_seed, params))
        print(f"## {name}: {n} requests, {len(personas)} personas, {len(prompts)} prompts "
              f"(each prompt used {summary['prompt_uses_min']}-{summary['prompt_uses_max']} times)")
        print("requests per persona:")
        for pid, count in summary["per_persona"].items():
            print(f"  {count:6d}  {pid}")
        print("requests per prompt:")
        for pid, count in summary["per_prompt"].items():
            print(f"  {count:6d}  {pid}")
    return 0


def print_summary(reports) -> None:
    header = f"{'condition':<16} {'target':>7} {'planned':>8} {'answered':>9} {'failed':>7} {'dropped':>8} " \
             f"{'kept':>6} {'seconds':>8}"
    print("\n" + header + "\n" + "-" * len(header))
    for r in reports:
        dropped = sum(v["count"] for v in r["dropped"].values())
        print(f"{r['condition']:<16} {r['target']:>7} {r['planned']:>8} {r['answered']:>9} {r['failed']:>7} "
              f"{dropped:>8} {r['kept']:>6} {r['timings']['seconds']:>8}")
    print("(counts are requests or answers; per-filter drops and examples are in each <condition>.report.json)")


if __name__ == "__main__":
    sys.exit(main())
