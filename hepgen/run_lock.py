"""One training process per run directory: a lock file with host and PID, taken atomically.

Two ``fit`` processes in one run directory (a user who starts a run twice, a SLURM requeue that
overlaps the dying job) would write the same ``checkpoints/`` and interleave their epochs. The
first takes ``<run dir>/.lock`` with ``O_CREAT | O_EXCL`` (atomic, also on NFS v3+) and refreshes
its time stamp every ``HEARTBEAT_S`` seconds; the second is refused, naming the first.

A lock is stale, and is taken over, when its process is gone: on the same host its PID no longer
runs; on another host (a requeued job on a new node) its heartbeat stopped ``STALE_AFTER_S`` ago.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from hepgen.errors import RunDirectoryError

LOCK_NAME = ".lock"
HEARTBEAT_S = 30.0
STALE_AFTER_S = 120.0


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def holder_is_gone(path: Path) -> bool:
    """True if the process that wrote the lock ``path`` can no longer be running."""
    holder = _read(path)
    try:
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return True
    if holder is None:  # unreadable: a writer cut short between create and write
        return age > STALE_AFTER_S
    if holder.get("host") == socket.gethostname():
        return not _pid_alive(int(holder.get("pid", -1)))
    return age > STALE_AFTER_S


class RunLock:
    """The lock of one run directory, held by this process until :meth:`release`.

    Args:
        run_dir: the run directory.
        wait_s: how long to wait for another holder to finish before giving up (a requeued
            SLURM job waits for the dying one; an interactive start is refused at once).
    """

    def __init__(self, run_dir: Path, wait_s: float = 0.0) -> None:
        self.path = Path(run_dir) / LOCK_NAME
        self.wait_s = wait_s
        self._stop = threading.Event()
        self._me = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}

    def acquire(self) -> "RunLock":
        deadline = time.monotonic() + self.wait_s
        while not self._try_create():
            if holder_is_gone(self.path):
                self._take_over_stale()
                continue
            if time.monotonic() >= deadline:
                holder = _read(self.path) or {}
                raise RunDirectoryError(
                    f"{self.path.parent} is in use by another hepgen process (host {holder.get('host', '?')}, "
                    f"PID {holder.get('pid', '?')}, since {holder.get('since', '?')}). Wait for it to finish, stop it, "
                    f"or start a new run with another --run.version."
                )
            time.sleep(min(2.0, max(0.0, deadline - time.monotonic())))
        threading.Thread(target=self._heartbeat, name="hepgen-run-lock", daemon=True).start()
        HELD_LOCKS.append(self)
        return self

    def _try_create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            json.dump(self._me, f)
        return True

    def _take_over_stale(self) -> None:
        """Move the stale lock aside; if another process replaced it meanwhile, put it back."""
        seen = _read(self.path)
        aside = self.path.with_name(f"{LOCK_NAME}.stale-{os.getpid()}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        if _read(aside) != seen:  # not the lock we judged: someone took over first
            os.rename(aside, self.path)
            return
        aside.unlink(missing_ok=True)

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                os.utime(self.path)
            except FileNotFoundError:
                return

    def release(self) -> None:
        """Remove the lock if it is still this process's."""
        self._stop.set()
        if self in HELD_LOCKS:
            HELD_LOCKS.remove(self)
        if _read(self.path) == self._me:
            self.path.unlink(missing_ok=True)


#: Locks this process holds (released when the command ends, however it ends).
HELD_LOCKS: list[RunLock] = []


def release_run_locks() -> None:
    for lock in list(HELD_LOCKS):
        lock.release()


@contextlib.contextmanager
def waiting_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on the file ``path``, waiting as long as another process holds it.

    For work that many processes may reach at once and one should do (making a data folder, a
    study stage several array tasks read). ``fcntl.lockf`` takes a POSIX record lock, which NFS and
    Lustre forward to their lock managers, so processes on other nodes wait too (``flock`` is
    node-local on some of them). The file is never removed: a process waiting on a removed file
    would hold a lock nobody else sees (and on NFS get a stale file handle).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.lockf(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.lockf(f, fcntl.LOCK_UN)
