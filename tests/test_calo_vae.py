"""CaloVAE: the shower representation, KL schedules, learning, generation and predict read-back."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from lightning.pytorch import Trainer

from datamodules import CaloGANDataModule
from hepgen.cli import main
from hepgen.models import CaloVAE
from hepgen.models.kl_schedule import kl_weight
from hepgen.nn.shower import ShowerRepresentation
from hepgen.physics.calo_geometry import LAYER_KEYS
from hepgen.physics.calo_observables import compute_observables
from hepgen.synth.calogan import simulate_showers
from tests.conftest import tiny_args, with_lazy_training_split


@pytest.mark.parametrize(
    "schedule, step, expected",
    [
        ("constant", 0, 0.8),
        ("linear", 0, 0.0),
        ("linear", 50, 0.4),
        ("linear", 500, 0.8),
        ("sigmoid", 50, 0.4),
        ("cyclical", 12, 0.8 * 0.96),  # cycle of 25 steps: 12/25 of the way, rising over the first half
        ("cyclical", 20, 0.8),
        ("cyclical", 25, 0.0),
    ],
)
def test_kl_schedules(schedule, step, expected):
    assert math.isclose(kl_weight(step, schedule, 100, 0.8, cycles=4), expected, abs_tol=1e-9)


def test_unknown_kl_schedule_is_named():
    with pytest.raises(ValueError, match="kl_schedule='warm'"):
        kl_weight(1, "warm", 10, 1.0)


def test_representation_round_trip_in_mev():
    showers = simulate_showers(200, seed=3)
    cells = [torch.from_numpy(showers[k]).flatten(1) for k in LAYER_KEYS]
    energy = torch.from_numpy(showers["energy"])
    rep = ShowerRepresentation([c.shape[1] for c in cells])
    rep.fit(cells, energy)
    decoded = rep.decode_energies(rep.encode_energies(cells, energy), energy)
    truth = torch.stack([c.sum(1) for c in cells], 1)
    assert torch.allclose(decoded, truth, rtol=1e-4, atol=1e-3)


def test_generated_showers_are_physical():
    model = CaloVAE(latent_dim=4, hidden=32, branch=16)
    showers = simulate_showers(300, seed=4)
    model.representation.fit([torch.from_numpy(showers[k]).flatten(1) for k in LAYER_KEYS],
                             torch.from_numpy(showers["energy"]))
    energy = torch.full((300, 1), 50.0)
    out = model.generate(energy, generator=torch.Generator().manual_seed(0))
    assert out["layer_0"].shape == (300, 3, 96) and out["layer_2"].shape == (300, 12, 6)
    assert all((v >= 0).all() and torch.isfinite(v).all() for v in out.values())
    again = model.generate(energy, generator=torch.Generator().manual_seed(0))
    assert all(torch.equal(out[k], again[k]) for k in out)


def _evaluate(model: CaloVAE, dm: CaloGANDataModule) -> dict[str, float]:
    """Validation negative ELBO and mean |occupancy difference| (percentage points) of the model."""
    batch = dm.datasets["val"].tensors
    with torch.no_grad():
        neg_elbo = float(model.losses(batch, torch.Generator().manual_seed(0))["neg_elbo"])
        generated = model.generate(batch["energy"], generator=torch.Generator().manual_seed(1))
    ref = compute_observables({k: batch[k].numpy() for k in LAYER_KEYS}, batch["energy"].numpy())
    gen = compute_observables({k: v.numpy() for k, v in generated.items()}, batch["energy"].numpy())
    occupancy_pp = np.mean([100 * abs(ref[f"sparsity_{i}"].mean() - gen[f"sparsity_{i}"].mean()) for i in range(3)])
    return {"neg_elbo": neg_elbo, "occupancy_pp": occupancy_pp}


def test_training_beats_the_untrained_model(calogan_dir):
    torch.manual_seed(0)
    dm = CaloGANDataModule(data_dir=str(calogan_dir), source="made", made_events=600, batch_size=64)
    dm.prepare_data()
    dm.setup("fit")
    model = CaloVAE(latent_dim=4, hidden=64, branch=32, kl_warmup_steps=50)
    train = dm.datasets["train"].tensors
    model.representation.fit([train[k].flatten(1) for k in LAYER_KEYS], train["energy"])
    before = _evaluate(model, dm)
    Trainer(max_epochs=12, logger=False, enable_checkpointing=False, enable_progress_bar=False,
            enable_model_summary=False).fit(model, dm)
    after = _evaluate(model, dm)
    assert after["neg_elbo"] < 0.8 * before["neg_elbo"]
    assert after["occupancy_pp"] < before["occupancy_pp"] / 2
    assert after["occupancy_pp"] < 5.0


def test_statistics_are_fitted_once_and_saved(calogan_dir, tmp_path):
    main(tiny_args("fit", calogan_dir, tmp_path, "--trainer.max_epochs", "1", "--run.version", "a"))
    ckpt = tmp_path / "tiny" / "a" / "checkpoints" / "last.ckpt"
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    assert bool(state["representation.fitted"])
    model = CaloVAE.load_from_checkpoint(ckpt)
    saved_mean = model.representation.y_mean.clone()
    # a fitted model never refits, whatever data it later sees
    other = CaloGANDataModule(data_dir=str(tmp_path / "other"), source="made", made_events=300, made_seed=5)
    Trainer(max_epochs=1, limit_train_batches=1, limit_val_batches=0, logger=False, enable_checkpointing=False,
            enable_progress_bar=False, enable_model_summary=False).fit(model, other)
    assert torch.equal(model.representation.y_mean, saved_mean)


def test_predict_writes_a_file_the_datamodule_reads(calogan_dir, tmp_path):
    main(tiny_args("fit", calogan_dir, tmp_path, "--trainer.max_epochs", "1", "--run.version", "p"))
    run = tmp_path / "tiny" / "p"
    main(["predict", "-c", str(run / "config.yaml"), "--ckpt_path", "best",
          "--trainer.callbacks+=CaloGANWriter", "--data.init_args.predict_events", "150"])
    dm = CaloGANDataModule(data_dir=str(run / "predictions"), source="real", val_fraction=0.2, test_fraction=0.0)
    dm.prepare_data()
    dm.setup("fit")
    n = sum(len(dm.datasets[s]) for s in ("train", "val"))
    assert n == 150
    expected = CaloGANDataModule(data_dir=str(calogan_dir), predict_events=150).predict_energies()
    read = torch.cat([dm.datasets[s].tensors["energy"] for s in ("train", "val")])
    assert np.allclose(np.sort(read.numpy().ravel()), np.sort(expected.ravel()))
    assert (read > 0).all() and all((dm.datasets["val"].tensors[k] >= 0).all() for k in LAYER_KEYS)


def _fitted_tiny_vae(n: int = 300) -> tuple[CaloVAE, dict[str, torch.Tensor]]:
    """A tiny untrained CaloVAE with a fitted representation, and the showers it was fitted on."""
    showers = {k: torch.from_numpy(v) for k, v in simulate_showers(n, seed=4).items()}
    model = CaloVAE(latent_dim=4, hidden=32, branch=16)
    model.representation.fit([showers[k].flatten(1) for k in LAYER_KEYS], showers["energy"])
    return model.eval(), showers


def test_evaluation_samples_draw_as_generate_and_keep_the_reference(tmp_path):
    model, showers = _fitted_tiny_vae()
    batch = {k: showers[k][:50] for k in (*LAYER_KEYS, "energy")}
    samples = model.evaluation_samples(batch, torch.Generator().manual_seed(3))
    assert list(samples) == [*LAYER_KEYS, "energy"]
    shapes = {"layer_0": (50, 3, 96), "layer_1": (50, 12, 12), "layer_2": (50, 12, 6), "energy": (50, 1)}
    assert {k: (r.shape, g.shape) for k, (r, g) in samples.items()} == {k: (s, s) for k, s in shapes.items()}
    generated = model.generate(batch["energy"], generator=torch.Generator().manual_seed(3))
    other = model.evaluation_samples(batch, torch.Generator().manual_seed(4))
    for key in LAYER_KEYS:
        assert torch.equal(samples[key][0], batch[key]) and torch.equal(other[key][0], batch[key])
        assert torch.equal(samples[key][1], generated[key])  # the same random draws as generate()
    assert not torch.equal(samples["layer_0"][1], other["layer_0"][1])
    assert torch.equal(samples["energy"][0], batch["energy"]) and torch.equal(samples["energy"][1], batch["energy"])


def test_validation_noise_is_seeded_by_the_global_batch_index():
    model, showers = _fitted_tiny_vae(64)
    seeds = []
    losses = model.losses

    def spy(batch, generator=None):
        seeds.append(generator.initial_seed())
        return losses(batch, generator)

    model.losses = spy
    model.log_dict = lambda *args, **kwargs: None
    batch = {k: showers[k][:16] for k in (*LAYER_KEYS, "energy")}
    # rank 1 of 2 holds the single-process batches 1, 3, 5, ...: its batch 0 is global batch 1
    model.trainer = SimpleNamespace(world_size=2, global_rank=1)
    for batch_idx in range(3):
        model.validation_step(batch, batch_idx)
    model.trainer = SimpleNamespace(world_size=1, global_rank=0)
    model.validation_step(batch, 2)
    assert seeds == [1, 3, 5, 2]


_LazyCaloGAN = with_lazy_training_split(CaloGANDataModule)


def test_statistics_are_fitted_through_training_sample(calogan_dir):
    dm = _LazyCaloGAN(data_dir=str(calogan_dir), source="made", made_events=600, batch_size=64)
    model = CaloVAE(latent_dim=4, hidden=32, branch=16)
    Trainer(max_steps=0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
            enable_model_summary=False, limit_val_batches=0).fit(model, dm)
    assert dm.samples_taken == 1 and bool(model.representation.fitted)
    expected = ShowerRepresentation([model.representation.layer_cells[i] for i in range(3)])
    expected.fit([dm._train[k].flatten(1) for k in LAYER_KEYS], dm._train["energy"])
    assert torch.equal(model.representation.y_mean, expected.y_mean)
