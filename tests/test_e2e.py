"""gen -> train -> eval through the three CLIs: a tiny random student, a loopback teacher and judge."""
import csv
import json
import os
import subprocess
import sys

from conftest import EVAL_SETS_TOML, REPO, write_eval_sets
from normlib.llm.fakeserver import FakeLLMServer
from tiny import save_tiny_model

ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false", "E2E_KEY": "sk-e2e-secret"}


def write_project(root, port):
    write_eval_sets(root)
    (root / "personas.md").write_text("# persona: helper\nYou are a helpful assistant.\n---\n"
                                      "# persona: sage\nYou are a sage who values honesty above all.\n")
    (root / "prompts.txt").write_text("\n".join(f"Question {i}: what do you think about topic {i}?"
                                                for i in range(20)) + "\n")
    save_tiny_model(root / "tiny-model")
    (root / "m.toml").write_text(f"""
[experiment]
name = "e2e"
seeds = [0, 1]

[teacher]
backend = "openai"
base_url = "http://127.0.0.1:{port}/v1"
model = "fake-teacher"
api_key_env = "E2E_KEY"
concurrency = 4

[judge]
backend = "openai"
base_url = "http://127.0.0.1:{port}/v1"
model = "fake-judge"
api_key_env = "E2E_KEY"

[conditions.generic]
personas = "personas.md"
prompts = "prompts.txt"
# pools larger than one arm's need: a few fake answers run over max_len, and seeds draw different subsets
examples = 16

[conditions.values]
personas = "personas.md"
prompts = "prompts.txt"
examples = 8
value_system = "catholic"

[arms.generic]
mix = {{generic = 1.0}}
[arms.values]
mix = {{generic = 0.5, values = 0.5}}

[models.tiny]
path = "tiny-model"

[train]
examples_per_arm = 12
epochs = 3
lr = 1e-3
max_len = 256
tokens_per_microbatch = 512
examples_per_step = 4
save_every = 2
curve_points = [0.5]

[eval]
samples = 1
max_new_tokens = 16
include_base_models = true
""" + EVAL_SETS_TOML)
    return root / "m.toml"


def cli(script, manifest, *args):
    proc = subprocess.run([sys.executable, str(REPO / script), "--manifest", str(manifest), "--no-progress", *args],
                          capture_output=True, text=True, env=ENV, timeout=300)
    assert proc.returncode == 0, f"{script}: {proc.stdout[-1500:]}{proc.stderr[-3000:]}"
    return proc.stdout


def test_gen_train_eval_end_to_end(tmp_path):
    with FakeLLMServer() as server:
        manifest = write_project(tmp_path, server.port)
        cli("gen.py", manifest)
        cli("train.py", manifest, "--all")
        cli("eval.py", manifest)
    gen, ckpt, res = tmp_path / "data/generated/e2e", tmp_path / "ckpt/e2e", tmp_path / "results/e2e"
    for cond, n in (("generic", 16), ("values", 8)):
        assert len((gen / f"{cond}.jsonl").read_text().splitlines()) == n
        assert json.loads((gen / f"{cond}.report.json").read_text())["kept"] == n
        assert (gen / f"{cond}.raw.jsonl").stat().st_size > 0
    runs = ["generic--tiny--seed0", "generic--tiny--seed1", "values--tiny--seed0", "values--tiny--seed1"]
    for run in runs:
        d = ckpt / run
        assert json.loads((d / "run.json").read_text())["status"] == "finished"
        for f in ("model/config.json", "model/model.safetensors", "model/tokenizer.json", "model/normlib_chat.json",
                  "model/generation_config.json", "composition.json", "train_log.jsonl"):
            assert (d / f).stat().st_size > 0, f
        assert not (d / "state").exists()  # removed once the run finished
        assert (d / "model-step000004/model.safetensors").exists()  # the learning-curve point at half of 9 steps
    composition = json.loads((ckpt / "values--tiny--seed0/composition.json").read_text())
    assert composition["selected"] == {"generic": 6, "values": 6}
    for f in ("rates.csv", "contrasts.csv", "agreement.csv", "summary.md", "refusal_rates.png", "scored.jsonl",
              "judge_cache.jsonl", "curves.csv", "learning_curves.png"):
        assert (res / f).stat().st_size > 0, f
    curve_labels = [f"{r}--step4" for r in runs]
    assert sorted(p.stem for p in (res / "samples").glob("*.jsonl")) == sorted(runs + curve_labels + ["base--tiny"])
    rates = list(csv.DictReader(open(res / "rates.csv")))
    assert {r["label"] for r in rates if r["level"] == "run"} == set(runs + curve_labels + ["base--tiny"])
    curves = list(csv.DictReader(open(res / "curves.csv")))
    assert {float(r["fraction"]) for r in curves} == {0.5, 1.0}
    assert list(csv.DictReader(open(res / "contrasts.csv")))[0]["verdict"]
    for path in tmp_path.rglob("*"):
        if path.is_file() and path.suffix in (".jsonl", ".json", ".csv", ".md"):
            assert "sk-e2e-secret" not in path.read_text(errors="ignore"), path
