"""The training loop: one run of the matrix, on one process or under torchrun (DDP or FSDP2).

Read top to bottom: set up the processes, build the arm's data and the micro-batch plan, load and
wrap the model, then the loop. Per optimizer step every rank takes its micro-batches, the number of
supervised tokens is summed over all of them and all ranks, and each micro-batch's summed loss is
divided by that global number (times the world size, since DDP and FSDP average gradients), so the
gradient equals that of one big batch however the step is split (DESIGN-NOTES section 2).
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from normlib import checkpoint as ckpt
from normlib.chat import ChatFormat, EncodedExample, encode_example
from normlib.data import DataError, MicroBatch, collate, file_sha256, load_chat_examples, mix_arm, plan_microbatches
from normlib.jsonl import JsonlAppender, read_jsonl, write_jsonl_atomic
from normlib.loss import SupervisedLM
from normlib.manifest import Manifest, Run
from normlib.models import export_model, load_model, load_tokenizer, parameter_count, resolve_model

FSDP_AUTO_PARAMS = 3e9  # `parallel = "auto"` shards models above this many parameters


class TrainingDiverged(RuntimeError):
    pass


@dataclass
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed() -> DistInfo:
    """torchrun sets WORLD_SIZE/RANK/LOCAL_RANK; plain `python` is one process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return DistInfo(rank, world, local, device)


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum each value over all ranks, in one collective."""
    if not (dist.is_available() and dist.is_initialized()):
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def lr_factor(step: int, total_steps: int, warmup_steps: int, schedule: str, min_ratio: float) -> float:
    """Learning-rate multiplier for optimizer step `step` (0-based): linear warmup, then the decay."""
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant" or total_steps <= warmup_steps + 1:
        return 1.0
    progress = (step - warmup_steps) / (total_steps - warmup_steps - 1)
    progress = min(max(progress, 0.0), 1.0)
    if schedule == "linear":
        return 1.0 - (1.0 - min_ratio) * progress
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


# ----------------------------------------------------------------------------------------------
# Data


@dataclass
class ArmData:
    examples: list[EncodedExample]
    composition: dict
    dropped_too_long: int


def prepare_arm_data(manifest: Manifest, run: Run, tokenizer, fmt: ChatFormat) -> ArmData:
    arm = manifest.arms[run.arm]
    pools, sources = {}, {}
    for condition in arm.mix:
        path = manifest.generated_path(condition)
        pools[condition] = load_chat_examples(path, condition)
        sources[condition] = {"file": str(path), "sha256": file_sha256(path), "available": len(pools[condition])}
    chosen, counts = mix_arm(pools, arm.mix, manifest.train.examples_per_arm, run.seed)
    encoded, kept_ids, too_long = [], [], {c: 0 for c in counts}
    for ex in chosen:
        enc = encode_example(tokenizer, fmt, ex.prompt, ex.answer)
        if len(enc) > manifest.train.max_len:
            too_long[ex.condition] += 1  # truncating would cut the end marker and EOS: drop instead
            continue
        encoded.append(enc)
        kept_ids.append({"condition": ex.condition, "id": ex.meta.get("request_id", "")})
    composition = {
        "arm": run.arm, "seed": run.seed, "mix": arm.mix, "examples_per_arm": manifest.train.examples_per_arm,
        "selected": counts, "dropped_too_long": too_long, "trained": len(encoded), "sources": sources,
        "examples": kept_ids,
    }
    return ArmData(encoded, composition, sum(too_long.values()))


def step_plan(lengths: list[int], manifest: Manifest, seed: int, slots_per_step: int) -> tuple[list, int]:
    """All epochs' micro-batches in training order, trimmed per epoch to whole optimizer steps.
    Returns (plan, examples left out by the trimming)."""
    t = manifest.train
    plan, left_out = [], 0
    for epoch in range(t.epochs):
        batches = plan_microbatches(lengths, t.tokens_per_microbatch, t.max_len, t.packing, seed, epoch)
        usable = len(batches) - len(batches) % slots_per_step
        left_out += sum(len(row) for mb in batches[usable:] for row in mb)
        plan += batches[:usable]
    return plan, left_out


# ----------------------------------------------------------------------------------------------
# Model


def decoder_layers(hf_model) -> list[torch.nn.Module]:
    names = set(getattr(hf_model, "_no_split_modules", None) or [])
    layers = [m for m in hf_model.modules() if type(m).__name__ in names]
    if not layers:
        raise RuntimeError(f"cannot find the decoder blocks of {type(hf_model).__name__} to shard")
    return layers


def wrap_model(hf_model, manifest: Manifest, info: DistInfo, autocast_dtype) -> tuple[torch.nn.Module, str]:
    t = manifest.train
    if t.activation_checkpointing:
        hf_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if t.compile:
        for layer in decoder_layers(hf_model):
            layer.compile(dynamic=True)
    model = SupervisedLM(hf_model).to(info.device)
    if info.world_size == 1:
        return model, "single"
    mode = t.parallel if t.parallel != "auto" else ("fsdp" if parameter_count(hf_model) > FSDP_AUTO_PARAMS else "ddp")
    if mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP
        ids = [info.local_rank] if info.device.type == "cuda" else None
        return DDP(model, device_ids=ids), "ddp"
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    mp = MixedPrecisionPolicy(param_dtype=autocast_dtype, reduce_dtype=torch.float32) if autocast_dtype else \
        MixedPrecisionPolicy()
    for layer in decoder_layers(hf_model):
        fully_shard(layer, mp_policy=mp)
    fully_shard(model, mp_policy=mp)
    return model, "fsdp"


@contextlib.contextmanager
def gradient_sync(model, mode: str, sync: bool):
    """Skip the gradient all-reduce on all but the last micro-batch of a step."""
    if mode == "ddp" and not sync:
        with model.no_sync():
            yield
    elif mode == "fsdp":
        model.set_requires_gradient_sync(sync)
        yield
    else:
        yield


def forward_backward(model, mode: str, micro_batches: list[MicroBatch], global_supervised: int, world_size: int,
                     device: torch.device, autocast_dtype) -> torch.Tensor:
    """Accumulate this rank's gradients for one optimizer step; returns its summed loss (detached, fp32)."""
    loss_sum = torch.zeros((), dtype=torch.float32, device=device)
    scale = world_size / global_supervised
    for i, mb in enumerate(micro_batches):
        with gradient_sync(model, mode, sync=(i == len(micro_batches) - 1)):
            with torch.autocast(device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
                summed, _ = model(mb.input_ids.to(device, non_blocking=True),
                                  mb.position_ids.to(device, non_blocking=True),
                                  mb.labels.to(device, non_blocking=True))
            (summed * scale).backward()
        loss_sum += summed.detach().float()
    return loss_sum


def matmul_peak_flops(device: torch.device) -> float:
    """Measured bf16 matmul throughput (FLOP/s), the MFU denominator the anchor benchmark uses."""
    if device.type != "cuda":
        return float("nan")
    a = torch.randn(8192, 8192, device=device, dtype=torch.bfloat16)
    b = torch.randn_like(a)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(10):
        a @ b
    torch.cuda.synchronize()
    return 10 * 2 * 8192 ** 3 / (time.perf_counter() - start)


def flops_per_token(config, mean_context: float) -> float:
    """Training FLOPs per token (forward + backward), matmuls and attention scores, as in the anchor."""
    h, layers = config.hidden_size, config.num_hidden_layers
    heads = config.num_attention_heads
    kv = getattr(config, "num_key_value_heads", heads) * getattr(config, "head_dim", h // heads)
    per_layer = 2 * h * h + 2 * h * kv + 3 * h * config.intermediate_size
    return 6 * (layers * per_layer + h * config.vocab_size) + 12 * layers * h * mean_context


def peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # Linux reports KiB


def git_commit(folder: str | Path) -> dict:
    try:
        head = subprocess.run(["git", "-C", str(folder), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=10).stdout.strip()
        dirty = bool(subprocess.run(["git", "-C", str(folder), "status", "--porcelain", "--untracked-files=no"],
                                    capture_output=True, text=True, timeout=10).stdout.strip())
        return {"commit": head or None, "dirty": dirty}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def versions() -> dict:
    import transformers
    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__}


def run_status(run_dir: Path) -> str:
    path = run_dir / "run.json"
    return json.loads(path.read_text()).get("status", "") if path.exists() else ""


# ----------------------------------------------------------------------------------------------
# The run


def train_run(manifest: Manifest, run: Run, info: DistInfo, force: bool = False, progress: bool = True) -> dict | None:
    run_dir = manifest.run_dir(run)
    if run_status(run_dir) == "finished" and not force:
        if info.is_main:
            print(f"[{run.name}] already finished ({run_dir / 'run.json'}); use --force to train it again")
        return None
    if force and info.is_main and run_dir.exists():
        backup = run_dir.with_name(f"{run_dir.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}")
        run_dir.rename(backup)  # keep what --force replaces instead of deleting it
        print(f"[{run.name}] --force: the previous run folder is kept as {backup}")
    if info.world_size > 1:
        dist.barrier()
    run_dir.mkdir(parents=True, exist_ok=True)
    wall_start = time.time()
    t = manifest.train
    torch.manual_seed(run.seed)

    model_cfg = manifest.models[run.model]
    source = resolve_model(model_cfg.path, manifest.root, model_cfg.revision, model_cfg.trust_remote_code)
    if info.world_size > 1 and not info.is_main and source.kind == "gguf":
        dist.barrier()  # let rank 0 dequantise the GGUF into the cache first
    tokenizer = load_tokenizer(source)
    fmt = ChatFormat.from_config(manifest.chat)
    data = prepare_arm_data(manifest, run, tokenizer, fmt)
    if not data.examples:
        raise DataError(f"[{run.name}] no training examples left after dropping those over [train] max_len {t.max_len}")
    slots = info.world_size * t.grad_accum
    plan, left_out = step_plan([len(e) for e in data.examples], manifest, run.seed, slots)
    total_steps = len(plan) // slots
    if t.max_steps:
        total_steps = min(total_steps, t.max_steps)
    if total_steps == 0:
        raise DataError(f"[{run.name}] {len(data.examples)} examples make fewer micro-batches than one optimizer "
                        f"step needs ({slots}); lower [train] grad_accum or tokens_per_microbatch")
    warmup_steps = int(t.warmup_ratio * total_steps)

    use_bf16 = t.precision == "bf16" or (t.precision == "auto" and info.device.type == "cuda")
    autocast_dtype = torch.bfloat16 if use_bf16 else None
    hf_model = load_model(source, dtype=torch.float32, device="cpu", attn_implementation=t.attention)
    if info.world_size > 1 and info.is_main and source.kind == "gguf":
        dist.barrier()
    model, mode = wrap_model(hf_model, manifest, info, autocast_dtype)
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": t.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=t.lr, betas=tuple(t.betas), eps=t.eps, fused=info.device.type == "cuda")

    start_step, loss_history = 0, []
    states = ckpt.state_folders(run_dir)
    if states:
        state = ckpt.load_state(states[-1], model, optimizer, info.rank)
        start_step, loss_history = state["step"], state.get("loss_history", [])
        if state.get("total_steps") != total_steps:
            raise DataError(f"[{run.name}] the saved state at {states[-1]} was made for {state.get('total_steps')} "
                            f"steps, this manifest gives {total_steps}; use --force to start again")
        if info.is_main:
            print(f"[{run.name}] resuming from {states[-1]} (step {start_step} of {total_steps})")
    log_path = run_dir / "train_log.jsonl"
    if info.is_main:
        (run_dir / "composition.json").write_text(json.dumps(data.composition, indent=1))
        # Log lines past the resumed step describe steps that are about to be redone.
        write_jsonl_atomic(log_path, [r for r in read_jsonl(log_path) if r.get("step", 0) <= start_step])
    log = JsonlAppender(log_path) if info.is_main else None

    peak = matmul_peak_flops(info.device)
    mean_len = sum(len(e) for e in data.examples) / len(data.examples)
    fpt = flops_per_token(hf_model.config, mean_len / 2)
    bar = None
    if info.is_main and progress:
        from tqdm import tqdm
        bar = tqdm(total=total_steps, initial=start_step, desc=run.name, unit="step", dynamic_ncols=True)
    totals = {"real": 0, "padded": 0, "supervised": 0}
    step_loss = float("nan")
    last_state = states[-1] if states else None
    try:
        for step in range(start_step, total_steps):
            tick = time.perf_counter()
            step_batches = plan[step * slots:(step + 1) * slots]
            mine = [collate(data.examples, rows, tokenizer.pad_token_id)
                    for rows in step_batches[info.rank::info.world_size]]
            supervised, real, padded = (int(v) for v in all_reduce_sum(
                [sum(mb.supervised_token_count for mb in mine), sum(mb.real_token_count for mb in mine),
                 sum(mb.padded_token_count for mb in mine)], info.device))
            lr = t.lr * lr_factor(step, total_steps, warmup_steps, t.schedule, t.min_lr_ratio)
            for group in optimizer.param_groups:
                group["lr"] = lr
            if supervised == 0:  # nothing to learn from: skip safely, never divide by zero
                grad_norm, step_loss = 0.0, float("nan")
            else:
                loss_sum = forward_backward(model, mode, mine, supervised, info.world_size, info.device, autocast_dtype)
                step_loss = all_reduce_sum([loss_sum.item()], info.device)[0] / supervised
                max_norm = t.grad_clip if t.grad_clip > 0 else float("inf")
                norm = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
                grad_norm = float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)
                if not (math.isfinite(step_loss) and math.isfinite(grad_norm)):
                    raise TrainingDiverged(
                        f"[{run.name}] loss {step_loss} / gradient norm {grad_norm} at step {step + 1}: training "
                        f"diverged; the last good state is {last_state or 'none (no state saved yet)'}. Lower [train] "
                        f"lr or check the data.")
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            if info.device.type == "cuda":
                torch.cuda.synchronize(info.device)
            seconds = time.perf_counter() - tick
            totals["real"] += real
            totals["padded"] += padded
            totals["supervised"] += supervised
            loss_history.append(step_loss)
            done = step + 1
            if info.is_main and (done % t.log_every == 0 or done == total_steps):
                tokens_per_s = real / seconds
                log.write({"step": done, "loss": step_loss, "lr": lr, "grad_norm": grad_norm, "tokens": real,
                           "supervised_tokens": supervised, "padded_tokens": padded, "seconds": seconds,
                           "tokens_per_s": tokens_per_s, "padding_fraction": 1 - real / padded,
                           "peak_memory_gib": peak_memory_gib(info.device),
                           "mfu": tokens_per_s * fpt / peak if math.isfinite(peak) else None})
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{step_loss:.4f}", tok_s=f"{real / seconds:,.0f}")
            if done % t.save_every == 0 and done < total_steps:
                last_state = ckpt.save_state(run_dir, model, optimizer, {
                    "step": done, "total_steps": total_steps, "loss_history": loss_history}, info.rank, t.keep_last)
    finally:
        if bar is not None:
            bar.close()
        if log is not None:
            log.close()

    full_sd = ckpt.full_model_state_dict(hf_model) if mode == "fsdp" else None
    summary = None
    if info.is_main:
        tmp = run_dir / "model.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        export_model(hf_model, tokenizer, tmp, fmt, state_dict=full_sd)
        shutil.rmtree(run_dir / "model", ignore_errors=True)
        os.replace(tmp, run_dir / "model")
        summary = {
            "status": "finished", "run": run.name, "arm": run.arm, "model": run.model, "seed": run.seed,
            "model_source": asdict(source), "manifest": str(Path(manifest.source).resolve()),
            "manifest_hash": manifest.content_hash, "git": git_commit(Path(__file__).resolve().parent),
            "data": data.composition["sources"], "selected": data.composition["selected"],
            "examples_trained": len(data.examples), "dropped_too_long": data.dropped_too_long,
            "left_out_by_step_rounding": left_out, "steps": total_steps, "resumed_from_step": start_step,
            "world_size": info.world_size, "parallel": mode, "precision": "bf16" if use_bf16 else "fp32",
            "device": torch.cuda.get_device_name(info.device) if info.device.type == "cuda" else "cpu",
            "tokens_this_session": totals["real"], "supervised_tokens_this_session": totals["supervised"],
            "padding_fraction_this_session": (1 - totals["real"] / totals["padded"]) if totals["padded"] else None,
            "first_loss": next((x for x in loss_history if math.isfinite(x)), None), "final_loss": step_loss,
            "wall_seconds_this_session": time.time() - wall_start, "versions": versions(),
            "argv": sys.argv, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        (run_dir / "run.json").write_text(json.dumps(summary, indent=1))
    if info.world_size > 1:
        dist.barrier()
    return summary
