"""The Stratified CycleGAN's losses, penalty, averages and training, on tiny networks."""

from __future__ import annotations

import pytest
import torch

from hepgen.errors import ConfigValueError
from hepgen.models.uvcgan_s import (
    LogEnergy,
    StratifiedCycleGAN,
    discriminator_loss,
    ema_update_rule,
    generator_loss,
    local_energy_error,
    zero_centred_gradient_penalty,
)

TINY_GENERATOR = {
    "features": 16, "n_heads": 2, "n_blocks": 1, "ffn_features": 32, "embed_features": 16, "unet_features": (8, 8, 8),
}  # fmt: skip
TINY_DISCRIMINATOR = {"stage_channels": (8, 8), "blocks_per_stage": 1}


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def tiny_model(**kwargs) -> StratifiedCycleGAN:
    torch.manual_seed(0)
    return StratifiedCycleGAN(generator=TINY_GENERATOR, discriminator_args=TINY_DISCRIMINATOR, **kwargs)


def made_parts(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, 1, 24, 64) backgrounds and jets in GeV from hepgen's made-data generators."""
    from hepgen.synth.sphenix import simulate_background, simulate_jets

    background = torch.from_numpy(simulate_background(n, seed=seed).towers).float().unsqueeze(1)
    jets = torch.from_numpy(simulate_jets(n, seed=seed).towers).float().unsqueeze(1)
    return background, jets


# --- the loss terms ---------------------------------------------------------------------------
def test_hinge_and_lsgan_losses_match_hand_computed_values():
    real = torch.tensor([2.0, 0.5, -1.0, 0.0])
    fake = torch.tensor([-2.0, -0.5, 1.0, 0.0])
    # hinge: relu(1 - real) = [0, .5, 2, 1] -> 0.875; relu(1 + fake) = [0, .5, 2, 1] -> 0.875
    assert discriminator_loss(real, fake, "hinge").item() == pytest.approx(0.5 * (0.875 + 0.875))
    assert generator_loss(fake, "hinge").item() == pytest.approx(0.375)  # -mean(fake)
    # lsgan: (real - 1)^2 = [1, .25, 4, 1] -> 1.5625; fake^2 = [4, .25, 1, 0] -> 1.3125
    assert discriminator_loss(real, fake, "lsgan").item() == pytest.approx(0.5 * (1.5625 + 1.3125))
    assert generator_loss(fake, "lsgan").item() == pytest.approx((9 + 2.25 + 0 + 1) / 4)


def test_generator_objective_has_the_reference_sphenix_weights():
    """The effective coefficients of the reference's sPHENIX run (uvcgan_s.md §3)."""
    model = tiny_model()
    expected = {
        "gen_ab": 1.0, "cycle_a0": 5.0, "cycle_a1": 50.0, "gen_ba0": 0.5, "gen_ba1": 0.5,
        "cycle_b": 10.0, "idt_bb": 5.0, "idt_aa_a0": 2.5, "idt_aa_a1": 25.0,
    }  # fmt: skip
    # hepgen's two optional terms are off unless configured, and then weigh what they are given
    expected.update(conservation=0.0, local_energy=0.0)
    for name, weight in expected.items():
        terms = {k: torch.tensor(1.0 if k == name else 0.0) for k in expected}
        assert model.generator_objective(terms).item() == pytest.approx(weight), name
    zero = {k: torch.tensor(0.0) for k in expected}
    weighted = tiny_model(lambda_conservation=10.0, lambda_local_energy=25.0)
    terms = {**zero, "conservation": torch.tensor(0.3), "local_energy": torch.tensor(0.04)}
    assert weighted.generator_objective(terms).item() == pytest.approx(10.0 * 0.3 + 25.0 * 0.04)


def test_local_energy_error_matches_hand_computed_values():
    """One row of 8 towers, boxes of 3: a 9 GeV tower spreads 1 GeV (9 / 3²) over the three boxes
    around it. Moved by one tower, two boxes of three disagree: 2/3; moved by four, all six: 2;
    moved across the φ seam (tower 0 to tower 7) it is one tower away, not seven. A uniform 10 %
    scale error is 0.1; negative towers are dropped, as a jet finder drops them."""
    true = torch.zeros(1, 1, 1, 8)
    true[..., 0] = 9.0

    def at(*towers: tuple[int, float]) -> torch.Tensor:
        x = torch.zeros(1, 1, 1, 8)
        for tower, energy in towers:
            x[..., tower] = energy
        return x

    assert local_energy_error(true, true, window=3).item() == 0.0
    assert local_energy_error(at((1, 9.0)), true, window=3).item() == pytest.approx(2 / 3)
    assert local_energy_error(at((4, 9.0)), true, window=3).item() == pytest.approx(2.0)
    assert local_energy_error(at((7, 9.0)), true, window=3).item() == pytest.approx(2 / 3)
    assert local_energy_error(0.9 * true, true, window=3).item() == pytest.approx(0.1)
    assert local_energy_error(at((0, 9.0), (1, -5.0)), true, window=3).item() == 0.0
    assert local_energy_error(at((1, 9.0)), true, window=1).item() == pytest.approx(2.0)  # per tower
    with pytest.raises(ValueError, match="odd"):
        local_energy_error(true, true, window=4)


def test_conservation_term_compares_the_sum_of_the_parts_with_the_mixture_in_gev():
    model = tiny_model()
    background, jets = made_parts(4)
    mixture = background + jets
    with torch.no_grad():
        terms, _ = model.generator_losses(background, jets, mixture)
        parts_gev = torch.exp(model.gen_ba(torch.log(mixture + 0.1))) - 0.1
    expected = (parts_gev[:, :1] + parts_gev[:, 1:] - mixture).abs().mean().item()
    assert terms["conservation"].item() == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ConfigValueError, match="lambda_local_energy"):
        tiny_model(lambda_local_energy=-1.0)
    with pytest.raises(ConfigValueError, match="local_energy_window"):
        tiny_model(local_energy_window=8)


def test_gradient_penalty_is_zero_centred():
    """For D(x) = mean over patches of a linear map, ||grad D||^2 is known exactly: the penalty is
    that value (pulled towards 0), not (||grad|| - 1)^2 as in WGAN-GP."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(1, 1, kernel_size=(24, 64), bias=True)  # one patch: D(x) = <w, x> + b
    real, fake = torch.rand(5, 1, 24, 64), torch.rand(5, 1, 24, 64)
    penalty = zero_centred_gradient_penalty(conv, real, fake)
    assert penalty.item() == pytest.approx(conv.weight.pow(2).sum().item(), rel=1e-5)
    penalty.backward()  # a double backward reaches D's weights: d/dw ||w||^2 = 2w
    assert torch.allclose(conv.weight.grad, 2 * conv.weight.detach(), rtol=1e-5)
    # a constant discriminator has no gradient, so no penalty (1 would be WGAN-GP's value)
    flat = torch.nn.Conv2d(1, 1, kernel_size=(24, 64))
    torch.nn.init.zeros_(flat.weight)
    assert zero_centred_gradient_penalty(flat, real, fake).item() == 0.0


def test_log_energy_round_trip_and_floor():
    norm = LogEnergy(0.1)
    energy = torch.tensor([0.0, 0.05, 1.0, 40.0])
    assert torch.allclose(norm.inverse(norm(energy)), energy, atol=1e-6)
    assert norm.inverse(torch.tensor(-50.0)).item() == pytest.approx(-0.1)  # outputs stay above -bias


def test_losses_at_initialisation_match_the_reference():
    """At initialisation the reference measured disc_a0 ≈ disc_a1 ≈ 0.5, disc_b ≈ 1.0, GP ≈ 0."""
    model = tiny_model()
    background, jets = made_parts(8)
    terms, fakes = model.generator_losses(background, jets, background + jets)
    losses = model.discriminator_losses({"a0": background, "a1": jets, "b": background + jets}, fakes)
    assert losses["disc_a0"].item() == pytest.approx(0.5, abs=0.1)
    assert losses["disc_a1"].item() == pytest.approx(0.5, abs=0.1)
    assert losses["disc_b"].item() == pytest.approx(1.0, abs=0.2)
    assert all(losses[f"gp_{k}"].item() < 1e-3 for k in ("a0", "a1", "b"))


def test_identity_terms_compare_the_decomposed_parts_in_gev():
    """idt_aa is the L1 between the decomposed sum and its parts in GeV (the generator works in
    ln(E + 0.1), the losses never do)."""
    model = tiny_model()
    background, jets = made_parts(4)
    with torch.no_grad():
        terms, _ = model.generator_losses(background, jets, background + jets)
        log_parts = model.gen_ba(torch.log(background + jets + 0.1))
    parts_gev = torch.exp(log_parts) - 0.1
    assert terms["idt_aa_a0"].item() == pytest.approx((parts_gev[:, :1] - background).abs().mean().item(), rel=1e-5)
    assert terms["idt_aa_a1"].item() == pytest.approx((parts_gev[:, 1:] - jets).abs().mean().item(), rel=1e-5)


def test_mixture_channels_must_match_the_background_channels():
    with pytest.raises(ConfigValueError, match="domain_channels"):
        StratifiedCycleGAN(domain_channels=(3, 3, 1), generator=TINY_GENERATOR, discriminator_args=TINY_DISCRIMINATOR)


# --- averaging and the training step ----------------------------------------------------------
def _fit(model: StratifiedCycleGAN, batches: list, tmp_path, max_steps: int):
    from lightning.pytorch import Trainer

    trainer = Trainer(
        max_steps=max_steps, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, default_root_dir=tmp_path, limit_val_batches=0,
    )  # fmt: skip
    trainer.fit(model, train_dataloaders=torch.utils.data.DataLoader(batches, batch_size=None))
    return trainer


@pytest.mark.parametrize("warmup, decay", [(False, 0.9), (True, 2.0 / 11.0)])
def test_ema_copies_follow_the_update_rule(tmp_path, warmup, decay):
    """After the first update the average moved (1 - d) of the way: d = 0.9 as configured, or
    (1 + 1) / (10 + 1) with the warm-up, which forgets the random start quickly."""
    model = tiny_model(ema_decay=0.9, ema_warmup=warmup)
    background, jets = made_parts(4)
    batch = {"background": {"image": background}, "signal": {"image": jets}, "embed": {"image": background + jets}}
    before = {k: v.clone() for k, v in model.averages["gen_ba"].module.state_dict().items()}
    _fit(model, [batch], tmp_path, max_steps=1)
    after = model.averages["gen_ba"].module.state_dict()
    current = model.gen_ba.state_dict()
    changed = 0
    for name, value in after.items():
        expected = ema_update_rule(before[name], current[name], decay)
        assert torch.allclose(value, expected, atol=1e-6), name
        changed += int(not torch.equal(value, before[name]))
    assert changed > 0  # the step moved the online weights, and the average followed


def test_training_drives_the_decomposition_towards_the_truth(tmp_path):
    """Two hundred updates of the full objective on made events: on held-out mixtures the
    extracted jets are five times closer to the truth, tower by tower, than the untrained
    model's, and the jets land in the signal channel (per event they hold a few percent of the
    energy the background channel holds, as the truth does: jets ~70 GeV, background ~1 TeV)."""
    torch.manual_seed(1)
    model = tiny_model(optimizer_g=lambda p: torch.optim.Adam(p, 1e-3, betas=(0.5, 0.99)),
                       optimizer_d=lambda p: torch.optim.Adam(p, 1e-3, betas=(0.5, 0.99)))  # fmt: skip
    background, jets = made_parts(96, seed=3)
    mixtures_bkg, mixtures_jets = made_parts(96, seed=4)
    batches = [
        {"background": {"image": background[i : i + 8]}, "signal": {"image": jets[i : i + 8]},
         "embed": {"image": mixtures_bkg[i : i + 8] + mixtures_jets[i : i + 8]}}
        for i in range(0, 96, 8)
    ]  # fmt: skip
    test_bkg, test_jets = made_parts(32, seed=5)
    mixture = test_bkg + test_jets

    def decomposed() -> tuple[torch.Tensor, torch.Tensor]:
        model.eval()
        return model.decompose(mixture)

    untrained = (decomposed()[1] - test_jets).abs().mean().item()
    model.train()
    _fit(model, batches * 17, tmp_path, max_steps=200)
    extracted_bkg, extracted_jets = decomposed()
    assert (extracted_jets - test_jets).abs().mean().item() < 0.2 * untrained
    ratio = extracted_jets.sum(dim=(1, 2, 3)) / extracted_bkg.sum(dim=(1, 2, 3))
    assert 0.0 < ratio.median().item() < 0.2
