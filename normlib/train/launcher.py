"""Several training runs at once on one machine: one torchrun per GPU group.

`train.py --all` with `[train] gpus_per_run = N` splits the visible GPUs into groups of N and keeps every
group busy: it starts `torchrun --standalone --nproc_per_node N train.py --run-name NAME` with
CUDA_VISIBLE_DEVICES set to the group, writes each run's output to `<checkpoint_dir>/<experiment>/logs/`,
and starts the next run when one ends. The child claims its run (normlib.train.runs), so two launchers
on one machine, or launchers on several machines sharing the checkpoint folder, never train a run twice: a
child that finds its run claimed exits with CLAIMED_EXIT and the launcher moves on. Runs already finished
are skipped; a failed run is reported and the others go on. Ctrl-C (or SIGTERM) stops every child cleanly.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

from normlib.core.manifest import Manifest, Run
from normlib.train.runs import live_claim, run_status

CLAIMED_EXIT = 3  # train.py's exit status when another process holds the run's claim


class LaunchError(RuntimeError):
    pass


def visible_gpu_ids(explicit: str | None = None) -> list[str]:
    """GPU ids to schedule on: --gpu-ids, else CUDA_VISIBLE_DEVICES, else every CUDA device."""
    if explicit:
        return [x.strip() for x in explicit.split(",") if x.strip()]
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [x.strip() for x in env.split(",") if x.strip()]
    import torch
    return [str(i) for i in range(torch.cuda.device_count())]


def gpu_groups(ids: list[str], per_run: int, setting: str = "[train] gpus_per_run") -> list[list[str]]:
    """`ids` split into groups of `per_run` (the manifest `setting` it comes from, named in errors)."""
    if per_run < 1:
        raise LaunchError(f"{setting} must be at least 1 to launch on GPU groups")
    if len(ids) < per_run:
        key = setting.split()[-1]
        raise LaunchError(f"{setting} = {per_run}, but only {len(ids)} GPU(s) are visible "
                          f"({','.join(ids) or 'none'}); lower {key} or name GPUs with --gpu-ids")
    groups = [ids[i:i + per_run] for i in range(0, len(ids) - per_run + 1, per_run)]
    left = ids[len(groups) * per_run:]
    if left:
        print(f"note: GPU(s) {','.join(left)} stay idle: {len(ids)} GPUs do not divide into groups of {per_run}",
              file=sys.stderr)
    return groups


def log_dir(manifest: Manifest) -> Path:
    return manifest.resolve(manifest.experiment.checkpoint_dir) / manifest.experiment.name / "logs"


def child_command(manifest: Manifest, run: Run, gpus: int, overrides: list[str], python: str | None = None) -> list[str]:
    script = Path(__file__).resolve().parents[2] / "train.py"
    argv = [python or sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}",
            str(script), "--manifest", str(Path(manifest.source).resolve()), "--run-name", run.name, "--no-progress"]
    for o in overrides:
        argv += ["--set", o]
    return argv


@dataclass
class Outcome:
    finished: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)  # "name (exit N): log path"
    skipped: list[str] = field(default_factory=list)  # finished earlier, or claimed elsewhere


@dataclass
class _Child:
    proc: subprocess.Popen
    run: Run
    log: Path
    started: float
    launch_id: str


def launch(manifest: Manifest, runs: list[Run], groups: list[list[str]], overrides: list[str],
           poll_seconds: float = 0.5) -> Outcome:
    """Train `runs`, one per GPU group at a time, until all have ended; returns what happened to each."""
    outcome = Outcome()
    pending = deque(runs)
    active: dict[int, _Child] = {}
    logs = log_dir(manifest)
    logs.mkdir(parents=True, exist_ok=True)
    previous = signal.signal(signal.SIGTERM, raise_interrupt)
    try:
        while pending or active:
            for g, group in enumerate(groups):
                if g in active:
                    continue
                run = _next_runnable(manifest, pending, outcome)
                if run is None:
                    break
                log = logs / f"{run.name}.log"
                launch_id = f"{os.uname().nodename}-{os.getpid()}-{time.time_ns()}"
                env = {**os.environ, "CUDA_VISIBLE_DEVICES": ",".join(group), "NORMLIB_LAUNCH_ID": launch_id,
                       "NORMLIB_LAUNCHER": f"train.py --all on {os.uname().nodename} GPUs {','.join(group)}"}
                with open(log, "ab") as out:
                    out.write(f"\n=== {time.strftime('%Y-%m-%d %H:%M:%S')} started on GPUs {','.join(group)}\n".encode())
                    out.flush()
                    proc = subprocess.Popen(child_command(manifest, run, len(group), overrides), stdout=out,
                                            stderr=subprocess.STDOUT, env=env, start_new_session=True)
                active[g] = _Child(proc, run, log, time.time(), launch_id)
                print(f"[{run.name}] started on GPU(s) {','.join(group)} (log: {log})", flush=True)
            for g, child in list(active.items()):
                code = child.proc.poll()
                if code is None:
                    continue
                del active[g]
                minutes = (time.time() - child.started) / 60
                if code == 0 and _finished_by(manifest, child):
                    outcome.finished.append(child.run.name)
                    print(f"[{child.run.name}] finished in {minutes:.1f} min", flush=True)
                elif code == 0:  # another launcher finished it between our check and our child's claim
                    outcome.skipped.append(child.run.name)
                    print(f"[{child.run.name}] finished by another launcher meanwhile; skipped", flush=True)
                elif code == CLAIMED_EXIT:
                    outcome.skipped.append(child.run.name)
                    print(f"[{child.run.name}] claimed by another launcher meanwhile; skipped", flush=True)
                else:
                    outcome.failed.append(f"{child.run.name} (exit {code}): {child.log}")
                    print(f"[{child.run.name}] FAILED (exit {code}) after {minutes:.1f} min; see {child.log}",
                          flush=True)
            if pending or active:
                time.sleep(poll_seconds)
    except KeyboardInterrupt:
        print(f"stopping {len(active)} run(s); their last saved states resume on the next start", file=sys.stderr)
        stop_children([c.proc for c in active.values()])
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
    return outcome


def _finished_by(manifest: Manifest, child: _Child) -> bool:
    import json
    try:
        info = json.loads((manifest.run_dir(child.run) / "run.json").read_text())
    except (OSError, ValueError):
        return False
    return info.get("status") == "finished" and info.get("launch_id") == child.launch_id


def raise_interrupt(signum, frame):
    """A SIGTERM handler that ends the process like Ctrl-C (Slurm's time limit, a launcher stopping it)."""
    raise KeyboardInterrupt


def _next_runnable(manifest: Manifest, pending: deque, outcome: Outcome) -> Run | None:
    while pending:
        run = pending.popleft()
        run_dir = manifest.run_dir(run)
        if run_status(run_dir) == "finished":
            outcome.skipped.append(run.name)
            continue
        claim = live_claim(run_dir, manifest.train.claim_timeout)
        if claim is not None:
            outcome.skipped.append(run.name)
            print(f"[{run.name}] skipped: being trained by {claim.describe()}", flush=True)
            continue
        return run
    return None


def stop_children(procs: list[subprocess.Popen], grace: float = 60.0) -> None:
    """SIGTERM every child's process group (torchrun passes it to its workers), SIGKILL what outlives `grace`."""
    for p in procs:
        if p.poll() is None:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
    deadline = time.monotonic() + grace
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            p.wait()


def slurm_train_script(manifest: Manifest, runs: list[Run], overrides: list[str]) -> tuple[Path, str]:
    """(path, text) of the sbatch script that trains `runs` as a job array, one task per run."""
    from normlib.core.slurm import sbatch_script
    cfg = manifest.slurm
    gpus = manifest.train.gpus_per_run or 1
    folder = manifest.resolve(cfg.script_dir) / manifest.experiment.name
    command = ["$PY", "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={gpus}",
               str(Path(__file__).resolve().parents[2] / "train.py"), "--manifest",
               str(Path(manifest.source).resolve()), "--run-name", "${RUN}", "--no-progress"]
    for o in overrides:
        command += ["--set", o]
    text = sbatch_script(cfg, job_name=f"normlib-train-{manifest.experiment.name}", units=[r.name for r in runs],
                         command=command, workdir=Path(manifest.root), log_dir=folder / "logs", gpus_per_task=gpus,
                         unit_variable="RUN")
    return folder / "train.sbatch", text
