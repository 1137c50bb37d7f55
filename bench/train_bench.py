"""Training throughput: naive random-order padded batches vs train.py's batching, same model and data.

Data: the chat-length distribution of ../shared/bench/anchor_train.py (prompt 20-200 tokens, masked;
answer lognormal with median ~245 tokens; at most max_len). Reports real (non-padding) tokens/s,
padding fraction and peak memory for:
  naive        random order, `--batch` examples per micro-batch padded to the longest, HF model loss
  normlib      train.py's micro-batches: token budget, packed rows with per-example attention, loss only
               at supervised positions (normlib.trainer.forward_backward)
  normlib_rows train.py with packing = false: one example per row, rows of similar length

    python bench/train_bench.py                  # CPU: tiny model
    python bench/train_bench.py --gpu --size 1b  # GPU: also runs the HF Trainer anchor on the same card
Results are appended to bench/RESULTS.md with the machine, versions and date.
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import random
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from normlib.chat import IGNORE_INDEX, EncodedExample  # noqa: E402
from normlib.data import collate, plan_microbatches  # noqa: E402
from normlib.loss import SupervisedLM  # noqa: E402
from normlib.trainer import flops_per_token, forward_backward, matmul_peak_flops, peak_memory_gib  # noqa: E402

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
    return model


def run_variant(name: str, examples, args, device) -> dict:
    model = build_model(args.size, device, args.attn)
    autocast = torch.bfloat16 if device.type == "cuda" else None
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=device.type == "cuda")
    if name == "naive":
        order = list(range(len(examples)))
        random.Random(0).shuffle(order)
        batches = [[[i] for i in order[k:k + args.batch]] for k in range(0, len(order), args.batch)]
    else:
        lengths = [len(e) for e in examples]
        batches = plan_microbatches(lengths, args.tokens_per_microbatch, args.max_len, name == "normlib", 0, 0)
    pad = 0
    wrapped = SupervisedLM(model)
    real = padded = 0
    elapsed = 0.0
    steps = 0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for k, rows in enumerate(batches[:args.steps + args.warm]):
        mb = collate(examples, rows, pad)
        if k == args.warm:
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
        if name == "naive":  # the usual route: attention mask, HF loss over the padded batch
            ids = mb.input_ids.to(device)
            att = (torch.arange(ids.shape[1])[None, :] < torch.tensor([sum(len(examples[i]) for i in r)
                                                                       for r in rows])[:, None]).to(device)
            with torch.autocast(device.type, dtype=autocast or torch.float32, enabled=autocast is not None):
                loss = model(input_ids=ids, attention_mask=att, labels=mb.labels.to(device)).loss
            loss.backward()
        else:
            forward_backward(wrapped, "single", [mb], max(1, mb.supervised_token_count), 1, device, autocast)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if k >= args.warm:
            real += mb.real_token_count
            padded += mb.padded_token_count
            steps += 1
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - start
    mean_len = sum(len(e) for e in examples) / len(examples)
    return {"variant": name, "micro_batches": steps, "seconds": round(elapsed, 2), "real_tokens": real,
            "real_tokens_per_s": round(real / elapsed, 1), "padding_fraction": round(1 - real / padded, 4),
            "peak_memory_gib": round(peak_memory_gib(device), 2),
            "flops_per_token": flops_per_token(model.config, mean_len / 2)}


def run_anchor(size: str, steps: int) -> list[dict]:
    if not ANCHOR.exists():
        return [{"variant": "anchor", "error": f"{ANCHOR} not found"}]
    proc = subprocess.run([sys.executable, str(ANCHOR), "--size", size, "--steps", str(steps)],
                          capture_output=True, text=True, timeout=3000)
    lines = [line for line in proc.stdout.splitlines() if line.startswith('{"device"')]
    if not lines:
        return [{"variant": "anchor", "error": proc.stderr[-500:]}]
    return [dict(r, variant=f"anchor:{r['name']}") for r in json.loads(lines[-1])["rows"]]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default=None, help="tiny, small, 1b or 3b (default: 1b on GPU, tiny on CPU)")
    ap.add_argument("--gpu", action="store_true", help="require a GPU and run the HF Trainer anchor beside us")
    ap.add_argument("--steps", type=int, default=None, help="micro-batches timed per variant")
    ap.add_argument("--warm", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8, help="examples per naive micro-batch")
    ap.add_argument("--tokens-per-microbatch", type=int, default=None)
    ap.add_argument("--max-len", type=int, default=2048)
    ap.add_argument("--attn", default="sdpa")
    ap.add_argument("--no-record", action="store_true", help="do not append to bench/RESULTS.md")
    args = ap.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.gpu and device.type != "cuda":
        sys.exit("--gpu: no CUDA device found")
    args.size = args.size or ("1b" if device.type == "cuda" else "tiny")
    args.steps = args.steps or (20 if device.type == "cuda" else 12)
    # token budget: the naive batch's expected padded size, so both see about as many real tokens per step
    args.tokens_per_microbatch = args.tokens_per_microbatch or args.batch * 512
    examples = make_examples(args.batch * (args.steps + args.warm) * 4, SIZES[args.size]["vocab_size"], args.max_len)
    rows = [run_variant(v, examples, args, device) for v in ("naive", "normlib_rows", "normlib")]
    peak = matmul_peak_flops(device)
    for r in rows:
        r["mfu"] = round(r["real_tokens_per_s"] * r.pop("flops_per_token") / peak, 4) if math.isfinite(peak) else None
    if args.gpu:
        rows += run_anchor(args.size, args.steps)
    naive = rows[0]["real_tokens_per_s"]
    for r in rows:
        if "real_tokens_per_s" in r:
            r["vs_naive"] = round(r["real_tokens_per_s"] / naive, 2)
    machine = torch.cuda.get_device_name(device) if device.type == "cuda" else \
        f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    import transformers
    header = (f"\n### train_bench {time.strftime('%Y-%m-%d')}: {machine}, size {args.size}, torch {torch.__version__}, "
              f"transformers {transformers.__version__}\n\n"
              f"Naive batch {args.batch} examples; normlib token budget {args.tokens_per_microbatch}; "
              f"{args.steps} timed micro-batches after {args.warm} warm-up."
              f"{' Peak memory on CPU is the process maximum so far, not per variant.' if device.type == 'cpu' else ''}"
              "\n\n"
              "| variant | real tokens/s | vs naive | padding | peak memory GiB | MFU |\n|---|---|---|---|---|---|\n")
    table = "".join(f"| {r['variant']} | {r.get('real_tokens_per_s', r.get('real_tok_per_s', ''))} | "
                    f"{r.get('vs_naive', '')} | {r.get('padding_fraction', r.get('pad_frac', ''))} | "
                    f"{r.get('peak_memory_gib', '')} | {r.get('mfu', '')} |\n" for r in rows)
    print(header + table)
    print(json.dumps(rows))
    if not args.no_record:
        with open(ROOT / "bench" / "RESULTS.md", "a") as f:
            f.write(header + table)


if __name__ == "__main__":
    main()
