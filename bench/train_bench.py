"""Training throughput: train.py's batching against the Hugging Face Trainer and a naive loop, same model and data.

Data: the chat-length distribution of ../shared/bench/anchor_train.py (prompt 20-200 tokens, masked;
answer lognormal with median ~245 tokens; at most max_len). Every variant first warms up on a
separate set of examples, then is timed over one pass of the same timed set: the same examples and
real (non-padding) tokens in every variant, counted exactly, so the ratios compare speed alone:
  naive               random order, `--batch` examples per step padded to the longest, the model's own loss
  hf_trainer          transformers.Trainer, default sampling (random batches of `--batch`)
  hf_trainer_grouped  transformers.Trainer with length grouping (the route a user would pick)
  normlib_rows        train.py's steps (`--batch` examples each) as one-example rows of similar length, loss only
                      at supervised positions, exact normalisation (normlib.train.trainer.forward_backward)
  normlib_packed      the same with packed rows (pays off with flex/flash attention on a GPU)
Each variant runs `--repeats` times, interleaved; the table gives the median and the range.

    python bench/train_bench.py --size small --repeats 3     # CPU
    python bench/train_bench.py --gpu --size 1b              # GPU: also runs the HF Trainer anchor on the same card
Results are appended to bench/RESULTS.md with the machine, versions and date.
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import platform
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from normlib.core.chat import IGNORE_INDEX, EncodedExample  # noqa: E402
from normlib.train.costs import flops_per_token, matmul_peak_flops, peak_memory_gib  # noqa: E402
from normlib.train.data import collate, empty_microbatch, plan_steps  # noqa: E402
from normlib.train.loss import SupervisedLM  # noqa: E402
from normlib.train.trainer import forward_backward  # noqa: E402

SIZES = {  # as in the anchor; "small" is a CPU-sized middle ground
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
               num_key_value_heads=8, vocab_size=128256),
    "3b": dict(hidden_size=3072, intermediate_size=8192, num_hidden_layers=28, num_attention_heads=24,
               num_key_value_heads=8, vocab_size=128256),
    "small": dict(hidden_size=256, intermediate_size=768, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=8000),
    "tiny": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, vocab_size=1000),
}
ANCHOR = ROOT.parent / "shared" / "bench" / "anchor_train.py"
VARIANTS = ("naive", "hf_trainer", "hf_trainer_grouped", "normlib_rows", "normlib_packed")


def make_examples(n: int, vocab: int, max_len: int, seed: int = 0) -> list[EncodedExample]:
    """Same distribution as the anchor's make_examples."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        p = int(torch.randint(20, 200, (1,), generator=g))
        r = int(min(max_len - p, math.exp(torch.normal(5.5, 0.7, (1,), generator=g).item())))
        r = max(r, 8)
        ids = torch.randint(3, vocab, (p + r,), generator=g).tolist()
        out.append(EncodedExample(ids, [IGNORE_INDEX] * p + ids[p:]))
    return out


def build_model(size: str, device: torch.device, attn: str):
    from transformers import LlamaConfig, LlamaForCausalLM
    cfg = LlamaConfig(**SIZES[size], max_position_embeddings=4096, tie_word_embeddings=True)
    cfg._attn_implementation = attn
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).to(device)
    model.config.use_cache = False
    model.train()
    return model


def padded_batch(examples, indices):
    width = max(len(examples[i]) for i in indices)
    ids = torch.zeros((len(indices), width), dtype=torch.long)
    labels = torch.full((len(indices), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(indices), width), dtype=torch.long)
    for r, i in enumerate(indices):
        n = len(examples[i])
        ids[r, :n], labels[r, :n], mask[r, :n] = torch.tensor(examples[i].input_ids), torch.tensor(
            examples[i].labels), 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def run_naive(warm, timed, args, device, autocast) -> tuple[float, int, int]:
    model = build_model(args.size, device, args.attn)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=device.type == "cuda")
    real = padded = 0
    start = 0.0
    for phase, examples in (("warm", warm), ("timed", timed)):
        order = list(range(len(examples)))
        random.Random(0).shuffle(order)
        if phase == "timed":
            _sync(device)
            start = time.perf_counter()
        for k in range(0, len(order), args.batch):
            b = padded_batch(examples, order[k:k + args.batch])
            with torch.autocast(device.type, dtype=autocast or torch.float32, enabled=autocast is not None):
                loss = model(**{key: v.to(device) for key, v in b.items()}).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            if phase == "timed":
                real += int(b["attention_mask"].sum())
                padded += b["input_ids"].numel()
    _sync(device)
    return time.perf_counter() - start, real, padded


def run_trainer(warm, timed, args, device, grouped: bool) -> tuple[float, int, int]:
    from transformers import Trainer, TrainerCallback, TrainingArguments
    model = build_model(args.size, device, args.attn)
    counts = {"real": 0, "padded": 0, "timing": False, "start": 0.0, "end": 0.0}

    class Timer(TrainerCallback):
        def on_train_begin(self, a, state, control, **kw):
            if counts["timing"]:
                _sync(device)
                counts["start"] = time.perf_counter()

        def on_train_end(self, a, state, control, **kw):
            if counts["timing"]:
                _sync(device)
                counts["end"] = time.perf_counter()

    def count_tokens(module, args_, kwargs):  # exact: every forward of the timed pass, from its attention mask
        if counts["timing"] and kwargs.get("attention_mask") is not None:
            counts["real"] += int(kwargs["attention_mask"].sum())
            counts["padded"] += kwargs["attention_mask"].numel()
    model.register_forward_pre_hook(count_tokens, with_kwargs=True)

    def collate_fn(batch):
        return padded_batch([EncodedExample(b["input_ids"].tolist(), b["labels"].tolist()) for b in batch],
                            list(range(len(batch))))
    for phase, examples in (("warm", warm), ("timed", timed)):
        data = [{"input_ids": torch.tensor(e.input_ids), "labels": torch.tensor(e.labels)} for e in examples]
        kw = dict(output_dir=tempfile.mkdtemp(), per_device_train_batch_size=args.batch, num_train_epochs=1,
                  bf16=device.type == "cuda", learning_rate=1e-5, logging_steps=10 ** 6, report_to=[],
                  save_strategy="no", dataloader_num_workers=0, remove_unused_columns=False,
                  use_cpu=device.type != "cuda", disable_tqdm=True, seed=0)
        try:  # transformers 4.x / early 5.x spelling, then the later one
            targs = TrainingArguments(**kw, group_by_length=grouped)
        except TypeError:
            targs = TrainingArguments(**kw, train_sampling_strategy="group_by_length" if grouped else "random")
        counts["timing"] = phase == "timed"
        Trainer(model=model, args=targs, train_dataset=data, data_collator=collate_fn, callbacks=[Timer()]).train()
    return counts["end"] - counts["start"], counts["real"], counts["padded"]


def run_normlib(warm, timed, args, device, autocast, packing: bool) -> tuple[float, int, int]:
    model = build_model(args.size, device, args.attn)
    wrapped = SupervisedLM(model)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=device.type == "cuda")
    real = padded = 0
    start = 0.0
    for phase, examples in (("warm", warm), ("timed", timed)):
        plan = plan_steps([len(e) for e in examples], args.batch, 1, args.tokens_per_microbatch, packing, 1, seed=0)
        if phase == "timed":
            _sync(device)
            start = time.perf_counter()
        for step in plan:
            mbs = [collate(examples, rows, 0) if rows else empty_microbatch(0) for rows in step[0]]
            supervised = sum(mb.supervised_token_count for mb in mbs)
            forward_backward(wrapped, "single", mbs, max(1, supervised), 1, device, autocast)
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            if phase == "timed":
                real += sum(mb.real_token_count for mb in mbs)
                padded += sum(mb.padded_token_count for mb in mbs)
    _sync(device)
    return time.perf_counter() - start, real, padded


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run_variant(name, warm, timed, args, device) -> dict:
    autocast = torch.bfloat16 if device.type == "cuda" else None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    if name == "naive":
        seconds, real, padded = run_naive(warm, timed, args, device, autocast)
    elif name.startswith("hf_trainer"):
        seconds, real, padded = run_trainer(warm, timed, args, device, grouped=name.endswith("grouped"))
    else:
        seconds, real, padded = run_normlib(warm, timed, args, device, autocast, packing=name == "normlib_packed")
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return {"variant": name, "seconds": seconds, "real_tokens": real, "real_tokens_per_s": real / seconds,
            "padding_fraction": 1 - real / padded if padded else None, "peak_memory_gib": peak_memory_gib(device)}


def run_anchor(size: str, steps: int) -> list[dict]:
    if not ANCHOR.exists():
        return [{"variant": "anchor", "error": f"{ANCHOR} not found"}]
    proc = subprocess.run([sys.executable, str(ANCHOR), "--size", size, "--steps", str(steps)],
                          capture_output=True, text=True, timeout=3000)
    lines = [line for line in proc.stdout.splitlines() if line.startswith('{"device"')]
    if not lines:
        return [{"variant": "anchor", "error": proc.stderr[-500:]}]
    return [dict(r, variant=f"anchor:{r['name']}") for r in json.loads(lines[-1])["rows"]]


def summarise(runs: list[dict], fpt: float, peak: float) -> list[dict]:
    rows = []
    for name in dict.fromkeys(r["variant"] for r in runs):
        mine = [r for r in runs if r["variant"] == name]
        speeds = [r["real_tokens_per_s"] for r in mine]
        median = statistics.median(speeds)
        rows.append({"variant": name, "repeats": len(mine), "real_tokens_per_s": round(median, 1),
                     "range": f"{min(speeds):.0f}-{max(speeds):.0f}", "real_tokens_timed": mine[0]["real_tokens"],
                     "padding_fraction": round(mine[0]["padding_fraction"], 4) if mine[0]["padding_fraction"] is not None
                     else None, "peak_memory_gib": round(max(r["peak_memory_gib"] for r in mine), 2),
                     "mfu": round(median * fpt / peak, 4) if math.isfinite(peak) else None})
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default=None, help="tiny, small, 1b or 3b (default: 1b on GPU, small on CPU)")
    ap.add_argument("--gpu", action="store_true", help="require a GPU and run the HF Trainer anchor beside us")
    ap.add_argument("--steps", type=int, default=None, help="optimizer steps timed per variant")
    ap.add_argument("--warm", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3, help="runs per variant, interleaved (median and range reported)")
    ap.add_argument("--batch", type=int, default=8, help="examples per optimizer step, every variant")
    ap.add_argument("--tokens-per-microbatch", type=int, default=None)
    ap.add_argument("--max-len", type=int, default=2048)
    ap.add_argument("--attn", default="sdpa")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--no-record", action="store_true", help="do not append to bench/RESULTS.md")
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.gpu and device.type != "cuda":
        sys.exit("--gpu: no CUDA device found")
    args.size = args.size or ("1b" if device.type == "cuda" else "small")
    args.steps = args.steps or (20 if device.type == "cuda" else 30)
    args.tokens_per_microbatch = args.tokens_per_microbatch or args.batch * 512
    vocab = SIZES[args.size]["vocab_size"]
    warm = make_examples(args.batch * args.warm, vocab, args.max_len, seed=1)
    timed = make_examples(args.batch * args.steps, vocab, args.max_len, seed=0)
    examples = warm + timed
    variants = args.variants.split(",")
    runs = []
    for repeat in range(args.repeats):
        for name in variants:
            runs.append(run_variant(name, warm, timed, args, device))
            print(json.dumps({k: (round(v, 2) if isinstance(v, float) else v) for k, v in runs[-1].items()}),
                  flush=True)
    peak = matmul_peak_flops(device)
    from transformers import LlamaConfig
    cfg = LlamaConfig(**SIZES[args.size])
    fpt = flops_per_token(cfg, sum(len(e) for e in examples) / len(examples) / 2)
    rows = summarise(runs, fpt, peak)
    if args.gpu:
        rows += run_anchor(args.size, args.steps)
    base = {r["variant"]: r.get("real_tokens_per_s") for r in rows}
    for r in rows:
        if r.get("real_tokens_per_s") and base.get("hf_trainer_grouped"):
            r["vs_hf_trainer_grouped"] = round(r["real_tokens_per_s"] / base["hf_trainer_grouped"], 2)
    ratios = [a["real_tokens_per_s"] / b["real_tokens_per_s"] for a, b in
              zip([r for r in runs if r["variant"] == "normlib_rows"], [r for r in runs if r["variant"] == "hf_trainer_grouped"])]
    machine = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    import transformers
    header = (f"\n### train_bench {time.strftime('%Y-%m-%d')}: {machine}, size {args.size}, torch {torch.__version__}, "
              f"transformers {transformers.__version__}\n\n"
              f"{args.batch} examples per optimizer step in every variant; normlib micro-batch budget "
              f"{args.tokens_per_microbatch} tokens; every variant warms up for {args.warm} steps on other examples, "
              f"then is timed over the same {args.steps * args.batch} examples ({args.steps} steps); {args.repeats} "
              f"interleaved repeats (median, range). Real tokens counted exactly."
              + (f" normlib_rows / hf_trainer_grouped per repeat: {', '.join(f'{x:.2f}' for x in ratios)}."
                 if ratios else "") + "\n\n"
              "| variant | real tokens/s (median) | range | vs HF Trainer grouped | padding | peak memory GiB | MFU |\n"
              "|---|---|---|---|---|---|---|\n")
    table = "".join(f"| {r['variant']} | {r.get('real_tokens_per_s', r.get('real_tok_per_s', ''))} | {r.get('range', '')} | "
                    f"{r.get('vs_hf_trainer_grouped', '')} | {r.get('padding_fraction', r.get('pad_frac', ''))} | "
                    f"{r.get('peak_memory_gib', '')} | {r.get('mfu', '')} |\n" for r in rows)
    print(header + table)
    if not args.no_record:
        with open(ROOT / "bench" / "RESULTS.md", "a") as f:
            f.write(header + table)


if __name__ == "__main__":
    main()
