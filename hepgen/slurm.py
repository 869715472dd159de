"""SLURM's time-limit signal (``--signal=SIGUSR1@90``): noted when it comes, acted on where a run can stop.

A signal handler runs wherever the main thread happens to be, so it only notes the signal in a
flag of this process. A fit acts on it between two training steps (``callbacks.SlurmRequeue``),
``hepgen ad run`` between two trainings; both then requeue the job with :func:`requeue_job` and
wait for SLURM to stop it.
"""

from __future__ import annotations

import signal
import subprocess
import time

from hepgen.run import slurm_run_id

#: The signal the sbatch scripts ask SLURM for (``--signal=SIGUSR1@90``).
TIME_LIMIT_SIGNAL = signal.SIGUSR1

_raised = False


def _note(signum, frame) -> None:
    global _raised
    _raised = True


def note_time_limit(signum: int = TIME_LIMIT_SIGNAL):
    """Make the signal set this process's flag; returns the handler it replaced, or ``None`` if
    the flag's handler was already installed (then there is nothing to restore)."""
    previous = signal.getsignal(signum)
    if previous is _note:
        return None
    signal.signal(signum, _note)
    return previous if previous is not None else signal.SIG_DFL


def time_limit_reached() -> bool:
    """Whether the signal came since the last :func:`clear_time_limit`."""
    return _raised


def clear_time_limit() -> None:
    global _raised
    _raised = False


def requeue_job() -> tuple[bool, str]:
    """``scontrol requeue`` of this job (``<array job>_<task>`` for an array task): (done, what happened)."""
    job = slurm_run_id()
    result = subprocess.run(["scontrol", "requeue", str(job)], capture_output=True, text=True)
    if result.returncode == 0:
        return True, f"requeued SLURM job {job}"
    return False, f"scontrol requeue {job} failed ({result.stderr.strip() or result.returncode})"


def wait_to_be_stopped(stopped, timeout_s: float = 300.0) -> None:
    """After a requeue: wait until ``stopped()`` (SLURM's SIGTERM arrived) or ``timeout_s`` passed."""
    deadline = time.monotonic() + timeout_s
    while not stopped() and time.monotonic() < deadline:
        time.sleep(0.2)
