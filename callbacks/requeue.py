"""SLURM's time-limit signal in a fit: a checkpoint between two training steps, a requeue, an exact resume."""

from __future__ import annotations

import re
import signal
from pathlib import Path

from lightning.fabric.plugins.environments import SLURMEnvironment
from lightning.pytorch import Callback
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from lightning.pytorch.utilities.exceptions import SIGTERMException

from hepgen.slurm import clear_time_limit, note_time_limit, requeue_job, time_limit_reached, wait_to_be_stopped


def next_hpc_checkpoint(run_dir: Path) -> Path:
    """``<run dir>/hpc_ckpt_<n>.ckpt`` for the next n (the names Lightning resumes from). Lightning's
    own ``hpc_save_path`` reads a number out of any file name holding ``ckpt_`` and fails on others."""
    names = (re.fullmatch(r"hpc_ckpt_(\d+)\.ckpt", p.name) for p in Path(run_dir).glob("hpc_ckpt_*.ckpt"))
    taken = [int(m.group(1)) for m in names if m]
    return Path(run_dir) / f"hpc_ckpt_{max(taken, default=0) + 1}.ckpt"


class SlurmRequeue(Callback):
    """Save and requeue when SLURM signals that a job's time is nearly up (``--signal=SIGUSR1@90``).

    Lightning's own handler writes ``hpc_ckpt_<n>.ckpt`` inside the signal handler, wherever the
    main thread happens to be: between a GAN's critic and generator updates, or halfway through an
    optimizer step (Lightning issue #21406), so the resumed run is not the one that was stopped.
    Here the handler only notes the signal. Before the next training step that starts a gradient
    accumulation window (the previous step has finished with every optimizer, the EMA or SWA
    update, the module's own batch-end work and any validation), the ranks agree (the signal
    reaches them at slightly different times), the checkpoint is written, rank 0 runs ``scontrol
    requeue`` and the job waits for SLURM to stop it. The requeued job finds its run directory by
    job id and resumes from that checkpoint (``hepgen.run.resolve_ckpt_path``), at the next batch
    of the same epoch (``EpochShuffleSampler``): it ends with the weights of a run that was never
    stopped. The signal must leave time for the longest validation plus one step: one that comes
    during the last epoch's final validation is not acted on (the run ends on its own).

    It acts under SLURM's cluster environment with ``auto_requeue`` (Lightning's default when
    ``SLURM_NTASKS`` is set and the job is not interactive), and the hepgen CLI adds it to every
    command: in ``validate``, ``test`` and ``predict`` it only takes the signal, so that
    Lightning's handler does not write a training checkpoint into the run in their middle.

    Args:
        stop_wait_s: how long to wait for SLURM's SIGTERM after the requeue before leaving anyway.
    """

    def __init__(self, stop_wait_s: float = 300.0) -> None:
        self.stop_wait_s = stop_wait_s
        self.active = False
        self._replaced = None  # the handler this callback's replaced, put back at teardown
        self._saving = False

    def setup(self, trainer, pl_module, stage: str) -> None:
        environment = trainer._accelerator_connector.cluster_environment
        if isinstance(environment, SLURMEnvironment) and environment.auto_requeue:
            # before the Trainer registers its own handlers, which then leave this signal alone
            self.active, self._signum = True, environment.requeue_signal or signal.SIGUSR1
            self._replaced = note_time_limit(self._signum)

    def teardown(self, trainer, pl_module, stage: str) -> None:
        if self.active and self._replaced is not None:
            signal.signal(self._signum, self._replaced)
        self.active, self._replaced = False, None

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx: int) -> None:
        # not inside an accumulation window: its gradients so far are in no checkpoint
        if not self.active or batch_idx % trainer.accumulate_grad_batches:
            return
        if not trainer.strategy.reduce_boolean_decision(time_limit_reached(), all=False):
            return
        clear_time_limit()
        path = next_hpc_checkpoint(Path(trainer.default_root_dir))
        self._saving = True
        trainer.save_checkpoint(path)
        self._saving = False
        # SLURM's SIGTERM after the requeue runs Lightning's handler, which broadcasts to the other
        # ranks: held back until this broadcast is done, so that the two cannot interleave
        held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        try:
            done, what = requeue_job() if trainer.is_global_zero else (False, "")
            done = trainer.strategy.broadcast(done, src=0)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)
        if not done:
            rank_zero_warn(
                f"hepgen: {what}; training goes on until the time limit. Its run continues from {path} with "
                f"hepgen fit -c {Path(trainer.default_root_dir) / 'config.yaml'} --ckpt_path last."
            )
            return
        rank_zero_info(f"hepgen: saved {path.name} at step {trainer.global_step} and {what}.")
        wait_to_be_stopped(lambda: trainer.received_sigterm, self.stop_wait_s)
        raise SIGTERMException()

    def on_save_checkpoint(self, trainer, pl_module, checkpoint: dict) -> None:
        if self._saving and not trainer.fit_loop.epoch_loop._should_accumulate():
            # Lightning's restart adds the logging step (W&B's x axis) it assumes a checkpoint taken at
            # a batch's end did not count yet; this one was taken after it was counted
            checkpoint["loops"]["fit_loop"]["epoch_loop.state_dict"]["_batches_that_stepped"] -= 1
