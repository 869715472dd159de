"""SLURM's time-limit signal inside a run: the requeued job ends with the weights of an uninterrupted one.

The job's environment, ``scontrol`` and the signal are stand-ins here (``tests/test_slurm.py``
does the same on a real SLURM): the variables srun sets for one task, an ``scontrol`` on the PATH
that records the requeue and stops the job with SIGTERM as SLURM does, and SIGUSR1 sent by the
run itself in the middle of an epoch.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch
from lightning.pytorch import Callback

from hepgen.cli import main
from tests.conftest import ROOT, tiny_args

TINY_SDE = ROOT / "tests" / "conf" / "sde_gan_tiny.yaml"


class SignalAtBatch(Callback):
    """Send this process SIGUSR1 (SLURM's ``--signal``) after batch ``batch`` of epoch ``epoch``."""

    def __init__(self, epoch: int, batch: int) -> None:
        self.epoch, self.batch = epoch, batch

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        if (trainer.current_epoch, batch_idx) == (self.epoch, self.batch):
            os.kill(os.getpid(), signal.SIGUSR1)


def _signal_args(epoch: int, batch: int) -> list[str]:
    """Add :class:`SignalAtBatch` to a config's callbacks."""
    return [f"--trainer.callbacks+={__name__}.SignalAtBatch", f"--trainer.callbacks.epoch={epoch}",
            f"--trainer.callbacks.batch={batch}"]


@pytest.fixture
def slurm_job(monkeypatch, tmp_path) -> Path:
    """srun's variables for job 5150 with one task, and an ``scontrol`` that logs and sends SIGTERM."""
    for name, value in {
        "SLURM_JOB_ID": "5150", "SLURM_JOB_NAME": "hepgen", "SLURM_NTASKS": "1", "SLURM_NTASKS_PER_NODE": "1",
        "SLURM_NNODES": "1", "SLURM_NODELIST": "localhost", "SLURM_PROCID": "0", "SLURM_LOCALID": "0",
        "SLURM_NODEID": "0",
    }.items():
        monkeypatch.setenv(name, value)
    bin_dir, log = tmp_path / "bin", tmp_path / "scontrol.log"
    bin_dir.mkdir()
    scontrol = bin_dir / "scontrol"
    scontrol.write_text(f'#!/bin/sh\necho "$@" >> {log}\nkill -TERM $PPID\n')
    scontrol.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return log


def _last(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)


def _requeued_run_matches_uninterrupted(args: list[str], signal_args: list[str], tmp_path, log, monkeypatch):
    with pytest.raises(SystemExit):
        main([*args, *signal_args, "--run.root", str(tmp_path / "job")])
    run_dir = tmp_path / "job" / "tiny" / "5150"
    assert log.read_text().split() == ["requeue", "5150"]
    hpc = run_dir / "hpc_ckpt_1.ckpt"
    saved = torch.load(hpc, map_location="cpu", weights_only=True)
    # the requeued job: the same command, SLURM_RESTART_COUNT one higher
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    main([*args, *signal_args, "--run.root", str(tmp_path / "job")])
    monkeypatch.delenv("SLURM_RESTART_COUNT")
    for name in [n for n in os.environ if n.startswith("SLURM_")]:
        monkeypatch.delenv(name)
    main([*args, "--run.root", str(tmp_path / "straight")])

    straight, resumed = _last(tmp_path / "straight" / "tiny" / "v0"), _last(run_dir)
    assert 0 < saved["global_step"] < straight["global_step"]  # stopped inside the run
    assert resumed["global_step"] == straight["global_step"] and resumed["epoch"] == straight["epoch"]
    changed = [k for k, v in saved["state_dict"].items() if not torch.equal(v, resumed["state_dict"][k])]
    assert changed  # the resumed job trained on
    for name, value in straight["state_dict"].items():
        assert torch.equal(value, resumed["state_dict"][name]), name
    return saved


def test_requeue_inside_an_epoch_resumes_exactly(calogan_dir, tmp_path, slurm_job, monkeypatch):
    """CaloVAE (automatic optimization): 8 batches per epoch, signal after batch 3 of epoch 1."""
    args = tiny_args("fit", calogan_dir, tmp_path)[:-4] + ["--run.experiment", "tiny"]
    saved = _requeued_run_matches_uninterrupted(args, _signal_args(1, 2), tmp_path, slurm_job, monkeypatch)
    # saved between batches 3 and 4 of epoch 1: the resumed job skips the batches it had trained on
    assert saved["epoch"] == 1 and saved["global_step"] == 8 + 3


def test_requeue_of_a_gan_with_weight_averages_resumes_exactly(tmp_path, slurm_job, monkeypatch):
    """SDE-GAN (two optimizers, SWA copies from generator step 2): 4 batches per epoch."""
    args = ["fit", "-c", str(TINY_SDE), "--data.init_args.data_dir", str(tmp_path / "ou"),
            "--run.experiment", "tiny", "--trainer.max_epochs", "3"]
    saved = _requeued_run_matches_uninterrupted(args, _signal_args(1, 1), tmp_path, slurm_job, monkeypatch)
    assert saved["epoch"] == 1
    assert saved["state_dict"]["averages.generator.n_averaged"] > 0  # the SWA copy was averaging already


def test_requeue_with_gradient_accumulation_waits_for_the_window_to_end(calogan_dir, tmp_path, slurm_job, monkeypatch):
    """With 2 batches per optimizer step, a signal after batch 2 (inside the window of batches 2
    and 3) is acted on before batch 4: the gradients of an unfinished window are in no checkpoint."""
    args = tiny_args("fit", calogan_dir, tmp_path)[:-4] + ["--run.experiment", "tiny",
                                                           "--trainer.accumulate_grad_batches", "2"]  # fmt: skip
    saved = _requeued_run_matches_uninterrupted(args, _signal_args(1, 2), tmp_path, slurm_job, monkeypatch)
    assert saved["epoch"] == 1 and saved["global_step"] == 4 + 2  # after batches 0-3 of epoch 1
    assert saved["CaloGANDataModule"]["train_position"] == {"epoch": 1, "batches": 4}


def test_a_resumed_sampler_puts_its_dataset_in_the_resumed_epoch():
    """Worker processes may fetch before Lightning calls set_epoch: a dataset whose items depend on
    the epoch (UVCGAN-S's pairing of domains) must already be in the resumed one."""
    from datamodules.samplers import EpochShuffleSampler

    class Pairing(torch.utils.data.Dataset):
        epoch = -1

        def __len__(self):
            return 10

        def set_epoch(self, epoch):
            self.epoch = epoch

    dataset = Pairing()
    sampler = EpochShuffleSampler(dataset, seed=1, epoch=3, resume_after=(3, 4))
    assert dataset.epoch == 3 and len(list(sampler)) == 6
