"""Training data: arm mixing with exact fractions, and token-budget micro-batches with little padding.

Selection is deterministic by (seed, condition): a condition's examples are shuffled with a seed
that depends only on the run seed and the condition name, and an arm takes the first k. Arms that
use the same number of examples of a condition (e.g. the refusal_format component) therefore train
on identical examples, and the 50% arms' generic half is a prefix of the generic arm's.

The unit of training is the optimizer step, and a step holds a fixed number of examples
([train] examples_per_step), so every arm of a model gets the same number of steps and the same
learning-rate schedule whatever the length of its answers. Inside a step, examples are split into
micro-batches by a token budget and spread over ranks. A micro-batch is a [rows, T] block. With
packing, several examples share one row and position ids restart at 0 for each example, which
transformers turns into attention that stays inside each example. Without packing, each row holds
one example and rows of similar length are grouped; padding only ever sits at the end of a row,
where causal attention never looks at it.
"""
from __future__ import annotations

import bisect
import hashlib
import random
from dataclasses import dataclass, field
from pathlib import Path

import torch

from normlib.core.chat import IGNORE_INDEX, ChatFormatError, EncodedExample, encode_example
from normlib.core.jsonl import iter_jsonl


class DataError(ValueError):
    pass


@dataclass
class ChatExample:
    prompt: str
    answer: str
    condition: str
    meta: dict = field(default_factory=dict)
    record: int = 0  # line of the generated file, for error messages


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
        out.append(ChatExample(msgs[0]["content"], msgs[1]["content"], condition, record.get("meta", {}), lineno))
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


def mix_arm(pools: dict[str, list], mix: dict[str, float], total: int, seed: int) -> tuple[list, dict[str, int]]:
    """Exactly `total` items with the mix's fractions: each condition's pool is shuffled by (seed, condition)
    and its first k taken, so arms of one seed share their examples of a condition, and seeds draw different
    examples when the pool holds more than one arm needs."""
    counts = exact_counts(mix, total)
    chosen: list = []
    for condition, k in counts.items():
        pool = pools[condition]
        if len(pool) < k:
            raise DataError(f"the arm needs {k} examples of condition '{condition}' but only {len(pool)} usable "
                            f"ones exist (generated, minus those over [train] max_len); raise "
                            f"[conditions.{condition}] examples and rerun gen.py, or lower [train] examples_per_arm")
        order = list(range(len(pool)))
        random.Random(f"select:{seed}:{condition}").shuffle(order)
        chosen += [pool[i] for i in order[:k]]
    random.Random(f"order:{seed}").shuffle(chosen)
    return chosen, counts


@dataclass
class ArmData:
    examples: list[EncodedExample]  # in training order
    composition: dict  # what composition.json records


def encode_pool(examples: list[ChatExample], tokenizer, fmt, path: Path) -> list[EncodedExample]:
    out = []
    for ex in examples:
        try:
            out.append(encode_example(tokenizer, fmt, ex.prompt, ex.answer))
        except ChatFormatError as e:
            raise DataError(f"{path}: record {ex.record} (request {ex.meta.get('request_id', '?')}): {e}") from None
    return out


def prepare_arm_data(manifest, run, tokenizer, fmt) -> ArmData:
    """The run's training examples: each condition's pool without examples over max_len, then the mix.
    Filtering before mixing keeps the counts exact, so every arm trains on examples_per_arm examples."""
    arm, t = manifest.arms[run.arm], manifest.train
    pools, sources = {}, {}
    for condition in arm.mix:
        path = manifest.generated_path(condition)
        examples = load_chat_examples(path, condition)
        encoded = encode_pool(examples, tokenizer, fmt, path)
        usable = [(ex, enc) for ex, enc in zip(examples, encoded) if len(enc) <= t.max_len]
        pools[condition] = usable
        sources[condition] = {"file": str(path), "sha256": file_sha256(path), "available": len(examples),
                              "over_max_len": len(examples) - len(usable), "usable": len(usable)}
    chosen, counts = mix_arm(pools, arm.mix, t.examples_per_arm, run.seed)
    supervised: dict = {c: 0 for c in counts}
    for ex, enc in chosen:
        supervised[ex.condition] += enc.supervised_token_count
    composition = {
        "arm": run.arm, "seed": run.seed, "mix": arm.mix, "examples_per_arm": t.examples_per_arm,
        "selected": counts, "supervised_tokens": supervised, "trained": len(chosen), "sources": sources,
        "examples": [{"condition": ex.condition, "id": ex.meta.get("request_id", "")} for ex, _ in chosen],
    }
    return ArmData([enc for _, enc in chosen], composition)


# ----------------------------------------------------------------------------------------------
# Optimizer steps and micro-batches


MEGABATCH_STEPS = 16  # steps whose examples are length-sorted together (HF's group_by_length uses 50 batches)


@dataclass
class MicroBatch:
    input_ids: torch.Tensor  # [rows, T]
    position_ids: torch.Tensor  # [rows, T]: 0.. within each example; a row's padding tail continues its count
    labels: torch.Tensor  # [rows, T], IGNORE_INDEX outside answers
    real_token_count: int
    supervised_token_count: int
    example_count: int
    packed: bool = False  # some row holds several examples (positions restart inside it)

    @property
    def padded_token_count(self) -> int:
        return self.input_ids.numel()


def pack_rows(lengths: list[int], indices: list[int], row_len: int) -> list[list[int]]:
    """Best-fit decreasing bin packing of the examples `indices` into rows of at most row_len tokens."""
    rows: list[list[int]] = []
    free: list[tuple[int, int]] = []  # sorted (space left, row index)
    for i in sorted(indices, key=lambda i: (-lengths[i], i)):
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


def step_microbatches(lengths: list[int], indices: list[int], token_budget: int, packing: bool) -> list[list[list[int]]]:
    """One optimizer step's examples as micro-batches (lists of rows of example indices) within `token_budget`
    padded tokens. Packing: each micro-batch is one row of several examples (no padding at all; flash attention
    needs packed examples in a single row to keep them apart). Otherwise one example per row, rows of similar
    length together."""
    if packing:
        return [[row] for row in pack_rows(lengths, indices, token_budget)]
    batches, current, widest = [], [], 0
    for i in sorted(indices, key=lambda i: (lengths[i], i)):
        w = max(widest, lengths[i])
        if current and w * (len(current) + 1) > token_budget:
            batches.append(current)
            current, w = [], lengths[i]
        current.append([i])
        widest = w
    if current:
        batches.append(current)
    return batches


def split_for_ranks(batches: list[list[list[int]]], world_size: int) -> list[list[list[int]]]:
    """Split micro-batches until every rank can get one (when the step has enough examples), so a small step
    does not leave ranks idle."""
    batches = [list(mb) for mb in batches]
    while len(batches) < world_size:
        biggest = max(range(len(batches)), key=lambda k: sum(len(r) for r in batches[k]))
        mb = batches[biggest]
        if sum(len(r) for r in mb) < 2:
            break
        if len(mb) > 1:
            halves = [mb[:len(mb) // 2], mb[len(mb) // 2:]]
        else:  # one packed row: split its examples into two rows
            row = mb[0]
            halves = [[row[:len(row) // 2]], [row[len(row) // 2:]]]
        batches[biggest:biggest + 1] = halves
    return batches


def assign_to_ranks(batches: list[list[list[int]]], lengths: list[int], world_size: int) -> list[list]:
    """Spread micro-batches over ranks, largest first to the least loaded; every rank gets the same number of
    slots (FSDP and DDP need the same number of forward/backward calls on every rank), None marking an empty one."""
    def tokens(mb):
        return sum(lengths[i] for row in mb for i in row)
    per_rank: list[list] = [[] for _ in range(world_size)]
    load = [0] * world_size
    for mb in sorted(batches, key=lambda mb: -tokens(mb)):
        r = min(range(world_size), key=lambda k: (load[k], len(per_rank[k]), k))
        per_rank[r].append(mb)
        load[r] += tokens(mb)
    slots = max(1, max(len(x) for x in per_rank))
    return [x + [None] * (slots - len(x)) for x in per_rank]


def plan_steps(lengths: list[int], examples_per_step: int, epochs: int, token_budget: int, packing: bool,
               world_size: int, seed: int) -> list[list[list]]:
    """Every optimizer step of a run: step -> rank -> micro-batches (None = an empty slot). Each epoch visits every
    example once, in steps of exactly `examples_per_step` examples (the last step of an epoch takes the rest), so
    runs with the same number of examples get the same number of steps whatever their lengths. Examples of
    similar length share a step (length-sorted within megabatches of MEGABATCH_STEPS steps, as in group_by_length);
    step order is shuffled. Deterministic in (lengths, seed): every rank computes the same plan."""
    plan = []
    n = len(lengths)
    for epoch in range(epochs):
        rng = random.Random(f"steps:{seed}:{epoch}")
        order = list(range(n))
        rng.shuffle(order)
        mega = examples_per_step * MEGABATCH_STEPS
        steps = []
        for start in range(0, n, mega):
            chunk = sorted(order[start:start + mega], key=lambda i: lengths[i])
            steps += [chunk[k:k + examples_per_step] for k in range(0, len(chunk), examples_per_step)]
        # a megabatch's last step may be short; merge short steps so every step but the epoch's last is full
        flat = [i for step in steps for i in step]
        if any(len(s) != examples_per_step for s in steps[:-1]):
            steps = [flat[k:k + examples_per_step] for k in range(0, len(flat), examples_per_step)]
        rng.shuffle(steps)
        for step in steps:
            batches = split_for_ranks(step_microbatches(lengths, step, token_budget, packing), world_size)
            plan.append(assign_to_ranks(batches, lengths, world_size))
    return plan


def steps_per_epoch(n_examples: int, examples_per_step: int) -> int:
    return -(-n_examples // examples_per_step)


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
        # The padding tail continues the last example's positions: a row of one example then reads as an
        # ordinary causal row (SDPA's fast path), not as a second packed segment with a 4D mask.
        start = int(position_ids[r, at - 1]) + 1 if at else 0
        position_ids[r, at:] = torch.arange(start, start + width - at)
    return MicroBatch(input_ids, position_ids, labels, real, supervised, count, packed=any(len(r) > 1 for r in rows))


def empty_microbatch(pad_id: int) -> MicroBatch:
    """A one-token micro-batch with nothing to learn: a rank with fewer micro-batches than others runs it so that
    every rank makes the same collective calls; it adds exactly zero to the gradient."""
    return MicroBatch(torch.tensor([[pad_id]]), torch.zeros((1, 1), dtype=torch.long),
                      torch.full((1, 1), IGNORE_INDEX, dtype=torch.long), 0, 0, 0)
