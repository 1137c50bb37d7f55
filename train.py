"""Fine-tune the manifest's models on its arms: one run, or the whole matrix.

    python train.py --arm catholic --model smollm2 --seed 0
    torchrun --nproc_per_node 8 train.py --manifest manifest.toml --all
    python train.py --show-example 3 --arm catholic      # audit the label mask
    python train.py --estimate --gpus 8                   # memory per GPU, steps and disk per run
    python train.py --list-runs                           # the matrix with each run's status
    python train.py --all                                 # with [train] gpus_per_run: one torchrun per GPU group
    python train.py --plan                                # schedule, wall time and GPU-hours
    python train.py --slurm [--submit]                    # an sbatch job array, one task per run
    torchrun ... train.py --run-index $SLURM_ARRAY_TASK_ID  # one run of the matrix by position
"""
from __future__ import annotations

import argparse
import difflib
import os
import signal
import sys
import traceback

from normlib.core.manifest import ManifestError, add_manifest_arguments, load_manifest


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_manifest_arguments(ap, "train.lr=1e-5")
    ap.add_argument("--arm", help="arm to train")
    ap.add_argument("--model", help="[models] name (default: the first)")
    ap.add_argument("--seed", type=int, help="seed (default: the first of [experiment] seeds)")
    ap.add_argument("--method", help="training method (default: the first of [train] method)")
    ap.add_argument("--all", action="store_true", help="train every run of the matrix: in turn, or with [train] "
                    "gpus_per_run one run per GPU group at once")
    # --run-name is the same option: under torchrun, "--run" would be taken for torchrun's own --run-path
    ap.add_argument("--run", "--run-name", dest="run", metavar="NAME", help="train one run by name (see --list-runs); "
                    "write --run-name under torchrun")
    ap.add_argument("--run-index", type=int, metavar="I", help="train run number I of --list-runs (0-based; for job "
                    "arrays)")
    ap.add_argument("--list-runs", action="store_true", help="print every run with its status, then exit")
    ap.add_argument("--plan", action="store_true", help="print the schedule with wall time and GPU-hours, then exit")
    ap.add_argument("--slurm", action="store_true", help="write an sbatch job array for the runs not finished")
    ap.add_argument("--submit", action="store_true", help="--slurm: also submit it with sbatch")
    ap.add_argument("--gpu-ids", metavar="IDS", help="GPU ids to launch on, e.g. 0,1,2,3 (default: "
                    "CUDA_VISIBLE_DEVICES or every GPU)")
    ap.add_argument("--force", action="store_true", help="train finished runs again (the old folder is kept aside)")
    ap.add_argument("--show-example", type=int, metavar="N",
                    help="print example N of the arm's training set with the trained tokens marked, then exit")
    ap.add_argument("--estimate", action="store_true",
                    help="print memory per GPU, steps per run and disk per run for each model, then exit")
    ap.add_argument("--gpus", type=int, default=None, help="--estimate: GPUs per run (default: those visible, or 1)")
    ap.add_argument("--no-progress", action="store_true", help="no progress bar")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        manifest = load_manifest(args.manifest, args.overrides)
        model = args.model or next(iter(manifest.models))
        seed = args.seed if args.seed is not None else manifest.experiment.seeds[0]
        matrix = manifest.runs()
        if args.run is not None:
            runs = [r for r in matrix if r.name == args.run]
            if not runs:
                close = difflib.get_close_matches(args.run, [r.name for r in matrix], n=3)
                raise ManifestError(f"{manifest.source}: no run '{args.run}'" +
                                    (f"; did you mean {', '.join(close)}?" if close else "; see --list-runs"))
        elif args.run_index is not None:
            if not 0 <= args.run_index < len(matrix):
                raise ManifestError(f"{manifest.source}: --run-index {args.run_index}: the matrix has {len(matrix)} "
                                    f"runs (0..{len(matrix) - 1})")
            runs = [matrix[args.run_index]]
        elif args.all or args.estimate or args.list_runs or args.plan or args.slurm:
            runs = matrix
        elif args.arm:
            runs = [manifest.find_run(args.arm, model, seed, args.method)]
        else:
            print("train.py: give --arm ARM (with --model and --seed), --run NAME, --run-index I or --all",
                  file=sys.stderr)
            return 2
    except ManifestError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    from normlib.train.runs import format_run_states, run_states
    if args.list_runs:
        print(format_run_states(run_states(manifest)))
        return 0
    if args.slurm:
        return write_slurm(manifest, args)
    if args.plan:
        from normlib.train.costs import plan_lines
        from normlib.train.launcher import LaunchError
        try:
            print("\n".join(plan_lines(manifest, run_states(manifest), args.gpu_ids)))
        except LaunchError as e:
            print(f"error: {e}", file=sys.stderr)
            return 2
        return 0
    if args.all and manifest.train.gpus_per_run and "LOCAL_RANK" not in os.environ and not args.estimate:
        return launch_groups(manifest, runs, args)

    # Heavy imports only after the arguments are known to be good.
    from normlib.core.locks import LockedError
    from normlib.core.models import ModelLoadError
    from normlib.train.data import DataError
    from normlib.train.loss import HeadMismatch
    from normlib.train.launcher import CLAIMED_EXIT, raise_interrupt
    from normlib.train.runs import ClaimedError
    from normlib.train.trainer import TrainingDiverged, init_distributed, train_run

    # SIGTERM (Slurm's time limit, a launcher's Ctrl-C) ends the run like Ctrl-C: its claim is released
    signal.signal(signal.SIGTERM, raise_interrupt)
    failed = []
    try:
        if args.estimate:
            return print_estimate(manifest, args.gpus)
        if args.show_example is not None:
            return show_example(manifest, runs[0], args.show_example)
        info = init_distributed(manifest.train.collective_timeout)
        for run in runs:
            try:
                train_run(manifest, run, info, force=args.force, progress=not args.no_progress)
            except ClaimedError as e:
                print(f"skipped: {e}", file=sys.stderr)
                if len(runs) == 1:
                    return CLAIMED_EXIT
            except (DataError, ModelLoadError, TrainingDiverged, HeadMismatch, LockedError) as e:
                print(f"error: {e}", file=sys.stderr)
                failed.append(run.name)
                if len(runs) > 1:  # the failure is recorded in <run>.failed.json; the other runs go on
                    print(f"[{run.name}] failed; going on with the other runs", file=sys.stderr)
            except Exception:
                # anything else (out of memory, a bug): in one process the next run starts clean; under torchrun
                # the ranks may disagree about what failed, so the job stops (the failure is recorded)
                if len(runs) == 1 or info.world_size > 1:
                    raise
                traceback.print_exc()
                failed.append(run.name)
                print(f"[{run.name}] failed; going on with the other runs", file=sys.stderr)
    except KeyboardInterrupt:
        print("interrupted; a rerun resumes from the last saved state", file=sys.stderr)
        return 130
    finally:
        import torch.distributed as dist
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    if failed and len(runs) > 1:
        print(f"error: {len(failed)} of {len(runs)} runs failed: {', '.join(failed)} (see train.py --list-runs)",
              file=sys.stderr)
    return 1 if failed else 0


def launch_groups(manifest, runs, args) -> int:
    from normlib.train.launcher import LaunchError, gpu_groups, launch, visible_gpu_ids
    try:
        groups = gpu_groups(visible_gpu_ids(args.gpu_ids), manifest.train.gpus_per_run)
    except LaunchError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"training {len(runs)} runs on {len(groups)} GPU group(s): "
          + " ".join("[" + ",".join(g) + "]" for g in groups), flush=True)
    try:
        outcome = launch(manifest, runs, groups, args.overrides)
    except KeyboardInterrupt:
        return 130
    print(f"{len(outcome.finished)} trained, {len(outcome.skipped)} skipped (finished or claimed elsewhere), "
          f"{len(outcome.failed)} failed")
    for line in outcome.failed:
        print(f"  failed: {line}", file=sys.stderr)
    return 1 if outcome.failed else 0


def write_slurm(manifest, args) -> int:
    from normlib.core.slurm import SlurmError, submit, write_script
    from normlib.train.launcher import slurm_train_script
    from normlib.train.runs import run_states
    todo = {s.name for s in run_states(manifest) if s.status != "finished"}
    runs = [r for r in manifest.runs() if r.name in todo]
    if not runs:
        print("every run is finished; nothing to submit")
        return 0
    path, text = slurm_train_script(manifest, runs, args.overrides)
    write_script(path, text)
    print(f"wrote {path}: a job array of {len(runs)} runs, {manifest.train.gpus_per_run or 1} GPU(s) each")
    if not args.submit:
        print(f"submit it with: sbatch {path}")
        return 0
    try:
        job = submit(path)
    except SlurmError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"submitted job {job}; watch it with: squeue -j {job}; python train.py --list-runs")
    return 0


def print_estimate(manifest, gpus: int | None) -> int:
    import torch
    from normlib.train.costs import estimate_lines
    gpus = gpus or max(1, torch.cuda.device_count())
    lines, too_big = estimate_lines(manifest, gpus)
    print("\n".join(lines))
    return 0


def show_example(manifest, run, index: int) -> int:
    from normlib.core.chat import ChatFormat
    from normlib.core.chat import render_example
    from normlib.core.models import load_tokenizer, resolve_model
    from normlib.train.data import prepare_arm_data

    cfg = manifest.models[run.model]
    tokenizer = load_tokenizer(resolve_model(cfg.path, manifest.root, cfg.revision, cfg.trust_remote_code))
    data = prepare_arm_data(manifest, run, tokenizer, ChatFormat.from_config(manifest.chat))
    if not 0 <= index < len(data.examples):
        print(f"error: --show-example {index}: the arm has {len(data.examples)} examples (0..{len(data.examples) - 1})",
              file=sys.stderr)
        return 2
    example = data.examples[index]
    print(f"# {run.name}, example {index} of {len(data.examples)}: {len(example)} tokens, "
          f"{example.supervised_token_count} trained (marked {'in green' if sys.stdout.isatty() else 'with ⟦ ⟧'})")
    print(render_example(tokenizer, example, color=sys.stdout.isatty()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
