"""What a run costs: FLOPs per token and MFU, and `train.py --estimate` (memory per GPU, steps, disk).

MFU here is per GPU: real tokens per second per GPU x training FLOPs per token / the card's measured
bf16 matmul throughput (the denominator the HF Trainer anchor benchmark uses).

Memory model (bytes per parameter P, for fp32 master weights with AdamW): weights 4, gradients 4,
Adam moments 8; under FSDP each is divided by the world size, and one decoder block is gathered
whole at a time. bf16 autocast keeps bf16 copies of the weights in use (2 bytes; under FSDP, of the
gathered block). Activations per token and layer: about 34 x hidden bytes in bf16 without
checkpointing (Korthikanti et al. 2022, with attention scores not stored by flash/SDPA kernels), and
2 x hidden bytes with checkpointing plus one block's worth recomputed. Logits: normlib computes them
in chunks of LOGIT_CHUNK supervised positions (fp32, with their gradient).
"""
from __future__ import annotations

import math
import resource
import time
from dataclasses import dataclass

import torch

from normlib.train.loss import LOGIT_CHUNK, RECOMPUTE_ABOVE

GIB = 2 ** 30
CARD_GIB = 80.0  # the card size the warnings check against (H100/A100 80 GB)


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
    head_dim = getattr(config, "head_dim", None) or h // heads
    kv = (getattr(config, "num_key_value_heads", None) or heads) * head_dim
    per_layer = 2 * h * h + 2 * h * kv + 3 * h * config.intermediate_size
    return 6 * (layers * per_layer + h * config.vocab_size) + 12 * layers * h * mean_context


def mfu_per_gpu(tokens_per_s_all_gpus: float, world_size: int, flops_token: float, peak_flops: float) -> float | None:
    if not math.isfinite(peak_flops) or peak_flops <= 0:
        return None
    return tokens_per_s_all_gpus / world_size * flops_token / peak_flops


def peak_memory_gib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / GIB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # Linux reports KiB


@dataclass
class MemoryEstimate:
    weights: float
    gradients: float
    optimizer: float
    working_weights: float  # bf16 copies / the gathered FSDP block
    activations: float
    logits: float

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer + self.working_weights + self.activations + self.logits


def parameter_count_from_config(config) -> int:
    """Exact parameter count, by building the model on the meta device (no memory, no download of weights)."""
    from transformers import AutoModelForCausalLM
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


def estimate_memory(config, params: int, mode: str, world_size: int, tokens_per_microbatch: int,
                    activation_checkpointing: bool, bf16: bool, trainable_params: int | None = None) -> MemoryEstimate:
    """Bytes per GPU, by the module docstring's model."""
    trainable = params if trainable_params is None else trainable_params
    shard = world_size if mode == "fsdp" else 1
    h, layers = config.hidden_size, config.num_hidden_layers
    weights = 4 * params / shard
    gradients = 4 * trainable / shard
    optimizer = 8 * trainable / shard
    block = (params - h * config.vocab_size * (1 if getattr(config, "tie_word_embeddings", False) else 2)) / layers
    if mode == "fsdp":
        working = (2 if bf16 else 4) * 2 * block  # the gathered block and the next one, prefetched
    else:
        working = 2 * params if bf16 else 0.0
    act_bytes = 2 if bf16 else 4
    if activation_checkpointing:
        activations = tokens_per_microbatch * h * act_bytes * layers + 17 * tokens_per_microbatch * h * act_bytes
    else:
        activations = 17 * tokens_per_microbatch * h * act_bytes * layers
    vocab = config.vocab_size
    chunk = LOGIT_CHUNK if tokens_per_microbatch * vocab > RECOMPUTE_ABOVE else tokens_per_microbatch
    logits = chunk * vocab * 4 * 3  # fp32 logits, their softmax and gradient
    return MemoryEstimate(weights, gradients, optimizer, working, activations, logits)


def disk_per_run(params: int, trainable: int, export_bytes_per_param: int, keep_state: bool) -> dict:
    """Bytes on disk: the exported model, and the resumable state (fp32 weights + Adam moments: 12 bytes per parameter) while a run trains."""
    state = 4 * params + 8 * trainable
    return {"export": export_bytes_per_param * params, "state_while_training": state,
            "after_finish": export_bytes_per_param * params + (state if keep_state else 0)}


def estimate_lines(manifest, gpus: int) -> tuple[list[str], bool]:
    """`train.py --estimate`: per model, memory per GPU, steps per run and disk per run. Returns (lines, whether
    any configuration exceeds a CARD_GIB card)."""
    from normlib.train.distributed import parallel_mode
    from normlib.core.models import ModelLoadError, load_config, resolve_model

    t = manifest.train
    steps = t.epochs * -(-t.examples_per_arm // t.examples_per_step)
    if t.max_steps:
        steps = min(steps, t.max_steps)
    runs_per_model = len(manifest.arms) * len(manifest.experiment.seeds)
    bf16 = t.precision == "bf16" or (t.precision == "auto" and torch.cuda.is_available()) or \
        (t.precision == "auto" and gpus > 1)
    lines = [f"Training plan: {t.examples_per_arm} examples x {t.epochs} epochs in steps of {t.examples_per_step} "
             f"examples = {steps} optimizer steps per run, the same in every arm; {runs_per_model} runs per model.",
             f"Memory per GPU on {gpus} GPU(s), micro-batches of {t.tokens_per_microbatch} tokens, "
             f"activation checkpointing {'on' if t.activation_checkpointing else 'off'}, "
             f"{'bf16 autocast' if bf16 else 'fp32'}:"]
    too_big = False
    for name, cfg in manifest.models.items():
        try:
            config = load_config(resolve_model(cfg.path, manifest.root, cfg.revision, cfg.trust_remote_code))
        except ModelLoadError as e:
            lines.append(f"  {name}: cannot estimate: {e}")
            continue
        params = parameter_count_from_config(config)
        mode = parallel_mode(params, gpus, t.parallel) if gpus > 1 else "single"
        mem = estimate_memory(config, params, mode, gpus, t.tokens_per_microbatch, t.activation_checkpointing, bf16)
        disk = disk_per_run(params, params, 2 if t.export_dtype == "bf16" else 4, t.keep_state)
        fits = mem.total / GIB <= CARD_GIB
        too_big |= not fits
        lines += [
            f"  {name} ({cfg.path}): {params / 1e9:.2f}B parameters, {mode}",
            f"    weights {mem.weights / GIB:.1f} GiB + gradients {mem.gradients / GIB:.1f} + optimizer "
            f"{mem.optimizer / GIB:.1f} + working weights {mem.working_weights / GIB:.1f} + activations "
            f"{mem.activations / GIB:.1f} + logits {mem.logits / GIB:.1f} = {mem.total / GIB:.1f} GiB per GPU"
            + ("" if fits else f"  WARNING: over an {CARD_GIB:.0f} GB card; use parallel = \"fsdp\", "
                               f"activation_checkpointing = true or a smaller tokens_per_microbatch"),
            f"    disk per run: export {disk['export'] / 1e9:.1f} GB ({t.export_dtype}); resumable state "
            f"{disk['state_while_training'] / 1e9:.1f} GB while training"
            + (" (kept)" if t.keep_state else " (removed when the run finishes)")
            + f"; all {runs_per_model} runs keep {runs_per_model * disk['after_finish'] / 1e12:.2f} TB"]
    return lines, too_big


# ---- train.py --plan ----------------------------------------------------------------------------

ASSUMED_MFU = 0.35  # a planning assumption for bf16 training on current data-centre GPUs (stated in the output)
ASSUMED_PEAK_FLOPS = 989e12  # H100 SXM dense bf16
ASSUMED_OVERHEAD_S = 180.0  # loading and exporting one run of a 7-8B model from local disk, when nothing is measured


def measured_run_seconds(manifest, model: str) -> tuple[float | None, int]:
    """Median wall seconds of this model's finished runs that trained from step 0 (run.json), and how many."""
    import json
    import statistics
    seconds = []
    for run in manifest.runs():
        if run.model != model:
            continue
        try:
            info = json.loads((manifest.run_dir(run) / "run.json").read_text())
        except (OSError, ValueError):
            continue
        if info.get("status") == "finished" and not info.get("resumed_from_step"):
            seconds.append(float(info.get("wall_seconds_this_session", 0)))
    return (statistics.median(seconds) if seconds else None), len(seconds)


def tokens_per_run_guess(manifest, arm: str) -> float | None:
    """Tokens one run trains on, from the generated answers' characters (about 4 per token); None before gen.py."""
    import json
    chars, rows = 0, 0
    for cond in manifest.arms[arm].mix:
        path = manifest.generated_path(cond)
        if not path.exists():
            return None
        with open(path, encoding="utf-8") as f:
            for line in f:
                try:
                    r = json.loads(line)
                except ValueError:
                    continue
                chars += sum(len(m.get("content", "")) for m in r.get("messages", []))
                rows += 1
    if not rows:
        return None
    return chars / rows / 4 * manifest.train.examples_per_arm * manifest.train.epochs


def plan_lines(manifest, states, gpu_ids: str | None) -> list[str]:
    """The schedule of the runs still to train, with wall time and GPU-hours (measured when possible)."""
    from normlib.train.launcher import gpu_groups, visible_gpu_ids
    t = manifest.train
    ids = visible_gpu_ids(gpu_ids)
    assumed_box = not ids
    if assumed_box:
        ids = [str(i) for i in range(8)]
    per_run = t.gpus_per_run or len(ids)
    groups = gpu_groups(ids, per_run)
    todo = [s for s in states if s.status in ("todo", "failed")]
    lines = [f"{len(states)} runs: {sum(s.status == 'finished' for s in states)} finished, "
             f"{sum(s.status == 'running' for s in states)} running, {len(todo)} to train"
             + (f" ({sum(s.status == 'failed' for s in states)} of them failed before)" if any(
                 s.status == 'failed' for s in states) else ""),
             f"GPU groups: {len(groups)} x {per_run} GPU(s)" + (" (no GPU visible here: planned for an 8-GPU box; "
                                                               "give --gpu-ids to plan for another)" if assumed_box else "")]
    by_model: dict[str, list] = {}
    runs = {r.name: r for r in manifest.runs()}
    for s in todo:
        by_model.setdefault(runs[s.name].model, []).append(runs[s.name])
    total_wall = total_gpu_h = 0.0
    for model, model_runs in by_model.items():
        measured, n = measured_run_seconds(manifest, model)
        if measured is not None:
            per = measured
            how = f"measured: median of {n} finished run(s)"
        else:
            per = _flops_seconds(manifest, model, model_runs[0].arm, per_run)
            how = (f"assumed: {ASSUMED_MFU:.0%} MFU at {ASSUMED_PEAK_FLOPS / 1e12:.0f} TFLOP/s per GPU plus "
                   f"{ASSUMED_OVERHEAD_S / 60:.0f} min to load and export") if per else ""
        if not per:
            lines.append(f"  {model}: {len(model_runs)} runs; no estimate (no finished run to measure, and no generated "
                         f"data or model config to compute from)")
            continue
        rounds = -(-len(model_runs) // len(groups))
        wall, gpu_h = rounds * per, len(model_runs) * per * per_run / 3600
        total_wall += wall
        total_gpu_h += gpu_h
        lines.append(f"  {model}: {len(model_runs)} runs x {per / 60:.1f} min ({how}) in {rounds} round(s) of "
                     f"{len(groups)}: {wall / 3600:.1f} h wall, {gpu_h:.1f} GPU-hours")
    if total_wall:
        lines.append(f"total: {total_wall / 3600:.1f} h wall on this box, {total_gpu_h:.1f} GPU-hours "
                     f"(a Slurm array spreads the same GPU-hours over more machines)")
    return lines


def _flops_seconds(manifest, model: str, arm: str, gpus: int) -> float | None:
    from normlib.core.models import ModelLoadError, load_config, resolve_model
    cfg = manifest.models[model]
    tokens = tokens_per_run_guess(manifest, arm)
    if tokens is None:
        return None
    try:
        config = load_config(resolve_model(cfg.path, manifest.root, cfg.revision, cfg.trust_remote_code))
    except ModelLoadError:
        return None
    flops = flops_per_token(config, manifest.train.max_len / 4) * tokens
    return flops / (gpus * ASSUMED_PEAK_FLOPS * ASSUMED_MFU) + ASSUMED_OVERHEAD_S
