"""train.py's budgets and operations: real training mode, one step plan for every arm, logit post-processing,
resume that refuses another configuration, state fallback, meta-device loading, the estimate."""
import json
import subprocess
import sys
from functools import partial
from pathlib import Path

import pytest
import torch

from conftest import QA, TRAIN_ENV, free_port, make_project, train_cli, write_generated
from normlib.train.costs import mfu_per_gpu
from normlib.train.data import DataError, collate, plan_steps
from normlib.train.distributed import decoder_layers
from normlib.train.loss import HeadMismatch, SupervisedLM, check_head
from normlib.core.manifest import load_manifest
from normlib.train.trainer import init_distributed, run_status, setup_run, train_loop, train_run
from tiny import tiny_tokenizer

ENV = {**TRAIN_ENV, "OMP_NUM_THREADS": "1"}
LONG = [(q, (a + " ") * 4) for q, a in QA]  # answers four times as long as QA's


cli = partial(train_cli, env=ENV)


def test_activation_checkpointing_recomputes_each_decoder_layer(tmp_path):
    calls = {}
    for checkpointing in (False, True):
        m = load_manifest(make_project(tmp_path / str(checkpointing), n=8, epochs=1),
                          [f"train.activation_checkpointing={str(checkpointing).lower()}", "train.max_steps=1"])
        setup = setup_run(m, m.find_run("generic", "tiny", 0), init_distributed())
        assert setup.placed.hf_model.training  # from_pretrained returns eval mode; training must not run in it
        # transformers checkpoints a layer's forward (hooks on the layer itself run once), and the recompute
        # stops once it has what the backward needs: count the layer's attention, which always runs again
        inner = decoder_layers(setup.placed.hf_model)[0].self_attn
        count = [0]
        inner.register_forward_hook(lambda *a: count.__setitem__(0, count[0] + 1))
        train_loop(setup, progress=False)
        micro_batches = sum(1 for mb in setup.plan[0][0])
        calls[checkpointing] = count[0] / micro_batches
    assert calls == {False: 1, True: 2}


def test_every_arm_gets_the_same_steps_whatever_the_answer_lengths(tmp_path):
    manifest = make_project(tmp_path / "p", n=16, epochs=2, budget=512, examples_per_step=3)
    write_generated(tmp_path / "p/data/generated/tiny/values.jsonl", (LONG * 2)[:16], "values")
    summaries = {}
    for arm in ("generic", "values"):
        m = load_manifest(manifest)
        summaries[arm] = train_run(m, m.find_run(arm, "tiny", 0), init_distributed(), progress=False)
    g, v = summaries["generic"], summaries["values"]
    assert g["steps"] == v["steps"] == 2 * 6  # ceil(16 / 3) per epoch: no example left out to round a step
    assert g["examples_trained"] == v["examples_trained"] == 16
    assert v["supervised_tokens_per_epoch"] > 1.5 * g["supervised_tokens_per_epoch"]  # the arms differ only here
    for arm in ("generic", "values"):
        log = (tmp_path / f"p/ckpt/tiny/{arm}--tiny--seed0/train_log.jsonl").read_text().splitlines()
        assert len(log) == 12
        assert not (tmp_path / f"p/ckpt/tiny/{arm}--tiny--seed0/state").exists()  # removed once finished


def test_the_plan_visits_every_example_once_per_epoch_in_equal_steps():
    lengths = [10 + (i * 37) % 300 for i in range(50)]
    for packing in (False, True):
        plan = plan_steps(lengths, examples_per_step=8, epochs=2, token_budget=600, packing=packing, world_size=3,
                          seed=1)
        assert len(plan) == 2 * 7
        for epoch in (plan[:7], plan[7:]):
            seen = [i for step in epoch for rank in step for mb in rank if mb for row in mb for i in row]
            assert sorted(seen) == list(range(50))
        sizes = [sum(len(row) for rank in step for mb in rank if mb for row in mb) for step in plan[:7]]
        assert sorted(sizes) == [2] + [8] * 6
        for step in plan:
            assert len({len(rank) for rank in step}) == 1  # every rank has the same number of slots
            for rank in step:
                for mb in rank:
                    if mb and packing:
                        assert len(mb) == 1  # packed: one row per micro-batch (what flash attention needs)
                    if mb:
                        width = max(sum(lengths[i] for i in row) for row in mb)
                        assert width * len(mb) <= 600 or len(mb) == 1
    assert plan_steps(lengths, 8, 1, 600, False, 1, seed=1) == plan_steps(lengths, 8, 1, 600, False, 1, seed=1)


def test_padding_continues_the_row_positions():
    tok = tiny_tokenizer()
    from normlib.core.chat import ChatFormat, encode_example
    fmt = ChatFormat.from_config()
    a, b = encode_example(tok, fmt, "Hi?", "Hello."), encode_example(tok, fmt, "What is 2 + 2?", "It is 4, clearly.")
    mb = collate([a, b], [[0], [1]], tok.pad_token_id)
    width = mb.input_ids.shape[1]
    assert torch.equal(mb.position_ids, torch.arange(width).expand(2, width))


def test_length_filter_comes_before_mixing_so_counts_stay_exact(tmp_path):
    manifest = make_project(tmp_path / "p", n=8, epochs=1)
    pool = LONG[2:5] + QA + QA  # 3 examples over max_len, 16 usable
    write_generated(tmp_path / "p/data/generated/tiny/values.jsonl", pool, "values")
    m = load_manifest(manifest, ["train.max_len=60", "train.tokens_per_microbatch=256"])
    summary = train_run(m, m.find_run("values", "tiny", 0), init_distributed(), progress=False)
    composition = json.loads((tmp_path / "p/ckpt/tiny/values--tiny--seed0/composition.json").read_text())
    assert composition["selected"] == {"generic": 4, "values": 4} and composition["trained"] == 8
    assert composition["sources"]["values"]["over_max_len"] == 3
    assert summary["examples_trained"] == 8


def tiny_gemma2(vocab: int):
    from transformers import Gemma2Config, Gemma2ForCausalLM
    torch.manual_seed(0)
    cfg = Gemma2Config(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, head_dim=16, final_logit_softcapping=2.0,
                       attn_logit_softcapping=None, max_position_embeddings=256)
    return Gemma2ForCausalLM(cfg)


def test_logit_soft_capping_is_part_of_the_loss():
    from grad_setup import examples_and_model
    examples, _, pad_id = examples_and_model()
    model = tiny_gemma2(400)
    check_head(model, torch.tensor([examples[0].input_ids]))  # our head matches its forward
    ours_sum, count = SupervisedLM(model)(*(lambda mb: (mb.input_ids, mb.position_ids, mb.labels))(
        collate(examples, [[0]], pad_id)))
    own = model(input_ids=torch.tensor([examples[0].input_ids]), labels=torch.tensor([examples[0].labels])).loss
    assert ours_sum.item() / count == pytest.approx(own.item(), rel=1e-5)


def test_an_unknown_logit_transformation_is_refused():
    from grad_setup import examples_and_model
    examples, model, _ = examples_and_model()
    original = model.forward

    def doubled(*args, **kwargs):
        out = original(*args, **kwargs)
        out.logits = out.logits * 2
        return out
    model.forward = doubled
    with pytest.raises(HeadMismatch, match="does not reproduce"):
        check_head(model, torch.tensor([examples[0].input_ids]))


def test_resume_refuses_another_configuration_and_falls_back_from_a_corrupt_state(tmp_path):
    manifest = make_project(tmp_path / "p", n=16, epochs=4, budget=160, save_every=4)
    run_dir = tmp_path / "p/ckpt/tiny/values--tiny--seed0"
    cli(manifest, "--arm", "values", "--set", "train.keep_state=true")
    (run_dir / "run.json").unlink()  # as if it had been killed after its last state
    changed = cli(manifest, "--arm", "values", "--set", "train.lr=0.001", check=False)
    assert changed.returncode == 1
    assert "[train] lr: 0.003 in the saved state, 0.001 now" in changed.stderr and "--force" in changed.stderr
    more_data = cli(manifest, "--arm", "values", "--set", "train.examples_per_step=2", check=False)
    assert "[train] examples_per_step: 4 in the saved state, 2 now" in more_data.stderr
    states = sorted((run_dir / "state").glob("step_*"))
    assert len(states) == 2
    shard = next(states[-1].glob("*.distcp"))
    shard.write_bytes(shard.read_bytes()[:100])  # a truncated copy
    resumed = cli(manifest, "--arm", "values")
    assert f"the saved state {states[-1]} cannot be read" in resumed.stderr
    assert f"resuming from {states[0]}" in resumed.stdout
    assert run_status(run_dir) == "finished" and not (run_dir / "state").exists()


def test_an_unreadable_run_json_is_not_finished(tmp_path):
    (tmp_path / "run.json").write_text('{"status": "fini')
    assert run_status(tmp_path) == ""


def test_a_chat_format_error_names_the_file_and_record(tmp_path, monkeypatch):
    import normlib.train.data as data
    from normlib.core.chat import ChatFormat, ChatFormatError
    m = load_manifest(make_project(tmp_path / "p"))
    calls = [0]

    def encode(tokenizer, fmt, prompt, answer):  # the second example of the file cannot be encoded
        calls[0] += 1
        if calls[0] == 2:
            raise ChatFormatError("the prompt tokenises differently when the answer follows it")
        return original(tokenizer, fmt, prompt, answer)
    original = data.encode_example
    monkeypatch.setattr(data, "encode_example", encode)
    with pytest.raises(DataError, match=r"generic\.jsonl: record 2 \(request generic-1\): the prompt tokenises"):
        data.prepare_arm_data(m, m.find_run("generic", "tiny", 0), tiny_tokenizer(), ChatFormat.from_config(m.chat))


def test_mfu_is_per_gpu():
    assert mfu_per_gpu(8000.0, 8, 1e9, 1e12) == pytest.approx(1000 * 1e9 / 1e12)
    assert mfu_per_gpu(8000.0, 8, 1e9, float("nan")) is None


def test_estimate_prints_memory_steps_and_disk_and_warns_when_a_card_is_too_small(tmp_path):
    manifest = make_project(tmp_path / "p", n=8)
    out = cli(manifest, "--estimate", "--gpus", "2").stdout
    assert "optimizer steps per run" in out and "GiB per GPU" in out and "disk per run" in out
    assert "WARNING" not in out
    # a 2-billion-token micro-batch without checkpointing cannot fit
    big = cli(manifest, "--estimate", "--gpus", "1", "--set", "train.tokens_per_microbatch=2000000000",
              "--set", "train.max_len=128").stdout
    assert "WARNING: over an 80 GB card" in big


@pytest.fixture(scope="module")
def model_100m(tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM
    folder = tmp_path_factory.mktemp("m100")
    cfg = LlamaConfig(vocab_size=32000, hidden_size=768, intermediate_size=2560, num_hidden_layers=12,
                      num_attention_heads=12, num_key_value_heads=4, tie_word_embeddings=True,
                      max_position_embeddings=512)
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    assert sum(p.numel() for p in model.parameters()) >= 100e6
    model.save_pretrained(folder)
    tiny_tokenizer().save_pretrained(folder)
    return folder


def test_rank_1_never_holds_the_whole_model_while_loading_for_fsdp(tmp_path, model_100m):
    out = tmp_path / "mem"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           str(Path(__file__).parent / "dist_memory.py"), "--model", str(model_100m), "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=ENV)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rank0 = json.loads(Path(f"{out}.rank0.json").read_text())
    rank1 = json.loads(Path(f"{out}.rank1.json").read_text())
    fp32_size = (model_100m / "model.safetensors").stat().st_size
    assert rank0["mismatched"] == []  # the shards hold exactly the checkpoint's weights
    # rank 1 holds its shard; anything else it allocated while loading stays under a quarter of the model
    assert rank1["rise"] - rank1["shard"] < 0.25 * fp32_size, (rank1, fp32_size)


def test_missing_generated_data_is_a_clean_error(tmp_path):
    manifest = make_project(tmp_path / "p")
    (tmp_path / "p/data/generated/tiny/values.jsonl").unlink()
    proc = cli(manifest, "--arm", "values", check=False)
    assert proc.returncode == 1 and "run `python gen.py --condition values` first" in proc.stderr
    with pytest.raises(DataError):
        m = load_manifest(manifest)
        train_run(m, m.find_run("values", "tiny", 0), init_distributed(), progress=False)


def test_lora_trains_only_adapters_resumes_exactly_and_exports_merged(tmp_path):
    from safetensors.torch import load_file
    from normlib.train.lora import merged_state_dict
    from normlib.core.models import load_model, resolve_model
    kw = dict(n=16, epochs=6, budget=160, save_every=5)
    sets = ["train.method=['lora']", "train.lora_rank=4", "train.export_dtype='fp32'", "train.keep_state=true",
            "train.lr=0.01"]
    straight, resumed = make_project(tmp_path / "straight", **kw), make_project(tmp_path / "resumed", **kw)
    m = load_manifest(straight, sets)
    run = m.find_run("values", "tiny", 0)
    assert run.name == "values--tiny--lora--seed0" and run.model_key == "tiny+lora"
    setup = setup_run(m, run, init_distributed())
    base_before = {k: v.clone() for k, v in setup.placed.hf_model.state_dict().items() if "lora_" not in k}
    trainable = [n for n, p in setup.placed.hf_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    train_loop(setup, progress=False)
    after = setup.placed.hf_model.state_dict()
    assert all(torch.equal(base_before[k], after[k]) for k in base_before)  # base weights untouched
    assert any(not torch.equal(v, torch.zeros_like(v)) for k, v in after.items() if "lora_B" in k)  # adapters learned
    ids = torch.tensor([setup.data.examples[0].input_ids])
    setup.placed.hf_model.eval()
    with torch.no_grad():
        trained_logits = setup.placed.hf_model(input_ids=ids).logits
    from normlib.train.trainer import finish_run
    from normlib.train.trainer import LoopResult
    finish_run(setup, LoopResult(0.0, 0, 0, 0))
    folder = m.run_dir(run) / "model"
    stored = load_file(folder / "model.safetensors")
    assert not any("lora" in k or "base_layer" in k for k in stored)  # a plain merged folder
    reloaded = load_model(resolve_model(str(folder)))
    reloaded.eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, trained_logits, atol=1e-5, rtol=1e-5)
    assert set(merged_state_dict(setup.placed.hf_model)) >= set(stored)
    # resume: a run stopped after its last state and rerun ends with the same weights as the straight one
    mr = load_manifest(resumed, sets)
    args = ["--arm", "values"] + [x for s in sets for x in ("--set", s)]
    cli(resumed, *args)
    run_dir = mr.run_dir(mr.find_run("values", "tiny", 0))
    (run_dir / "run.json").unlink()
    cli(resumed, *args)
    again = load_file(run_dir / "model/model.safetensors")
    for k in stored:
        assert torch.equal(again[k], stored[k]), k


def test_lora_refuses_fsdp(tmp_path):
    from normlib.core.manifest import ManifestError
    with pytest.raises(ManifestError, match="LoRA runs on one GPU or under DDP"):
        load_manifest(make_project(tmp_path / "p"), ["train.method=['lora']", "train.parallel='fsdp'"])


def test_each_seed_draws_its_own_examples_when_the_pool_allows(tmp_path):
    manifest = make_project(tmp_path / "p", n=8, epochs=1)
    pool = [(f"Question {i} about the weather?", f"Answer {i}: it will be sunny.") for i in range(40)]
    write_generated(tmp_path / "p/data/generated/tiny/values.jsonl", pool, "values")
    from normlib.core.chat import ChatFormat
    from normlib.train.data import prepare_arm_data
    m = load_manifest(manifest)
    tok = tiny_tokenizer()
    fmt = ChatFormat.from_config(m.chat)
    ids = {}
    for seed in (0, 1):
        comp = prepare_arm_data(m, m.find_run("values", "tiny", seed), tok, fmt).composition
        ids[seed] = [e["id"] for e in comp["examples"] if e["condition"] == "values"]
        again = prepare_arm_data(m, m.find_run("values", "tiny", seed), tok, fmt).composition
        assert [e["id"] for e in again["examples"] if e["condition"] == "values"] == ids[seed]  # reproducible
    assert set(ids[0]) != set(ids[1])  # a pool of 40 for a need of 4: the seeds draw differently
    generic = prepare_arm_data(m, m.find_run("generic", "tiny", 0), tok, fmt).composition
    mixed = prepare_arm_data(m, m.find_run("values", "tiny", 0), tok, fmt).composition
    first = [e["id"] for e in generic["examples"]]
    assert {e["id"] for e in mixed["examples"] if e["condition"] == "generic"} <= set(first)  # shared selection


def test_learning_curve_points_are_exported_and_recorded(tmp_path):
    manifest = make_project(tmp_path / "p", n=16, epochs=2, budget=160)
    m = load_manifest(manifest, ["train.curve_points=[0.25, 0.5]"])
    summary = train_run(m, m.find_run("values", "tiny", 0), init_distributed(), progress=False)
    assert [p["fraction"] for p in summary["curve_exports"]] == [0.25, 0.5]
    assert [p["step"] for p in summary["curve_exports"]] == [2, 4]  # of 8 steps
    for point in summary["curve_exports"]:
        assert (m.run_dir(m.find_run("values", "tiny", 0)) / point["dir"] / "model.safetensors").exists()
