"""Fine-tune the manifest's models on its arms: one run, or the whole matrix.

    python train.py --arm catholic --model smollm2 --seed 0
    torchrun --nproc_per_node 8 train.py --manifest manifest.toml --all
    python train.py --show-example 3 --arm catholic      # audit the label mask
    python train.py --estimate --gpus 8                   # memory per GPU, steps and disk per run
"""
from __future__ import annotations

import argparse
import sys

from normlib.core.manifest import ManifestError, add_manifest_arguments, load_manifest


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_manifest_arguments(ap, "train.lr=1e-5")
    ap.add_argument("--arm", help="arm to train")
    ap.add_argument("--model", help="[models] name (default: the first)")
    ap.add_argument("--seed", type=int, help="seed (default: the first of [experiment] seeds)")
    ap.add_argument("--method", help="training method (default: the first of [train] method)")
    ap.add_argument("--all", action="store_true", help="train every run of the matrix in turn")
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
        if args.all or args.estimate:
            runs = manifest.runs()
        elif args.arm:
            runs = [manifest.find_run(args.arm, model, seed, args.method)]
        else:
            print("train.py: give --arm ARM (with --model and --seed) or --all", file=sys.stderr)
            return 2
    except ManifestError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2

    # Heavy imports only after the arguments are known to be good.
    from normlib.train.data import DataError
    from normlib.core.locks import LockedError
    from normlib.train.loss import HeadMismatch
    from normlib.core.models import ModelLoadError
    from normlib.train.trainer import TrainingDiverged, init_distributed, train_run

    try:
        if args.estimate:
            return print_estimate(manifest, args.gpus)
        if args.show_example is not None:
            return show_example(manifest, runs[0], args.show_example)
        info = init_distributed(manifest.train.collective_timeout)
        for run in runs:
            train_run(manifest, run, info, force=args.force, progress=not args.no_progress)
    except (DataError, ModelLoadError, TrainingDiverged, HeadMismatch, LockedError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        import torch.distributed as dist
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
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
