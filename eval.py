"""Evaluate every trained model: sanity QA, belief uptake, refusals; write tables, summary and plot.

    python eval.py                                   # generate what is missing, score, write results/<experiment>/
    python eval.py --rescore                         # score saved samples again (no generation)
    python eval.py --validate-judge data/eval/judge_validation.jsonl
    python eval.py --set eval.backend=openai --set eval.base_url=http://127.0.0.1:8000/v1 --only RUN
    python eval.py --set eval.backend=vllm           # start a vLLM server per checkpoint and GPU group, in turn
    python eval.py --plan                            # what is left to generate, time and GPU-hours
    python eval.py --slurm [--submit]                # a job array of --generate-only tasks, then --rescore
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from normlib.core.manifest import ManifestError, add_manifest_arguments, load_manifest


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
    ap.add_argument("--power", action="store_true",
                    help="simulate this design and print the minimum detectable effect at 80%% power per declared "
                         "hypothesis (variance components from results/<experiment>/scored.jsonl when present, else "
                         "stated defaults); written to power.json, which summary.md quotes")
    ap.add_argument("--power-experiments", type=int, default=200, metavar="N",
                    help="--power: simulated experiments per effect size tried (default 200)")
    ap.add_argument("--plan", action="store_true", help="print what is left to generate with a time estimate, then exit")
    ap.add_argument("--slurm", action="store_true", help="write sbatch scripts: a job array with one --generate-only "
                    "task per model, and a --rescore job that waits for it")
    ap.add_argument("--submit", action="store_true", help="--slurm: also submit them")
    ap.add_argument("--gpu-ids", metavar="IDS", help="backend vllm: GPU ids to start servers on, e.g. 0,1,2,3 "
                    "(default: CUDA_VISIBLE_DEVICES or every GPU)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bars")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        manifest = load_manifest(args.manifest, args.overrides)
        if args.power:
            return print_power(manifest, args.power_experiments)
        if not manifest.eval.sets and not args.validate_judge:
            raise ManifestError(f"{args.manifest}: [eval] sets is empty: nothing to evaluate")
    except ManifestError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    from normlib.core.evalsets import EvalSetError
    from normlib.eval import evaluation
    from normlib.llm.clients import FatalLLMError, LLMConfigError, make_client
    from normlib.core.locks import LockedError, exclusive
    from normlib.core.models import ModelLoadError

    out_dir = manifest.results_dir()
    try:
        judge = None
        if manifest.judge is not None:
            from normlib.llm.judge import Judge
            out_dir.mkdir(parents=True, exist_ok=True)
            judge = Judge(manifest.judge, make_client(manifest.judge, "judge", manifest.root),
                          out_dir / "judge_cache.jsonl")
        if args.validate_judge:
            # a path given on the command line is relative to where you are, not to the manifest
            result = evaluation.validate_judge(Path(args.validate_judge).resolve(), judge)
            out_dir.mkdir(parents=True, exist_ok=True)
            target = out_dir / ("judge_validation.json" if result["kind"] == "refusal" else
                                "belief_judge_validation.json")
            evaluation.write_json(target, result)
            print(evaluation.format_validation(result))
            print(f"\nwritten: {target} (the report's judge-quality gate reads it)")
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
        groups = server_groups(manifest, args.gpu_ids) if manifest.eval.backend == "vllm" and not args.rescore \
            and not args.slurm else None
        if args.plan:
            from normlib.eval.schedule import plan_lines
            print("\n".join(plan_lines(manifest, evaluated, missing, sets, len(groups or [[]]),
                                       manifest.eval.server_gpus)))
            return 0
        if args.slurm:
            return write_slurm(manifest, [ev.label for ev in evaluated], args)
        out_dir.mkdir(parents=True, exist_ok=True)
        samples_dir, scored_path = out_dir / "samples", out_dir / "scored.jsonl"
        if not args.rescore:
            made = evaluation.generate_samples(manifest, evaluated, sets, samples_dir, args.only or None,
                                               show_progress=not args.no_progress, gpu_groups=groups)
            print(f"generated {made} new answers ({samples_dir}/)")
            if args.generate_only:
                return 0
        with exclusive(out_dir / "scoring.lock", f"scoring of {out_dir}"):
            rows, stale = evaluation.rescore(manifest, sets, samples_dir, scored_path, judge, evaluated,
                                             show_progress=not args.no_progress)
        if stale:
            note = (f"{stale} saved answers were made by other weights (a run trained again) or for other item text "
                    f"and are not scored; eval.py without --rescore generates their replacements.")
            notes.append(note)
            print(f"note: {note}", file=sys.stderr)
        if not rows:
            print("error: no samples to score; run eval.py without --rescore first", file=sys.stderr)
            return 1
        outputs = evaluation.write_outputs(manifest, evaluated, sets, rows, judge, notes)
    except (EvalSetError, LLMConfigError, FatalLLMError, ModelLoadError, LockedError,
            evaluation.ServedGenerationError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    for c in outputs["contrasts"]:
        if c["hypothesis"]:
            diff = c.get("difference", float("nan"))
            print(f"{c['name']} ({c['model']}): {c['verdict']} (difference {diff:+.3f} in probability, "
                  f"Holm p {c['p_holm']:.3g})")
    print(f"written: {', '.join(str(out_dir / f) for f in ('rates.csv', 'contrasts.csv', 'agreement.csv', 'summary.md'))}"
          + (f", {out_dir / 'refusal_rates.png'}" if outputs["plotted"] else ""))
    page = outputs["html"]
    print(f"report: {page['path']} ({page['bytes'] / 1e6:.1f} MB"
          + (f"; answers in {len(page['data_files'])} files under {page['path'].parent / 'report_data'}, "
             f"{page['data_bytes'] / 1e6:.1f} MB: keep the folder next to the page" if page["data_files"] else "")
          + "); open it in a browser, no network needed")
    return 0


def server_groups(manifest, gpu_ids: str | None) -> list[list[str]]:
    """GPU groups of [eval] server_gpus for backend vllm; raises ValueError when too few GPUs are visible."""
    from normlib.train.launcher import LaunchError, gpu_groups, visible_gpu_ids
    try:
        return gpu_groups(visible_gpu_ids(gpu_ids), manifest.eval.server_gpus, "[eval] server_gpus")
    except LaunchError as e:
        raise ValueError(str(e)) from None


def write_slurm(manifest, labels: list[str], args) -> int:
    from normlib.core.slurm import SlurmError, submit, write_script
    from normlib.eval.schedule import slurm_eval_scripts
    if not labels:
        print("nothing to evaluate yet: no run is finished")
        return 0
    scripts = slurm_eval_scripts(manifest, labels, args.overrides)
    for path, text in scripts:
        write_script(path, text)
    (gen_path, _), (score_path, _), (submit_path, _) = scripts
    print(f"wrote {gen_path} (a job array of {len(labels)} models, {manifest.slurm.eval_gpus} GPU(s) each), "
          f"{score_path} (scoring, after every task succeeded) and {submit_path}")
    if not args.submit:
        print(f"submit both with: {submit_path}")
        return 0
    try:
        job = submit(gen_path)
        scoring = submit(score_path, dependency=job)
    except SlurmError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"submitted job array {job} and scoring job {scoring} (runs after {job} succeeds)")
    return 0


def print_power(manifest, experiments: int) -> int:
    """Minimum detectable effect per declared hypothesis contrast, by simulation of the manifest's design."""
    from dataclasses import replace

    from normlib.core.evalsets import load_eval_set
    from normlib.core.jsonl import read_jsonl, write_json_atomic
    from normlib.eval.power import DEFAULTS, estimate_components, format_mde, minimum_detectable_effect

    out_dir = manifest.results_dir()
    scored = read_jsonl(out_dir / "scored.jsonl")
    hyps = [c for c in manifest.eval.contrasts if c.hypothesis]
    family = len(hyps) * len(manifest.model_keys())
    if not hyps:
        print("no hypothesis contrasts declared: nothing to size")
        return 0
    lines, done = [], {}
    for c in hyps:
        items = load_eval_set(manifest.resolve(manifest.eval.sets[c.set]), c.set)
        if c.where:
            items = [it for it in items if all(str(it.tag(k)).lower() == str(v).lower() for k, v in c.where.items())]
        templates = len({it.template_id or it.id for it in items}) or 1
        design = estimate_components(scored, c.set, c.minus_set) if scored else DEFAULTS
        design = replace(design, seeds=len(manifest.experiment.seeds), templates=templates,
                         items_per_template=max(1, round(len(items) / templates)),
                         samples=int(manifest.eval.greedy) + manifest.eval.samples)
        key = (design, family)
        if key not in done:
            done[key] = minimum_detectable_effect(design, family, manifest.eval.alpha, experiments=experiments)
        lines.append(format_mde(c.name, done[key], design))
        print(lines[-1], flush=True)
    source = f"variance components from {out_dir / 'scored.jsonl'}" if scored else \
        "stated default variance components (docs/preregistration.md, Power)"
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(out_dir / "power.json", {"lines": lines + [f"({source}; {experiments} simulated experiments per "
                                                                  f"effect size)"], "family": family})
    print(f"({source}); written: {out_dir / 'power.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
