"""Scale-out: runs as units (list, by name, by index), claims, GPU-group launching, server-driven evaluation."""
import json
import os
import signal
import socket
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import pytest

from conftest import REPO, make_project, train_cli
from normlib.core.manifest import load_manifest
from normlib.train.runs import ClaimedError, Claim, claim_path, read_claim, run_states, take_claim

ENV = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}


train = partial(train_cli, env=ENV)


def add_broken_arm(manifest: Path) -> None:
    """An arm whose condition was never generated: its runs fail with a DataError, the others must not care."""
    text = manifest.read_text().replace("[models.tiny]", """[conditions.broken]
personas = "personas/values.md"
prompts = "prompts/values.txt"
examples = 8

[arms.broken]
mix = {generic = 0.5, broken = 0.5}

[models.tiny]""")
    manifest.write_text(text + "gpus_per_run = 1\nclaim_timeout = 600.0\n")


# ---- runs as units ------------------------------------------------------------------------------


def test_list_runs_run_by_name_and_index(tmp_path):
    manifest = make_project(tmp_path / "p", n=8, epochs=1)
    listed = train(manifest, "--list-runs").stdout
    assert "4 runs: 0 finished, 0 running, 0 failed, 4 todo" in listed
    assert "   1  todo      generic--tiny--seed1" in listed
    train(manifest, "--run-index", "1")
    train(manifest, "--run", "values--tiny--seed0")
    listed = train(manifest, "--list-runs").stdout
    assert "2 finished" in listed and "   1  finished  generic--tiny--seed1" in listed
    assert "   2  finished  values--tiny--seed0" in listed
    bad = train(manifest, "--run-index", "4", check=False)
    assert bad.returncode == 2 and "the matrix has 4 runs (0..3)" in bad.stderr
    typo = train(manifest, "--run", "values--tiny--seed9", check=False)
    assert typo.returncode == 2 and "did you mean" in typo.stderr


def test_gpu_groups_split_the_visible_gpus_and_name_the_setting_when_too_few():
    from normlib.train.launcher import LaunchError, gpu_groups
    assert gpu_groups(["0", "1", "2", "3", "4"], 2) == [["0", "1"], ["2", "3"]]  # GPU 4 stays idle
    with pytest.raises(LaunchError, match=r"\[train\] gpus_per_run = 4, but only 2 GPU\(s\).*lower gpus_per_run"):
        gpu_groups(["0", "1"], 4)
    with pytest.raises(LaunchError, match=r"\[eval\] server_gpus = 2, but only 1 GPU\(s\).*lower server_gpus"):
        gpu_groups(["0"], 2, "[eval] server_gpus")


def test_a_failed_run_records_why_and_the_others_go_on(tmp_path):
    manifest = make_project(tmp_path / "p", n=8, epochs=1)
    add_broken_arm(manifest)
    proc = train(manifest, "--all", "--set", "train.gpus_per_run=0", check=False)  # in one process, in turn
    assert proc.returncode == 1 and "2 of 6 runs failed" in proc.stderr, proc.stderr[-2000:]
    listed = train(manifest, "--list-runs").stdout
    assert "4 finished" in listed and "2 failed" in listed
    failure = json.loads((tmp_path / "p/ckpt/tiny/broken--tiny--seed0.failed.json").read_text())
    assert "DataError" in failure["error"] and "broken" in failure["error"]


def test_an_unexpected_error_in_one_run_does_not_stop_the_others(tmp_path, monkeypatch, capsys):
    """An error train.py does not name (out of memory, a bug) fails that run in a one-process --all, recorded."""
    import importlib.util
    from normlib.train import trainer
    manifest = make_project(tmp_path / "p", n=8, epochs=1)
    real_loop = trainer.train_loop

    def loop(setup, *args, **kwargs):
        if setup.run.name == "values--tiny--seed0":
            raise RuntimeError("CUDA out of memory (simulated)")
        return real_loop(setup, *args, **kwargs)
    monkeypatch.setattr(trainer, "train_loop", loop)
    spec = importlib.util.spec_from_file_location("train_script", REPO / "train.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    assert script.main(["--manifest", str(manifest), "--all", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "CUDA out of memory (simulated)" in err and "1 of 4 runs failed: values--tiny--seed0" in err
    assert {s.name: s.status for s in run_states(load_manifest(manifest))} == {
        "generic--tiny--seed0": "finished", "generic--tiny--seed1": "finished", "values--tiny--seed0": "failed",
        "values--tiny--seed1": "finished"}
    failure = json.loads((tmp_path / "p/ckpt/tiny/values--tiny--seed0.failed.json").read_text())
    assert failure["error"] == "RuntimeError: CUDA out of memory (simulated)"


# ---- claims ---------------------------------------------------------------------------------------


def test_a_claim_is_exclusive_and_a_dead_one_is_taken_over(tmp_path):
    run_dir = tmp_path / "ckpt/r1"
    with take_claim(run_dir, stale_after=60):
        with pytest.raises(ClaimedError, match=f"pid {os.getpid()} on {socket.gethostname()}"):
            take_claim(run_dir, stale_after=60)
    assert read_claim(run_dir) is None  # released on exit

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    now = time.time()
    claim_path(run_dir).write_text(json.dumps(Claim(socket.gethostname(), dead.pid, now, now).__dict__))
    with take_claim(run_dir, stale_after=3600) as mine:  # same host, process gone: taken over at once
        assert read_claim(run_dir).pid == os.getpid() == mine.claim.pid
    assert list(run_dir.parent.glob("r1.claim.stale-*"))  # the dead claim is kept for the record

    claim_path(run_dir).write_text(json.dumps(Claim("other-node", 1, now - 100, now - 100).__dict__))
    with pytest.raises(ClaimedError, match="other-node"):
        take_claim(run_dir, stale_after=600)  # another machine, recent heartbeat: alive as far as we can tell
    with take_claim(run_dir, stale_after=60):  # heartbeat older than the timeout: taken over
        pass
    claim_path(run_dir).write_text('{"host": "torn')  # a claim cut short by a crash counts from its mtime
    with pytest.raises(ClaimedError):
        take_claim(run_dir, stale_after=600)


# ---- GPU groups on one machine -------------------------------------------------------------------


def launcher(manifest, gpu_ids: str, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, str(REPO / "train.py"), "--manifest", str(manifest), "--all",
                             "--gpu-ids", gpu_ids], stdout=open(log, "w"), stderr=subprocess.STDOUT, env=ENV,
                            start_new_session=True, preexec_fn=_default_sigint)


def wait_for_claims(ckpt: Path, count: int, proc: subprocess.Popen, log: Path, timeout: float = 300) -> None:
    """Until `count` runs are claimed (being trained); fails at once if the launcher exits first."""
    deadline = time.time() + timeout
    while len(list(ckpt.glob("*.claim"))) < count and time.time() < deadline:
        assert proc.poll() is None, log.read_text()
        time.sleep(0.5)


def _default_sigint():
    # a test run started in the background by a non-interactive shell inherits an ignored SIGINT; a user's
    # terminal does not, and Ctrl-C is what the interrupt test checks
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_two_launchers_share_the_gpu_groups_without_training_a_run_twice(tmp_path):
    manifest = make_project(tmp_path / "p", n=8, epochs=2)
    add_broken_arm(manifest)
    first, second = launcher(manifest, "0,1", tmp_path / "a.log"), launcher(manifest, "2,3", tmp_path / "b.log")
    assert first.wait(timeout=900) == 1 and second.wait(timeout=900) == 1  # the broken arm fails, in one of them
    out = (tmp_path / "a.log").read_text() + (tmp_path / "b.log").read_text()
    ckpt = tmp_path / "p/ckpt/tiny"
    good = [f"{arm}--tiny--seed{s}" for arm in ("generic", "values") for s in (0, 1)]
    for name in good:
        assert out.count(f"[{name}] finished in") == 1, out  # trained exactly once, by one of the two launchers
        steps = [json.loads(line)["step"] for line in (ckpt / name / "train_log.jsonl").read_text().splitlines()]
        assert steps == sorted(set(steps)) and steps[-1] == json.loads((ckpt / name / "run.json").read_text())["steps"]
        assert not (ckpt / f"{name}.claim").exists()
        assert (ckpt / "logs" / f"{name}.log").stat().st_size > 0
    for s in (0, 1):
        assert "FAILED" in out and (ckpt / f"broken--tiny--seed{s}.failed.json").exists()
    # the launchers ran runs side by side: some run started before another one ended
    spans = []
    for name in good:
        info = json.loads((ckpt / name / "run.json").read_text())
        end = time.mktime(time.strptime(info["finished_at"][:19], "%Y-%m-%dT%H:%M:%S"))
        spans.append((end - info["wall_seconds_this_session"], end))
    assert any(a[0] < b[1] - 1 and b[0] < a[1] - 1 for i, a in enumerate(spans) for b in spans[i + 1:])
    assert "CUDA_VISIBLE_DEVICES" not in out  # (children see their group; nothing leaks into the launcher's log)


def start_two_groups(tmp_path):
    """A launcher of long one-GPU runs on groups 0 and 1, returned once both trainers hold their claims."""
    manifest = make_project(tmp_path / "p", n=8, epochs=200, save_every=50)
    manifest.write_text(manifest.read_text() + "gpus_per_run = 1\n")
    proc = launcher(manifest, "0,1", tmp_path / "a.log")
    ckpt = tmp_path / "p/ckpt/tiny"
    wait_for_claims(ckpt, 2, proc, tmp_path / "a.log")
    return manifest, proc, ckpt


def test_a_killed_launcher_leaves_claims_that_the_next_one_takes_over(tmp_path):
    manifest, first, ckpt = start_two_groups(tmp_path)
    claimed = sorted(p.name for p in ckpt.glob("*.claim"))
    assert len(claimed) == 2
    # kill -9 everything of this experiment: the launcher, torchrun and the trainers; no cleanup runs
    subprocess.run(["pkill", "-9", "-f", str(manifest)], check=False)
    first.wait(timeout=60)
    time.sleep(1)
    assert sorted(p.name for p in ckpt.glob("*.claim")) == claimed  # left behind, their processes gone
    listed = train(manifest, "--list-runs").stdout
    assert "0 running" in listed  # a claim whose process is gone is not a running run
    second = launcher(manifest, "0,1", tmp_path / "b.log")
    assert second.wait(timeout=1200) == 0, (tmp_path / "b.log").read_text()[-3000:]
    assert "4 finished" in train(manifest, "--list-runs").stdout
    assert len(list(ckpt.glob("*.claim.stale-*"))) == 2 and not list(ckpt.glob("*.claim"))


def test_ctrl_c_stops_every_child_and_releases_the_claims(tmp_path):
    manifest, proc, ckpt = start_two_groups(tmp_path)
    os.killpg(proc.pid, signal.SIGINT)
    assert proc.wait(timeout=120) == 130
    time.sleep(1)
    assert not list(ckpt.glob("*.claim"))  # the trainers ended cleanly and gave up their claims
    assert subprocess.run(["pgrep", "-f", str(manifest)], capture_output=True).stdout == b""


# ---- evaluation through servers eval.py starts ---------------------------------------------------


def test_eval_starts_one_server_per_checkpoint_and_gpu_group(tmp_path):
    manifest = make_project(tmp_path / "p", n=8, epochs=1, with_eval=True)
    train(manifest, "--all")
    command = f"{sys.executable} -m normlib.llm.fakeserver --port {{port}}"
    proc = subprocess.run([sys.executable, str(REPO / "eval.py"), "--manifest", str(manifest), "--no-progress",
                           "--generate-only", "--gpu-ids", "0,1", "--set", "eval.backend='vllm'",
                           "--set", f"eval.server_command='{command}'", "--set", "eval.server_timeout=120.0"],
                          capture_output=True, text=True, env=ENV, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    m = load_manifest(manifest)
    labels = [r.name for r in m.runs()] + (["base--tiny"] if m.eval.include_base_models else [])
    for label in labels:
        assert f"[{label}] starting a server on GPU(s)" in proc.stdout
        rows = [json.loads(line) for line in (m.results_dir() / "samples" / f"{label}.jsonl").read_text().splitlines()]
        assert rows and all(r["backend"] == "vllm" for r in rows)
        assert (m.results_dir() / "servers" / f"{label}.log").exists()  # each server's own output
    assert {line.split("GPU(s) ")[1].split(",")[0] for line in proc.stdout.splitlines()
            if "starting a server" in line} == {"0", "1"}  # both groups served checkpoints
    assert subprocess.run(["pgrep", "-f", "normlib.llm.fakeserver"], capture_output=True).stdout == b""
    # a server command that cannot start fails that checkpoint, names its log, and generates nothing wrong
    bad = subprocess.run([sys.executable, str(REPO / "eval.py"), "--manifest", str(manifest), "--no-progress",
                          "--generate-only", "--gpu-ids", "0", "--set", "eval.backend='vllm'", "--set",
                          "eval.samples=3", "--set", f"eval.server_command='{sys.executable} -c \"import sys; "
                          f"sys.exit(3)\" {{port}}'", "--set", "eval.server_timeout=30.0"],
                         capture_output=True, text=True, env=ENV, timeout=600)
    assert bad.returncode == 1 and "could not be evaluated through their servers" in bad.stderr


# ---- a real Slurm cluster -------------------------------------------------------------------------


@pytest.mark.slow
def test_the_matrix_trains_and_evaluates_through_slurm_job_arrays(tmp_path):
    from normlib.llm.fakeserver import FakeLLMServer
    from slurm_cluster import SlurmCluster, missing_reason
    if missing_reason():
        pytest.skip(missing_reason())
    manifest = make_project(tmp_path / "p", n=8, epochs=2, with_eval=True)
    manifest.write_text(manifest.read_text().replace("[judge]", f"""gpus_per_run = 1

[slurm]
python = "{sys.executable}"
cpus_per_task = 1
time = "00:20:00"
setup = ["export OMP_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false"]

[judge]"""))
    with SlurmCluster(tmp_path / "slurm") as cluster, FakeLLMServer() as judge:
        env = {**ENV, **cluster.env}
        submitted = subprocess.run([sys.executable, str(REPO / "train.py"), "--manifest", str(manifest), "--slurm",
                                    "--submit"], capture_output=True, text=True, env=env, timeout=120)
        assert submitted.returncode == 0, submitted.stdout + submitted.stderr
        assert "a job array of 4 runs, 1 GPU(s) each" in submitted.stdout and "submitted job" in submitted.stdout
        cluster.wait_for_jobs(900)
        m = load_manifest(manifest)
        for run in m.runs():
            info = json.loads((m.run_dir(run) / "run.json").read_text())
            assert info["status"] == "finished" and info["launcher"].startswith("slurm job "), cluster.logs()
        logs = sorted((tmp_path / "p/slurm/tiny/logs").glob("normlib-train-tiny-*.out"))
        assert len(logs) == 4
        seen_gpus = {line.split("CUDA_VISIBLE_DEVICES=")[1].rstrip(")\n") for f in logs
                     for line in f.read_text().splitlines() if "CUDA_VISIBLE_DEVICES=" in line}
        assert seen_gpus <= {"0", "1", "2", "3"} and seen_gpus  # Slurm gave each task its own (fake) GPU
        # nothing left to do: a second submission says so instead of training again
        again = subprocess.run([sys.executable, str(REPO / "train.py"), "--manifest", str(manifest), "--slurm"],
                               capture_output=True, text=True, env=env, timeout=120)
        assert "every run is finished; nothing to submit" in again.stdout
        # evaluation: one --generate-only task per model, then --rescore once all succeeded
        evaluated = subprocess.run([sys.executable, str(REPO / "eval.py"), "--manifest", str(manifest), "--slurm",
                                    "--submit", "--set", f"judge.base_url='{judge.openai_url}'"],
                                   capture_output=True, text=True, env=env, timeout=120)
        assert evaluated.returncode == 0, evaluated.stdout + evaluated.stderr
        cluster.wait_for_jobs(900)
    results = m.results_dir()
    assert sorted(p.stem for p in (results / "samples").glob("*.jsonl")) == sorted(r.name for r in m.runs())
    assert (results / "contrasts.csv").stat().st_size > 0, cluster.logs()
    scored = [json.loads(line) for line in (results / "scored.jsonl").read_text().splitlines()]
    assert {r["label"] for r in scored} == {r.name for r in m.runs()}
