"""Evaluation at scale: the plan (`eval.py --plan`) and Slurm job arrays (`eval.py --slurm`).

The Slurm route is two jobs: an array with one task per model label running `eval.py --generate-only
--only LABEL` on `[slurm] eval_gpus` GPUs, then one `eval.py --rescore` that starts only when every task
succeeded (`--dependency=afterok`) and judges, scores and writes the tables.
"""
from __future__ import annotations

import statistics
from pathlib import Path

from normlib.core.manifest import Manifest


def measured_answers_per_second(samples_dir: Path) -> tuple[float | None, int]:
    """Median generation rate over saved sample files (answers per second of one model's session), and how many
    files it is measured on; files with fewer than 20 answers or no time span are ignored."""
    from normlib.core.jsonl import read_jsonl
    rates = []
    for path in sorted(samples_dir.glob("*.jsonl")) if samples_dir.is_dir() else []:
        times = sorted(r["time"] for r in read_jsonl(path) if isinstance(r.get("time"), (int, float)))
        if len(times) >= 20 and times[-1] > times[0]:
            rates.append((len(times) - 1) / (times[-1] - times[0]))
    return (statistics.median(rates) if rates else None), len(rates)


def plan_lines(manifest: Manifest, evaluated: list, missing_runs: list[str], sets: dict, gpu_groups: int,
               gpus_per_group: int) -> list[str]:
    from normlib.eval.evaluation import expected_keys, read_samples, samples_file
    samples_dir = manifest.results_dir() / "samples"
    total_missing = 0
    lines = [f"{len(evaluated)} models to evaluate" + (f"; {len(missing_runs)} runs not trained yet are left out"
                                                       if missing_runs else "")]
    for ev in evaluated:
        expected = expected_keys(manifest, ev, sets)
        have = {r["key"] for r in read_samples(samples_file(samples_dir, ev.label))}
        todo = len(set(expected) - have)
        total_missing += todo
        lines.append(f"  {ev.label}: {len(expected)} answers, {todo} to generate")
    rate, n = measured_answers_per_second(samples_dir)
    backend = manifest.eval.backend
    where = (f"{gpu_groups} server(s) of {gpus_per_group} GPU(s)" if backend == "vllm" else
             "one process" if backend == "hf" else f"the server at {manifest.eval.base_url}")
    lines.append(f"answers to generate: {total_missing}, through {where}")
    if rate and total_missing:
        parallel = gpu_groups if backend == "vllm" else 1
        wall = total_missing / rate / parallel
        lines.append(f"estimate: {wall / 3600:.2f} h wall, {wall * parallel * gpus_per_group / 3600:.2f} GPU-hours, at "
                     f"{rate:.1f} answers/s per model (measured: median of {n} saved sample file(s))")
    elif total_missing:
        lines.append("estimate: none yet (no saved answers to measure a rate on); run one model first, e.g. "
                     f"eval.py --generate-only --only {evaluated[0].label}")
    judged = sum(1 for name, items in sets.items() for it in items if it.kind in ("violating", "benign", "control",
                                                                                    "belief"))
    lines.append(f"judge: up to {judged * (int(manifest.eval.greedy) + manifest.eval.samples) * len(evaluated)} "
                 f"verdicts in all (cached ones are free)" if manifest.judge else "judge: none (keyword scoring only)")
    return lines


def slurm_eval_scripts(manifest: Manifest, labels: list[str], overrides: list[str]) -> list[tuple[Path, str]]:
    """(path, text) of the generate array, the rescore job and submit.sh that chains them."""
    from normlib.core.slurm import sbatch_script
    cfg = manifest.slurm
    folder = manifest.resolve(cfg.script_dir) / manifest.experiment.name
    script = str(Path(__file__).resolve().parents[2] / "eval.py")
    common = ["--manifest", str(Path(manifest.source).resolve()), "--no-progress"]
    for o in overrides:
        common += ["--set", o]
    generate = sbatch_script(cfg, job_name=f"normlib-eval-{manifest.experiment.name}", units=labels,
                             command=["$PY", script, *common, "--generate-only", "--only", "${LABEL}"],
                             workdir=Path(manifest.root), log_dir=folder / "logs", gpus_per_task=cfg.eval_gpus,
                             unit_variable="LABEL")
    rescore = sbatch_script(cfg, job_name=f"normlib-score-{manifest.experiment.name}", units=None,
                            command=["$PY", script, *common, "--rescore"], workdir=Path(manifest.root),
                            log_dir=folder / "logs")
    gen_path, score_path = folder / "eval-generate.sbatch", folder / "eval-rescore.sbatch"
    submit = ("#!/bin/bash\n# written by normlib: the answers as a job array, then scoring once every task succeeded\n"
              "set -euo pipefail\n"
              f"JOB=$(sbatch --parsable {gen_path})\n"
              f"sbatch --dependency=afterok:${{JOB%%;*}} {score_path}\n")
    return [(gen_path, generate), (score_path, rescore), (folder / "eval-submit.sh", submit)]
