"""Run under torchrun (gloo, CPU): load a model for FSDP training the way train.py does and report, per rank,
how much the process's peak resident memory rose while loading, and the bytes of the shard it holds."""
import argparse
import json
import os
import resource
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from normlib.train.distributed import init_distributed, load_for_training  # noqa: E402
from normlib.core.manifest import TrainConfig  # noqa: E402
from normlib.core.models import resolve_model  # noqa: E402


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    info = init_distributed()
    import transformers.models.llama.modeling_llama  # noqa: F401  (imports are not what we measure)
    dist.barrier()
    before = peak_rss_bytes()
    placed = load_for_training(resolve_model(a.model), info, TrainConfig(examples_per_arm=1, parallel="fsdp"), None)
    after = peak_rss_bytes()
    shard = sum(p.to_local().numel() * p.element_size() for p in placed.model.parameters())
    from normlib.train.checkpoint import full_model_state_dict
    full = full_model_state_dict(placed.hf_model)
    if info.is_main:
        from safetensors.torch import load_file
        stored = load_file(str(Path(a.model) / "model.safetensors"))
        mismatched = [k for k in stored if not torch.equal(stored[k], full[k])]
    report = {"rank": info.rank, "rise": after - before, "shard": shard,
              "mismatched": mismatched if info.is_main else None}
    with open(f"{a.out}.rank{info.rank}.json", "w") as f:
        json.dump(report, f)
    dist.barrier()
    dist.destroy_process_group()
    sys.stdout.flush()
    os._exit(0)  # see dist_grads.py: gloo's teardown can hang in sandboxed kernels


if __name__ == "__main__":
    main()
