"""A real single-node Slurm cluster for tests: munged, slurmctld and slurmd from Debian's packages.

Everything lives in a temporary folder (config, state, sockets, logs); cgroups and accounting are off
(proctrack/linuxproc, task/none) so it runs in a container; the node has fake GPUs (gres `File=` character
devices such as /dev/null), so Slurm allocates them and sets CUDA_VISIBLE_DEVICES per task. Daemons are
stopped by PID. `.ci/run` installs the packages (`slurmctld slurmd slurm-client munge`); where they are
missing the tests that need them skip and say so.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo")
FAKE_GPU_DEVICES = ["/dev/null", "/dev/zero", "/dev/full", "/dev/random"]


def missing_reason() -> str:
    """Why a cluster cannot start here ('' when it can)."""
    absent = [d for d in DAEMONS if shutil.which(d) is None]
    if absent:
        return (f"Slurm is not installed ({', '.join(absent)} missing): apt-get install --no-install-recommends "
                f"slurmctld slurmd slurm-client munge (.ci/run does this)")
    if os.geteuid() != 0:
        return "starting slurmd needs root (it runs jobs as their submitting user)"
    return ""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SlurmCluster:
    def __init__(self, root: Path, cpus: int = 2, gpus: int = 4):
        self.root, self.cpus, self.gpus = root, cpus, gpus
        self.procs: dict[str, subprocess.Popen] = {}
        self.conf = root / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}

    def start(self) -> "SlurmCluster":
        root = self.root
        for d in ("state", "spool", "munge", "log"):
            (root / d).mkdir(parents=True, exist_ok=True)
        key = root / "munge" / "munge.key"
        key.write_bytes(os.urandom(128))
        key.chmod(0o600)
        sock = root / "munge" / "munge.sock"
        self._spawn("munged", ["munged", "--foreground", "--force", f"--key-file={key}", f"--socket={sock}",
                               f"--pid-file={root / 'munge/munged.pid'}", f"--log-file={root / 'log/munged.log'}",
                               f"--seed-file={root / 'munge/seed'}"])
        self._wait(lambda: sock.exists(), "munged socket")
        host = socket.gethostname()
        (root / "gres.conf").write_text("AutoDetect=off\n" + "".join(
            f"NodeName={host} Name=gpu File={dev}\n" for dev in FAKE_GPU_DEVICES[:self.gpus]))
        self.conf.write_text(f"""ClusterName=normlibtest
SlurmctldHost={host}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={sock}
CredType=cred/munge
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
StateSaveLocation={root / 'state'}
SlurmdSpoolDir={root / 'spool'}
SlurmctldPidFile={root / 'slurmctld.pid'}
SlurmdPidFile={root / 'slurmd.pid'}
SlurmctldLogFile={root / 'log/slurmctld.log'}
SlurmdLogFile={root / 'log/slurmd.log'}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
ReturnToService=2
SchedulerType=sched/builtin
SchedulerParameters=batch_sched_delay=0,sched_min_interval=0
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
GresTypes=gpu
NodeName={host} CPUs={self.cpus} RealMemory=4000 Gres=gpu:{self.gpus} State=UNKNOWN
PartitionName=test Nodes=ALL Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
""")
        self._spawn("slurmctld", ["slurmctld", "-D", "-i", "-f", str(self.conf)])
        self._spawn("slurmd", ["slurmd", "-D", "-f", str(self.conf)])
        self._wait(lambda: "idle" in self.run("sinfo", "-h", "-o", "%T").stdout, "the node to be idle", 60)
        return self

    def run(self, *argv: str) -> subprocess.CompletedProcess:
        return subprocess.run(list(argv), capture_output=True, text=True, env=self.env, timeout=60)

    def wait_for_jobs(self, timeout: float = 600) -> None:
        self._wait(lambda: self.run("squeue", "-h").stdout.strip() == "", "every job to leave the queue", timeout)

    def _spawn(self, name: str, argv: list[str]) -> None:
        log = open(self.root / "log" / f"{name}.out", "ab")
        self.procs[name] = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                            start_new_session=True)

    def _wait(self, ready, what: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, p in self.procs.items():
                if p.poll() is not None:
                    raise RuntimeError(f"{name} exited ({p.returncode}) while waiting for {what}; logs: "
                                       f"{self.logs()}")
            if ready():
                return
            time.sleep(0.3)
        raise TimeoutError(f"timed out waiting for {what}; logs: {self.logs()}")

    def logs(self) -> str:
        out = []
        for f in sorted((self.root / "log").glob("*")):
            out.append(f"--- {f.name}\n" + f.read_text(errors="replace")[-1500:])
        return "\n".join(out)

    def stop(self) -> None:
        for name in ("slurmd", "slurmctld", "munged"):
            p = self.procs.get(name)
            if p is not None and p.poll() is None:
                p.terminate()
                try:
                    p.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()

    def __enter__(self) -> "SlurmCluster":
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc) -> None:
        self.stop()
