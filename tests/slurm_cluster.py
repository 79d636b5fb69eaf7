"""A real one-node SLURM cluster on localhost for the tests: munged, slurmctld and slurmd as background daemons.

Needs Debian's `slurm-wlm` and `munge` (`make test-slurm` installs them); everything else (key, sockets,
config, state, logs, pid files) lives in one folder. The daemons run as the current user. There is no
accounting database: a `sacct` stand-in on PATH answers submitit's state queries from `squeue`.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

PARTITION = "debug"
DAEMONS = ("slurmd", "slurmctld", "munged")  # stopped in this order
REQUIRED_COMMANDS = ("munged", "slurmctld", "slurmd", "sinfo", "sbatch", "squeue", "scancel", "srun")

# submitit asks `sacct -o JobID,State,NodeList --parsable2 -j <id> ...` for job states. Without accounting
# a cancelled or timed-out job never reports a final state and the launcher would wait forever.
SACCT_STAND_IN = """#!/bin/sh
# sacct stand-in for a cluster without accounting: the job states submitit asks for, read from squeue.
ids=""
while [ $# -gt 0 ]; do
    case "$1" in
        -j) ids="$ids${ids:+,}$2"; shift 2 ;;
        *) shift ;;
    esac
done
echo "JobID|State|NodeList"
exec squeue --noheader --array --states=all --format='%i|%T|%N' ${ids:+--jobs="$ids"}
"""


def missing_commands() -> list[str]:
    return [c for c in REQUIRED_COMMANDS if shutil.which(c) is None and not Path("/usr/sbin", c).exists()]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def real_memory_mb() -> int:
    """Memory to declare for the node: below the real total, or slurmd reports the node invalid."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024 * 9 // 10
    return 1024


class SlurmCluster:
    """`start()` brings the cluster up (well under a second), `stop()` takes it down by its pid files."""

    def __init__(self, root: Path, kill_wait_s: int = 30):
        self.root = root
        self.host = socket.gethostname().split(".")[0]
        self.conf = root / "slurm.conf"
        self.bin = root / "bin"
        self.munge_dir = root / "munge"
        self.munge_socket = self.munge_dir / "munge.socket"
        self.kill_wait_s = kill_wait_s

    @property
    def env(self) -> dict[str, str]:
        """Environment for commands that talk to this cluster (sinfo, sbatch, and `python -m sweep`)."""
        path = f"{self.bin}:{os.environ.get('PATH', '')}:/usr/sbin"
        return {**os.environ, "SLURM_CONF": str(self.conf), "PATH": path}

    def pid_file(self, daemon: str) -> Path:
        return self.root / f"{daemon}.pid"

    def log_file(self, daemon: str) -> Path:
        return self.root / f"{daemon}.log"

    def command(self, *args: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess:
        return subprocess.run(args, env=self.env, capture_output=True, text=True, check=check, timeout=timeout)

    def write_files(self) -> None:
        for folder in (self.bin, self.root / "state", self.root / "spool"):
            folder.mkdir(parents=True, exist_ok=True)
        self.munge_dir.mkdir(mode=0o755, exist_ok=True)
        self.munge_dir.chmod(0o755)  # munged refuses a socket folder that others cannot enter
        key = self.munge_dir / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        sacct = self.bin / "sacct"
        sacct.write_text(SACCT_STAND_IN)
        sacct.chmod(0o755)
        user = subprocess.run(["id", "-un"], capture_output=True, text=True, check=True).stdout.strip()
        self.conf.write_text("\n".join([
            "ClusterName=sweeptest",
            f"SlurmctldHost={self.host}(127.0.0.1)",
            f"SlurmctldPort={free_port()}",
            f"SlurmdPort={free_port()}",
            f"SlurmUser={user}",
            f"SlurmdUser={user}",
            f"AuthInfo=socket={self.munge_socket}",
            f"StateSaveLocation={self.root / 'state'}",
            f"SlurmdSpoolDir={self.root / 'spool'}",
            f"SlurmctldPidFile={self.pid_file('slurmctld')}",
            f"SlurmdPidFile={self.pid_file('slurmd')}",
            f"SlurmctldLogFile={self.log_file('slurmctld')}",
            f"SlurmdLogFile={self.log_file('slurmd')}",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_CPU",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "MpiDefault=none",
            "ReturnToService=2",
            f"KillWait={self.kill_wait_s}",  # seconds from SIGTERM to SIGKILL on scancel or time limit
            f"NodeName={self.host} NodeAddr=127.0.0.1 CPUs={os.cpu_count()} RealMemory={real_memory_mb()} "
            "State=UNKNOWN",
            f"PartitionName={PARTITION} Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
            "",
        ]))

    def start(self, timeout_s: float = 30) -> None:
        self.write_files()
        subprocess.run(["munged", "--force", f"--socket={self.munge_socket}",
                        f"--key-file={self.munge_dir / 'munge.key'}", f"--pid-file={self.pid_file('munged')}",
                        f"--log-file={self.log_file('munged')}", f"--seed-file={self.munge_dir / 'munge.seed'}"],
                       env=self.env, check=True, capture_output=True, timeout=timeout_s)
        self.command("slurmctld", "-c", "-f", str(self.conf), timeout=timeout_s)
        self.command("slurmd", "-f", str(self.conf), "-N", self.host, timeout=timeout_s)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            nodes = self.command("sinfo", "--noheader", "--Node", "--format=%T", check=False, timeout=timeout_s)
            if nodes.returncode == 0 and nodes.stdout.strip() == "idle":
                return
            time.sleep(0.2)
        raise RuntimeError(f"SLURM node not idle after {timeout_s} s: {self.logs()}")

    def jobs(self) -> list[str]:
        """Jobs that are not finished: `<id>|<state>` lines."""
        out = self.command("squeue", "--noheader", "--array", "--format=%i|%T", check=False)
        return out.stdout.split() if out.returncode == 0 else []

    def stop(self) -> None:
        """Cancel what is still queued or running, then stop the daemons by their pid files."""
        if self.pid_file("slurmctld").exists():
            self.command("scancel", "--user", str(os.getuid()), check=False)
            deadline = time.monotonic() + self.kill_wait_s + 10
            while self.jobs() and time.monotonic() < deadline:
                time.sleep(0.5)
        stop_by_pid_files({daemon: self.pid_file(daemon) for daemon in DAEMONS})

    def logs(self, lines: int = 20) -> str:
        out = []
        for daemon in DAEMONS:
            log = self.log_file(daemon)
            if log.exists():
                out.append(f"--- {log}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-lines:]))
        return "\n".join(out)


def stop_by_pid_files(pid_files: dict[str, Path], timeout_s: float = 10) -> None:
    """SIGTERM each process named in a pid file (if it is still the named program), all at once; SIGKILL
    those still there after timeout_s."""
    pids = []
    for name, pid_file in pid_files.items():
        try:
            pid = int(pid_file.read_text().split()[0])
            if Path(f"/proc/{pid}/comm").read_text().strip() == name:
                pids.append(pid)
        except (OSError, ValueError, IndexError):
            pass
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + timeout_s
        while pids and time.monotonic() < deadline:
            pids = [pid for pid in pids if Path(f"/proc/{pid}").exists() and not _is_zombie(pid)]
            time.sleep(0.1)
        if not pids:
            return


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True
