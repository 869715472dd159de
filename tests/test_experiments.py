"""Every experiment YAML runs: fit, test and predict with fast_dev_run, on made data."""

from __future__ import annotations

from pathlib import Path

import pytest

from hepgen.cli import main
from tests.conftest import ROOT

EXPERIMENTS = sorted((ROOT / "experiments").rglob("*.yaml"))


def test_there_are_experiments():
    assert any(p.parent.name == "calo_vae" for p in EXPERIMENTS)


@pytest.mark.parametrize("config", EXPERIMENTS, ids=lambda p: str(p.relative_to(ROOT / "experiments")))
def test_experiment_runs(config: Path, calogan_dir, tmp_path):
    # Real-data configs read the made files in the real format, through the real loading code.
    common = [
        "-c", str(config),
        "--data.init_args.data_dir", str(calogan_dir),
        "--data.init_args.made_events", "600",
        "--data.init_args.predict_events", "64",
        "--trainer.fast_dev_run", "1",
        "--trainer.accelerator", "cpu",
        "--run.root", str(tmp_path),
        "--run.version", "smoke",
    ]
    for subcommand in ("fit", "test", "predict"):
        main([subcommand, *common])
    predictions = list((tmp_path).rglob("predictions/*.hdf5"))
    assert predictions, "predict wrote no CaloGAN file"
