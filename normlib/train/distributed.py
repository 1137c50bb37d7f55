"""Processes, model placement and wrapping for training: one process, DDP or FSDP2.

Loading a large model on every rank would need the whole fp32 model in host memory once per GPU
(257 GB for an 8B model on 8 GPUs). Here rank 0 alone reads the checkpoint (memory-mapped by
safetensors); the other ranks build the model on the meta device (no memory at all) and receive
the weights: DDP broadcasts rank 0's parameters and buffers when it wraps the model, and under
FSDP2 every rank allocates only its own shard, which set_model_state_dict fills from rank 0's
tensors one at a time.
"""
from __future__ import annotations

import contextlib
import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from normlib.train.loss import HeadMismatch, SupervisedLM, check_head
from normlib.core.models import build_meta_model, load_model, parameter_count

FSDP_AUTO_PARAMS = 3e9  # `parallel = "auto"` shards models above this many parameters


@dataclass
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(timeout_s: float = 3600.0) -> DistInfo:
    """torchrun sets WORLD_SIZE/RANK/LOCAL_RANK; plain `python` is one process. `timeout_s` bounds every
    collective, including the barrier where ranks wait for rank 0 to export a large model."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                timeout=datetime.timedelta(seconds=timeout_s))
    return DistInfo(rank, world, local, device)


def distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def barrier() -> None:
    if distributed():
        dist.barrier()


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum each value over all ranks, in one collective."""
    if not distributed():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank when it is true on at least one."""
    return all_reduce_sum([1.0 if flag else 0.0], device)[0] > 0


def decoder_layers(hf_model) -> list[torch.nn.Module]:
    names = set(getattr(hf_model, "_no_split_modules", None) or [])
    layers = [m for m in hf_model.modules() if type(m).__name__ in names]
    if not layers:
        raise RuntimeError(f"cannot find the decoder blocks of {type(hf_model).__name__} to shard")
    return layers


def parallel_mode(param_count: int, world_size: int, configured: str) -> str:
    if world_size == 1:
        return "single"
    if configured != "auto":
        return configured
    return "fsdp" if param_count > FSDP_AUTO_PARAMS else "ddp"


@dataclass
class PlacedModel:
    hf_model: torch.nn.Module  # the transformers model whose parameters are trained (inside `model`)
    model: torch.nn.Module  # what forward/backward run on: SupervisedLM, possibly DDP- or FSDP-wrapped
    mode: str  # single | ddp | fsdp


def load_for_training(src, info: DistInfo, train_cfg, autocast_dtype, prepare=None,
                      head_check_ids: list[int] | None = None) -> PlacedModel:
    """Load the model once (rank 0), place it on this rank's device, and wrap it for the parallel mode.
    `prepare(hf_model)` runs on every rank before wrapping (activation checkpointing, compile, LoRA). With
    `head_check_ids`, rank 0 first checks that the loss's use of the output head matches the model's forward."""
    real = load_model(src, dtype=torch.float32, device="cpu", attn_implementation=train_cfg.attention) \
        if info.is_main else None
    problem = ""
    if info.is_main and head_check_ids:
        try:
            check_head(real, torch.tensor([head_check_ids[:64]]))
        except HeadMismatch as e:
            problem = str(e)
    if any_rank(bool(problem), info.device):
        raise HeadMismatch(problem or "rank 0 found that the output head does not match the model's forward")
    if info.world_size == 1:
        hf_model = real
        if prepare is not None:
            hf_model = prepare(hf_model)
        hf_model.train()
        return PlacedModel(hf_model, SupervisedLM(hf_model).to(info.device), "single")
    meta = build_meta_model(src, dtype=torch.float32, attn_implementation=train_cfg.attention)
    mode = parallel_mode(parameter_count(meta), info.world_size, train_cfg.parallel)
    if mode == "ddp":
        hf_model = real if info.is_main else meta
        if prepare is not None:
            hf_model = prepare(hf_model)
        hf_model.train()
        wrapper = SupervisedLM(hf_model)
        if info.is_main:
            wrapper.to(info.device)
        else:
            wrapper.to_empty(device=info.device)
            hf_model.tie_weights()  # to_empty gives tied parameters separate storage; tie them again
        from torch.nn.parallel import DistributedDataParallel as DDP
        ids = [info.local_rank] if info.device.type == "cuda" else None
        # DDP broadcasts rank 0's parameters and buffers (rotary tables included) to every rank here
        return PlacedModel(hf_model, DDP(wrapper, device_ids=ids), "ddp")
    hf_model = meta
    if prepare is not None:
        hf_model = prepare(hf_model)
    hf_model.train()
    wrapper = SupervisedLM(hf_model)
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    mp = MixedPrecisionPolicy(param_dtype=autocast_dtype, reduce_dtype=torch.float32) if autocast_dtype else \
        MixedPrecisionPolicy()
    for layer in decoder_layers(hf_model):
        fully_shard(layer, mp_policy=mp)
    fully_shard(wrapper, mp_policy=mp)
    wrapper.to_empty(device=info.device)
    _fill_shards_from_rank0(wrapper, real, info)
    return PlacedModel(hf_model, wrapper, "fsdp")


def _fill_shards_from_rank0(wrapper: torch.nn.Module, real, info: DistInfo) -> None:
    """Scatter rank 0's weights into every rank's FSDP2 shard (dim-0 chunks, as fully_shard splits them), one
    parameter at a time: a rank never holds more than its shard plus one chunk in flight."""
    own = {f"lm.{k}": v for k, v in real.state_dict(keep_vars=True).items()} if info.is_main else {}
    world = info.world_size
    with torch.no_grad():
        for name, param in wrapper.named_parameters():
            local = param.to_local() if hasattr(param, "to_local") else param
            rows = param.shape[0]
            chunk_rows = -(-rows // world)
            buffer = torch.empty((chunk_rows, *param.shape[1:]), dtype=local.dtype, device=info.device)
            chunks = None
            if info.is_main:
                full = own[name].detach().to(device=info.device, dtype=local.dtype)
                chunks = [torch.zeros_like(buffer) for _ in range(world)]
                for r, piece in enumerate(torch.split(full, chunk_rows, dim=0)):
                    chunks[r][:piece.shape[0]].copy_(piece)
            dist.scatter(buffer, chunks, src=0)
            local.copy_(buffer[:local.shape[0]])
        # Buffers outside the state dict (rotary inv_freq tables) were left uninitialised by to_empty: send rank 0's.
        own_buffers = dict(real.named_buffers()) if info.is_main else {}
        for name, buf in wrapper.named_buffers():
            if info.is_main:
                buf.copy_(own_buffers[name[len("lm."):]].to(buf.device))
            dist.broadcast(buf, src=0)


@contextlib.contextmanager
def gradient_sync(model, mode: str, sync: bool):
    """DDP: all-reduce only on the last micro-batch of a step. FSDP2 reduce-scatters every micro-batch, so no
    rank ever holds unsharded fp32 gradients for the whole model (32 GB at 8B) between micro-batches."""
    if mode == "ddp" and not sync:
        with model.no_sync():
            yield
    else:
        yield
