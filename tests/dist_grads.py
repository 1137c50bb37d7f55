"""Run under torchrun (gloo, CPU): one optimizer step's gradients for 8 fixed examples, split over ranks.

Each rank takes its share of the examples as micro-batches of `--batch` rows; the full gradient is
gathered on rank 0 and saved, so the test can compare it with the single-process result.
"""
import argparse
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from grad_setup import examples_and_model, micro_batches  # noqa: E402
from normlib.train.trainer import forward_backward, init_distributed  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--mode", choices=["ddp", "fsdp"], required=True)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    info = init_distributed()
    examples, hf_model, pad_id = examples_and_model()
    from normlib.train.loss import SupervisedLM
    model = SupervisedLM(hf_model)
    if a.mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP
        model = DDP(model)
    else:
        from torch.distributed.fsdp import fully_shard
        from normlib.train.trainer import decoder_layers
        for layer in decoder_layers(hf_model):
            fully_shard(layer)
        fully_shard(model)
    share = len(examples) // info.world_size
    mine = list(range(info.rank * share, (info.rank + 1) * share))
    mbs = micro_batches(examples, mine, a.batch, pad_id)
    local = sum(mb.supervised_token_count for mb in mbs)
    total = torch.tensor([local]); dist.all_reduce(total)
    loss = forward_backward(model, a.mode, mbs, int(total), info.world_size, info.device, None)
    grads = {}
    for name, p in hf_model.named_parameters():
        g = p.grad
        grads[name] = (g.full_tensor() if hasattr(g, "full_tensor") else g).clone()
    loss_t = loss.clone(); dist.all_reduce(loss_t)
    if info.rank == 0:
        torch.save({"grads": grads, "loss": float(loss_t) / int(total)}, a.out)
    dist.barrier()
    dist.destroy_process_group()
    # gloo's teardown in process destructors sometimes hangs in sandboxed kernels (seen under gVisor);
    # everything is written and synchronised, so leave without running them.
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
