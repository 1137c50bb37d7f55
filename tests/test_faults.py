"""Hostile and careless cases: nothing stale is scored, no key leaks, nothing produced is lost or counted twice."""
import json
import os
import subprocess
import sys
import threading
import time

import pytest
import torch

from conftest import REPO, make_project
from normlib.core.evalsets import EvalSetError, load_eval_set
from normlib.llm.fakeserver import FakeLLMServer
from normlib.gen.generate import InputError, load_personas, load_prompts
from normlib.llm.judge import REFUSAL_LABELS, neutralise, parse_verdict
from normlib.llm.clients import ChatRequest, HttpClient, LLMConfigError, make_client, read_api_key
from normlib.core.locks import LockedError, exclusive
from normlib.core.manifest import EndpointConfig, ManifestError, load_manifest

ENV = {**os.environ, "PYTHONUNBUFFERED": "1", "TOKENIZERS_PARALLELISM": "false"}
KEY = "sk-live-VERYSECRET-0123456789"


def run(script, manifest, *args, env=None):
    return subprocess.run([sys.executable, str(REPO / script), "--manifest", str(manifest), "--no-progress", *args],
                          capture_output=True, text=True, env=env or ENV, timeout=600)


# ---- 1. stale answers -------------------------------------------------------------------------


def test_a_retrained_run_and_an_edited_item_are_generated_again(tmp_path):
    manifest = make_project(tmp_path / "p", n=8, epochs=2, with_eval=True)
    text = manifest.read_text().replace("samples = 2", "samples = 0")
    manifest.write_text(text)
    assert run("train.py", manifest, "--arm", "values", "--seed", "0").returncode == 0
    with FakeLLMServer() as judge:
        url = f"--set=judge.base_url='{judge.openai_url}'"
        first = run("eval.py", manifest, url, "--only", "values--tiny--seed0", "--generate-only")
        assert "generated 12 new answers" in first.stdout, first.stderr[-2000:]
        again = run("eval.py", manifest, url, "--only", "values--tiny--seed0", "--generate-only")
        assert "generated 0 new answers" in again.stdout
        # an edited item text: only that item is asked again
        violating = tmp_path / "p/eval/violating.jsonl"
        rows = [json.loads(line) for line in violating.read_text().splitlines()]
        rows[0]["text"] = "Tell me about mixed meadows and their grasses."
        violating.write_text("".join(json.dumps(r) + "\n" for r in rows))
        edited = run("eval.py", manifest, url, "--only", "values--tiny--seed0", "--generate-only")
        assert "generated 1 new answers" in edited.stdout
        # the run trained again: every answer is stale
        assert run("train.py", manifest, "--arm", "values", "--seed", "0", "--force").returncode == 0
        stale = run("eval.py", manifest, url, "--rescore")
        assert "were made by other weights" in stale.stderr
        retrained = run("eval.py", manifest, url, "--only", "values--tiny--seed0", "--generate-only")
        assert "generated 12 new answers" in retrained.stdout
        scored = run("eval.py", manifest, url, "--rescore")
        assert scored.returncode == 0, scored.stderr[-2000:]
    rows = [json.loads(line) for line in (tmp_path / "p/results/tiny/scored.jsonl").read_text().splitlines()]
    run_json = (tmp_path / "p/ckpt/tiny/values--tiny--seed0/run.json").read_bytes()
    import hashlib
    identity = "run:" + hashlib.sha256(run_json).hexdigest()[:16]
    mine = [r for r in rows if r["label"] == "values--tiny--seed0"]
    assert len(mine) == 12 and {r["checkpoint_identity"] for r in mine} == {identity}
    assert all(r["item_text_sha"] for r in mine)


def test_duplicate_sample_rows_count_once(tmp_path):
    from normlib.eval.evaluation import read_samples
    row = {"key": "a|b|c", "response": "x"}
    (tmp_path / "s.jsonl").write_text(json.dumps(row) + "\n" + json.dumps(row) + "\n" + json.dumps(dict(row, key="d")) + "\n")
    assert [r["key"] for r in read_samples(tmp_path / "s.jsonl")] == ["a|b|c", "d"]


# ---- 2. the API key never reaches a message ----------------------------------------------------


def test_a_key_with_a_windows_line_end_is_stripped_and_a_broken_key_is_refused_without_showing_it(monkeypatch):
    monkeypatch.setenv("NL_KEY", KEY + "\r\n")
    assert read_api_key("NL_KEY", "teacher") == KEY
    monkeypatch.setenv("NL_KEY", "sk-live-VERY\nSECRET")
    with pytest.raises(LLMConfigError) as err:
        read_api_key("NL_KEY", "teacher")
    assert "VERY" not in str(err.value) and "NL_KEY" in str(err.value)


def test_a_request_exception_is_scrubbed_before_it_is_shown():
    with FakeLLMServer() as server:
        ep = EndpointConfig(backend="openai", model="m", base_url=server.openai_url, max_retries=0)
        # a line break in a header value: requests refuses to send it and quotes the value in its error
        client = HttpClient(ep, api_key=KEY + "\nX-Injected: 1", backoff_base=0.01)
        result = client.complete(ChatRequest(key="1", user="hi"))
    assert not result.ok and result.error_kind == "bad_request", result
    assert "InvalidHeader" in result.error
    assert KEY not in result.error


# ---- 3. no code runs from a checkpoint ----------------------------------------------------------


def test_rng_files_are_loaded_without_running_code(tmp_path):
    from normlib.train.checkpoint import load_state  # noqa: F401  (load_state is what reads them)

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))
    torch.save({"python": Evil()}, tmp_path / "rng_rank0.pt")
    with pytest.raises(Exception):
        torch.load(tmp_path / "rng_rank0.pt", weights_only=True)
    assert not (tmp_path / "pwned").exists()
    source = (REPO / "normlib/train/checkpoint.py").read_text()
    assert "weights_only=False" not in source and "weights_only=True" in source


# ---- 4/7. locks and torn files -------------------------------------------------------------------


def test_a_second_process_on_the_same_files_is_refused(tmp_path):
    with exclusive(tmp_path / "x.lock", "condition 'values'"):
        with pytest.raises(LockedError, match=r"condition 'values' is in use by pid \d+"):
            with exclusive(tmp_path / "x.lock", "condition 'values'"):
                pass
    with exclusive(tmp_path / "x.lock", "condition 'values'"):  # released when the holder finished
        pass


def test_a_second_gen_py_on_a_condition_refuses(tmp_path):
    manifest = make_project(tmp_path / "p")
    with FakeLLMServer(latency=0.3) as server:
        manifest.write_text(manifest.read_text() + f"""
[teacher]
backend = "openai"
base_url = "{server.openai_url}"
model = "m"
concurrency = 1
""")
        for f in ("generic.jsonl", "values.jsonl"):
            (tmp_path / "p/data/generated/tiny" / f).unlink()
        holder = exclusive(tmp_path / "p/data/generated/tiny/values.lock", "condition 'values'")
        holder.__enter__()
        try:
            second = run("gen.py", manifest, "--condition", "values")
        finally:
            holder.__exit__(None, None, None)
    assert second.returncode == 1 and "condition 'values' is in use by pid" in second.stderr
    assert not (tmp_path / "p/data/generated/tiny/values.raw.jsonl").exists()  # nothing was paid for


def test_a_torn_report_is_rebuilt_and_json_writes_use_unique_temporary_names(tmp_path):
    from normlib.core.jsonl import read_json_or_none, write_json_atomic
    (tmp_path / "r.json").write_text('{"kept": 3')
    assert read_json_or_none(tmp_path / "r.json") is None
    errors = []

    def writer(n):
        try:
            for _ in range(50):
                write_json_atomic(tmp_path / "r.json", {"writer": n, "pad": "x" * 5000})
        except Exception as e:  # a shared temporary name would make one writer's rename fail
            errors.append(e)
    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert not errors and json.loads((tmp_path / "r.json").read_text())["pad"] == "x" * 5000


# ---- 5. reserved names --------------------------------------------------------------------------


@pytest.mark.parametrize("table,name,message", [("arms", "base", "reserved"), ("arms", "extra", "reserved"),
                                                ("conditions", "judge_cache", "collide"),
                                                ("conditions", "audit", "collide"),
                                                ("conditions", "values.raw", "no dots")])
def test_reserved_and_colliding_names_are_refused(tmp_path, table, name, message):
    manifest = make_project(tmp_path / "p")
    text = manifest.read_text()
    if table == "arms":
        text = text.replace("[arms.values]", f"[arms.{name}]")
    else:
        # quoted, so that TOML reads a dotted name as one key rather than a nested table
        text = text.replace("[conditions.values]", f'[conditions."{name}"]').replace("values = 0.5", f'"{name}" = 0.5')
    manifest.write_text(text)
    with pytest.raises(ManifestError) as err:
        load_manifest(manifest)
    assert name in str(err.value) and (message in str(err.value) or "letters" in str(err.value))


# ---- 6. Retry-After -----------------------------------------------------------------------------


def test_retry_after_is_capped_unparsable_ignored_and_announced_once(capsys):
    with FakeLLMServer(faults=["429:86400"]) as server:
        ep = EndpointConfig(backend="openai", model="m", base_url=server.openai_url, max_retries=3)
        start = time.monotonic()
        result = HttpClient(ep, backoff_base=0.01).complete(ChatRequest(key="1", user="hi"))
        assert time.monotonic() - start < 30
    assert not result.ok and result.error_kind == "rate_limited" and "max_retry_after" in result.error
    from normlib.llm.clients import _retry_after_seconds
    assert _retry_after_seconds("inf") is None and _retry_after_seconds("soon") is None
    assert _retry_after_seconds("2") == 2.0
    with FakeLLMServer(faults=["429:6", "429:6"]) as server:
        ep = EndpointConfig(backend="openai", model="m", base_url=server.openai_url, max_retries=3, concurrency=2)
        client = HttpClient(ep, backoff_base=0.01, role="teacher")
        client.map([ChatRequest(key=str(i), user="hi") for i in range(2)], lambda r, res: None)
    assert capsys.readouterr().err.count("teacher: rate limited; pausing") == 1


def test_a_stop_wakes_a_worker_waiting_out_a_retry_after():
    with FakeLLMServer(faults=["429:200"]) as server:
        ep = EndpointConfig(backend="openai", model="m", base_url=server.openai_url, max_retries=3)
        client = HttpClient(ep, backoff_base=0.01)
        stop = threading.Event()
        threading.Timer(1.0, stop.set).start()
        start = time.monotonic()
        result = client.complete(ChatRequest(key="1", user="hi"), stop=stop)
        assert time.monotonic() - start < 30 and result.error_kind == "cancelled"


# ---- 9. the judge's own output ------------------------------------------------------------------


def test_fenced_and_commented_verdicts_parse_and_delimiter_tricks_are_neutralised():
    labels = REFUSAL_LABELS
    assert parse_verdict('```json\n{"verdict": "full_refusal"}\n```', labels) == "full_refusal"
    assert parse_verdict("VERDICT: full_refusal (the assistant declines)", labels) == "full_refusal"
    assert parse_verdict("Verdict \u2014 counter-argument", labels) == "counter_argument"
    for trick in ("< /response >", "</response id='x'>", "<response class=a>", "</ Response>"):
        assert "response" not in neutralise(trick).replace("[response]", "")


# ---- 10. hand-written inputs are read strictly ---------------------------------------------------


def test_hand_written_files_are_read_strictly(tmp_path):
    good = {"id": "v1", "text": "A request", "kind": "control"}
    (tmp_path / "last.jsonl").write_text(json.dumps(good) + "\n" + '{"id": "v2", "text": "cut')
    with pytest.raises(EvalSetError, match=r"last\.jsonl:2: not valid JSON"):
        load_eval_set(tmp_path / "last.jsonl", "s")
    (tmp_path / "bom.txt").write_bytes("\ufeff# a comment\nWhat is a meadow?\n".encode())
    assert [p.text for p in load_prompts([tmp_path / "bom.txt"])] == ["What is a meadow?"]
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 au lait?\n".encode("latin-1"))
    with pytest.raises(InputError, match=r"latin1\.txt:1: not UTF-8"):
        load_prompts([tmp_path / "latin1.txt"])
    (tmp_path / "folder.jsonl").mkdir()
    with pytest.raises(InputError, match="is a folder"):
        load_prompts([tmp_path / "folder.jsonl"])


def test_a_missing_twin_is_an_error_naming_both_sets(tmp_path):
    manifest = make_project(tmp_path / "p", with_eval=True)
    benign = tmp_path / "p/eval/benign.jsonl"
    benign.write_text("".join(line + "\n" for line in benign.read_text().splitlines()[1:]))
    with FakeLLMServer() as judge:
        proc = run("eval.py", manifest, f"--set=judge.base_url='{judge.openai_url}'", "--rescore")
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "violating:v0: its twin 'b0' is not in benign" in proc.stderr


def test_persona_includes_stay_inside_the_data_folder(tmp_path):
    (tmp_path / "data/personas").mkdir(parents=True)
    (tmp_path / "data/doctrine").mkdir()
    (tmp_path / "data/doctrine/d.md").write_text("The doctrine.")
    persona = tmp_path / "data/personas/p.md"
    persona.write_text("# persona: a\n{{include: ../doctrine/d.md}}\nYou are a.\n")
    assert "The doctrine." in load_personas([persona])[0].text
    persona.write_text("# persona: a\n{{include: /etc/hostname}}\nYou are a.\n")
    with pytest.raises(InputError, match="outside"):
        load_personas([persona])
    persona.write_text("# persona: a\n{{include: ../../../../../etc/hostname}}\nYou are a.\n")
    with pytest.raises(InputError, match="outside"):
        load_personas([persona])


# ---- 11. small edges ----------------------------------------------------------------------------


@pytest.mark.parametrize("override,message", [("train.lr=nan", "not a finite number"), ("eval.alpha=5", "(0, 0.5)"),
                                              ("eval.max_invalid_share=2.0", "must be in [0, 1]"),
                                              ("eval.batch_size=0", "at least 1"),
                                              ("conditions.values.examples=1000000000000", "must be in [1,")])
def test_out_of_range_values_are_refused(tmp_path, override, message):
    manifest = make_project(tmp_path / "p", with_eval=True)
    with pytest.raises(ManifestError) as err:
        load_manifest(manifest, [override])
    assert message in str(err.value)


def test_limit_must_be_positive_and_writes_a_trial_file_beside_the_real_one(tmp_path):
    manifest = make_project(tmp_path / "p")
    real = (tmp_path / "p/data/generated/tiny/values.jsonl").read_text()
    with FakeLLMServer() as server:
        manifest.write_text(manifest.read_text() + f"""
[teacher]
backend = "openai"
base_url = "{server.openai_url}"
model = "m"
""")
        for bad in ("0", "-5"):
            proc = run("gen.py", manifest, "--condition", "values", "--limit", bad)
            assert proc.returncode == 2 and "must be at least 1" in proc.stderr
        proc = run("gen.py", manifest, "--condition", "values", "--limit", "2")
        assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "p/data/generated/tiny/values.jsonl").read_text() == real
    assert len((tmp_path / "p/data/generated/tiny/values.trial-2.jsonl").read_text().splitlines()) == 2


def test_extra_checkpoint_labels_are_sanitised(tmp_path):
    manifest = make_project(tmp_path / "p", with_eval=True)
    manifest.write_text(manifest.read_text().replace("include_base_models = false",
                                                     'include_base_models = false\nextra_checkpoints = '
                                                     '{"../../escape" = "tiny-model"}'))
    with pytest.raises(ManifestError, match="extra_checkpoints"):
        load_manifest(manifest)


def test_validate_judge_takes_its_path_from_the_command_line_and_names_a_missing_file(tmp_path):
    manifest = make_project(tmp_path / "p", with_eval=True)
    proc = subprocess.run([sys.executable, str(REPO / "eval.py"), "--manifest", str(manifest), "--validate-judge",
                           "no-such-file.jsonl", "--set", "judge.base_url='http://127.0.0.1:9/v1'"],
                          capture_output=True, text=True, env=ENV, timeout=300, cwd=tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert str(tmp_path / "no-such-file.jsonl") in proc.stderr


def test_the_eval_server_can_have_an_api_key(tmp_path, monkeypatch):
    from normlib.eval.evaluation import _server_generator
    from normlib.core.chat import ChatFormat
    from normlib.eval.report import Evaluated
    manifest = make_project(tmp_path / "p", with_eval=True)
    with FakeLLMServer() as server:
        monkeypatch.setenv("NL_EVAL_KEY", KEY)
        m = load_manifest(manifest, ["eval.backend='openai'", f"eval.base_url='{server.openai_url}'",
                                     "eval.api_key_env='NL_EVAL_KEY'"])
        ev = Evaluated("x", "values", "tiny", 0, str(tmp_path), "id")
        _server_generator(m, ev, ChatFormat.from_config(), m.eval.base_url)(["What is 2 + 2?"], 0.0, 1)
        assert server.seen[0]["headers"]["Authorization"] == f"Bearer {KEY}"


def test_an_unreachable_hub_id_is_a_clean_error(tmp_path):
    # in a subprocess with the hub offline: the same failure path, without waiting out connection timeouts
    code = ("from normlib.core.models import ModelLoadError, load_tokenizer, resolve_model\n"
            "try:\n    load_tokenizer(resolve_model('no-such-org/no-such-model'))\n"
            "except ModelLoadError as e:\n    print('clean:', e)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert "clean: could not load the tokenizer of 'no-such-org/no-such-model'" in proc.stdout, proc.stderr[-2000:]


def test_a_local_client_needs_no_key_and_an_openai_one_checks_its_key(monkeypatch):
    monkeypatch.delenv("NL_MISSING", raising=False)
    ep = EndpointConfig(backend="openai", model="m", base_url="http://127.0.0.1:9/v1", api_key_env="NL_MISSING")
    with pytest.raises(LLMConfigError, match="NL_MISSING is not set"):
        make_client(ep, "judge")
