"""Eval generation throughput: batched vs one-at-a-time generation with SmolLM2-135M on this machine.

64 prompts (from sanity_qa) x 64 new tokens, greedy; the answers are forced to full length (no early
stop) so both variants generate the same number of tokens. Target: batched >= 4x. Appends to
bench/RESULTS.md.   python bench/eval_bench.py [--prompts 64 --new-tokens 64 --batch 32]
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from normlib.core.chat import ChatFormat, encode_prompt  # noqa: E402
from normlib.core.models import load_model, load_tokenizer, resolve_model  # noqa: E402
from normlib.core.sampling import generate_ids  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--no-record", action="store_true")
    a = ap.parse_args()
    src = resolve_model("smollm2-135m-instruct")
    model, tok = load_model(src), load_tokenizer(src)
    fmt = ChatFormat.from_config()
    questions = [json.loads(line)["text"] for line in open(ROOT / "data/eval/sanity_qa.jsonl")][:a.prompts]
    encoded = [encode_prompt(tok, fmt, q) for q in questions]
    model.generation_config.eos_token_id = None  # every answer runs to full length: equal work in both variants

    class NoEos:  # generate_ids reads eos/pad ids from the tokenizer
        eos_token_id = None
        pad_token_id = tok.pad_token_id
    timings = {}
    for name, batch in (("one_at_a_time", 1), ("batched", a.batch)):
        start = time.perf_counter()
        outs = generate_ids(model, NoEos, encoded, a.new_tokens, 0.0, 0, batch_size=batch)
        timings[name] = (time.perf_counter() - start, sum(len(ids) for ids, _ in outs))
    (t1, n1), (tb, nb) = timings["one_at_a_time"], timings["batched"]
    line = (f"\n### eval_bench {time.strftime('%Y-%m-%d')}: CPU {platform.machine()}, {torch.get_num_threads()} "
            f"threads, SmolLM2-135M fp32, {a.prompts} prompts x {a.new_tokens} new tokens\n\n"
            f"one at a time: {n1} tokens in {t1:.1f} s = {n1 / t1:.0f} tokens/s; batched ({a.batch}): {nb} tokens in "
            f"{tb:.1f} s = {nb / tb:.0f} tokens/s; speed-up {(nb / tb) / (n1 / t1):.1f}x (target >= 4x)\n")
    print(line)
    if not a.no_record:
        with open(ROOT / "bench" / "RESULTS.md", "a") as f:
            f.write(line)


if __name__ == "__main__":
    main()
