"""Evaluate every trained model: sanity QA, belief uptake, refusals; write tables, summary and plot.

    python eval.py                                   # generate what is missing, score, write results/<experiment>/
    python eval.py --rescore                         # score saved samples again (no generation)
    python eval.py --validate-judge data/eval/judge_validation.jsonl
    python eval.py --set eval.backend=openai --set eval.base_url=http://127.0.0.1:8000/v1 --only RUN
"""
from __future__ import annotations

import argparse
import sys

from normlib.manifest import ManifestError, add_manifest_arguments, load_manifest


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_manifest_arguments(ap, "eval.samples=8")
    ap.add_argument("--rescore", action="store_true", help="re-score saved samples without generating")
    ap.add_argument("--only", action="append", default=[], metavar="LABEL",
                    help="generate only for this model label (a run name, base--MODEL or extra--LABEL); repeatable")
    ap.add_argument("--generate-only", action="store_true",
                    help="generate missing answers and stop (several processes, one per --only label, can run side "
                         "by side); score afterwards with --rescore")
    ap.add_argument("--validate-judge", metavar="FILE", help="accuracy and kappa of the keyword detector and the "
                                                             "judge against hand labels (JSONL: prompt, response, label)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bars")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        manifest = load_manifest(args.manifest, args.overrides)
        if not manifest.eval.sets and not args.validate_judge:
            raise ManifestError(f"{args.manifest}: [eval] sets is empty: nothing to evaluate")
    except ManifestError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    from normlib import evaluation
    from normlib.evalsets import EvalSetError
    from normlib.llm import FatalLLMError, LLMConfigError, make_client
    from normlib.models import ModelLoadError

    out_dir = manifest.results_dir()
    try:
        judge = None
        if manifest.judge is not None:
            from normlib.judge import Judge
            out_dir.mkdir(parents=True, exist_ok=True)
            judge = Judge(manifest.judge, make_client(manifest.judge, "judge", manifest.root),
                          out_dir / "judge_cache.jsonl")
        if args.validate_judge:
            result = evaluation.validate_judge(manifest.resolve(args.validate_judge), judge)
            out_dir.mkdir(parents=True, exist_ok=True)
            evaluation.write_json(out_dir / "judge_validation.json", result)
            print(evaluation.format_validation(result))
            print(f"\nwritten: {out_dir / 'judge_validation.json'}")
            return 0

        sets = evaluation.load_sets(manifest)
        evaluated, missing = evaluation.evaluated_models(manifest)
        notes = []
        if missing:
            notes.append(f"Not trained yet, so not evaluated: {', '.join(missing)}.")
            print(f"note: {len(missing)} run(s) not trained yet are skipped: {', '.join(missing)}", file=sys.stderr)
        unknown = [label for label in args.only if label not in {ev.label for ev in evaluated}]
        if unknown:
            print(f"error: --only {', '.join(unknown)}: not among the models to evaluate "
                  f"({', '.join(ev.label for ev in evaluated)})", file=sys.stderr)
            return 2
        out_dir.mkdir(parents=True, exist_ok=True)
        samples_dir, scored_path = out_dir / "samples", out_dir / "scored.jsonl"
        if not args.rescore:
            made = evaluation.generate_samples(manifest, evaluated, sets, samples_dir, args.only or None,
                                               show_progress=not args.no_progress)
            print(f"generated {made} new answers ({samples_dir}/)")
            if args.generate_only:
                return 0
        rows = evaluation.rescore(manifest, sets, samples_dir, scored_path, judge, [ev.label for ev in evaluated],
                                  show_progress=not args.no_progress)
        if not rows:
            print("error: no samples to score; run eval.py without --rescore first", file=sys.stderr)
            return 1
        outputs = evaluation.write_outputs(manifest, evaluated, sets, rows, judge, notes)
    except (EvalSetError, LLMConfigError, FatalLLMError, ModelLoadError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for c in outputs["contrasts"]:
        if c["hypothesis"]:
            print(f"{c['name']} ({c['model']}): {c['verdict']} (difference {c['difference']:+.3f}, "
                  f"Holm p {c['p_holm']:.3g})")
    print(f"written: {', '.join(str(out_dir / f) for f in ('rates.csv', 'contrasts.csv', 'agreement.csv', 'summary.md'))}"
          + (f", {out_dir / 'refusal_rates.png'}" if outputs["plotted"] else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
