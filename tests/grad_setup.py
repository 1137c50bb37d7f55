"""Fixed examples and model shared by the gradient-equivalence tests (single and multi-process)."""
from tiny import tiny_llama, tiny_tokenizer

from normlib.core.chat import ChatFormat, encode_example
from normlib.train.data import collate

PAIRS = [
    ("What is the capital of France?", "The capital is Paris."),
    ("Is lying wrong?", "Honesty matters because trust matters, and the quick brown fox agrees."),
    ("How do I cook rice?", "Rinse it, then simmer it for 15 minutes."),
    ("Tell me about grasses and meadows.", "Meadows are diverse and full of life."),
    ("What is 2 + 2?", "It is 4."),
    ("Write a function that adds numbers.", "def add(a, b): return a + b"),
    ("Say something long about a fox.", "The quick brown fox jumps over the lazy dog. " * 3),
    ("Can you help me today?", "Sure! Here is a plan for your week."),
]


def examples_and_model():
    tok = tiny_tokenizer()
    fmt = ChatFormat.from_config()
    examples = [encode_example(tok, fmt, p, a) for p, a in PAIRS]
    return examples, tiny_llama(len(tok), seed=0), tok.pad_token_id


def micro_batches(examples, indices, batch, pad_id, packing=False):
    """Consecutive groups of `batch` examples; one example per row unless packing (one row per group)."""
    groups = [indices[i:i + batch] for i in range(0, len(indices), batch)]
    return [collate(examples, [g] if packing else [[i] for i in g], pad_id) for g in groups]
