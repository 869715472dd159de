"""Shared fixtures: made CaloGAN data once per session, and a clean environment per test."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import pytest

matplotlib.use("Agg")

ROOT = Path(__file__).resolve().parents[1]
TINY_CALO = ROOT / "tests" / "conf" / "calo_vae_tiny.yaml"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch, tmp_path):
    """No W&B network, no leftovers of a previous run's directory, no real SLURM job."""
    monkeypatch.setattr("sys.argv", ["hepgen"])  # main(args) is the command line, not pytest's argv
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    for var in ("WANDB_API_KEY", "HEPGEN_RUN_DIR", "SLURM_JOB_ID", "SLURM_NTASKS", "SLURM_RESTART_COUNT"):
        monkeypatch.delenv(var, raising=False)


@pytest.fixture(scope="session")
def calogan_dir(tmp_path_factory) -> Path:
    """A folder with a made ``eplus.hdf5`` of 600 events (the tiny config's made_events)."""
    from hepgen.synth.calogan import make_calogan

    folder = tmp_path_factory.mktemp("calogan")
    make_calogan(folder, events=600, seed=0, particles=["eplus"], progress=False)
    return folder


def tiny_args(subcommand: str, data_dir: Path, root: Path, *extra: str) -> list[str]:
    """CLI arguments of the tiny CaloVAE config, writing runs below ``root``."""
    return [
        subcommand, "-c", str(TINY_CALO),
        "--data.init_args.data_dir", str(data_dir),
        "--run.root", str(root), "--run.experiment", "tiny",
        *extra,
    ]
