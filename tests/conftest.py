"""Shared fixtures: made CaloGAN data once per session, and a clean environment per test."""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib
import pytest
import torch

matplotlib.use("Agg")

ROOT = Path(__file__).resolve().parents[1]
TINY_CALO = ROOT / "tests" / "conf" / "calo_vae_tiny.yaml"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch, tmp_path):
    """No W&B network, no leftovers of a previous run's directory, no real SLURM job.

    ``HEPGEN_DEBUG=1`` makes ``main`` raise hepgen's errors instead of printing them as one line,
    so tests can match them; the tests of that one line unset it.
    """
    monkeypatch.setattr("sys.argv", ["hepgen"])  # main(args) is the command line, not pytest's argv
    monkeypatch.setenv("HEPGEN_DEBUG", "1")
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    for var in ("WANDB_API_KEY", "HEPGEN_RUN_DIR", "SLURM_JOB_ID", "SLURM_NTASKS", "SLURM_RESTART_COUNT"):
        monkeypatch.delenv(var, raising=False)
    yield
    # W&B keeps a process-wide setup from its first run: after a run with WANDB_MODE=disabled, a
    # later offline run in the same process wrote no offline-run folder. Start each test afresh.
    wandb = sys.modules.get("wandb")
    if wandb is not None:
        wandb.teardown()


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


#: Generated events per made A(i)DAPT sample in tests (47% of ps, 23% of realistic are accepted).
AIDAPT_EVENTS = 20_000


@pytest.fixture(scope="session")
def aidapt_dir(tmp_path_factory) -> Path:
    """A folder with made ``ps_*`` and ``realistic_*`` A(i)DAPT files (4 per level)."""
    from hepgen.synth.aidapt import make_aidapt

    folder = tmp_path_factory.mktemp("aidapt")
    make_aidapt(folder, events=AIDAPT_EVENTS, seed=0, samples=("ps", "realistic"), n_files=4, progress=False)
    return folder


def tiny_folding_gan(**overrides):
    """A FoldingGAN with small networks (seconds per epoch on the test data)."""
    from hepgen.models.aidapt import FoldingGAN

    settings = dict(noise_dim=8, generator_widths=(32, 32), discriminator_widths=(32, 16), residual_scale=10.0)
    settings.update(overrides)
    return FoldingGAN(**settings)


@pytest.fixture(scope="session")
def folding_ckpt(aidapt_dir, tmp_path_factory) -> Path:
    """A FoldingGAN checkpoint trained for a few steps on the made phase-space events."""
    import lightning as L

    from datamodules.aidapt import AIDAPTDataModule

    folder = tmp_path_factory.mktemp("folding")
    data = AIDAPTDataModule(data_dir=str(aidapt_dir), source="made", made_events=AIDAPT_EVENTS, batch_size=2000)
    trainer = L.Trainer(
        max_steps=12, logger=False, enable_progress_bar=False, enable_model_summary=False,
        enable_checkpointing=False, accelerator="cpu", default_root_dir=folder, limit_val_batches=0,
    )  # fmt: skip
    trainer.fit(tiny_folding_gan(), data)
    path = folder / "folding.ckpt"
    trainer.save_checkpoint(path)
    return path


class _EventsWithoutTensors(torch.utils.data.Dataset):
    """A training split that, like a lazy HDF5 dataset, has no in-RAM ``tensors`` attribute."""

    def __init__(self, events: dict) -> None:
        self._events = events

    def __len__(self) -> int:
        return len(next(iter(self._events.values())))

    def __getitems__(self, indices):
        return {k: v[torch.as_tensor(indices)] for k, v in self._events.items()}


def with_lazy_training_split(datamodule_class):
    """A subclass of ``datamodule_class`` whose training split has no ``tensors`` (as a lazy one)
    and which counts its ``training_sample`` calls: a model that fits its statistics any other
    way fails on it."""

    class LazyTrainingSplit(datamodule_class):
        def setup(self, stage: str) -> None:
            super().setup(stage)
            if not isinstance(self.datasets["train"], _EventsWithoutTensors):
                self._train = self.datasets["train"].tensors
                self.datasets["train"] = _EventsWithoutTensors(self._train)
            self.samples_taken = 0

        def training_sample(self, n=None):
            self.samples_taken += 1
            return {k: v[:n] for k, v in self._train.items()}

    return LazyTrainingSplit


#: A small Toy NR study: S/B = 5 % on 4,000 SR background events, so a tiny ensemble finds it.
AD_STUDY = dict(
    kind="nr", events=4000, signal_fractions=(0.05,), seeds=(1,), test_background=20_000, test_signal=5000,
    fullsup_background=4000, fullsup_signal=2000, progress=False,
)


#: Made sPHENIX events of the tiny config (tests/conf/uvcgan_s_tiny.yaml): 60 training mixtures,
#: 12 val and 12 quenched test events.
SPHENIX_EVENTS = 60


@pytest.fixture(scope="session")
def sphenix_dir(tmp_path_factory) -> Path:
    """A made sPHENIX folder in the real layout (train/, val/, test/; SPHENIX_EVENTS mixtures)."""
    from hepgen.synth.sphenix import make_sphenix

    folder = tmp_path_factory.mktemp("sphenix") / "made"
    make_sphenix(folder, events=SPHENIX_EVENTS, seed=0, progress=False)
    return folder


@pytest.fixture(scope="session")
def ad_study_dir(tmp_path_factory) -> Path:
    """A made Toy NR anomaly-detection study in the seed's .npz layout (see AD_STUDY)."""
    from hepgen.synth.ad_toy import make_ad_toy

    folder = tmp_path_factory.mktemp("ad_study") / "toy_nr"
    make_ad_toy(folder, **AD_STUDY)
    return folder


@pytest.fixture(scope="session")
def lhco_sr_like_dir(tmp_path_factory) -> Path:
    """Small files in the 6-column LHCO signal-region layout of ``../shared/data/lhco_sr``
    (context, 4 features, label), filled with Toy R events: sr_data_train (3,000 background +
    150 signal), sr_data_val (3,000 + 50) and sr_signal (1,500)."""
    import numpy as np

    from hepgen.synth.ad_toy import make_toy

    toy, rng = make_toy("r"), np.random.default_rng(5)
    folder = tmp_path_factory.mktemp("lhco_sr_like")

    def rows(n_background: int, n_signal: int) -> np.ndarray:
        background = np.c_[toy.sample_background_sr(n_background, rng), np.zeros(n_background)]
        signal = np.c_[toy.sample_signal_sr(n_signal, rng), np.ones(n_signal)]
        return rng.permutation(np.concatenate([background, signal]))

    for name, (n_b, n_s) in {"sr_data_train": (3000, 150), "sr_data_val": (3000, 50), "sr_signal": (0, 1500)}.items():
        np.save(folder / f"{name}.npy", rows(n_b, n_s))
    return folder


def full_calo_vae():
    """A tiny CaloVAE (eval mode) with every generation path of the quickstart (flow with a support
    box, centres, two Gaussians per cell, two brightest cells drawn first) and two particle species,
    its statistics fitted on 300 made showers."""
    from hepgen.models import CaloVAE
    from hepgen.physics.calo_geometry import LAYER_KEYS
    from hepgen.synth.calogan import simulate_showers

    torch.manual_seed(0)
    model = CaloVAE(latent_dim=4, hidden=32, branch=16, num_particles=2, sharing="lognormal", latent_density="flow",
                    cells_given_energies=True, cells_given_centroids=list(LAYER_KEYS), sharing_components=[2, 2, 2],
                    brightest_cell_layers=["layer_2"], brightest_cells=2)  # fmt: skip
    showers = {k: torch.from_numpy(v) for k, v in simulate_showers(300, seed=4).items()}
    cells = [showers[k].flatten(1) for k in LAYER_KEYS]
    model.representation.fit(cells, showers["energy"])
    model.centroids.fit(cells)
    model.brightest_shares.fit(cells[2:])
    model.latent_flow.widen_support(torch.full((4,), -1.0), torch.full((4,), 1.0))
    return model.eval()
