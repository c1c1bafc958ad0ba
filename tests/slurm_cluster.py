"""Start and stop a real single-node SLURM (munged, slurmctld, slurmd) in a temporary folder.

Debian's slurm-wlm + munge (``bash install.sh test`` installs them). Everything the daemons
write lives under the given folder; they are stopped by the PIDs in their PID files. Needs root
(slurmd launches jobs as their owner). No accounting daemon: clients must poll with squeue.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

DAEMONS = ("slurmd", "slurmctld", "munged")
# Job steps (srun inside a job) run with SLURM_* variables removed by Snakemake's jobstep
# executor, so they read the compiled-in default path: the test links its config there.
SYSTEM_CONF = Path("/etc/slurm/slurm.conf")


def slurm_available() -> bool:
    """Whether the SLURM and munge daemons are installed."""
    return all(shutil.which(name, path="/usr/sbin:/usr/bin:/sbin") for name in DAEMONS)


def free_port() -> int:
    """A TCP port that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def total_memory_mb() -> int:
    """MemTotal of this machine in MB."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) // 1024
    raise RuntimeError("no MemTotal in /proc/meminfo")


class SlurmCluster:
    """A one-node SLURM whose configuration, state, spool, logs and PID files live in ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.conf = self.root / "slurm.conf"
        # user munge must reach its folder, and pytest's tmp_path parents are private to root
        self.munge_dir = Path(tempfile.mkdtemp(prefix="alfm-munge-"))
        self.munge_socket = self.munge_dir / "munge.socket"

    @property
    def env(self) -> dict[str, str]:
        """Environment for SLURM clients (sbatch, squeue, the Snakemake executor)."""
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def pid_file(self, daemon: str) -> Path:
        folder = self.munge_dir if daemon == "munged" else self.root
        return folder / f"{daemon}.pid"

    def write_config(self) -> None:
        """slurm.conf for one node on localhost with all CPUs and 90% of the memory."""
        for sub in ("state", "spool", "log"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        r = self.root
        lines = [
            "ClusterName=alfmtest",
            "SlurmctldHost=localhost",
            "SlurmUser=root",
            f"SlurmctldPort={free_port()}",
            f"SlurmdPort={free_port()}",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"AuthInfo=socket={self.munge_socket}",
            f"StateSaveLocation={r}/state",
            f"SlurmdSpoolDir={r}/spool",
            f"SlurmctldPidFile={self.pid_file('slurmctld')}",
            f"SlurmdPidFile={self.pid_file('slurmd')}",
            f"SlurmctldLogFile={r}/log/slurmctld.log",
            f"SlurmdLogFile={r}/log/slurmd.log",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_Core_Memory",
            "AccountingStorageType=accounting_storage/none",
            "JobAcctGatherType=jobacct_gather/none",
            "MpiDefault=none",
            "ReturnToService=2",
            f"NodeName=localhost NodeAddr=127.0.0.1 CPUs={os.cpu_count()} "
            f"RealMemory={int(total_memory_mb() * 0.9)} State=UNKNOWN",
            "PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP",
        ]
        self.conf.write_text("\n".join(lines) + "\n")

    def start(self, timeout: float = 30.0) -> None:
        """Start munged (as user munge), slurmctld and slurmd; wait until the node is idle."""
        if os.geteuid() != 0:
            raise RuntimeError("starting slurmd needs root")
        self.write_config()
        if SYSTEM_CONF.exists() or SYSTEM_CONF.is_symlink():
            raise RuntimeError(f"{SYSTEM_CONF} exists; this test needs its own SLURM config there")
        SYSTEM_CONF.parent.mkdir(parents=True, exist_ok=True)
        SYSTEM_CONF.symlink_to(self.conf)
        munge_dir = self.munge_dir
        munge_dir.chmod(0o755)  # munged wants its socket folder reachable by all
        shutil.chown(munge_dir, user="munge")
        subprocess.run(
            [
                "runuser", "-u", "munge", "--", "/usr/sbin/munged",
                f"--socket={self.munge_socket}",
                f"--pid-file={self.pid_file('munged')}",
                f"--log-file={munge_dir / 'munged.log'}",
                f"--seed-file={munge_dir / 'munge.seed'}",
            ],
            check=True,
        )  # fmt: skip
        subprocess.run(["/usr/sbin/slurmctld"], env=self.env, check=True)
        subprocess.run(["/usr/sbin/slurmd", "-N", "localhost"], env=self.env, check=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = subprocess.run(
                ["sinfo", "-h", "-o", "%t"], env=self.env, capture_output=True, text=True
            ).stdout.strip()
            if state == "idle":
                return
            time.sleep(0.5)
        raise RuntimeError(
            f"SLURM node not idle after {timeout} s (state {state!r}); {self.logs()}"
        )

    def logs(self) -> str:
        """The tail of the daemons' logs, for error messages."""
        parts = []
        for log in sorted((self.root / "log").glob("*.log")):
            parts.append(f"--- {log.name}\n" + "\n".join(log.read_text().splitlines()[-15:]))
        return "\n".join(parts)

    def stop(self) -> None:
        """Cancel every job, then stop slurmd, slurmctld and munged by their PIDs."""
        if self.conf.exists():
            subprocess.run(["scancel", "--full", "--user", "root"], env=self.env, check=False)
        for daemon in DAEMONS:
            path = self.pid_file(daemon)
            if not path.exists():
                continue
            pid = int(path.read_text().split()[0])
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                try:
                    if Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z":
                        break
                except FileNotFoundError:
                    break
                time.sleep(0.1)
        shutil.rmtree(self.munge_dir, ignore_errors=True)
        if SYSTEM_CONF.is_symlink() and SYSTEM_CONF.resolve() == self.conf.resolve():
            SYSTEM_CONF.unlink()
