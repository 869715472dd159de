"""A sweep trial's report to hepgen's local sweep controller, and Hyperband's early stop."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import yaml
from lightning.pytorch import Callback

from hepgen.sweep import TRIAL_ENV, as_sweep_runs, locked, read_trials, sweeps_package, write_trial


class SweepTrial(Callback):
    """Report the sweep's metric after every validation to the trial's file; stop when Hyperband says so.

    What W&B's server does for an online sweep, for a trial started by ``hepgen sweep agent``
    (which names the trial file in ``HEPGEN_SWEEP_TRIAL``; the hepgen CLI then adds this callback).
    Each validation appends ``{metric: value, "epoch": e}`` to the trial's history, the summary is
    the latest value (as in W&B), and with ``early_terminate: {type: hyperband, ...}`` the
    ``sweeps`` package's Hyperband decides from all trials' histories whether this one goes on.
    Rank 0 writes; the decision reaches every rank through the Trainer's stop flag.
    """

    def __init__(self, trial_file: str | Path | None = None) -> None:
        self.trial_file = Path(trial_file or os.environ[TRIAL_ENV])
        self.folder = self.trial_file.parent.parent
        with locked(self.folder):
            self.config = yaml.safe_load((self.folder / "sweep.yaml").read_text())
        self.metric = self.config["metric"]["name"]

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking or self.metric not in trainer.callback_metrics:
            return
        value = float(trainer.callback_metrics[self.metric])
        stop = False
        if trainer.is_global_zero:
            stop = self._report(value, trainer.current_epoch, str(trainer.default_root_dir))
        if trainer.strategy.broadcast(stop, src=0):
            trainer.should_stop = True

    def _report(self, value: float, epoch: int, run_dir: str) -> bool:
        with locked(self.folder):
            trial = json.loads(self.trial_file.read_text())
            value = value if math.isfinite(value) else None  # JSON has no NaN
            trial["history"].append({self.metric: value, "epoch": epoch})
            trial["summary"][self.metric] = value
            trial["run_dir"] = run_dir
            stop = self._hyperband_stops(trial)
            if stop:
                trial["state"] = "stopped"
            write_trial(self.folder, trial)
        return stop

    def _hyperband_stops(self, trial: dict) -> bool:
        if (self.config.get("early_terminate") or {}).get("type") != "hyperband":
            return False
        trials = [trial if t["index"] == trial["index"] else t for t in read_trials(self.folder)]
        stopped = sweeps_package().stop_runs(self.config, as_sweep_runs(trials))
        return any(run.name == trial["name"] for run in stopped)
