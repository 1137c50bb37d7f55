"""The state of each training run: finished, failed, being trained (claimed), or still to do.

Claims say which process trains a run, so that launchers on one box or many never train it twice.

A claim is a small JSON file next to the run folder, `<run>.claim`, holding host, pid, start time and a
heartbeat the trainer refreshes while it works. It is created with O_CREAT | O_EXCL, which is atomic on a
local disk and on NFS, so of two launchers that try at once exactly one wins. A claim whose process is gone
stays behind after kill -9 or a lost node; it is *stale*, and the next launcher takes it over:
- on the same host, as soon as its pid no longer runs;
- from another host (whose processes this one cannot see), once its heartbeat is older than
  `[train] claim_timeout` seconds.
Taking over a stale claim happens under an flock on `<run>.claim.lock`, so two launchers that both see the
stale claim cannot both take it. `<run>.failed.json` records why a run failed; `run.json` (status
"finished") records a finished run.
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from normlib.core.jsonl import write_json_atomic
from normlib.core.locks import LockedError, exclusive


class ClaimedError(LockedError):
    """Another live process holds the run's claim."""


@dataclass
class Claim:
    host: str
    pid: int
    started: float
    heartbeat: float
    launcher: str = ""  # e.g. "slurm job 1234_5" or "train.py --all on gpus 0,1"

    def describe(self) -> str:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.started))
        beat = max(0.0, time.time() - self.heartbeat)
        return (f"pid {self.pid} on {self.host} since {since} (last heartbeat {beat:.0f} s ago"
                + (f", {self.launcher}" if self.launcher else "") + ")")


def claim_path(run_dir: Path) -> Path:
    return run_dir.with_name(f"{run_dir.name}.claim")


def failure_path(run_dir: Path) -> Path:
    return run_dir.with_name(f"{run_dir.name}.failed.json")


def read_claim(run_dir: Path) -> Claim | None:
    try:
        data = json.loads(claim_path(run_dir).read_text())
        return Claim(**{k: data[k] for k in ("host", "pid", "started", "heartbeat")},
                     launcher=str(data.get("launcher", "")))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError):
        # a claim torn by a crash while it was written: treat it as written now, so it goes stale by timeout
        return Claim(host="?", pid=-1, started=time.time(), heartbeat=_mtime(claim_path(run_dir)))


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return time.time()


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    try:  # a zombie (exited, not yet reaped) holds nothing
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def is_stale(claim: Claim, stale_after: float, now: float | None = None) -> bool:
    now = time.time() if now is None else now
    if claim.host == socket.gethostname():
        return not _pid_alive(claim.pid)
    return now - claim.heartbeat > stale_after


def live_claim(run_dir: Path, stale_after: float) -> Claim | None:
    claim = read_claim(run_dir)
    return claim if claim is not None and not is_stale(claim, stale_after) else None


class RunClaim:
    """A claim this process holds; refresh it with beat(), give it up with release() (or use it as a context)."""

    def __init__(self, run_dir: Path, claim: Claim):
        self.run_dir, self.claim, self._last_beat = run_dir, claim, claim.heartbeat

    def beat(self, every: float = 30.0) -> None:
        now = time.time()
        if now - self._last_beat >= every:
            self.claim.heartbeat = self._last_beat = now
            write_json_atomic(claim_path(self.run_dir), asdict(self.claim))

    def release(self) -> None:
        path = claim_path(self.run_dir)
        with contextlib.suppress(FileNotFoundError):
            current = read_claim(self.run_dir)
            if current is not None and (current.host, current.pid, current.started) == \
                    (self.claim.host, self.claim.pid, self.claim.started):
                path.unlink()

    def __enter__(self) -> "RunClaim":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def take_claim(run_dir: Path, stale_after: float, launcher: str = "") -> RunClaim:
    """Claim the run for this process, taking over a stale claim; raise ClaimedError when a live one exists."""
    path = claim_path(run_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    now = time.time()
    mine = Claim(host=socket.gethostname(), pid=os.getpid(), started=now, heartbeat=now,
                 launcher=launcher or os.environ.get("NORMLIB_LAUNCHER", ""))
    with exclusive(path.with_name(f"{path.name}.lock"), f"the claim on {run_dir.name}"):
        current = read_claim(run_dir)
        if current is not None:
            if not is_stale(current, stale_after):
                raise ClaimedError(f"run {run_dir.name} is being trained by {current.describe()}")
            path.replace(path.with_name(f"{path.name}.stale-{int(now)}"))  # kept for the record
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        with os.fdopen(fd, "w") as f:
            json.dump(asdict(mine), f)
    return RunClaim(run_dir, mine)


def record_failure(run_dir: Path, run_name: str, error: BaseException) -> None:
    write_json_atomic(failure_path(run_dir), {
        "run": run_name, "error": f"{type(error).__name__}: {error}", "host": socket.gethostname(),
        "pid": os.getpid(), "time": time.time()})


def read_failure(run_dir: Path) -> dict | None:
    try:
        return json.loads(failure_path(run_dir).read_text())
    except (OSError, ValueError):
        return None


def clear_failure(run_dir: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        failure_path(run_dir).unlink()


def run_status(run_dir: Path) -> str:
    """"finished" when run.json says so; "" otherwise, also when run.json is unreadable (it is then rewritten)."""
    path = run_dir / "run.json"
    try:
        return json.loads(path.read_text()).get("status", "") if path.exists() else ""
    except (OSError, ValueError, AttributeError):
        print(f"warning: {path} is unreadable; the run is treated as unfinished", file=sys.stderr)
        return ""


@dataclass
class RunState:
    index: int  # position in manifest.runs(): train.py --run-index
    name: str
    status: str  # todo | running | finished | failed
    detail: str = ""


def run_states(manifest) -> list[RunState]:
    """Every run of the matrix with its state, in manifest.runs() order."""
    out = []
    for index, run in enumerate(manifest.runs()):
        run_dir = manifest.run_dir(run)
        claim = live_claim(run_dir, manifest.train.claim_timeout)
        failure = read_failure(run_dir)
        if run_status(run_dir) == "finished":
            try:
                detail = "finished " + json.loads((run_dir / "run.json").read_text()).get("finished_at", "")
            except (OSError, ValueError):
                detail = ""
            out.append(RunState(index, run.name, "finished", detail))
        elif claim is not None:
            out.append(RunState(index, run.name, "running", claim.describe()))
        elif failure is not None:
            out.append(RunState(index, run.name, "failed", failure.get("error", "")[:300]))
        else:
            resumable = sorted((run_dir / "state").glob("step_*")) if (run_dir / "state").is_dir() else []
            out.append(RunState(index, run.name, "todo", f"resumes from {resumable[-1].name}" if resumable else ""))
    return out


def format_run_states(states: list[RunState]) -> str:
    width = max([len(s.name) for s in states] + [3])
    counts = {k: sum(s.status == k for s in states) for k in ("finished", "running", "failed", "todo")}
    lines = [f"{'#':>4}  {'status':<8}  {'run':<{width}}  detail"]
    lines += [f"{s.index:>4}  {s.status:<8}  {s.name:<{width}}  {s.detail}" for s in states]
    lines.append(f"{len(states)} runs: " + ", ".join(f"{n} {k}" for k, n in counts.items()))
    return "\n".join(lines)
