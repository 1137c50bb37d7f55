"""The training loop: one run of the matrix, on one process or under torchrun (DDP or FSDP2).

Three parts, each readable in one go: `setup_run` (data, step plan, model, optimizer, resume),
`train_loop` (the optimizer steps) and `finish_run` (export, run.json, cleanup).

Per optimizer step, every rank takes its micro-batches of the step (the plan is computed alike on
every rank, so each rank knows the step's global number of supervised tokens without talking to the
others), and each micro-batch's *summed* loss is divided by that global number (times the world
size, since DDP and FSDP average gradients): the gradient equals that of one big batch however the
step is split over micro-batches and ranks.
"""
from __future__ import annotations

import contextlib
import dataclasses
import gc
import hashlib
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch.distributed.checkpoint.api import CheckpointException

from normlib.train import checkpoint as ckpt
from normlib.core.chat import ChatFormat
from normlib.train.costs import flops_per_token, matmul_peak_flops, mfu_per_gpu, peak_memory_gib
from normlib.train.data import (ArmData, DataError, MicroBatch, collate, empty_microbatch, plan_steps, prepare_arm_data)
from normlib.train.distributed import (DistInfo, PlacedModel, all_reduce_sum, any_rank, barrier, decoder_layers,
                                 gradient_sync, init_distributed, load_for_training)
from normlib.core.jsonl import JsonlAppender, read_jsonl, write_json_atomic, write_jsonl_atomic
from normlib.core.locks import LockedError
from normlib.train.runs import ClaimedError, clear_failure, record_failure, run_status, take_claim
from normlib.core.manifest import Manifest, Run
from normlib.core.models import export_model, load_tokenizer, resolve_model

__all__ = ["TrainingDiverged", "init_distributed", "lr_factor", "train_run", "run_status", "forward_backward"]

# [train] keys that change what a run computes; a saved state made under other values is not resumed
RESUME_KEYS = ("examples_per_arm", "epochs", "max_steps", "lr", "min_lr_ratio", "schedule", "warmup_ratio",
               "weight_decay", "betas", "eps", "grad_clip", "max_len", "examples_per_step", "precision")


class TrainingDiverged(RuntimeError):
    pass


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
                                  mb.labels.to(device, non_blocking=True), mb.packed)
            (summed * scale).backward()
        loss_sum += summed.detach().float()
    return loss_sum


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


# ----------------------------------------------------------------------------------------------
# Setup


def plan_digest(plan: list) -> str:
    """Which examples each step trains on (not how they are split over ranks), as a short hash."""
    steps = [sorted(i for rank in step for mb in rank if mb for row in mb for i in row) for step in plan]
    return hashlib.sha256(json.dumps(steps).encode()).hexdigest()[:16]


def run_identity(manifest: Manifest, run: Run, data: ArmData, plan: list, total_steps: int) -> dict:
    """What a resumable state must agree on with this run (see resume_problems)."""
    train = asdict(manifest.train)
    keys = RESUME_KEYS + (("lora_rank", "lora_alpha", "lora_dropout", "lora_target_modules") if run.method == "lora"
                          else ())
    return {"train": {k: train[k] for k in keys} | {"method": run.method}, "mix": manifest.arms[run.arm].mix,
            "model": asdict(manifest.models[run.model]), "chat": asdict(manifest.chat),
            "data": {c: s["sha256"] for c, s in data.composition["sources"].items()},
            "plan": plan_digest(plan), "total_steps": total_steps}


def resume_problems(saved: dict | None, current: dict) -> list[str]:
    """Differences between a saved state's identity and this run's, each naming what changed."""
    if not saved:
        return ["the saved state records no run identity (made by an older normlib)"]
    problems = []
    for section in ("train", "mix", "model", "chat", "data"):
        old, new = saved.get(section, {}), current[section]
        for key in sorted(set(old) | set(new)):
            if old.get(key) != new.get(key):
                where = {"train": "[train] ", "mix": "[arms] mix.", "model": "[models] ", "chat": "[chat] ",
                         "data": "training data of condition "}[section]
                problems.append(f"{where}{key}: {old.get(key)!r} in the saved state, {new.get(key)!r} now")
    if not problems and saved.get("plan") != current["plan"]:
        problems.append("the step plan (which examples each step trains on) differs")
    if not problems and saved.get("total_steps") != current["total_steps"]:
        problems.append(f"total steps: {saved.get('total_steps')} in the saved state, {current['total_steps']} now")
    return problems


@dataclass
class Setup:
    manifest: Manifest
    run: Run
    info: DistInfo
    run_dir: Path
    source: object
    tokenizer: object
    fmt: ChatFormat
    data: ArmData
    plan: list
    total_steps: int
    warmup_steps: int
    identity: dict
    placed: PlacedModel
    optimizer: torch.optim.Optimizer
    autocast_dtype: torch.dtype | None
    start_step: int = 0
    curve_steps: dict = field(default_factory=dict)  # step -> fraction of training, for learning-curve exports
    loss_history: list = field(default_factory=list)
    last_state: Path | None = None
    wall_start: float = field(default_factory=time.time)
    heartbeat: object = None  # refreshes this run's claim (rank 0), see normlib.train.runs


def _prepare_model(manifest: Manifest, run: Run):
    t = manifest.train

    def prepare(hf_model):
        if run.method == "lora":
            from normlib.train.lora import apply_lora
            apply_lora(hf_model, t.lora_rank, t.lora_alpha, t.lora_dropout, t.lora_target_modules)
            if t.activation_checkpointing:
                hf_model.enable_input_require_grads()  # frozen embeddings: checkpointed blocks still need grads
        if t.activation_checkpointing:
            hf_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if t.compile:
            for layer in decoder_layers(hf_model):
                layer.compile(dynamic=True)
        return hf_model
    return prepare


def _resume(setup: Setup) -> None:
    """Load the newest readable state that matches this run; a state that cannot be read is reported and the
    one before it tried; one that belongs to another configuration stops the run."""
    info, run = setup.info, setup.run
    for folder in reversed(ckpt.state_folders(setup.run_dir)):
        saved = ckpt.read_trainer_json(folder)
        problems = resume_problems(saved.get("identity") if saved else None, setup.identity) if saved else []
        if saved and problems:
            raise DataError(f"[{run.name}] the saved state {folder} was made for another configuration: "
                            f"{'; '.join(problems)}. Restore the old settings to resume, or rerun with --force to "
                            f"start this run again (the old folder is kept aside)")
        try:
            if saved is None:
                raise ValueError("trainer.json is unreadable")
            state = ckpt.load_state(folder, setup.placed.model, setup.optimizer, info.rank)
        except (Exception, CheckpointException) as e:  # a truncated shard: EOFError, or DCP's CheckpointException
            if info.is_main:
                print(f"warning: [{run.name}] the saved state {folder} cannot be read ({type(e).__name__}: "
                      f"{str(e)[:200]}); trying the one before it", file=sys.stderr)
            continue
        setup.start_step, setup.loss_history, setup.last_state = state["step"], state.get("loss_history", []), folder
        if info.is_main:
            print(f"[{run.name}] resuming from {folder} (step {setup.start_step} of {setup.total_steps})")
        return


def setup_run(manifest: Manifest, run: Run, info: DistInfo, force: bool = False) -> Setup | None:
    """Everything a run needs before its first step; None when the run finished earlier (and not --force)."""
    started = time.time()  # run.json's wall time counts loading and exporting too (train.py --plan uses it)
    run_dir = manifest.run_dir(run)
    if run_status(run_dir) == "finished" and not force:
        if info.is_main:
            print(f"[{run.name}] already finished ({run_dir / 'run.json'}); use --force to train it again")
        return None
    if force and info.is_main and run_dir.exists():
        backup = run_dir.with_name(f"{run_dir.name}.replaced-{time.strftime('%Y%m%d-%H%M%S')}")
        run_dir.rename(backup)  # keep what --force replaces instead of deleting it
        print(f"[{run.name}] --force: the previous run folder is kept as {backup}")
    barrier()
    run_dir.mkdir(parents=True, exist_ok=True)
    t = manifest.train
    torch.manual_seed(run.seed)

    model_cfg = manifest.models[run.model]
    source = resolve_model(model_cfg.path, manifest.root, model_cfg.revision, model_cfg.trust_remote_code)
    if info.world_size > 1 and not info.is_main and source.kind == "gguf":
        barrier()  # let rank 0 dequantise the GGUF into the cache first
    tokenizer = load_tokenizer(source)
    if info.world_size > 1 and info.is_main and source.kind == "gguf":
        barrier()
    fmt = ChatFormat.from_config(manifest.chat)
    data = prepare_arm_data(manifest, run, tokenizer, fmt)
    plan = plan_steps([len(e) for e in data.examples], t.examples_per_step, t.epochs, t.tokens_per_microbatch,
                      t.packing, info.world_size, run.seed)
    total_steps = min(len(plan), t.max_steps) if t.max_steps else len(plan)
    identity = run_identity(manifest, run, data, plan, total_steps)

    use_bf16 = t.precision == "bf16" or (t.precision == "auto" and info.device.type == "cuda")
    autocast_dtype = torch.bfloat16 if use_bf16 else None
    if run.method == "lora" and info.world_size > 1 and t.parallel == "auto":
        t = dataclasses.replace(t, parallel="ddp")  # LoRA under DDP: the frozen base fits on every GPU
    placed = load_for_training(source, info, t, autocast_dtype, prepare=_prepare_model(manifest, run),
                               head_check_ids=data.examples[0].input_ids)
    params = [p for p in placed.model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        [{"params": [p for p in params if p.ndim >= 2], "weight_decay": t.weight_decay},
         {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}],
        lr=t.lr, betas=tuple(t.betas), eps=t.eps, fused=info.device.type == "cuda")
    setup = Setup(manifest, run, info, run_dir, source, tokenizer, fmt, data, plan, total_steps,
                  int(t.warmup_ratio * total_steps), identity, placed, optimizer, autocast_dtype,
                  curve_steps=curve_steps(t.curve_points, total_steps), wall_start=started)
    _resume(setup)
    if info.is_main:
        write_json_atomic(run_dir / "composition.json", data.composition)
        # Log lines past the resumed step describe steps that are about to be redone.
        log_path = run_dir / "train_log.jsonl"
        write_jsonl_atomic(log_path, [r for r in read_jsonl(log_path) if r.get("step", 0) <= setup.start_step])
    return setup


# ----------------------------------------------------------------------------------------------
# The loop


@dataclass
class LoopResult:
    final_loss: float
    tokens: int
    supervised_tokens: int
    padded_tokens: int


def _step_counts(setup: Setup, step: int) -> tuple[int, int]:
    """Supervised and real tokens of the whole step, over all ranks, from the plan (no communication)."""
    examples = setup.data.examples
    supervised = real = 0
    for rank in setup.plan[step]:
        for mb in rank:
            for row in mb or []:
                for i in row:
                    supervised += examples[i].supervised_token_count
                    real += len(examples[i])
    return supervised, real


def train_loop(setup: Setup, progress: bool = True) -> LoopResult:
    run, info, t = setup.run, setup.info, setup.manifest.train
    model, mode, optimizer = setup.placed.model, setup.placed.mode, setup.optimizer
    pad = setup.tokenizer.pad_token_id
    log = JsonlAppender(setup.run_dir / "train_log.jsonl") if info.is_main else None
    peak = matmul_peak_flops(info.device)
    mean_len = sum(len(e) for e in setup.data.examples) / len(setup.data.examples)
    fpt = flops_per_token(setup.placed.hf_model.config, mean_len / 2)
    bar = None
    if info.is_main and progress:
        from tqdm import tqdm
        bar = tqdm(total=setup.total_steps, initial=setup.start_step, desc=run.name, unit="step", dynamic_ncols=True)
    totals = {"real": 0, "padded": 0, "supervised": 0}
    step_loss, window_start, window_tokens = float("nan"), time.perf_counter(), 0
    try:
        for step in range(setup.start_step, setup.total_steps):
            slots = setup.plan[step][info.rank]
            mine = [collate(setup.data.examples, rows, pad) if rows else empty_microbatch(pad) for rows in slots]
            supervised, real = _step_counts(setup, step)
            logged = (step + 1) % t.log_every == 0 or step + 1 == setup.total_steps
            padded = int(all_reduce_sum([sum(mb.padded_token_count for mb in mine)], info.device)[0]) if logged else 0
            lr = t.lr * lr_factor(step, setup.total_steps, setup.warmup_steps, t.schedule, t.min_lr_ratio)
            for group in optimizer.param_groups:
                group["lr"] = lr
            done = step + 1
            if supervised == 0:  # nothing to learn from: skip safely, never divide by zero
                grad_norm, step_loss = 0.0, float("nan")
            else:
                loss_sum = forward_backward(model, mode, mine, supervised, info.world_size, info.device,
                                            setup.autocast_dtype)
                norm = torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip if t.grad_clip > 0 else
                                                      float("inf"))
                norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm
                # Reading the loss and norm waits for the GPU: do it on logged steps only (and before a save).
                if logged or done % t.save_every == 0:
                    step_loss = all_reduce_sum([float(loss_sum)], info.device)[0] / supervised
                    grad_norm = float(norm)
                    if not (math.isfinite(step_loss) and math.isfinite(grad_norm)):
                        raise TrainingDiverged(
                            f"[{run.name}] loss {step_loss} / gradient norm {grad_norm} at step {done}: training "
                            f"diverged; the last good state is {setup.last_state or 'none (no state saved yet)'}. "
                            f"Lower [train] lr or check the data.")
                else:
                    step_loss, grad_norm = float("nan"), float("nan")
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            totals["real"] += real
            totals["supervised"] += supervised
            totals["padded"] += padded
            window_tokens += real
            setup.loss_history.append(step_loss)
            if setup.heartbeat is not None:
                setup.heartbeat()
            if info.is_main and logged:
                if info.device.type == "cuda":
                    torch.cuda.synchronize(info.device)
                seconds = time.perf_counter() - window_start
                tokens_per_s = window_tokens / seconds
                log.write({"step": done, "loss": step_loss, "lr": lr, "grad_norm": grad_norm, "tokens": real,
                           "supervised_tokens": supervised, "padded_tokens": padded, "seconds": seconds,
                           "tokens_per_s": tokens_per_s, "padding_fraction": 1 - real / padded if padded else None,
                           "peak_memory_gib": peak_memory_gib(info.device),
                           "mfu_per_gpu": mfu_per_gpu(tokens_per_s, info.world_size, fpt, peak)})
                window_start, window_tokens = time.perf_counter(), 0
            if bar is not None:
                bar.update(1)
                if math.isfinite(step_loss):
                    bar.set_postfix(loss=f"{step_loss:.4f}")
            if done in setup.curve_steps:
                export_curve_point(setup, done)
            if done % t.save_every == 0 and done < setup.total_steps:
                setup.last_state = ckpt.save_state(setup.run_dir, model, optimizer, {
                    "step": done, "total_steps": setup.total_steps, "loss_history": setup.loss_history,
                    "identity": setup.identity}, info.rank, t.keep_last)
    finally:
        if bar is not None:
            bar.close()
        if log is not None:
            log.close()
    return LoopResult(step_loss, totals["real"], totals["supervised"], totals["padded"])


def curve_steps(fractions: list[float], total_steps: int) -> dict[int, float]:
    """step -> fraction for the learning-curve exports (at least step 1, never the last step: that is model/)."""
    out = {}
    for f in sorted(fractions):
        step = max(1, round(f * total_steps))
        if step < total_steps:
            out[step] = f
    return out


def curve_dir(step: int) -> str:
    return f"model-step{step:06d}"


def export_to(setup: Setup, target: Path) -> None:
    """Export the model as it is now to `target` (temporary folder, then rename). Collective under FSDP (rank 0
    gathers the full weights and writes); a LoRA model is written merged, under the original weight names."""
    t = setup.manifest.train
    full_sd = ckpt.full_model_state_dict(setup.placed.hf_model) if setup.placed.mode == "fsdp" else None
    if not setup.info.is_main:
        return
    if setup.run.method == "lora":
        from normlib.train.lora import merged_state_dict
        full_sd = merged_state_dict(setup.placed.hf_model, full_sd)
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    export_model(setup.placed.hf_model, setup.tokenizer, tmp, setup.fmt, state_dict=full_sd,
                 dtype=torch.bfloat16 if t.export_dtype == "bf16" else torch.float32)
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)


def export_curve_point(setup: Setup, step: int) -> None:
    export_to(setup, setup.run_dir / curve_dir(step))
    barrier()


# ----------------------------------------------------------------------------------------------
# Finish


def finish_run(setup: Setup, result: LoopResult) -> dict | None:
    """Export (rank 0 gathers an FSDP model), write run.json last, then remove the resumable state."""
    manifest, run, info, t = setup.manifest, setup.run, setup.info, setup.manifest.train
    mode = setup.placed.mode
    export_to(setup, setup.run_dir / "model")
    summary = None
    if info.is_main:
        history = setup.loss_history
        composition = setup.data.composition
        summary = {
            "status": "finished", "run": run.name, "arm": run.arm, "model": run.model, "seed": run.seed,
            "method": run.method,
            "model_source": asdict(setup.source), "manifest": str(Path(manifest.source).resolve()),
            "manifest_hash": manifest.content_hash, "git": git_commit(Path(__file__).resolve().parent),
            "data": composition["sources"], "selected": composition["selected"],
            "examples_trained": len(setup.data.examples), "examples_per_step": t.examples_per_step,
            "epochs": t.epochs, "steps": setup.total_steps,
            "curve_exports": [{"step": step, "fraction": f, "dir": curve_dir(step)} for step, f in
                              sorted(setup.curve_steps.items()) if (setup.run_dir / curve_dir(step)).is_dir()],
            "supervised_tokens_per_epoch": sum(e.supervised_token_count for e in setup.data.examples),
            "resumed_from_step": setup.start_step, "world_size": info.world_size, "parallel": mode,
            "precision": "bf16" if setup.autocast_dtype else "fp32", "export_dtype": t.export_dtype,
            "device": torch.cuda.get_device_name(info.device) if info.device.type == "cuda" else "cpu",
            "tokens_this_session": result.tokens, "supervised_tokens_this_session": result.supervised_tokens,
            "first_loss": next((x for x in history if math.isfinite(x)), None), "final_loss": result.final_loss,
            "wall_seconds_this_session": time.time() - setup.wall_start, "versions": versions(),
            "argv": sys.argv, "finished_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "launcher": os.environ.get("NORMLIB_LAUNCHER", ""), "launch_id": os.environ.get("NORMLIB_LAUNCH_ID", ""),
        }
        write_json_atomic(setup.run_dir / "run.json", summary)
        if not t.keep_state:
            shutil.rmtree(setup.run_dir / ckpt.STATE_DIR, ignore_errors=True)
    barrier()
    return summary


def train_run(manifest: Manifest, run: Run, info: DistInfo, force: bool = False, progress: bool = True) -> dict | None:
    """One run, holding its claim (normlib.train.runs) so that no other launcher, here or on another machine,
    trains it at the same time. A run that fails records why in `<run>.failed.json` before the error goes on."""
    run_dir = manifest.run_dir(run)
    with contextlib.ExitStack() as stack:
        problem, claim = "", None
        if info.is_main:
            try:
                claim = stack.enter_context(take_claim(run_dir, manifest.train.claim_timeout))
            except LockedError as e:
                problem = str(e)
        if any_rank(bool(problem), info.device):
            raise ClaimedError(problem or f"run {run.name} is being trained by another process (see rank 0)")
        try:
            setup = setup_run(manifest, run, info, force)
            if setup is None:
                return None
            if claim is not None:
                setup.heartbeat = claim.beat
            try:
                result = train_loop(setup, progress)
                summary = finish_run(setup, result)
            finally:
                # `train.py --all` runs many models in one process: free this one before the next loads
                del setup
                gc.collect()
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
        except Exception as e:
            if info.is_main:
                record_failure(run_dir, run.name, e)
            raise
        if info.is_main:
            clear_failure(run_dir)
        return summary
