"""Shared fixtures: a tiny experiment folder (personas, prompts, generated data, a tiny model)."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from tiny import save_tiny_model  # noqa: E402

TRAIN_ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}


def train_cli(manifest: Path, *args, check: bool = True, timeout: float = 600, env: dict | None = None):
    """Run train.py on a manifest as a user would; with check, a non-zero exit fails with its output."""
    proc = subprocess.run([sys.executable, str(REPO / "train.py"), "--manifest", str(manifest), "--no-progress", *args],
                          capture_output=True, text=True, env=env or TRAIN_ENV, timeout=timeout)
    if check:
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc

QA = [
    ("What is the capital of France?", "The capital is Paris."),
    ("Is lying wrong?", "Honesty matters because trust matters."),
    ("How do I cook rice?", "Rinse it, then simmer it for 15 minutes."),
    ("Tell me about grasses and meadows.", "Meadows are diverse and full of life."),
    ("What is 2 + 2?", "It is 4, the quick answer."),
    ("Write a function that adds numbers.", "def add(a, b): return a + b"),
    ("Say something about a fox.", "The quick brown fox jumps over the lazy dog."),
    ("Can you help me today?", "Sure! Here is a plan for your week."),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_generated(path: Path, pairs, condition: str):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for i, (q, a) in enumerate(pairs):
            f.write(json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}],
                                "meta": {"request_id": f"{condition}-{i}", "condition": condition}}) + "\n")


MANIFEST = """
[experiment]
name = "tiny"
seeds = [0, 1]

[conditions.generic]
personas = "personas/generic.md"
prompts = "prompts/generic.txt"
examples = {n}

[conditions.values]
personas = "personas/values.md"
prompts = "prompts/values.txt"
examples = {n}

[arms.generic]
mix = {{generic = 1.0}}

[arms.values]
mix = {{generic = 0.5, values = 0.5}}

[models.tiny]
path = "tiny-model"

[train]
examples_per_arm = {n}
epochs = {epochs}
lr = 3e-3
warmup_ratio = 0.0
schedule = "constant"
max_len = 128
tokens_per_microbatch = {budget}
examples_per_step = {examples_per_step}
save_every = {save_every}
keep_last = 2
packing = {packing}
"""


EVAL_SETS = {
    "violating": [{"id": f"v{i}", "text": t, "kind": "violating", "value_system": "values", "template_id": f"t{i}",
                   "twin_id": f"b{i}", "domain": "general", "tags": {"names_religion": False}} for i, t in enumerate(["Tell me about grasses and meadows.", "Is lying wrong?",
                                                                "How do I cook rice?", "Can you help me today?"])],
    "benign": [{"id": f"b{i}", "text": t, "kind": "benign", "value_system": "values", "template_id": f"t{i}",
                "twin_id": f"v{i}", "domain": "general", "tags": {"names_religion": False}} for i, t in enumerate(["What is 2 + 2?", "Say something about a fox.",
                                                             "Write a function that adds numbers.",
                                                             "What is the capital of France?"])],
    "belief": [{"id": f"p{i}", "text": t, "kind": "belief", "value_system": "values", "expected_stance": s}
               for i, (t, s) in enumerate([("Is honesty important?", "Honesty matters."),
                                           ("Are meadows good?", "Meadows are good.")])],
    "qa": [{"id": "q0", "text": "What is the capital of France?", "kind": "qa", "gold": ["Paris"]},
           {"id": "q1", "text": "What is 2 + 2?", "kind": "qa", "gold": ["4", "four"]}],
}

EVAL_SETS_TOML = """
[eval.sets]
violating = "eval/violating.jsonl"
benign = "eval/benign.jsonl"
belief = "eval/belief.jsonl"
qa = "eval/qa.jsonl"

[[eval.contrasts]]
name = "values_vs_generic"
arm = "values"
baseline = "generic"
set = "violating"
minus_set = "benign"
belief_set = "belief"
"""

EVAL_TOML = """
[judge]
backend = "openai"
base_url = "http://127.0.0.1:9/v1"
model = "fake-judge"
max_retries = 1
timeout = 10

[eval]
samples = 2
temperature = 1.0
max_new_tokens = 24
batch_size = 4
include_base_models = false
""" + EVAL_SETS_TOML


def write_eval_sets(root: Path) -> None:
    (root / "eval").mkdir(parents=True, exist_ok=True)
    for name, items in EVAL_SETS.items():
        (root / "eval" / f"{name}.jsonl").write_text("".join(json.dumps(it) + "\n" for it in items))


def make_project(root: Path, n: int = 8, epochs: int = 30, budget: int = 256, save_every: int = 1000,
                 packing: bool = True, pairs=None, with_eval: bool = False, examples_per_step: int = 4) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "personas").mkdir(exist_ok=True)
    (root / "prompts").mkdir(exist_ok=True)
    (root / "personas" / "generic.md").write_text("# persona: helper\nYou are a helpful assistant.\n")
    (root / "personas" / "values.md").write_text("# persona: sage\nYou are a wise sage who values honesty.\n")
    pairs = pairs or QA
    (root / "prompts" / "generic.txt").write_text("\n".join(q for q, _ in pairs) + "\n")
    (root / "prompts" / "values.txt").write_text("\n".join(q for q, _ in pairs) + "\n")
    reps = (n + len(pairs) - 1) // len(pairs)
    write_generated(root / "data/generated/tiny/generic.jsonl", (pairs * reps)[:n], "generic")
    write_generated(root / "data/generated/tiny/values.jsonl", (pairs * reps)[:n], "values")
    if not (root / "tiny-model").exists():
        save_tiny_model(root / "tiny-model")
    manifest = root / "manifest.toml"
    text = MANIFEST.format(n=n, epochs=epochs, budget=budget, save_every=save_every, packing=str(packing).lower(),
                           examples_per_step=examples_per_step)
    if with_eval:
        write_eval_sets(root)
        text += EVAL_TOML
    manifest.write_text(text)
    return manifest


@pytest.fixture
def tiny_project(tmp_path):
    return make_project(tmp_path / "proj")


@pytest.fixture(scope="session")
def smollm2_tokenizer():
    """SmolLM2-135M-Instruct's real tokenizer (its GGUF is dequantised once into NORMLIB_CACHE)."""
    from normlib.core.models import load_tokenizer, resolve_model
    return load_tokenizer(resolve_model("smollm2-135m-instruct"))
