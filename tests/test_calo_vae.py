"""CaloVAE: the shower representation, KL schedules, learning, generation and predict read-back."""

from __future__ import annotations

import math
import shutil
from functools import partial
from types import SimpleNamespace

import h5py
import numpy as np
import pytest
import torch
from lightning.pytorch import Trainer
from torch.utils.data import DataLoader

from datamodules import CaloGANDataModule
from datamodules.base import ArrayDictDataset, _already_batched
from hepgen.cli import main
from hepgen.models import CaloVAE
from hepgen.models.kl_schedule import kl_weight
from hepgen.nn.shower import ShowerRepresentation, sample_cells
from hepgen.physics.calo_geometry import LAYER_KEYS
from hepgen.physics.calo_observables import compute_observables
from hepgen.synth.calogan import simulate_showers
from tests.conftest import full_calo_vae, tiny_args, with_lazy_training_split


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


def test_generation_in_chunks_keeps_every_shower_with_its_energy_and_particle(monkeypatch):
    """A large batch is generated in chunks on a CPU: the showers are those of the chunks drawn one
    after the other from the same generator, each with its own incident energy and particle."""
    import hepgen.models.calo_vae as calo_vae

    model = CaloVAE(latent_dim=4, hidden=32, branch=16, num_particles=2, sharing="lognormal")
    showers = simulate_showers(300, seed=4)
    model.representation.fit([torch.from_numpy(showers[k]).flatten(1) for k in LAYER_KEYS],
                             torch.from_numpy(showers["energy"]))  # fmt: skip
    energy = torch.linspace(1.0, 100.0, 7)[:, None]
    particle = torch.tensor([0, 1, 1, 0, 1, 0, 0])
    monkeypatch.setattr(calo_vae, "CPU_GENERATION_CHUNK", 3)
    whole = model.generate(energy, particle, torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(0)
    parts = [model.generate(energy[i : i + 3], particle[i : i + 3], gen) for i in (0, 3, 6)]
    for k in whole:
        assert whole[k].shape[0] == 7
        torch.testing.assert_close(whole[k], torch.cat([p[k] for p in parts]), rtol=0, atol=0)
    # each row keeps its own incident energy: the layer energies are fractions of it
    layer_sums = sum(whole[k].flatten(1).sum(1) for k in whole)
    assert layer_sums[-1] > 10 * layer_sums[0]


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


def test_compiled_predict_writes_the_showers_of_eager_predict(calogan_dir, tmp_path, monkeypatch):
    """With ``compile_generation`` predict draws the same random numbers through the compiled
    generator (whose copy of a two-Gaussian model is folded): the written showers are those of a
    plain predict with the same seed, up to rounding."""
    from hepgen.models import CompiledShowerGenerator

    calls = []
    compiled_call = CompiledShowerGenerator.__call__
    monkeypatch.setattr(CompiledShowerGenerator, "__call__", lambda *a, **k: calls.append(1) or compiled_call(*a, **k))
    main(tiny_args("fit", calogan_dir, tmp_path, "--trainer.max_epochs", "1", "--run.version", "c",
                   "--model.init_args.sharing", "lognormal", "--model.init_args.sharing_components", "[2, 2, 2]"))
    run = tmp_path / "tiny" / "c"
    written = {}
    for compiled in ("false", "true"):
        main(["predict", "-c", str(run / "config.yaml"), "--ckpt_path", "last", "--trainer.callbacks+=CaloGANWriter",
              "--data.init_args.predict_events", "150", "--model.init_args.compile_generation", compiled])  # fmt: skip
        (path,) = (run / "predictions").glob("*.hdf5")
        with h5py.File(path) as f:
            written[compiled] = {k: f[k][:] for k in LAYER_KEYS}
        shutil.rmtree(run / "predictions")
        assert bool(calls) == (compiled == "true")
    assert all((written["false"][k] > 0).sum() > 1000 for k in LAYER_KEYS)
    compiled, eager = ({k: torch.from_numpy(v) for k, v in written[c].items()} for c in ("true", "false"))
    _assert_same_showers_up_to_rounding(compiled, eager)


def _assert_same_showers_up_to_rounding(got: dict, expected: dict) -> None:
    """The same showers but for rounding: in at most 1 % of them a cell whose uniform sat at its hit
    probability may be hit in one and missed in the other; the others have the same hit cells and
    energies within 0.1 %."""
    for key in LAYER_KEYS:
        a, b = got[key].flatten(1), expected[key].flatten(1)
        same_hits = ((a > 0) == (b > 0)).all(1)
        assert float(same_hits.float().mean()) >= 0.99, key
        torch.testing.assert_close(a[same_hits], b[same_hits], rtol=1e-3, atol=1e-3)


def test_compiled_predict_without_a_cpp_compiler_is_one_line(calogan_dir, tmp_path, capsys, monkeypatch):
    """torch.compile on a CPU needs a C++ compiler: without one, compile_generation fails at once in
    one line naming the option, and the failed predict leaves nothing in the run."""
    import torch._inductor.config as inductor_config

    main(tiny_args("fit", calogan_dir, tmp_path, "--trainer.max_epochs", "1", "--run.version", "x"))
    run = tmp_path / "tiny" / "x"
    before = sorted(p.name for p in run.iterdir())
    monkeypatch.setattr(inductor_config.cpp, "cxx", ("hepgen-no-such-compiler",))
    monkeypatch.delenv("HEPGEN_DEBUG", raising=False)
    with pytest.raises(SystemExit) as exit_info:
        main(["predict", "-c", str(run / "config.yaml"), "--ckpt_path", "last", "--trainer.callbacks+=CaloGANWriter",
              "--model.init_args.compile_generation", "true"])  # fmt: skip
    assert exit_info.value.code == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("hepgen: error: model compile_generation:") and "C++ compiler" in line
    assert sorted(p.name for p in run.iterdir()) == before


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
    assert list(samples) == [*LAYER_KEYS, "energy", "showers", "incident_energies"]
    shapes = {"layer_0": (50, 3, 96), "layer_1": (50, 12, 12), "layer_2": (50, 12, 6), "energy": (50, 1),
              "showers": (50, 504), "incident_energies": (50, 1)}  # fmt: skip
    assert {k: (r.shape, g.shape) for k, (r, g) in samples.items()} == {k: (s, s) for k, s in shapes.items()}
    generated = model.generate(batch["energy"], generator=torch.Generator().manual_seed(3))
    other = model.evaluation_samples(batch, torch.Generator().manual_seed(4))
    for key in LAYER_KEYS:
        assert torch.equal(samples[key][0], batch[key]) and torch.equal(other[key][0], batch[key])
        assert torch.equal(samples[key][1], generated[key])  # the same random draws as generate()
    assert not torch.equal(samples["layer_0"][1], other["layer_0"][1])
    assert torch.equal(samples["energy"][0], batch["energy"]) and torch.equal(samples["energy"][1], batch["energy"])
    # the flat view: layers in order, cells row-major, incident energy in MeV (the CaloChallenge inputs)
    for side in (0, 1):
        flat = samples["showers"][side]
        assert torch.equal(flat[:, 288 + 12 * 5 + 7], samples["layer_1"][side][:, 5, 7])
        assert torch.equal(flat[:, 504 - 1], samples["layer_2"][side][:, 11, 5])
        assert torch.allclose(samples["incident_energies"][side], 1000.0 * batch["energy"])


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


def test_centres_are_fitted_with_the_statistics_and_generation_draws_them(calogan_dir):
    """With ``cells_given_centroids`` the centres' statistics come from the same training sample,
    standardised centres of the training showers have mean 0 and spread 1, and generation (energies
    and centres drawn, then the cells) keeps each layer's drawn energy."""
    from hepgen.nn.shower import LayerCentroids

    dm = _LazyCaloGAN(data_dir=str(calogan_dir), source="made", made_events=600, batch_size=64)
    model = CaloVAE(latent_dim=4, hidden=32, branch=16, sharing="lognormal", cells_given_energies=True,
                    cells_given_centroids=["layer_0", "layer_1"])  # fmt: skip
    Trainer(max_steps=0, logger=False, enable_checkpointing=False, enable_progress_bar=False,
            enable_model_summary=False, limit_val_batches=0).fit(model, dm)
    assert dm.samples_taken == 1 and bool(model.centroids.fitted)
    layers = [dm._train[k].flatten(1) for k in ("layer_0", "layer_1")]
    standardised = model.centroids(layers)
    torch.testing.assert_close(standardised.mean(0), torch.zeros(4), atol=1e-4, rtol=0)
    torch.testing.assert_close(standardised.std(0), torch.ones(4), atol=1e-4, rtol=0)
    torch.testing.assert_close(model.centroids.c_mean, LayerCentroids([(3, 96), (12, 12)]).centres(layers).mean(0))
    energy = torch.full((50, 1), 20.0)
    showers = model.eval().generate(energy, generator=torch.Generator().manual_seed(0))
    assert {k: tuple(v.shape) for k, v in showers.items()} == {
        "layer_0": (50, 3, 96), "layer_1": (50, 12, 12), "layer_2": (50, 12, 6)}  # fmt: skip
    # the layer energies are the first columns of what the head draws: the same draws again
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        z = torch.randn(50, 4, generator=generator)  # latent_density normal: the prior
        _, mean, log_var = model.decoder.energies(z, model._condition({"energy": energy}))
        drawn = mean + torch.exp(0.5 * log_var) * torch.randn(mean.shape, generator=generator)
    expected = model.representation.decode_energies(drawn[:, :3], energy)
    got = torch.stack([showers[k].flatten(1).sum(1) for k in LAYER_KEYS], 1)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-3)


def test_centres_must_be_fitted_without_a_datamodule():
    model = CaloVAE(latent_dim=4, hidden=32, branch=16, sharing="lognormal", cells_given_energies=True,
                    cells_given_centroids=["layer_1"])  # fmt: skip
    showers = {k: torch.from_numpy(v) for k, v in simulate_showers(64, seed=6).items()}
    model.representation.fit([showers[k].flatten(1) for k in LAYER_KEYS], showers["energy"])
    loader = DataLoader(ArrayDictDataset(showers), batch_size=32, collate_fn=_already_batched)
    with pytest.raises(RuntimeError, match=r"call model.centroids.fit"):
        Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                enable_model_summary=False).fit(model, loader)  # fmt: skip


# --- fluctuating sharing and the learned latent density -------------------------------------------
def _sliced_w1(a: torch.Tensor, b: torch.Tensor, projections: int = 64) -> float:
    """Mean 1-D Wasserstein-1 distance of two equal-size samples (N, D) over random unit directions."""
    directions = torch.nn.functional.normalize(torch.randn(a.shape[1], projections, generator=torch.Generator().manual_seed(0)), dim=0)
    pa, pb = (a @ directions).sort(0).values, (b @ directions).sort(0).values
    return float((pa - pb).abs().mean())


def test_refitting_the_latent_flow_brings_its_draws_onto_the_encoders_codes():
    """Codes the flow has never seen (the encoder's made to give N(3, 0.14^2) in every direction):
    before the refit its draws are N(0, I)-like, sliced W1 about 3 from the codes; after 100 passes
    a tenth of that. Only the flow moves."""
    torch.manual_seed(0)
    model = CaloVAE(latent_dim=4, hidden=32, branch=16, sharing="lognormal", latent_density="flow")
    showers = {k: torch.from_numpy(v) for k, v in simulate_showers(2000, seed=5).items()}
    model.representation.fit([showers[k].flatten(1) for k in LAYER_KEYS], showers["energy"])
    head = model.encoder.trunk[-1]
    with torch.no_grad():
        head.weight.zero_()
        head.bias.copy_(torch.tensor([3.0] * 4 + [-4.0] * 4))  # mean 3, log-variance -4
    encoder = {k: v.clone() for k, v in model.encoder.state_dict().items()}
    cond = model._condition(showers)
    codes = 3.0 + 0.135 * torch.randn(2000, 4, generator=torch.Generator().manual_seed(1))

    def distance() -> float:
        with torch.no_grad():
            return _sliced_w1(model.latent_flow.sample(cond, torch.Generator().manual_seed(2)), codes)

    before = distance()
    model.refit_latent_flow(showers, epochs=100)
    after = distance()
    assert before > 2.0 and after < 0.1 * before
    assert all(torch.equal(v, model.encoder.state_dict()[k]) for k, v in encoder.items())


@pytest.mark.parametrize(("warmup_steps", "refits"), [(0, 2), (1000, 0)])
def test_flow_is_refitted_after_each_epoch_past_the_warm_up(calogan_dir, monkeypatch, warmup_steps, refits):
    """With flow_refit_epochs the flow is refitted on the datamodule's whole training sample after
    the last step of each epoch once the KL warm-up is over (here 2 epochs, or none inside it)."""
    dm = _LazyCaloGAN(data_dir=str(calogan_dir), source="made", made_events=600, batch_size=64)
    model = CaloVAE(latent_dim=4, hidden=32, branch=16, sharing="lognormal", latent_density="flow",
                    flow_refit_epochs=3, kl_warmup_steps=warmup_steps)  # fmt: skip
    calls = []
    monkeypatch.setattr(model, "refit_latent_flow", lambda data, epochs: calls.append((len(data["energy"]), epochs)))
    Trainer(max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
            enable_model_summary=False, limit_val_batches=0).fit(model, dm)  # fmt: skip
    assert calls == [(len(dm._train["energy"]), 3)] * refits


def test_lognormal_sharing_fluctuates_around_the_shape_and_keeps_the_layer_energy():
    """Two showers from one latent code differ cell by cell (a softmax sharing repeats one shape),
    and each layer still holds exactly its sampled energy."""
    model = CaloVAE(latent_dim=4, hidden=32, branch=16, sharing="lognormal")
    showers = simulate_showers(300, seed=4)
    model.representation.fit([torch.from_numpy(showers[k]).flatten(1) for k in LAYER_KEYS],
                             torch.from_numpy(showers["energy"]))  # fmt: skip
    cond = torch.zeros(2, 1)
    z = torch.zeros(2, 4)
    _, _, hit_logits, params = model.decoder(z, cond)
    always = torch.full_like(hit_logits[1], math.inf)  # every cell hit
    shares = sample_cells(always, params[1], 2, torch.Generator().manual_seed(0))
    assert torch.allclose(shares.sum(1), torch.ones(2))
    assert (shares[0] - shares[1]).abs().max() > 1e-3  # same z, different showers
    softmax = sample_cells(always, params[1][:, :144], 1, torch.Generator().manual_seed(0))
    assert torch.equal(softmax[0], softmax[1])


def test_lognormal_sharing_draws_each_log_fraction_around_its_mean_with_its_scale():
    """The renormalisation leaves log-fraction differences alone: u_0 - u_1 of the drawn fractions
    has mean mean_0 - mean_1 and variance scale_0^2 + scale_1^2."""
    n = 40_000
    mean, scale = torch.tensor([-1.0, -2.5, -1.5]), torch.tensor([0.2, 0.4, 0.3])
    params = torch.cat([mean, scale.log()])[None].expand(n, -1)
    shares = sample_cells(torch.full((n, 3), math.inf), params, 2, torch.Generator().manual_seed(0))
    diff = torch.log(shares[:, 0]) - torch.log(shares[:, 1])
    assert abs(float(diff.mean()) - 1.5) < 0.01
    assert abs(float(diff.var()) / 0.2 - 1) < 0.03


def test_flow_latent_density_matches_the_codes_better_than_the_prior():
    """With a small KL weight the encoder's codes are far from N(0, I); the flow fitted to them
    during training draws codes closer to them (sliced W1) than the prior does."""
    torch.manual_seed(0)
    showers = {k: torch.from_numpy(v) for k, v in simulate_showers(1000, seed=6).items()}
    model = CaloVAE(latent_dim=4, hidden=64, branch=32, sharing="lognormal", latent_density="flow",
                    kl_schedule="constant", kl_beta_max=0.01, flow_hidden=32)  # fmt: skip
    model.representation.fit([showers[k].flatten(1) for k in LAYER_KEYS], showers["energy"])
    loader = DataLoader(ArrayDictDataset(showers), batch_size=100, shuffle=True, collate_fn=_already_batched)
    Trainer(max_epochs=12, logger=False, enable_checkpointing=False, enable_progress_bar=False,
            enable_model_summary=False).fit(model, loader)  # fmt: skip
    model.eval()
    with torch.no_grad():
        cells = [showers[k].flatten(1) for k in LAYER_KEYS]
        energies = model.representation.encode_energies(cells, showers["energy"])
        shapes = [ShowerRepresentation.shape_features(ShowerRepresentation.sharing_fractions(x)) for x in cells]
        cond = model._condition(showers)
        mean, log_var = model.encoder(shapes, energies, cond)
        codes = mean + torch.exp(0.5 * log_var) * torch.randn(mean.shape, generator=torch.Generator().manual_seed(1))
        from_flow = model.latent_flow.sample(cond, torch.Generator().manual_seed(2))
        from_prior = torch.randn(codes.shape, generator=torch.Generator().manual_seed(2))
    d_flow, d_prior = _sliced_w1(codes, from_flow), _sliced_w1(codes, from_prior)
    floor = _sliced_w1(codes[:500], codes[500:])
    assert d_prior > 3 * floor  # the codes really are not N(0, I) here
    assert d_flow < 0.5 * d_prior


def test_flow_samples_are_clipped_to_the_codes_it_was_fitted_to():
    """Outside its training codes a flow extrapolates; a rare base draw can land at |z| ~ 1e12 and
    the decoder then returns NaN. Samples stay in the box of every code the flow saw."""
    from hepgen.nn.flows import ConditionalCouplingFlow

    torch.manual_seed(0)
    flow = ConditionalCouplingFlow(4, 1, transforms=2, hidden=8)
    with torch.no_grad():  # a badly extrapolating flow: large random weights
        for p in flow.parameters():
            p.normal_(0.0, 3.0)
    context = torch.randn(5000, 1)
    free = flow.sample(context, torch.Generator().manual_seed(1))
    flow.widen_support(torch.full((4,), -1.0), torch.full((4,), 0.5))
    flow.widen_support(torch.full((4,), -0.5), torch.full((4,), 2.0))  # the box only grows
    clipped = flow.sample(context, torch.Generator().manual_seed(1))
    assert (free.abs() > 2.0).any()  # without a box the draws do leave it
    assert (clipped >= -1.0).all() and (clipped <= 2.0).all()
    inside = ((free >= -1.0) & (free <= 2.0)).all(1)
    assert torch.equal(clipped[inside], free[inside])  # draws inside the box are untouched


def test_calochallenge_predict_writes_a_file_in_the_challenge_format(tmp_path):
    """CaloVAE on CaloChallenge ds1 photons: its layers come from the datamodule's binning, and
    ``predict`` writes a file that the challenge's layout reader accepts (voxel count, MeV,
    energies of the dataset), at the energies the datamodule asks for."""
    from datamodules import CaloChallengeDataModule
    from hepgen.io.calochallenge import read_calochallenge
    from hepgen.physics.calochallenge import load_binning
    from tests.conftest import ROOT

    config = ROOT / "experiments" / "calo_vae" / "calochallenge_ds1_photons.yaml"
    common = ["--run.root", str(tmp_path / "runs"), "--run.version", "p", "--trainer.logger", "false"]
    main(["fit", "-c", str(config), *common, "--data.init_args.data_dir", str(tmp_path / "data"),
          "--data.init_args.made_events", "400", "--trainer.max_epochs", "1",
          "--trainer.limit_train_batches", "2", "--trainer.limit_val_batches", "0",
          "--model.init_args.hidden", "32", "--model.init_args.branch", "16"])  # fmt: skip
    run = tmp_path / "runs" / "calo_vae" / "calochallenge_ds1_photons" / "p"
    main(["predict", "-c", str(run / "config.yaml"), *common, "--ckpt_path", "last",
          "--data.init_args.predict_events", "150"])  # fmt: skip
    binning = load_binning("1-photons")
    (written,) = (run / "predictions").glob("*.hdf5")
    data = read_calochallenge(written, binning)
    assert data["showers"].shape == (150, 368)
    expected = CaloChallengeDataModule(dataset="1-photons", predict_events=150).predict_energies() * 1000.0
    assert np.allclose(np.sort(data["incident_energies"].ravel()), np.sort(expected.ravel()), rtol=1e-6)
    assert set(np.unique(data["incident_energies"])) <= set(binning.discrete_energies_mev)
    assert np.isfinite(data["showers"]).all() and (data["showers"] >= 0).all()


def test_decoded_layer_energies_stay_finite_for_far_tail_draws():
    """A hadronic layer's log-fraction spreads over decades; a 10-sigma draw must give a finite
    energy (at most twice E_inc), not a float32 overflow that turns zero cells into NaN."""
    rep = ShowerRepresentation([4, 4])
    rep.y_mean.copy_(torch.tensor([-1.0, -10.0]))
    rep.y_std.copy_(torch.tensor([0.5, 6.0]))
    energy = torch.full((3, 1), 100.0)
    y = torch.tensor([[0.0, 0.0], [0.0, 10.0], [40.0, 40.0]])
    e = rep.decode_energies(y, energy)
    assert torch.isfinite(e).all()
    assert torch.allclose(e[0], 1000.0 * 100.0 * (torch.exp(rep.y_mean) - 1e-6))  # ordinary draws unchanged
    assert (e <= 2.0 * 1000.0 * 100.0 * (1 + 1e-6)).all() and e[2].min() > 1000.0 * 100.0


def test_lognormal_sharing_nll_is_the_gaussian_density_of_the_hit_cells_log_fractions():
    from hepgen.nn.shower import lognormal_sharing_nll

    gen = torch.Generator().manual_seed(0)
    cells = torch.rand(5, 6, generator=gen) * (torch.rand(5, 6, generator=gen) > 0.4)
    sharing = ShowerRepresentation.sharing_fractions(cells)
    mean, log_scale = torch.randn(5, 6, generator=gen) - 2, 0.3 * torch.randn(5, 6, generator=gen)
    hit = cells > 0
    expected = -(torch.distributions.Normal(mean, log_scale.exp()).log_prob(torch.log(sharing.clamp_min(1e-30))) * hit).sum(1)
    got = lognormal_sharing_nll(torch.cat([mean, log_scale], 1), sharing, hit)
    torch.testing.assert_close(got, expected)


def _fit_cell_log_scale(clamp) -> float:
    """The log-scale of two cells' log-fractions (spread about e^-1.3), fitted by Adam through
    ``clamp`` from a start past the ceiling e^2, where an early step can leave it."""
    from hepgen.nn.shower import LOG_SCALE_RANGE, lognormal_sharing_nll

    gen = torch.Generator().manual_seed(0)
    sharing = torch.softmax(math.exp(-1.0) * torch.randn(512, 2, generator=gen), 1)
    hit = torch.ones(512, 2, dtype=torch.bool)
    mean = torch.log(sharing).mean(0).expand(512, 2)  # known: only the scale is learnt
    raw = torch.tensor(3.0, requires_grad=True)
    optimizer = torch.optim.Adam([raw], lr=0.05)
    for _ in range(300):
        params = torch.cat([mean, clamp(raw.expand(512, 2), *LOG_SCALE_RANGE)], 1)
        optimizer.zero_grad()
        lognormal_sharing_nll(params, sharing, hit).mean().backward()
        optimizer.step()
    return float(raw.detach())


def test_a_cell_scale_past_its_ceiling_is_pulled_back_by_the_data():
    from hepgen.nn.shower import clamp_pulling_back

    # a plain clamp has no gradient past its bound: the scale stays at the ceiling for good
    assert _fit_cell_log_scale(torch.clamp) == 3.0
    # the new clamp lets the data pull it back to their spread, well inside the range
    log_scale = _fit_cell_log_scale(clamp_pulling_back)
    assert -2.0 < log_scale < -1.0


def test_clamp_pulling_back_is_a_clamp_whose_gradient_only_moves_values_towards_the_range():
    from hepgen.nn.shower import clamp_pulling_back

    x = torch.tensor([-9.0, -9.0, 0.5, 0.5, 4.0, 4.0], requires_grad=True)
    y = clamp_pulling_back(x, -7.0, 2.0)
    torch.testing.assert_close(y, x.clamp(-7.0, 2.0))
    upstream = torch.tensor([-1.0, 1.0, -1.0, 1.0, -1.0, 1.0])
    (y * upstream).sum().backward()
    # below the floor a step -grad moves x up only for grad < 0; above the ceiling down only for grad > 0
    torch.testing.assert_close(x.grad, torch.tensor([-1.0, 0.0, -1.0, 1.0, 0.0, 1.0]))


def _shift_integral_nll(log_density, sharing: torch.Tensor, hit: torch.Tensor) -> torch.Tensor:
    """-log of the integral over the shift c of prod_i p_i(log s_i + c) on a fine grid, (B,), float64;
    ``log_density(u)`` gives each cell's log-density (C, B, n) at u (C, B, n)."""
    c = torch.linspace(-60.0, 60.0, 240_001, dtype=torch.float64)[:, None, None]
    log_integrand = (log_density(torch.log(sharing.clamp_min(1e-300)) + c) * hit).sum(-1)
    return -(torch.logsumexp(log_integrand, 0) + math.log(float(c[1] - c[0])))


def _random_sharing(gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Fractions (5, 6), float64, of random cells: rows 0-2 with several hit cells, 3 with one, 4 none."""
    x = torch.rand(5, 6, generator=gen, dtype=torch.float64)
    x = x * (torch.rand(5, 6, generator=gen, dtype=torch.float64) > 0.3)
    x[0, :2] = 0.5
    x[3] = torch.tensor([0.0, 0.0, 2.0, 0.0, 0.0, 0.0])
    x[4] = 0.0
    assert ((x[:3] > 0).sum(1) > 1).all()
    return ShowerRepresentation.sharing_fractions(x), x > 0


def test_shift_marginal_sharing_nll_integrates_out_the_normalisation():
    """The fractions only show differences of the cells' log-energies: -log p is the Gaussian
    density integrated over the unseen shift (checked on a grid), 0 for one hit cell or none."""
    from hepgen.nn.shower import shift_marginal_sharing_nll

    gen = torch.Generator().manual_seed(0)
    sharing, hit = _random_sharing(gen)
    mean = torch.randn(5, 6, generator=gen, dtype=torch.float64) - 2
    log_scale = 0.3 * torch.randn(5, 6, generator=gen, dtype=torch.float64)
    gaussian = torch.distributions.Normal(mean, log_scale.exp())
    expected = _shift_integral_nll(gaussian.log_prob, sharing, hit)
    got = shift_marginal_sharing_nll(torch.cat([mean, log_scale], 1), sharing, hit)
    torch.testing.assert_close(got[:4], expected[:4], rtol=0, atol=1e-6)  # the grid integral of no cell is 120
    assert got[3] == 0 and got[4] == 0


def test_shift_marginal_mixture_nll_is_the_mixture_density_with_the_shift_integrated_out():
    """Laplace's method over the shift: within 0.3 nats of the integral on a grid for a shower-like
    mixture (exact for one Gaussian per cell; a mixture can make the integrand multimodal)."""
    from hepgen.nn.shower import shift_marginal_sharing_nll

    gen = torch.Generator().manual_seed(1)
    sharing, hit = _random_sharing(gen)
    batch, components, cells = 5, 2, 6
    # a soft component (log-energy about -5) and a bright one (about -1), as in a shower's cells
    logits, mean, log_scale = torch.randn(3, batch, components, cells, generator=gen, dtype=torch.float64)
    mean = 0.3 * mean + torch.tensor([-5.0, -1.0], dtype=torch.float64)[:, None]
    log_scale = 0.2 * log_scale + math.log(0.4)
    mixture = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(logits=logits.transpose(1, 2)),
        torch.distributions.Normal(mean.transpose(1, 2), log_scale.exp().transpose(1, 2)),
    )
    expected = _shift_integral_nll(mixture.log_prob, sharing, hit)
    params = torch.cat([logits.flatten(1), mean.flatten(1), log_scale.flatten(1)], 1)
    got = shift_marginal_sharing_nll(params, sharing, hit, components)
    assert (got[:4] - expected[:4]).abs().max() < 0.3
    assert got[3] == 0 and got[4] == 0


def test_shift_marginal_sharing_fitted_to_its_own_draws_recovers_the_cell_noise():
    """Maximum likelihood on fractions drawn by sample_cells gives back the per-cell scale (0.3
    in every cell). Scoring the log-fractions as if they were the log-energies does not: the
    normalisation's spread from shower to shower is counted as noise of the faint cells."""
    from hepgen.nn.shower import lognormal_sharing_nll, shift_marginal_sharing_nll

    n_events, cells = 4000, 12
    true = torch.cat([torch.linspace(-4.0, 0.0, cells), torch.full((cells,), math.log(0.3))])[None]
    hits = torch.ones(n_events, cells, dtype=torch.bool)
    sharing = sample_cells(torch.full((n_events, cells), math.inf), true.expand(n_events, -1), 2,
                           torch.Generator().manual_seed(0))  # fmt: skip

    def fit(nll) -> tuple[torch.Tensor, torch.Tensor]:
        params = torch.nn.Parameter(torch.zeros(1, 2 * cells))
        optimizer = torch.optim.Adam([params], lr=0.05)
        for _ in range(600):
            loss = nll(params.expand(n_events, -1), sharing, hits).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        mean, log_scale = params.detach()[0].chunk(2)
        return mean - mean[-1], log_scale.exp()

    mean, scale = fit(shift_marginal_sharing_nll)
    torch.testing.assert_close(scale, torch.full((cells,), 0.3), rtol=0.05, atol=0)
    torch.testing.assert_close(mean, true[0, :cells], rtol=0, atol=0.03)
    _, scale_fixed = fit(lognormal_sharing_nll)
    assert scale_fixed[-1] < 0.25 < 0.3 < scale_fixed[0]  # the brightest cell too steady, the faintest too noisy


def _energy_hits_correlation(layer: np.ndarray, energy_gev: np.ndarray) -> float:
    """Correlation of a layer's log energy and its number of hit cells at fixed E_inc: both
    residuals of a linear fit in log E_inc. ``layer`` (N, cells) MeV, ``energy_gev`` (N,)."""
    design = np.stack([np.ones_like(energy_gev), np.log(energy_gev)], 1)

    def residual(y: np.ndarray) -> np.ndarray:
        return y - design @ np.linalg.lstsq(design, y, rcond=None)[0]

    log_energy, hits = residual(np.log(layer.sum(1) + 1.0)), residual((layer > 0).sum(1).astype(float))
    return float(np.corrcoef(log_energy, hits)[0, 1])


def test_cells_drawn_given_the_layer_energies_follow_them():
    """In the last layer a shower with more energy there also lights more cells (at fixed E_inc,
    correlation 0.4 here). With a latent too small to carry that, a decoder that draws the cells
    given the layer energies drawn first keeps much of the correlation; one that draws energies
    and cells side by side from z loses it."""
    showers = {k: torch.from_numpy(v) for k, v in simulate_showers(3000, seed=11).items()}
    energy = showers["energy"].numpy().ravel()
    real = _energy_hits_correlation(showers["layer_2"].flatten(1).numpy(), energy)

    def generated_correlation(cells_given_energies: bool) -> float:
        torch.manual_seed(0)
        model = CaloVAE(latent_dim=1, hidden=64, branch=32, sharing="lognormal", kl_schedule="constant",
                        kl_beta_max=1.0, cells_given_energies=cells_given_energies)  # fmt: skip
        model.representation.fit([showers[k].flatten(1) for k in LAYER_KEYS], showers["energy"])
        loader = DataLoader(ArrayDictDataset(showers), batch_size=100, shuffle=True, collate_fn=_already_batched)
        Trainer(max_epochs=12, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                enable_model_summary=False).fit(model, loader)  # fmt: skip
        layer = model.eval().generate(showers["energy"], generator=torch.Generator().manual_seed(0))["layer_2"]
        return _energy_hits_correlation(layer.flatten(1).numpy(), energy)

    assert real > 0.3
    side_by_side, given = generated_correlation(False), generated_correlation(True)
    assert side_by_side < 0.1 < 0.25 * real < given


def test_lognormal_mixture_sharing_nll_is_the_mixture_density_of_the_hit_cells_log_fractions():
    from hepgen.nn.shower import lognormal_mixture_sharing_nll

    gen = torch.Generator().manual_seed(0)
    batch, cells, components = 5, 6, 3
    x = torch.rand(batch, cells, generator=gen) * (torch.rand(batch, cells, generator=gen) > 0.4)
    sharing, hit = ShowerRepresentation.sharing_fractions(x), x > 0
    logits, mean, log_scale = torch.randn(3, batch, components, cells, generator=gen)
    mixture = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(logits=logits.transpose(1, 2)),
        torch.distributions.Normal((mean - 2).transpose(1, 2), (0.3 * log_scale).exp().transpose(1, 2)),
    )
    expected = -(mixture.log_prob(torch.log(sharing.clamp_min(1e-30))) * hit).sum(1)
    params = torch.cat([logits.flatten(1), (mean - 2).flatten(1), (0.3 * log_scale).flatten(1)], 1)
    torch.testing.assert_close(lognormal_mixture_sharing_nll(params, sharing, hit), expected)


def test_lognormal_mixture_sharing_draws_each_component_with_its_weight():
    """Cell 0 is soft (log-fraction -6) with weight 0.7 or bright (-1) with weight 0.3, cell 1 fixed
    at -2: the renormalisation keeps u_0 - u_1, so its two values come in those proportions, each
    with the spread of its component."""
    n, components = 40_000, 2
    logits = torch.log(torch.tensor([[0.7, 0.5], [0.3, 0.5]]))  # (component, cell)
    mean = torch.tensor([[-6.0, -2.0], [-1.0, -2.0]])
    log_scale = torch.log(torch.tensor([[0.1, 0.001], [0.2, 0.001]]))
    params = torch.cat([logits.flatten(), mean.flatten(), log_scale.flatten()])[None].expand(n, -1)
    shares = sample_cells(torch.full((n, 2), math.inf), params, 3 * components, torch.Generator().manual_seed(0))
    diff = torch.log(shares[:, 0]) - torch.log(shares[:, 1])
    soft = diff < -1.5
    assert abs(float(soft.float().mean()) - 0.7) < 0.01
    assert abs(float(diff[soft].mean()) + 4.0) < 0.01 and abs(float(diff[~soft].mean()) - 1.0) < 0.01
    assert abs(float(diff[soft].std()) / 0.1 - 1) < 0.03 and abs(float(diff[~soft].std()) / 0.2 - 1) < 0.03


def test_shift_marginal_mixture_learns_soft_and_bright_cells():
    """Known truth: each of 30 cells holds soft photons (log-energy N(-5, 0.5), 90 %) or a shower
    particle (N(-1, 0.3), 10 %). Fitted by maximum likelihood with the shift integrated out, a
    mixture of two Gaussians per cell finds those weights and spreads, and its draws give the
    layer's E_ratio (the two brightest cells); one Gaussian per cell cannot."""
    from hepgen.metrics import ks_statistic
    from hepgen.nn.shower import shift_marginal_sharing_nll
    from hepgen.physics.calo_observables import brightest_cell_ratio

    gen = torch.Generator().manual_seed(0)
    n_events, cells = 2000, 30
    bright = torch.rand(n_events, cells, generator=gen) < 0.1
    log_energy = torch.where(bright, -1.0 + 0.3 * torch.randn(n_events, cells, generator=gen),
                             -5.0 + 0.5 * torch.randn(n_events, cells, generator=gen))  # fmt: skip
    sharing, hits = torch.softmax(log_energy, 1), torch.ones(n_events, cells, dtype=torch.bool)
    real_ratio = brightest_cell_ratio(sharing[:, None].numpy())

    def fit(components: int) -> torch.Tensor:
        torch.manual_seed(0)
        per_cell = 2 if components == 1 else 3 * components
        params = torch.nn.Parameter(0.1 * torch.randn(1, per_cell * cells))
        optimizer = torch.optim.Adam([params], lr=0.1)
        for _ in range(250):
            loss = shift_marginal_sharing_nll(params.expand(n_events, -1), sharing, hits, components).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        return params.detach().expand(n_events, -1)

    def ratio_ks(params: torch.Tensor) -> float:
        always = torch.full((n_events, cells), math.inf)
        drawn = sample_cells(always, params, params.shape[1] // cells, torch.Generator().manual_seed(1))
        return ks_statistic(real_ratio, brightest_cell_ratio(drawn[:, None].numpy()))

    mixture = fit(2)
    logits, mean, log_scale = mixture[0].unflatten(0, (3, 2, cells))
    order = mean.argsort(0)  # soft component first in every cell
    weight = torch.softmax(logits, 0).gather(0, order)
    scale = log_scale.exp().gather(0, order)
    torch.testing.assert_close(weight.mean(1), torch.tensor([0.9, 0.1]), rtol=0, atol=0.02)
    torch.testing.assert_close(scale.mean(1), torch.tensor([0.5, 0.3]), rtol=0.1, atol=0)
    assert ratio_ks(mixture) < 0.06 < 0.15 < ratio_ks(fit(1))


def test_sharing_components_per_layer_draw_showers_that_keep_each_layer_energy():
    """A mixture in layers 0 and 2, one Gaussian in layer 1: each layer's cells still add up to the
    layer energy drawn for it (the same draws with the cells zeroed give that energy)."""
    model = CaloVAE(latent_dim=4, hidden=32, branch=16, sharing="lognormal", sharing_components=[2, 1, 2])
    assert model.share_params == [6, 2, 6]
    showers = simulate_showers(300, seed=4)
    model.representation.fit([torch.from_numpy(showers[k]).flatten(1) for k in LAYER_KEYS],
                             torch.from_numpy(showers["energy"]))  # fmt: skip
    energy = torch.full((300, 1), 50.0)
    out = model.generate(energy, generator=torch.Generator().manual_seed(0))
    assert all((v >= 0).all() and torch.isfinite(v).all() for v in out.values())
    # the layer energies are the first draws after z: replay them
    gen = torch.Generator().manual_seed(0)
    z = torch.randn((300, 4), generator=gen)  # latent_density: normal
    _, e_mean, e_log_var = model.decoder.energies(z, model._condition({"energy": energy}))
    y = e_mean + torch.exp(0.5 * e_log_var) * torch.randn(e_mean.shape, generator=gen)
    expected = model.representation.decode_energies(y, energy)
    hit_any = torch.stack([out[k].flatten(1).sum(1) > 0 for k in LAYER_KEYS], 1)
    got = torch.stack([out[k].flatten(1).sum(1) for k in LAYER_KEYS], 1)
    torch.testing.assert_close(got[hit_any], expected[hit_any], rtol=1e-5, atol=1e-3)


def test_bfloat16_generation_draws_the_float32_showers_up_to_rounding():
    """generation_dtype: bfloat16 runs the decoder's trunk and layer branches in bfloat16 and changes
    the showers only by its rounding: with the same random numbers, layer energies within 0.5 % on
    this model (the trunk's rounding; the energy head stays float32), the same hit cells but where a uniform falls within rounding of its
    hit probability, and cell energies within a few per cent; not the float32 showers exactly (the
    option is in effect)."""
    showers = simulate_showers(300, seed=4)
    models = {}
    for dtype in ("float32", "bfloat16"):
        torch.manual_seed(0)
        model = CaloVAE(latent_dim=4, hidden=32, branch=16, sharing="lognormal", sharing_components=[2, 1, 2],
                        generation_dtype=dtype)  # fmt: skip
        model.representation.fit([torch.from_numpy(showers[k]).flatten(1) for k in LAYER_KEYS],
                                 torch.from_numpy(showers["energy"]))  # fmt: skip
        with torch.no_grad():  # outputs of order 1, as a trained decoder's, not of order 0.01
            for m in model.decoder.branches.modules():
                if isinstance(m, torch.nn.Linear):
                    m.weight.mul_(4.0)
        models[dtype] = model.eval()
    energy = torch.full((500, 1), 50.0)
    out = {d: m.generate(energy, generator=torch.Generator().manual_seed(0)) for d, m in models.items()}
    for key in LAYER_KEYS:
        a, b = out["float32"][key].flatten(1), out["bfloat16"][key].flatten(1)
        both = (a > 0) & (b > 0)
        assert float(((a > 0) != (b > 0)).float().mean()) < 0.01
        full = both.sum(1) == (a > 0).sum(1)  # rows with the same hit cells keep the same layer energy
        torch.testing.assert_close(a[full].sum(1), b[full].sum(1), rtol=5e-3, atol=1e-3)
        # the trunk runs in bfloat16 too: the layer energies move by more than float32 rounding
        layer_shift = ((b[full].sum(1) - a[full].sum(1)).abs() / a[full].sum(1).clamp_min(1e-30)).max()
        assert float(layer_shift) > 1e-4
        relative = ((b - a).abs() / a.clamp_min(1e-30))[both]
        assert float(relative.median()) < 0.04 and 0 < float(relative.max())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"sharing": "lognormal", "sharing_components": [2, 1]}, "one per layer"),
        ({"sharing": "lognormal", "sharing_components": 0}, "at least 1"),
        ({"sharing": "softmax", "sharing_components": 2}, "needs sharing: lognormal"),
        ({"sharing": "lognormal", "sharing_shift": "exact"}, "choose 'fixed' or 'marginal'"),
        ({"sharing": "softmax", "sharing_shift": "marginal"}, "marginal needs sharing: lognormal"),
        ({"generation_dtype": "float16"}, "choose 'float32' or 'bfloat16'"),
        ({"flow_refit_epochs": 2}, "for latent_density: flow"),
    ],
)
def test_bad_sharing_options_are_named(kwargs, message):
    from hepgen.errors import ConfigValueError

    with pytest.raises(ConfigValueError, match=message):
        CaloVAE(latent_dim=4, hidden=32, branch=16, **kwargs)


@pytest.mark.parametrize("shift", ["fixed", "marginal"])
def test_mixture_losses_train_on_showers(shift):
    """A few steps on made showers with a mixture in layers 0 and 2 lower the sharing term, with
    finite gradients, for either way of scoring the fractions."""
    torch.manual_seed(0)
    model = CaloVAE(latent_dim=4, hidden=32, branch=16, sharing="lognormal", sharing_components=[2, 1, 2],
                    sharing_shift=shift, kl_schedule="constant", kl_beta_max=0.01)  # fmt: skip
    showers = {k: torch.from_numpy(v) for k, v in simulate_showers(400, seed=4).items()}
    model.representation.fit([showers[k].flatten(1) for k in LAYER_KEYS], showers["energy"])
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    first = float(model.losses(showers, torch.Generator().manual_seed(1))["nll_sharing"])
    for _ in range(30):
        terms = model.losses(showers, generator)
        optimizer.zero_grad()
        (terms["recon"] + 0.01 * terms["kl_floored"]).backward()
        assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
        optimizer.step()
    last = float(model.losses(showers, torch.Generator().manual_seed(1))["nll_sharing"])
    assert math.isfinite(last) and last < first - 100


def test_layer_centroids_are_the_energy_weighted_mean_cell_of_each_axis():
    from hepgen.nn.shower import LayerCentroids

    grid = torch.zeros(3, 3, 4)
    grid[0, 2, 1] = 5.0  # one hit cell: its own row and column
    grid[1, 0, 0], grid[1, 2, 3] = 1.0, 3.0  # rows 0 and 2 weighted 1:3, columns 0 and 3
    centres = LayerCentroids([(3, 4)]).centres([grid.flatten(1)])
    # an empty layer (row 2) sits at the middle of its grid
    torch.testing.assert_close(centres, torch.tensor([[2.0, 1.0], [1.5, 2.25], [1.0, 1.5]]))


def test_cells_drawn_given_a_centre_put_the_core_there():
    """A toy layer of 1 x 8 cells whose core (10 units, with 2 in each neighbour) sits in a random
    column 1-6. With the centres drawn first, the decoder puts the core where the centre it is given
    says, whatever z carries: centres of columns 2 and 5 give showers centred about 3 columns apart."""
    gen = torch.Generator().manual_seed(0)
    n, rows = 2000, torch.arange(2000)
    column = torch.randint(1, 7, (n,), generator=gen)
    layer = torch.zeros(n, 1, 8)
    for offset, energy in ((0, 10.0), (-1, 2.0), (1, 2.0)):
        layer[rows, 0, column + offset] = energy * (1 + 0.1 * torch.randn(n, generator=gen)).abs()
    showers = {"energy": torch.full((n, 1), 0.02), "layer_0": layer}
    torch.manual_seed(0)
    model = CaloVAE(latent_dim=1, hidden=32, branch=16, sharing="lognormal", kl_schedule="constant",
                    kl_beta_max=1.0, cells_given_energies=True, cells_given_centroids=["layer_0"],
                    layer_shapes={"layer_0": [1, 8]}, optimizer=partial(torch.optim.Adam, lr=0.01))  # fmt: skip
    model.representation.fit([layer.flatten(1)], showers["energy"])
    model.centroids.fit([layer.flatten(1)])
    loader = DataLoader(ArrayDictDataset(showers), batch_size=100, shuffle=True, collate_fn=_already_batched)
    Trainer(max_epochs=10, logger=False, enable_checkpointing=False, enable_progress_bar=False,
            enable_model_summary=False).fit(model, loader)  # fmt: skip
    model.eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        energy = torch.full((1000, 1), 0.02)
        z, cond = torch.randn(1000, 1, generator=generator), model._condition({"energy": energy})
        h, summaries, _ = model.decoder.energies(z, cond)
        centres = []
        for given_column in (2.0, 5.0):
            given = summaries.clone()
            given[:, -1] = (given_column - model.centroids.c_mean[1]) / model.centroids.c_std[1]  # standardised
            hit_logits, params = model.decoder.cells(h, given)
            sharing = sample_cells(hit_logits[0], params[0], model.share_params[0], generator)
            centres.append(float(model.centroids.centres([sharing])[:, 1].mean()))
    assert 2.2 < centres[1] - centres[0] < 3.5


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"cells_given_energies": True, "cells_given_centroids": ["layer_9"]}, "'layer_9' is not a layer"),
        ({"cells_given_energies": True, "cells_given_centroids": ["strip"], "layer_shapes": {"strip": [10]}},
         "a centre needs a grid"),  # fmt: skip
        ({"cells_given_centroids": ["layer_1"]}, "needs cells_given_energies: true"),
    ],
)
def test_bad_centroid_options_are_named(kwargs, message):
    from hepgen.errors import ConfigValueError

    with pytest.raises(ConfigValueError, match=message):
        CaloVAE(latent_dim=4, hidden=32, branch=16, sharing="lognormal", **kwargs)


def test_checkpoints_are_chosen_by_the_loss_at_the_final_kl_weight():
    """With a final KL weight of 0.01 the true ELBO (beta = 1) is not what training minimises: the
    monitored value is the reconstruction plus 0.01 times the floored KL (free bits included)."""
    torch.manual_seed(0)
    model = CaloVAE(latent_dim=4, hidden=32, branch=16, sharing="lognormal", kl_beta_max=0.01, free_bits=0.05)
    showers = {k: torch.from_numpy(v) for k, v in simulate_showers(200, seed=5).items()}
    model.representation.fit([showers[k].flatten(1) for k in LAYER_KEYS], showers["energy"])
    terms = model.losses(showers, torch.Generator().manual_seed(0))
    torch.testing.assert_close(terms["objective"], terms["recon"] + 0.01 * terms["kl_floored"])
    assert float(terms["objective"].detach()) < float(terms["neg_elbo"].detach())
    assert CaloVAE.monitor == "val/objective"


def test_one_uniform_per_cell_draws_hit_component_and_gaussian_independently():
    """sample_cells draws hit, mixture component and Gaussian from one uniform per cell: cell 0 is
    hit with probability 0.2, and when hit its log-fraction relative to cell 1 (always hit, fixed)
    still has its components' weights (0.7 / 0.3), means and spreads, as if drawn apart."""
    n = 100_000
    logits = torch.log(torch.tensor([[0.7, 0.5], [0.3, 0.5]]))  # (component, cell)
    mean = torch.tensor([[-6.0, -2.0], [-1.0, -2.0]])
    log_scale = torch.log(torch.tensor([[0.5, 0.001], [0.2, 0.001]]))
    params = torch.cat([logits.flatten(), mean.flatten(), log_scale.flatten()])[None].expand(n, -1)
    hit_logits = torch.tensor([math.log(0.2 / 0.8), math.inf])[None].expand(n, -1)
    shares = sample_cells(hit_logits, params, 6, torch.Generator().manual_seed(0))
    hit = shares[:, 0] > 0
    assert abs(float(hit.float().mean()) - 0.2) < 0.005
    assert torch.equal(shares[~hit, 1], torch.ones(int((~hit).sum())))  # a lone hit cell holds the layer
    diff = torch.log(shares[hit, 0]) - torch.log(shares[hit, 1])
    soft = diff < -1.5
    assert abs(float(soft.float().mean()) - 0.7) < 0.01
    for part, centre, spread in ((diff[soft], -4.0, 0.5), (diff[~soft], 1.0, 0.2)):
        assert abs(float(part.mean()) - centre) < 0.01
        assert abs(float(part.std()) / spread - 1) < 0.03
        # the Gaussian shape, not only its moments: a quarter of the draws beyond 0.674 sigma each side
        z = (part - centre) / spread
        assert abs(float((z > 0.6745).float().mean()) - 0.25) < 0.01
        assert abs(float((z < -0.6745).float().mean()) - 0.25) < 0.01



def test_folding_the_two_weight_logits_draws_the_same_cells_from_fewer_outputs():
    """fold_two_component_logits (the compiled generator's copy) replaces a two-Gaussian layer's two
    weight logits by their difference: its branch has one output fewer per cell and, from the same
    uniforms, draws the same cells (same hits, fractions to rounding), without drawing from the
    global random stream; a one-Gaussian layer is left as it is."""
    import copy

    from hepgen.nn.shower import LayerwiseDecoder, cells_from_uniform

    torch.manual_seed(0)
    decoder = LayerwiseDecoder([6, 4], cond_dim=1, latent_dim=3, hidden=16, branch=8, share_params=[6, 2])
    with torch.no_grad():  # weight logits far enough apart that a wrong fold picks other components
        decoder.branches[0][-1].weight[6:18].mul_(20.0)
    folded = copy.deepcopy(decoder)
    random_state = torch.random.get_rng_state()
    folded.fold_two_component_logits()
    # no random numbers used: predict draws its showers from the global stream after folding
    assert torch.equal(torch.random.get_rng_state(), random_state)
    assert folded.share_params == [5, 2] and decoder.share_params == [6, 2]
    assert folded.branches[0][-1].out_features == decoder.branches[0][-1].out_features - 6
    assert folded.branches[1][-1] is not decoder.branches[1][-1]
    torch.testing.assert_close(folded.branches[1][-1].weight, decoder.branches[1][-1].weight)
    h = torch.randn(5000, 16)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        hits, params = decoder.cells(h)
        hits_folded, params_folded = folded.cells(h)
    for i in range(2):
        u = torch.rand(hits[i].shape, generator=generator)
        expected = cells_from_uniform(hits[i], params[i], decoder.share_params[i], u)
        got = cells_from_uniform(hits_folded[i], params_folded[i], folded.share_params[i], u)
        assert torch.equal(got > 0, expected > 0)
        torch.testing.assert_close(got, expected, rtol=1e-3, atol=1e-6)  # a Gaussian tail draw magnifies rounding


def test_cells_from_extreme_logits_and_a_zero_uniform_are_finite():
    """Cells never or always hit, hit and weight logits far out, and uniforms of exactly 0 (torch's
    float32 uniforms include it): the fractions are finite, sum to 1 over the hit cells, and a cell
    whose weight logits differ by 200 takes its certain component."""
    from hepgen.nn.shower import cells_from_uniform

    hit_logits = torch.tensor([[math.inf, -math.inf, -100.0, 30.0, math.inf]])
    d = torch.tensor([[200.0, -200.0, 100.0, -100.0, -200.0]])  # component 1 certain, 0 certain, ...
    means = torch.tensor([[0.0] * 5, [-3.0] * 5])  # component 0 at log-fraction 0, component 1 at -3
    log_scales = torch.full((2, 5), -7.0)
    for share_params, logits in ((5, d), (6, torch.cat([torch.zeros_like(d), d], 1))):
        params = torch.cat([logits, means.flatten()[None], log_scales.flatten()[None]], 1)
        for u in (torch.zeros(1, 5), torch.tensor([[0.5, 0.0, 0.0, 0.999, 0.3]])):
            shares = cells_from_uniform(hit_logits, params, share_params, u)
            assert torch.isfinite(shares).all(), (share_params, u)
            assert torch.equal(shares > 0, torch.tensor([[True, False, False, True, True]]))
            torch.testing.assert_close(shares.sum(1), torch.ones(1))
            if u[0, 0] > 0:  # (u = 0 sits in component 0's interval, of width 2e-35)
                # cell 0 (component 1, at -3) against cell 4 (component 0, at 0)
                log_ratio = torch.log(shares[0, 0] / shares[0, 4])
                torch.testing.assert_close(log_ratio, torch.tensor(-3.0), atol=0.01, rtol=0)


def test_brightest_cell_drawn_first_sits_where_its_location_says_and_holds_its_share():
    """sample_cells_brightest_first: the brightest cell sits where the location probabilities say
    (0.5 / 0.3 / 0.15 over three of six cells, empty 0.05), holds the share given to it (0.7 in
    half the showers, 0.9 in the others) unless it is alone, the other cells are hit at their own
    rate (0.5) and the layer sums to 1."""
    from hepgen.nn.shower import sample_cells_brightest_first

    n, cells = 100_000, 6
    location = torch.tensor([0.5, 0.3, 0.15, 1e-9, 1e-9, 1e-9, 0.05]).log()[None].expand(n, -1)
    share = torch.tensor([0.7, 0.9]).repeat(n // 2)[:, None]
    params = torch.cat([torch.zeros(cells), torch.full((cells,), math.log(0.1))])[None].expand(n, -1)
    shares = sample_cells_brightest_first(torch.zeros(n, cells), params, 2, location, share,
                                          torch.Generator().manual_seed(0))  # fmt: skip
    empty = shares.sum(1) == 0
    assert abs(float(empty.float().mean()) - 0.05) < 0.003
    torch.testing.assert_close(shares[~empty].sum(1), torch.ones(int((~empty).sum())))
    top, where = shares[~empty].max(1)
    frequency = torch.bincount(where, minlength=cells).float() / len(where)
    torch.testing.assert_close(frequency, torch.tensor([0.5, 0.3, 0.15, 0, 0, 0]) / 0.95, rtol=0, atol=0.005)
    others = (shares[~empty] > 0).sum(1) - 1
    assert abs(float(others.float().mean()) - 2.5) < 0.02  # five other cells, each hit half the time
    alone = others == 0
    assert torch.equal(top[alone], torch.ones(int(alone.sum())))
    torch.testing.assert_close(top[~alone], share[~empty][~alone, 0])


def test_brightest_cell_nll_by_hand():
    """-log p of where the brightest cells are: the location's cross-entropy (the class "none" for
    an empty layer), with two ranks the next one's among the other cells, and the other cells'
    fractions of what they leave, to be scored as any layer's. The hit cross-entropy leaves out the
    cells drawn first and every cell of a layer that ran out of cells (the class "none" says it)."""
    from hepgen.nn.shower import brightest_cell_nll

    location = torch.tensor([1.0, 0.5, -1.0, 0.0, -2.0])  # 4 cells, then "none"
    sharing = torch.tensor([[0.2, 0.7, 0.1, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
    hit = sharing > 0
    nll, rest, rest_hit, bce_weight = brightest_cell_nll(location[None].expand(3, -1), sharing, hit)
    log_p = torch.log_softmax(location, 0)
    torch.testing.assert_close(nll, -log_p[[1, 2, 4]])
    torch.testing.assert_close(rest, torch.tensor([[2 / 3, 0.0, 1 / 3, 0.0], [0.0] * 4, [0.0] * 4]))
    assert rest_hit.tolist() == [[True, False, True, False], [False] * 4, [False] * 4]
    assert bce_weight.tolist() == [[1, 0, 1, 1], [1, 1, 0, 1], [0, 0, 0, 0]]
    # two ranks: cell 1, then cell 0 among cells 0, 2, 3 and "none"; a lone cell, then "none"
    nll, rest, rest_hit, bce_weight = brightest_cell_nll(location[None].expand(3, -1), sharing, hit, ranks=2)
    after_1, after_2 = torch.log_softmax(location[[0, 2, 3, 4]], 0), torch.log_softmax(location[[0, 1, 3, 4]], 0)
    torch.testing.assert_close(nll, torch.stack([-log_p[1] - after_1[0], -log_p[2] - after_2[3], -log_p[4]]))
    torch.testing.assert_close(rest, torch.tensor([[0.0, 0.0, 1.0, 0.0], [0.0] * 4, [0.0] * 4]))
    assert bce_weight.tolist() == [[0, 0, 1, 1], [0, 0, 0, 0], [0, 0, 0, 0]]


def test_brightest_shares_round_trip_and_draws_stay_a_share():
    """BrightestShares: the brightest cell's share of each chosen layer (0 for an empty layer) and,
    with two ranks, the next one's share of what it leaves, standardised with statistics fitted on
    training data and decoded back; a far draw of the head stays a share in (0, 1]."""
    from hepgen.nn.shower import BrightestShares

    layers = [torch.tensor([[1.0, 3.0, 0.0], [0.0, 0.0, 0.0], [2.0, 1.0, 4.0]]), torch.tensor([[5.0], [1.0], [0.0]])]
    torch.testing.assert_close(BrightestShares(2, ranks=2).shares(layers),
                               torch.tensor([[0.75, 1.0, 1.0, 0.0], [0.0, 0.0, 1.0, 0.0], [4 / 7, 2 / 3, 0.0, 0.0]]))
    summary = BrightestShares(2)
    expected = torch.tensor([[0.75, 1.0], [0.0, 1.0], [4 / 7, 0.0]])
    torch.testing.assert_close(summary.shares(layers), expected)
    summary.fit(layers)
    torch.testing.assert_close(summary(layers).mean(0), torch.zeros(2), rtol=0, atol=1e-6)
    torch.testing.assert_close(summary.decode(summary(layers)), expected.clamp_min(1e-3))
    drawn = summary.decode(torch.tensor([[-50.0, 50.0]]))
    assert 0 < float(drawn.min()) and float(drawn.max()) <= 1


def test_summary_mixture_of_each_share_sees_only_the_shares_before_it():
    """The brightest cells' shares are drawn in turn: summary j's mixture depends on the trunk's
    features and on summaries 0 .. j-1, never on j or later (teacher forcing in training is then
    the same distribution as drawing one after the other)."""
    from hepgen.nn.shower import LayerwiseDecoder

    torch.manual_seed(0)
    decoder = LayerwiseDecoder([4, 3], cond_dim=1, latent_dim=2, hidden=8, branch=4, share_params=7,
                               given_energies=True, extra_summaries=3, mixture_summaries=3)  # fmt: skip
    h, previous = torch.randn(5, 8), torch.randn(5, 3)
    before = torch.stack(decoder.summary_mixture(h, previous))  # (3, B, K, m)
    for changed, first_affected in ((2, 3), (1, 2), (0, 1)):
        moved = previous.clone()
        moved[:, changed] += 1.0
        after = torch.stack(decoder.summary_mixture(h, moved))
        torch.testing.assert_close(after[..., :first_affected], before[..., :first_affected], rtol=0, atol=0)
        if first_affected < 3:
            assert (after[..., first_affected:] - before[..., first_affected:]).abs().amax() > 1e-4


def test_brightest_cell_layers_options_are_checked():
    with pytest.raises(ValueError, match="brightest_cell_layers: 'layer_3' is not a layer"):
        CaloVAE(sharing="lognormal", cells_given_energies=True, brightest_cell_layers=["layer_3"])
    with pytest.raises(ValueError, match="brightest_cell_layers needs sharing: lognormal"):
        CaloVAE(cells_given_energies=True, brightest_cell_layers=["layer_2"])
    with pytest.raises(ValueError, match="brightest_cell_layers needs cells_given_energies: true"):
        CaloVAE(sharing="lognormal", brightest_cell_layers=["layer_2"])
    with pytest.raises(ValueError, match="brightest_cells=0: draw at least 1"):
        CaloVAE(sharing="lognormal", cells_given_energies=True, brightest_cell_layers=["layer_2"], brightest_cells=0)


def test_brightest_cell_first_gives_the_layer_one_particle_brought():
    """Known truth: one shower particle (log-energy N(0, 0.3)) lands in one of four cells, a coin
    toss, and soft photons (N(-4, 0.5)) fill all eight. Fitted by maximum likelihood, cells drawn
    independently (a mixture of two Gaussians each) light up zero, two or three bright cells as
    often as one, and the two brightest cells' E_ratio is far off; the brightest cell drawn first
    (holding the share of another shower's brightest cell: the summary head's draw when it is
    right) and the others for the rest give it back."""
    from hepgen.metrics import ks_statistic
    from hepgen.nn.shower import brightest_cell_nll, sample_cells_brightest_first, shift_marginal_sharing_nll
    from hepgen.physics.calo_observables import brightest_cell_ratio

    gen = torch.Generator().manual_seed(0)
    n_events, cells = 3000, 8
    particle = torch.randint(0, 4, (n_events, 1), generator=gen)
    log_energy = (-4.0 + 0.5 * torch.randn(n_events, cells, generator=gen)).scatter(
        1, particle, 0.3 * torch.randn(n_events, 1, generator=gen))  # fmt: skip
    sharing, hits = torch.softmax(log_energy, 1), torch.ones(n_events, cells, dtype=torch.bool)
    real_ratio = brightest_cell_ratio(sharing[:, None].numpy())
    always = torch.full((n_events, cells), math.inf)

    def fit(nll, size: int) -> torch.Tensor:
        torch.manual_seed(0)
        params = torch.nn.Parameter(0.1 * torch.randn(1, size))
        optimizer = torch.optim.Adam([params], lr=0.1)
        for _ in range(250):
            loss = nll(params.expand(n_events, -1)).mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        return params.detach().expand(n_events, -1)

    independent = fit(lambda p: shift_marginal_sharing_nll(p, sharing, hits, 2), 6 * cells)
    drawn = sample_cells(always, independent, 6, torch.Generator().manual_seed(1))
    ks_independent = ks_statistic(real_ratio, brightest_cell_ratio(drawn[:, None].numpy()))

    def brightest_first_nll(p: torch.Tensor) -> torch.Tensor:
        rest_params, location = p.split([2 * cells, cells + 1], dim=1)
        nll, rest, rest_hit, _ = brightest_cell_nll(location, sharing, hits)
        return nll + shift_marginal_sharing_nll(rest_params, rest, rest_hit, 1)

    rest_params, location = fit(brightest_first_nll, 3 * cells + 1).split([2 * cells, cells + 1], dim=1)
    top = sharing.max(1).values
    share = top[torch.randperm(n_events, generator=gen)][:, None]  # the shares of other showers
    drawn = sample_cells_brightest_first(always, rest_params, 2, location, share, torch.Generator().manual_seed(1))
    ks_first = ks_statistic(real_ratio, brightest_cell_ratio(drawn[:, None].numpy()))
    assert ks_first < 0.05 < 0.2 < ks_independent


def test_summary_mixture_density_and_draws():
    """gaussian_mixture_nll is the mixture's density (against torch.distributions), and
    sample_gaussian_mixture draws each component with its weight, mean and spread."""
    from hepgen.nn.shower import gaussian_mixture_nll, sample_gaussian_mixture

    gen = torch.Generator().manual_seed(0)
    logits, mean, log_scale = torch.randn(3, 4, 3, 2, generator=gen) * torch.tensor([1.0, 1.0, 0.5]).view(3, 1, 1, 1)
    y = torch.randn(4, 2, generator=gen)
    mixture = torch.distributions.MixtureSameFamily(
        torch.distributions.Categorical(logits=logits.transpose(1, 2)),
        torch.distributions.Normal(mean.transpose(1, 2), log_scale.exp().transpose(1, 2)),
    )
    torch.testing.assert_close(gaussian_mixture_nll(logits, mean, log_scale, y), -mixture.log_prob(y))
    n = 100_000
    weights = torch.tensor([0.5, 0.3, 0.2])
    params = [weights.log(), torch.tensor([-5.0, 0.0, 5.0]), torch.tensor([0.5, 0.2, 0.5]).log()]
    drawn = sample_gaussian_mixture(*(p.view(1, 3, 1).expand(n, 3, 1) for p in params), gen)[:, 0]
    for part, weight, centre, spread in zip((drawn < -2.5, drawn.abs() < 2.5, drawn > 2.5), weights,
                                            (-5.0, 0.0, 5.0), (0.5, 0.2, 0.5)):  # fmt: skip
        assert abs(float(part.float().mean()) - weight) < 0.005
        assert abs(float(drawn[part].mean()) - centre) < 0.02
        assert abs(float(drawn[part].std()) / spread - 1) < 0.03


def test_brightest_cell_layers_generate_the_drawn_layer_energy_and_brightest_share():
    """With the two brightest cells of layers 1 and 2 drawn first, generate replays: each layer holds
    the energy drawn for it, one of its cells the share drawn for the brightest and another the
    second's share of the rest (where a third cell is hit too); layer 0, drawn cell by cell, keeps
    its energy."""
    from hepgen.nn.shower import sample_gaussian_mixture

    torch.manual_seed(0)
    model = CaloVAE(latent_dim=4, hidden=32, branch=16, sharing="lognormal", cells_given_energies=True,
                    brightest_cell_layers=["layer_1", "layer_2"], brightest_cells=2)  # fmt: skip
    showers = {k: torch.from_numpy(v) for k, v in simulate_showers(300, seed=4).items()}
    model.representation.fit([showers[k].flatten(1) for k in LAYER_KEYS], showers["energy"])
    model.brightest_shares.fit([showers[k].flatten(1) for k in ("layer_1", "layer_2")])
    energy = torch.full((300, 1), 50.0)
    out = model.generate(energy, generator=torch.Generator().manual_seed(0))
    gen = torch.Generator().manual_seed(0)
    z = torch.randn((300, 4), generator=gen)
    with torch.no_grad():
        h, e_mean, e_log_var = model.decoder.energies(z, model._condition({"energy": energy}))
        y = e_mean + torch.exp(0.5 * e_log_var) * torch.randn(e_mean.shape, generator=gen)
        drawn = torch.zeros(300, 4)  # the four shares in turn, each given the ones before it
        for j in range(4):
            logits, means, log_scales = (x[..., j : j + 1] for x in model.decoder.summary_mixture(h, drawn))
            drawn[:, j : j + 1] = sample_gaussian_mixture(logits, means, log_scales, gen)
        shares = model.brightest_shares.decode(drawn)
    expected = model.representation.decode_energies(y, energy)
    for i, key in enumerate(LAYER_KEYS):
        cells = out[key].flatten(1)
        hit_any = cells.sum(1) > 0
        torch.testing.assert_close(cells.sum(1)[hit_any], expected[hit_any, i], rtol=1e-5, atol=1e-3)
        if key != "layer_0":
            several = (cells > 0).sum(1) > 2
            assert several.sum() > 100
            # (untrained, another cell may hold more than the drawn ones: nothing forces them below)
            fractions = cells[several] / cells[several].sum(1, keepdim=True)
            first, second = shares[several, 2 * i - 2 : 2 * i].unbind(1)
            for share in (first, second * (1 - first)):
                assert float((fractions - share[:, None]).abs().min(1).values.max()) < 1e-6


def test_compiled_generator_makes_the_showers_of_generate_and_is_a_snapshot(monkeypatch):
    """CompiledShowerGenerator draws the random numbers generate draws, in the same chunks, and makes
    the same showers up to rounding (the same hit cells, energies within 0.1 %), for a model with
    every generation path of the quickstart (flow with a support box, centres, two Gaussians per
    cell, two brightest cells drawn first, two particles); it holds a copy of the model, so changing
    the model afterwards changes generate but not it."""
    import hepgen.models.calo_vae as calo_vae
    from hepgen.models import CompiledShowerGenerator

    model = full_calo_vae()
    monkeypatch.setattr(calo_vae, "CPU_GENERATION_CHUNK", 64)
    compiled = CompiledShowerGenerator(model, chunk=64)
    assert model.decoder.share_params == [6, 6, 6] and compiled.model.decoder.share_params == [5, 5, 5]
    energy = torch.linspace(1.0, 100.0, 150)[:, None]
    particle = torch.arange(150) % 2
    expected = model.generate(energy, particle, torch.Generator().manual_seed(0))
    got = compiled(energy, particle, torch.Generator().manual_seed(0))
    _assert_same_showers_up_to_rounding(got, expected)
    assert float(expected["layer_2"].flatten(1).sum(1).max()) > 0  # something was drawn
    # any other batch size reuses the compiled code
    graphs = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    seven = compiled(energy[:7], particle[:7], torch.Generator().manual_seed(1))
    expected_seven = model.generate(energy[:7], particle[:7], torch.Generator().manual_seed(1))
    _assert_same_showers_up_to_rounding(seven, expected_seven)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == graphs
    with torch.no_grad():
        for parameter in model.decoder.parameters():
            parameter.add_(0.1)
    again = compiled(energy, particle, torch.Generator().manual_seed(0))
    assert all(torch.equal(again[k], got[k]) for k in LAYER_KEYS)
    changed = model.generate(energy, particle, torch.Generator().manual_seed(0))
    assert not torch.equal(changed["layer_0"], expected["layer_0"])
