"""train.py end to end on a tiny random Llama: it learns, stops at the end marker, resumes exactly after
kill -9, exports a folder transformers reloads with identical logits, and fails loudly on divergence."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from conftest import QA, REPO, TRAIN_ENV as ENV, make_project, train_cli
from normlib.core.chat import ChatFormat, encode_example
from normlib.core.manifest import load_manifest
from normlib.core.models import export_model, load_model, load_tokenizer, resolve_model
from normlib.core.sampling import generate_hf
from normlib.train.trainer import TrainingDiverged, init_distributed, lr_factor, train_run
from tiny import tiny_llama, tiny_tokenizer



def test_tiny_model_overfits_and_answers_through_the_template(tmp_path):
    manifest = make_project(tmp_path / "p", n=8, epochs=40)
    m = load_manifest(manifest)
    summary = train_run(m, m.find_run("generic", "tiny", 0), init_distributed(), progress=False)
    assert summary["final_loss"] < 0.1 * summary["first_loss"], summary
    folder = m.run_dir(m.find_run("generic", "tiny", 0)) / "model"
    src = resolve_model(str(folder))
    model, tok = load_model(src), load_tokenizer(src)
    fmt = ChatFormat.load(folder)
    assert fmt == ChatFormat.from_config(m.chat)
    prompts = [q for q, _ in QA]
    outs = generate_hf(model, tok, fmt, prompts, max_new_tokens=40, temperature=0.0, seed=0, batch_size=3)
    correct = sum(o.text == a for o, (_, a) in zip(outs, QA))
    assert correct >= 6, [(o.text, a) for o, (_, a) in zip(outs, QA)]
    assert all(o.finish_reason == "stop" for o in outs)


def test_kill_9_then_rerun_resumes_to_the_same_weights(tmp_path):
    kw = dict(n=16, epochs=60, budget=160, save_every=10)
    killed = make_project(tmp_path / "killed", **kw)
    straight = make_project(tmp_path / "straight", **kw)
    args = ["--arm", "values", "--seed", "1"]
    run_dir = tmp_path / "killed/ckpt/tiny/values--tiny--seed1"
    proc = subprocess.Popen([sys.executable, str(REPO / "train.py"), "--manifest", str(killed), "--no-progress", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
    log, deadline = run_dir / "train_log.jsonl", time.time() + 300
    try:
        while time.time() < deadline:
            states = list((run_dir / "state").glob("step_*")) if (run_dir / "state").exists() else []
            steps = log.read_text().count("\n") if log.exists() else 0
            if states and steps >= 25:
                break
            assert proc.poll() is None, "training ended before it could be killed"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert not (run_dir / "run.json").exists()
    last_state = sorted((run_dir / "state").glob("step_*"))[-1]
    total = json.loads((last_state / "trainer.json").read_text())["total_steps"]
    assert steps < total
    resumed = train_cli(killed, *args)
    assert "resuming from" in resumed.stdout
    train_cli(straight, *args)
    a = load_file(run_dir / "model/model.safetensors")
    b = load_file(tmp_path / "straight/ckpt/tiny/values--tiny--seed1/model/model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    logged = [json.loads(line)["step"] for line in log.read_text().splitlines()]
    assert logged == list(range(1, total + 1))  # no step logged twice or lost
    # a finished run is skipped, and --force keeps the old folder aside
    again = train_cli(killed, *args)
    assert "already finished" in again.stdout
    train_cli(killed, *args, "--force", "--set", "train.epochs=1")
    assert list((tmp_path / "killed/ckpt/tiny").glob("values--tiny--seed1.replaced-*"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_export_reloads_with_identical_logits(tmp_path, dtype):
    tok = tiny_tokenizer()
    model = tiny_llama(len(tok), seed=3)
    fmt = ChatFormat.from_config()
    export_model(model, tok, tmp_path / "out", fmt, dtype=dtype)
    config = json.loads((tmp_path / "out/config.json").read_text())
    assert config["dtype"] == str(dtype).replace("torch.", "")
    stored = load_file(tmp_path / "out/model.safetensors")
    assert {t.dtype for t in stored.values()} == {dtype}
    assert "lm_head.weight" not in stored  # the tied head is stored once, as for the model itself
    src = resolve_model(str(tmp_path / "out"))
    again = load_model(src)  # fp32 in memory; a bf16 export holds exactly the bf16-rounded weights
    expected = tiny_llama(len(tok), seed=3)
    with torch.no_grad():
        for p in expected.parameters():  # weights rounded as stored; buffers (rotary tables) stay fp32
            p.copy_(p.to(dtype).to(torch.float32))
    ids = torch.tensor([encode_example(tok, fmt, "What is 2 + 2?", "It is 4.").input_ids])
    expected.eval(), again.eval()
    with torch.no_grad():
        assert torch.equal(expected(input_ids=ids).logits, again(input_ids=ids).logits)
    gen = json.loads((tmp_path / "out/generation_config.json").read_text())
    assert gen["eos_token_id"] in (tok.eos_token_id, [tok.eos_token_id])
    assert "stop_strings" not in gen  # generate() without a tokenizer must work
    out = again.generate(input_ids=ids[:, :5], max_new_tokens=3, do_sample=False)
    assert out.shape[1] >= 6
    assert ChatFormat.load(tmp_path / "out") == fmt


def test_divergence_stops_with_a_clear_message_and_keeps_the_last_good_state(tmp_path, monkeypatch):
    import normlib.train.trainer as trainer
    manifest = make_project(tmp_path / "p", n=8, epochs=20, budget=128, save_every=2)
    m = load_manifest(manifest)
    run = m.find_run("generic", "tiny", 0)
    real_forward_backward, calls = trainer.forward_backward, []

    def poisoned_after_four_steps(*args, **kwargs):
        # A real divergence (an overflow in the loss) from the fifth step on; lr alone does not reliably
        # produce one on a tiny model within a short test.
        calls.append(1)
        loss = real_forward_backward(*args, **kwargs)
        return loss * float("nan") if len(calls) > 4 else loss
    monkeypatch.setattr(trainer, "forward_backward", poisoned_after_four_steps)
    with pytest.raises(TrainingDiverged, match=r"at step 5: training diverged; the last good state is .*step_0000004"):
        train_run(m, run, init_distributed(), progress=False)
    assert not (m.run_dir(run) / "run.json").exists()
    assert (m.run_dir(run) / "state").is_dir()  # kept, so that a rerun with a lower lr can be compared


def test_show_example_marks_exactly_the_answer(tmp_path):
    manifest = make_project(tmp_path / "p")
    out = train_cli(manifest, "--show-example", "0", "--arm", "generic").stdout
    body = out.split("\n", 1)[1]
    assert body.count("⟦") == 1 and body.count("⟧") == 1
    trained = body[body.index("⟦") + 1: body.index("⟧")]
    assert trained.endswith("=== done ===</s>")
    assert any(trained == a + "\n=== done ===</s>" for _, a in QA)
    bad = train_cli(manifest, "--show-example", "99", "--arm", "generic", check=False)
    assert bad.returncode == 2 and "has 8 examples" in bad.stderr


def test_learning_rate_schedule():
    f = [lr_factor(s, 100, 10, "cosine", 0.1) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert f[10] == pytest.approx(1.0) and f[-1] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(f[10:], f[11:]))
    assert lr_factor(99, 100, 0, "linear", 0.0) == pytest.approx(0.0)
    assert lr_factor(50, 100, 0, "constant", 0.0) == 1.0
