"""A training process killed with SIGKILL at a random moment: nothing corrupt is left, and it resumes.

SIGKILL cannot be caught: no handler runs, no checkpoint is saved at the end. What protects the
run is that every checkpoint is written whole or not at all (a temporary file renamed over the
old one) and that the run lock of a dead process is taken over.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from lightning.pytorch import Callback

from hepgen.checkpoints import is_whole
from hepgen.cli import main
from tests.conftest import ROOT, tiny_args

#: Batches per epoch of the tiny CaloVAE (480 training showers, batch 64): one checkpoint interval.
BATCHES_PER_EPOCH = 8


class ProgressFile(Callback):
    """Write the global step after every batch to ``path`` (what a watcher sees of a run)."""

    def __init__(self, path: str, sleep_s: float = 0.0) -> None:
        self.path, self.sleep_s = Path(path), sleep_s

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"step": trainer.global_step, "epoch": trainer.current_epoch}))
        os.replace(tmp, self.path)
        time.sleep(self.sleep_s)


def test_sigkill_at_a_random_moment_leaves_whole_checkpoints_and_the_run_resumes(calogan_dir, tmp_path):
    progress = tmp_path / "progress.json"
    args = tiny_args("fit", calogan_dir, tmp_path, "--trainer.max_epochs", "30", "--run.threads", "1",
                     f"--trainer.callbacks+={__name__}.ProgressFile", f"--trainer.callbacks.path={progress}",
                     "--trainer.callbacks.sleep_s=0.02")  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "hepgen", *args], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    run_dir = tmp_path / "tiny" / "v0"
    deadline = time.monotonic() + 120
    while not (run_dir / "checkpoints" / "last.ckpt").is_file():
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended before its first checkpoint"
        time.sleep(0.05)
    moment = random.uniform(0.0, 3.0)  # after the first checkpoint: possibly while a later one is written
    time.sleep(moment)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    reached = json.loads(progress.read_text())["step"]

    checkpoints = sorted(run_dir.rglob("*.ckpt"))
    assert checkpoints and all(is_whole(p) for p in checkpoints), f"killed {moment:.2f} s in: {checkpoints}"
    saved = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert reached - saved["global_step"] <= BATCHES_PER_EPOCH, f"killed {moment:.2f} s in"  # at most one interval lost

    # the dead process's lock is taken over; the run continues from its last checkpoint to the end
    main(["fit", "-c", str(run_dir / "config.yaml"), "--ckpt_path", "last"])
    final = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert final["epoch"] == 29 and final["global_step"] == 30 * BATCHES_PER_EPOCH
