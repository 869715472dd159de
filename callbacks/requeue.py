"""SLURM's time-limit signal: a checkpoint between two training steps, a requeue, an exact resume."""

from __future__ import annotations

import re
import signal
import subprocess
import time
from pathlib import Path

from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from hepgen.run import slurm_run_id


def next_hpc_checkpoint(run_dir: Path) -> Path:
    """``<run dir>/hpc_ckpt_<n>.ckpt`` for the next n (the names Lightning uses and resumes from)."""
    names = (re.fullmatch(r"hpc_ckpt_(\d+)\.ckpt", p.name) for p in Path(run_dir).glob("hpc_ckpt_*.ckpt"))
    taken = [int(m.group(1)) for m in names if m]
    return Path(run_dir) / f"hpc_ckpt_{max(taken, default=0) + 1}.ckpt"


class SlurmRequeue(Callback):
    """Save and requeue when SLURM signals that a job's time is nearly up (``--signal=SIGUSR1@90``).

    Lightning's own handler writes ``hpc_ckpt_<n>.ckpt`` inside the signal handler, wherever the
    main thread happens to be: between a GAN's critic and generator updates, or halfway through an
    optimizer step (Lightning issue #21406), so the resumed run is not the one that was stopped.
    Here the handler only notes the signal. Before the next training step starts (the previous
    one has finished with every optimizer, the EMA or SWA update, the module's own batch-end work
    and any validation), the ranks agree (the signal reaches them at slightly different times),
    the checkpoint is written, rank 0 runs ``scontrol requeue`` and the job waits for SLURM to
    stop it. The requeued job finds its run directory by job id and
    resumes from that checkpoint (``hepgen.run.resolve_ckpt_path``), at the next batch of the same
    epoch (``EpochShuffleSampler``): it ends with the weights of a run that was never stopped.

    It acts only under SLURM's cluster environment with ``auto_requeue`` (Lightning's default when
    ``SLURM_NTASKS`` is set and the job is not interactive), and the hepgen CLI adds it to every fit.

    Args:
        stop_wait_s: how long to wait for SLURM's SIGTERM after the requeue before leaving anyway.
    """

    def __init__(self, stop_wait_s: float = 300.0) -> None:
        self.stop_wait_s = stop_wait_s
        self.signalled = False
        self._signum: int | None = None
        self._previous = None
        self._saving = False

    def _note(self, signum, frame) -> None:
        self.signalled = True

    def setup(self, trainer, pl_module, stage: str) -> None:
        environment = trainer._accelerator_connector.cluster_environment
        if stage != "fit" or not isinstance(environment, SLURMEnvironment) or not environment.auto_requeue:
            return
        # installed before the Trainer registers its own handlers, which then leave this signal alone
        self._signum = environment.requeue_signal or signal.SIGUSR1
        self._previous = signal.signal(self._signum, self._note)

    def teardown(self, trainer, pl_module, stage: str) -> None:
        if self._signum is not None:
            signal.signal(self._signum, self._previous or signal.SIG_DFL)
            self._signum = None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        # Here, not at the previous batch's end: the module's own on_train_batch_end (CaloVAE's flow
        # refit after an epoch's last step) and the validation that may follow have then run too.
        if self._signum is None or not trainer.strategy.reduce_boolean_decision(self.signalled, all=False):
            return
        self.signalled = False
        path = next_hpc_checkpoint(Path(trainer.default_root_dir))
        self._saving = True
        trainer.save_checkpoint(path)
        self._saving = False
        job = slurm_run_id()
        done = 0
        if trainer.is_global_zero:
            result = subprocess.run(["scontrol", "requeue", str(job)], capture_output=True, text=True)
            done = int(result.returncode == 0)
            if not done:
                rank_zero_warn(
                    f"hepgen: scontrol requeue {job} failed ({result.stderr.strip() or result.returncode}); "
                    f"training goes on until the time limit. Resubmit later: the job resumes from {path}."
                )
        if not trainer.strategy.broadcast(done, src=0):
            return
        rank_zero_info(f"hepgen: saved {path.name} at step {trainer.global_step} and requeued SLURM job {job}.")
        deadline = time.monotonic() + self.stop_wait_s
        while not trainer.received_sigterm and time.monotonic() < deadline:
            time.sleep(0.2)  # SLURM now stops this run; the requeued one continues from the checkpoint
        raise SIGTERMException()

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        if self._saving:
            # Lightning's restart adds the step it assumes a checkpoint taken at a batch's end did not
            # count yet; this one was taken after it was counted (the logging step, W&B's x axis)
            checkpoint["loops"]["fit_loop"]["epoch_loop.state_dict"]["_batches_that_stepped"] -= 1
