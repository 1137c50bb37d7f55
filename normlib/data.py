"""Training data: arm mixing with exact fractions, and token-budget micro-batches with little padding.

Selection is deterministic by (seed, condition): a condition's examples are shuffled with a seed
that depends only on the run seed and the condition name, and an arm takes the first k. Arms that
use the same number of examples of a condition (e.g. the refusal_format component) therefore train
on identical examples, and the 50% arms' generic half is a prefix of the generic arm's.

A micro-batch is a [rows, T] block. With packing, several examples share a row; position ids restart
at 0 for each example, which transformers turns into a block-diagonal causal mask (attention stays
inside each example). Without packing, each row holds one example, and rows of similar length are
grouped. Padding only ever sits at the end of a row, where causal attention never looks at it.
"""
from __future__ import annotations

import bisect
import hashlib
import random
from dataclasses import dataclass, field
from pathlib import Path

import torch

from normlib.chat import IGNORE_INDEX, EncodedExample
from normlib.jsonl import iter_jsonl


class DataError(ValueError):
    pass


@dataclass
class ChatExample:
    prompt: str
    answer: str
    condition: str
    meta: dict = field(default_factory=dict)


def load_chat_examples(path: str | Path, condition: str) -> list[ChatExample]:
    """Read a clean generated file: {"messages": [{"role": "user", ...}, {"role": "assistant", ...}], "meta": {...}}."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: training data for condition '{condition}' not found; run `python gen.py "
                        f"--condition {condition}` first")
    out = []
    for lineno, record in enumerate(iter_jsonl(path), 1):
        msgs = record.get("messages")
        if (not isinstance(msgs, list) or len(msgs) != 2 or msgs[0].get("role") != "user"
                or msgs[1].get("role") != "assistant"
                or not all(isinstance(m.get("content"), str) and m["content"].strip() for m in msgs)):
            raise DataError(f"{path}: record {lineno}: expected messages = [user, assistant] with non-empty content")
        out.append(ChatExample(msgs[0]["content"], msgs[1]["content"], condition, record.get("meta", {})))
    return out


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def exact_counts(mix: dict[str, float], total: int) -> dict[str, int]:
    """Split `total` by fractions with the largest-remainder method: counts sum to total exactly."""
    raw = {k: frac * total for k, frac in mix.items()}
    counts = {k: int(v) for k, v in raw.items()}
    left = total - sum(counts.values())
    for k in sorted(raw, key=lambda k: (-(raw[k] - counts[k]), k))[:left]:
        counts[k] += 1
    return counts


def mix_arm(pools: dict[str, list[ChatExample]], mix: dict[str, float], total: int,
            seed: int) -> tuple[list[ChatExample], dict[str, int]]:
    counts = exact_counts(mix, total)
    chosen: list[ChatExample] = []
    for condition, k in counts.items():
        pool = pools[condition]
        if len(pool) < k:
            raise DataError(f"the arm needs {k} examples of condition '{condition}' but only {len(pool)} were "
                            f"generated; raise [conditions.{condition}] examples and rerun gen.py, or lower "
                            f"[train] examples_per_arm")
        order = list(range(len(pool)))
        random.Random(f"select:{seed}:{condition}").shuffle(order)
        chosen += [pool[i] for i in order[:k]]
    random.Random(f"order:{seed}").shuffle(chosen)
    return chosen, counts


# ----------------------------------------------------------------------------------------------
# Micro-batches


@dataclass
class MicroBatch:
    input_ids: torch.Tensor  # [rows, T]
    position_ids: torch.Tensor  # [rows, T], restarting at 0 for every example (and for the padding tail)
    labels: torch.Tensor  # [rows, T], IGNORE_INDEX outside answers
    real_token_count: int
    supervised_token_count: int
    example_count: int

    @property
    def padded_token_count(self) -> int:
        return self.input_ids.numel()


def _length_order(lengths: list[int], rng: random.Random, descending: bool) -> list[int]:
    order = list(range(len(lengths)))
    rng.shuffle(order)  # random tie-breaks, different each epoch
    order.sort(key=lambda i: -lengths[i] if descending else lengths[i])
    return order


def pack_rows(lengths: list[int], row_len: int, rng: random.Random) -> list[list[int]]:
    """Best-fit decreasing bin packing of examples into rows of at most row_len tokens."""
    rows: list[list[int]] = []
    free: list[tuple[int, int]] = []  # sorted (space left, row index)
    for i in _length_order(lengths, rng, descending=True):
        n = lengths[i]
        if n > row_len:
            raise DataError(f"example of {n} tokens exceeds the row length {row_len}")
        pos = bisect.bisect_left(free, (n, -1))
        if pos < len(free):
            space, r = free.pop(pos)
            rows[r].append(i)
            bisect.insort(free, (space - n, r))
        else:
            rows.append([i])
            bisect.insort(free, (row_len - n, len(rows) - 1))
    return rows


def plan_microbatches(lengths: list[int], token_budget: int, row_len: int, packing: bool,
                      seed: int, epoch: int) -> list[list[list[int]]]:
    """Group example indices into micro-batches (lists of rows) within `token_budget` padded tokens, then
    shuffle the micro-batches. Deterministic in (seed, epoch)."""
    rng = random.Random(f"batches:{seed}:{epoch}")
    if packing:
        rows = pack_rows(lengths, row_len, rng)
        rows.sort(key=lambda r: sum(lengths[i] for i in r))
        row_lens = [sum(lengths[i] for i in r) for r in rows]
    else:
        rows = [[i] for i in _length_order(lengths, rng, descending=False)]
        row_lens = [lengths[r[0]] for r in rows]
    batches, current, widest = [], [], 0
    for row, n in zip(rows, row_lens):
        w = max(widest, n)
        if current and w * (len(current) + 1) > token_budget:
            batches.append(current)
            current, w = [], n
        current.append(row)
        widest = w
    if current:
        batches.append(current)
    rng.shuffle(batches)
    return batches


def collate(examples: list[EncodedExample], rows: list[list[int]], pad_id: int) -> MicroBatch:
    width = max(sum(len(examples[i]) for i in row) for row in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    position_ids = torch.zeros((len(rows), width), dtype=torch.long)
    real = supervised = count = 0
    for r, row in enumerate(rows):
        at = 0
        for i in row:
            ex = examples[i]
            n = len(ex)
            input_ids[r, at:at + n] = torch.tensor(ex.input_ids)
            labels[r, at:at + n] = torch.tensor(ex.labels)
            position_ids[r, at:at + n] = torch.arange(n)
            at += n
            real += n
            supervised += ex.supervised_token_count
            count += 1
        position_ids[r, at:] = torch.arange(width - at)  # the padding tail is a segment of its own
    return MicroBatch(input_ids, position_ids, labels, real, supervised, count)
