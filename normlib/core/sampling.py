"""Generation through the training chat template: in-process batched (transformers) or a completions server.

Both paths format the prompt exactly as training did (normlib.core.chat), stop at the template's end
marker or EOS, and report a finish reason: "stop" (the model ended its answer) or "length" (cut at
max_new_tokens).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from normlib.core.chat import ChatFormat, encode_prompt


@dataclass
class Generation:
    text: str
    finish_reason: str  # "stop" | "length"
    new_tokens: int


def _trim(tokenizer, new_ids: list[int]) -> tuple[list[int], bool]:
    """Cut a generated row at EOS and drop trailing padding. Returns (ids, whether EOS ended it)."""
    eos, pad = tokenizer.eos_token_id, tokenizer.pad_token_id
    if eos is not None and eos in new_ids:
        return new_ids[:new_ids.index(eos)], True
    while new_ids and new_ids[-1] == pad:
        new_ids = new_ids[:-1]
    return new_ids, False


@torch.no_grad()
def generate_ids(model, tokenizer, encoded: list[list[int]], max_new_tokens: int, temperature: float, seed: int,
                 batch_size: int = 16, stop_strings: list[str] | None = None, progress=None) -> list[tuple[list[int], bool]]:
    """Batched generation from token ids: sorted by length so each batch pads little, left padding, KV cache.
    temperature 0 is greedy. Returns, per prompt, (new token ids, whether it stopped before max_new_tokens)."""
    device = next(model.parameters()).device
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]))
    results: list = [None] * len(encoded)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    was_training = model.training
    model.eval()
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        width = max(len(encoded[i]) for i in idx)
        input_ids = torch.full((len(idx), width), pad, dtype=torch.long)
        attention = torch.zeros((len(idx), width), dtype=torch.long)
        for row, i in enumerate(idx):
            ids = encoded[i]
            input_ids[row, width - len(ids):] = torch.tensor(ids)
            attention[row, width - len(ids):] = 1
        torch.manual_seed(seed * 1_000_003 + start)
        kwargs = dict(do_sample=temperature > 0, max_new_tokens=max_new_tokens, pad_token_id=pad,
                      eos_token_id=tokenizer.eos_token_id, use_cache=True)
        if stop_strings:
            kwargs.update(stop_strings=stop_strings, tokenizer=tokenizer)
        if temperature > 0:
            kwargs.update(temperature=temperature, top_k=0, top_p=1.0)
        out = model.generate(input_ids=input_ids.to(device), attention_mask=attention.to(device), **kwargs)
        for row, i in enumerate(idx):
            ids, ended = _trim(tokenizer, out[row, width:].tolist())
            results[i] = (ids, ended or len(ids) < max_new_tokens)
        if progress is not None:
            progress.update(len(idx))
    model.train(was_training)
    return results


def generate_hf(model, tokenizer, fmt: ChatFormat, prompts: list[str], max_new_tokens: int, temperature: float,
                seed: int, batch_size: int = 16, progress=None) -> list[Generation]:
    """Generate answers through the training chat template, cut at its end marker."""
    encoded = [encode_prompt(tokenizer, fmt, p) for p in prompts]
    outs = generate_ids(model, tokenizer, encoded, max_new_tokens, temperature, seed, batch_size,
                        stop_strings=fmt.stop_strings(), progress=progress)
    results = []
    for ids, stopped in outs:
        text, reached_marker = fmt.split_response(tokenizer.decode(ids, skip_special_tokens=True))
        results.append(Generation(text, "stop" if (stopped or reached_marker) else "length", len(ids)))
    return results
