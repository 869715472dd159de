"""A real one-node SLURM for the tests: Debian's slurmctld, slurmd and munge, started and stopped by PID.

What ``../shared/reference/slurm_local.md`` verified, as a class: no systemd, the daemons in the
foreground of their own sessions, ports checked to be free first (another SLURM may run on the
same host), a short credential lifetime so that a requeued job starts again within seconds, and
every job's state read with ``scontrol`` (accounting is off). ``.ci/run`` installs the packages.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

from lightning.pytorch import Callback

PACKAGES = "slurmctld slurmd slurm-client munge"
INSTALL = f"apt-get install -y --no-install-recommends {PACKAGES}"


class SlurmUnavailable(RuntimeError):
    """The daemons cannot start here (no packages, not root, no free port)."""


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def free_ports(first: int = 16817, count: int = 2) -> list[int]:
    """``count`` consecutive free TCP ports from ``first`` on (away from SLURM's 6817/6818)."""
    for start in range(first, first + 400, count):
        if all(_port_free(p) for p in range(start, start + count)):
            return list(range(start, start + count))
    raise SlurmUnavailable(f"no {count} free ports between {first} and {first + 400}")


class LocalSlurm:
    """One node (this host, all its CPUs) in partition ``debug``, state and logs below ``folder``."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.conf = self.folder / "slurm.conf"
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self.pids: dict[str, int] = {}

    # --- daemons ---------------------------------------------------------------------------------
    def start(self) -> "LocalSlurm":
        tools = ("slurmctld", "slurmd", "munged", "sbatch")
        missing = [t for t in tools if shutil.which(t, path="/usr/sbin:/usr/bin") is None]
        if missing:
            raise SlurmUnavailable(f"{', '.join(missing)} not installed; as root: {INSTALL} (what .ci/run does)")
        if os.geteuid() != 0:
            raise SlurmUnavailable("the daemons of these tests run as root (SlurmUser=root); run the tests as root")
        for sub in ("spool/ctld", "spool/d", "log"):
            (self.folder / sub).mkdir(parents=True, exist_ok=True)
        ctld_port, slurmd_port = free_ports()
        host = socket.gethostname().split(".")[0]
        memory_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20 - 1024
        ports = {"ctld_port": ctld_port, "slurmd_port": slurmd_port}
        self.conf.write_text(_CONF.format(host=host, d=self.folder, cpus=os.cpu_count(), memory=memory_mb, **ports))
        self._start_munge()
        for daemon in ("slurmctld", "slurmd"):
            log = open(self.folder / "log" / f"{daemon}.out", "w")
            proc = subprocess.Popen([f"/usr/sbin/{daemon}", "-D", "-f", str(self.conf)], stdout=log, stderr=log,
                                    stdin=subprocess.DEVNULL, start_new_session=True, env=self.env)  # fmt: skip
            self.pids[daemon] = proc.pid
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            for daemon, pid in self.pids.items():
                if not _alive(pid):
                    self.stop()
                    raise SlurmUnavailable(f"{daemon} died at start: {self._log_tail(daemon)}")
            state = subprocess.run(["sinfo", "-h", "-o", "%T"], env=self.env, capture_output=True, text=True).stdout
            if state.strip() == "idle":
                return self
            time.sleep(0.2)
        self.stop()
        raise SlurmUnavailable(f"the node did not become idle within 60 s: {self._log_tail('slurmctld')}")

    def _start_munge(self) -> None:
        key = Path("/etc/munge/munge.key")
        if not key.is_file() or key.stat().st_size == 0:
            subprocess.run(["mungekey", "--create", "--force"], check=True, capture_output=True)
        munge = pwd.getpwnam("munge")
        os.chown(key, munge.pw_uid, munge.pw_gid)
        Path("/run/munge").mkdir(parents=True, exist_ok=True)
        os.chown("/run/munge", munge.pw_uid, munge.pw_gid)
        if subprocess.run(["munge", "-n"], capture_output=True).returncode == 0:
            return  # a munged of this host already runs (it serves any SLURM here)
        log = open(self.folder / "log" / "munged.out", "w")
        as_munge = ["setpriv", f"--reuid={munge.pw_uid}", f"--regid={munge.pw_gid}", "--init-groups"]
        proc = subprocess.Popen([*as_munge, "/usr/sbin/munged", "-F"], stdout=log, stderr=log,
                                stdin=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
        self.pids["munged"] = proc.pid
        for _ in range(100):
            if subprocess.run(["munge", "-n"], capture_output=True).returncode == 0:
                return
            time.sleep(0.05)
        raise SlurmUnavailable(f"munged did not start: {(self.folder / 'log' / 'munged.out').read_text()[-500:]}")

    def stop(self) -> None:
        """Stop the daemons this object started, by PID: slurmd, slurmctld, then munged."""
        for daemon in ("slurmd", "slurmctld", "munged"):
            pid = self.pids.pop(daemon, None)
            if pid is None:
                continue
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            for _ in range(100):
                if not _alive(pid):
                    break
                time.sleep(0.05)
            else:
                os.kill(pid, signal.SIGKILL)
            try:
                os.waitpid(pid, 0)  # our child: reap it
            except ChildProcessError:
                pass

    def _log_tail(self, daemon: str) -> str:
        path = self.folder / "log" / f"{daemon}.log"
        return path.read_text()[-800:] if path.is_file() else "(no log)"

    # --- jobs ------------------------------------------------------------------------------------
    def sbatch(self, *args: str, cwd: Path, env: dict | None = None) -> str:
        """Submit; the job id (raises with sbatch's own message if it refuses)."""
        done = subprocess.run(["sbatch", "--parsable", *args], cwd=cwd, env={**self.env, **(env or {})},
                              capture_output=True, text=True)  # fmt: skip
        if done.returncode != 0:
            raise SubmitRefused(done.stderr.strip())
        return done.stdout.strip().split(";")[0]

    def _show(self, job: str) -> str:
        """``scontrol show job -o``: a line per job (per task of an array), empty when unknown."""
        done = subprocess.run(["scontrol", "show", "job", "-o", job], env=self.env, capture_output=True, text=True)
        return done.stdout

    def job(self, job: str) -> dict[str, str]:
        """``scontrol show job`` as a dict (the first task's, for an array); {} when unknown."""
        lines = self._show(job).splitlines()
        return dict(re.findall(r"(\w+)=(\S*)", lines[0])) if lines else {}

    def states(self, job: str) -> list[str]:
        return re.findall(r"JobState=(\w+)", self._show(job))

    def wait(self, job: str, timeout_s: float = 180.0) -> list[str]:
        """Wait until every task of ``job`` has ended; their final states."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            states = self.states(job)
            if states and all(s in FINAL_STATES for s in states):
                return states
            time.sleep(0.5)
        subprocess.run(["scancel", job], env=self.env)
        raise TimeoutError(f"job {job} still {self.states(job)} after {timeout_s:.0f} s")

    def scancel(self, *args: str) -> None:
        subprocess.run(["scancel", *args], env=self.env, check=True)


class SubmitRefused(RuntimeError):
    """sbatch refused a job at submission."""


FINAL_STATES = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"}


def _alive(pid: int) -> bool:
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        try:
            os.kill(pid, 0)
            return True
        except ProcessLookupError:
            return False


class SleepEachBatch(Callback):
    """Make a tiny test training take long enough to be signalled in its middle (no effect on weights)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        time.sleep(self.seconds)


# the reference's tested configuration (slurm_local.md): no cgroups, a requeued job eligible
# again after 10 s (cred_expire) and scheduled within 5 s
_CONF = """\
ClusterName=hepgen-tests
SlurmctldHost={host}
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=cred_expire=10
StateSaveLocation={d}/spool/ctld
SlurmdSpoolDir={d}/spool/d
SlurmctldPidFile={d}/slurmctld.pid
SlurmdPidFile={d}/slurmd.pid
SlurmctldLogFile={d}/log/slurmctld.log
SlurmdLogFile={d}/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=5,bf_interval=5
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
JobRequeue=1
EnforcePartLimits=ALL
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
MinJobAge=300
KillWait=5
Waittime=0
JobCompType=jobcomp/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
NodeName={host} CPUs={cpus} RealMemory={memory} State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""
