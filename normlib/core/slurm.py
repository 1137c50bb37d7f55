"""Slurm job arrays for the run matrix: sbatch scripts from the [slurm] table, and their submission.

One array task per unit of work (a training run, or one model's eval answers). The names of the units are
written into the script itself, so a task does the same work whatever happens to the manifest between
submission and start; `$SLURM_ARRAY_TASK_ID` picks one. Run claims (train.py) keep a requeued or
duplicated task from training a run twice. Nothing here schedules anything: Slurm does.
"""
from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path


class SlurmError(RuntimeError):
    pass


def array_spec(count: int, max_parallel: int = 0) -> str:
    if count < 1:
        raise SlurmError("nothing to submit: every unit is already done")
    return f"0-{count - 1}" + (f"%{max_parallel}" if max_parallel else "")


def sbatch_script(cfg, *, job_name: str, units: list[str] | None, command: list[str], workdir: Path, log_dir: Path,
                  gpus_per_task: int = 0, unit_variable: str = "UNIT") -> str:
    """An sbatch script: a job array over `units` (each task runs `command` with ${UNIT} set to its unit), or
    a single job when `units` is None. `command` items are shell-quoted except the literal "${UNIT}"."""
    python = cfg.python or sys.executable
    lines = ["#!/bin/bash", f"#SBATCH --job-name={job_name}", "#SBATCH --ntasks=1",
             f"#SBATCH --cpus-per-task={cfg.cpus_per_task}", f"#SBATCH --time={cfg.time}"]
    log_name = "%x-%A_%a.out" if units is not None else "%x-%j.out"
    lines.append(f"#SBATCH --output={log_dir / log_name}")
    if units is not None:
        lines.append(f"#SBATCH --array={array_spec(len(units), cfg.max_parallel)}")
    if gpus_per_task:
        lines.append(f"#SBATCH --gpus-per-task={gpus_per_task}")
    for key in ("partition", "account", "mem"):
        if getattr(cfg, key):
            lines.append(f"#SBATCH --{key}={getattr(cfg, key)}")
    lines += [f"#SBATCH {opt}" for opt in cfg.sbatch_options]
    lines += ["# written by normlib; one array task per unit below", "set -euo pipefail",
              f"cd {shlex.quote(str(workdir))}", *cfg.setup, f"PY={shlex.quote(python)}"]
    if units is not None:
        lines.append(f"UNITS=({' '.join(shlex.quote(u) for u in units)})")
        lines.append(f'{unit_variable}="${{UNITS[$SLURM_ARRAY_TASK_ID]}}"')
        lines.append('export NORMLIB_LAUNCHER="slurm job ${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"')
        lines.append(f'echo "task $SLURM_ARRAY_TASK_ID on $(hostname): ${{{unit_variable}}} '
                     '(CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES:-none})"')
    quoted = ["$PY" if c == "$PY" else f'"{c}"' if c.startswith("${") else shlex.quote(c) for c in command]
    lines.append("exec " + " ".join(quoted))
    return "\n".join(lines) + "\n"


def write_script(path: Path, text: str) -> Path:
    (path.parent / "logs").mkdir(parents=True, exist_ok=True)  # sbatch needs the --output folder to exist
    path.write_text(text)
    path.chmod(0o755)
    return path


def submit(script: Path, dependency: str = "") -> str:
    """sbatch the script; returns the job id. `dependency` is a job id whose success this job waits for."""
    sbatch = shutil.which("sbatch")
    if sbatch is None:
        raise SlurmError("sbatch is not on PATH: run this on a Slurm login node, or submit the script yourself")
    argv = [sbatch, "--parsable"] + ([f"--dependency=afterok:{dependency}"] if dependency else []) + [str(script)]
    proc = subprocess.run(argv, capture_output=True, text=True, env=os.environ.copy())
    if proc.returncode != 0:
        raise SlurmError(f"sbatch {script} failed (exit {proc.returncode}): {proc.stderr.strip()[:500]}")
    return proc.stdout.strip().split(";")[0]
