"""Stratified CycleGAN (UVCGAN-S): unsupervised decomposition of mixtures into their components.

Three unpaired collections: the components a0 (background, e.g. the heavy-ion underlying event)
and a1 (signal, e.g. PYTHIA jets), and mixtures b (jets embedded in the background). Domain A is
the channel stack ``a = [a0, a1]``. Two generators:

* ``gen_ab`` (the mixer), A -> B: a stack of components to a mixture;
* ``gen_ba`` (the decomposer), B -> A: a mixture to its components, the model's product;

and one discriminator per component (``disc_a0``, ``disc_a1``) and one for mixtures (``disc_b``).
Nothing ever pairs a mixture with its parts; what ties the decomposition to the truth is

* the adversarial terms: the decomposed parts must look like real backgrounds and real jets;
* the cycles a -> b -> a and b -> a -> b;
* ``idt_bb``: a mixture put in the background slot with an empty signal slot mixes to itself;
* ``idt_aa``: an independently drawn background plus an independently drawn jet, summed tower by
  tower, must decompose into those two. For calorimeter energies the sum is the physical
  mixing rule, so this is supervision on synthetic mixtures, and the term that tracks held-out
  quality best (reference note §3).

Losses and discriminators see physical units (GeV); generators read and write
``N(E) = ln(E + 0.1)`` (configurable bias; ``data_norm: none`` for images in [0, 1]).
The generator objective (the reference's weights, sPHENIX defaults)::

    λ_b·G_ab + ½λ_cyc_a0·|a0' − a0| + ½λ_cyc_a1·|a1' − a1|           (cycle a -> b -> a)
  + ½λ_a0·G_ba0 + ½λ_a1·G_ba1 + λ_cyc_b·|b' − b|                      (cycle b -> a -> b)
  + λ_idt_bb·λ_cyc_b·|G_ab([b, 0]) − b|
  + ½λ_idt_aa·(λ_cyc_a0·|G_ba(a0 + a1)_0 − a0| + λ_cyc_a1·|G_ba(a0 + a1)_1 − a1|)
  + λ_conservation·|G_ba(b)_0 + G_ba(b)_1 − b|                         (optional, off by default)
  + λ_local_energy·local_energy_error(G_ba(a0 + a1)_1, a1)             (optional, off by default)

The two optional terms are hepgen's, not the reference's. Calorimeter energies add, so the parts
of a real mixture must sum to it tower by tower (``conservation``). And the per-tower L1 of
``idt_aa`` barely notices a jet's soft towers (0.05–0.5 GeV) being left in the background: a
third of their energy is, which is most of the jet energy scale's deficit after a short
training. ``local_energy`` compares the extracted and the true jet energy summed over windows the
size of an R = 0.4 jet, on the synthetic mixtures: an energy scale error costs in proportion,
and so does energy put where no jet is, while the layout inside a jet, which a jet finder does
not see either, is free.

Each discriminator descends ``scale·½(loss_real + loss_fake) + λ_gp·E‖∇D(x̂)‖²`` with
``scale`` = λ_b for ``disc_b`` and ½λ_a for the component discriminators, on the fakes made
before this step's generator update; x̂ interpolates real and fake. One optimizer updates both
generators, one all discriminators, each with its gradient norm clipped (0.5). EMA copies of
both generators are used for validation, test and predict.

Reference: LS4GAN/uvcgan-s (Torbunov et al.; arXiv:2510.23717 for the sPHENIX application).
Deviation: the gradient penalty draws one interpolation weight per event, not one per batch.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Literal

import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn

from hepgen.errors import ConfigValueError
from hepgen.models.gan import AdversarialModule
from hepgen.nn.image_discriminators import PatchGANDiscriminator, ResNetDiscriminator
from hepgen.nn.vit_modnet import ViTModNetGenerator

GANLoss = Literal["hinge", "lsgan"]


# --- the loss terms ---------------------------------------------------------------------------
def discriminator_loss(real_logits: torch.Tensor, fake_logits: torch.Tensor, kind: GANLoss = "hinge") -> torch.Tensor:
    """½(loss on real + loss on fake), averaged over events and patches.

    hinge: relu(1 − D(real)) + relu(1 + D(fake)); lsgan: (D(real) − 1)² + D(fake)².
    """
    if kind == "hinge":
        return 0.5 * (F.relu(1.0 - real_logits).mean() + F.relu(1.0 + fake_logits).mean())
    return 0.5 * ((real_logits - 1.0).pow(2).mean() + fake_logits.pow(2).mean())


def generator_loss(fake_logits: torch.Tensor, kind: GANLoss = "hinge") -> torch.Tensor:
    """What a generator descends: −D(fake) (hinge) or (D(fake) − 1)² (lsgan), averaged."""
    if kind == "hinge":
        return -fake_logits.mean()
    return (fake_logits - 1.0).pow(2).mean()


def zero_centred_gradient_penalty(
    discriminator: nn.Module, real: torch.Tensor, fake: torch.Tensor, generator: torch.Generator | None = None
) -> torch.Tensor:
    """E‖∇ₓ D(x̂)‖² on interpolates x̂ = u·real + (1 − u)·fake, u ~ U(0, 1) per event.

    Zero-centred (it pulls the gradient norm to 0, not to 1 as WGAN-GP does): it smooths D
    around the data without asking it to be a 1-Lipschitz critic. D's patch map is averaged per
    event before differentiating. ``real`` and ``fake`` are (B, C, H, W); the result is a scalar
    whose graph reaches D's parameters (a double backward).
    """
    u = torch.rand(real.shape[0], *([1] * (real.dim() - 1)), device=real.device, generator=generator)
    mixed = (u * real.detach() + (1.0 - u) * fake.detach()).requires_grad_(True)
    score = discriminator(mixed).flatten(1).mean(1)
    (grad,) = torch.autograd.grad(score.sum(), mixed, create_graph=True)
    return grad.flatten(1).pow(2).sum(1).mean()


def local_energy_error(extracted: torch.Tensor, true: torch.Tensor, window: int = 9) -> torch.Tensor:
    """Σ|W∗ŝ⁺ − W∗s| / Σ W∗s: the L1 between the extracted and the true energy summed over every
    ``window`` × ``window`` box of towers, relative to the true total.

    ``extracted`` and ``true`` are (B, C, H, W) in GeV, H along η and W along φ; φ wraps around (a
    box at the edge continues on the other side), η does not. At the sPHENIX granularity (Δη =
    2.2/24, Δφ = 2π/64) a 9 × 9 box spans an R = 0.4 jet's diameter. Negative extracted towers
    count as zero (ŝ⁺), as a jet finder drops them: otherwise a halo of positive energy next to
    negative towers would sum to the truth and still inflate every jet.

    Why boxes and not totals: two trial runs learned to meet simpler totals the wrong way. A total
    over the whole grid is met by a pedestal of ~0.015 GeV on every tower; a total over the true
    signal's towers (on made events 206 per event, with 18 % of the signal energy outside the
    R = 0.4 jets, buried in the background) by piling that unresolvable periphery into the jet
    cores, which made the anti-kT jets 21 % too energetic. A box total forgives misplacing energy
    by a few towers, which the R = 0.4 jets forgive too, and charges misplacing it by more.
    """
    if window < 1 or window % 2 == 0:
        raise ValueError(f"window={window}: give an odd number of towers")

    def box_sums(x: torch.Tensor) -> torch.Tensor:  # mean over the box; the normalisation cancels
        x = F.pad(x, (window // 2, window // 2, 0, 0), mode="circular")  # φ is periodic
        return F.avg_pool2d(x, window, stride=1, padding=(window // 2, 0))  # η edges: zeros

    true_boxes = box_sums(true)
    return (box_sums(extracted.clamp_min(0)) - true_boxes).abs().sum() / true_boxes.sum().clamp_min(1e-12)


def ema_update_rule(average: torch.Tensor, current: torch.Tensor, decay: float) -> torch.Tensor:
    """θ_ema ← decay·θ_ema + (1 − decay)·θ: the rule the averaged generators follow."""
    return decay * average + (1.0 - decay) * current


class LogEnergy(nn.Module):
    """N(E) = ln(E + bias) and its inverse exp(y) − bias: what the generators read and write.

    Tower energies span 0 to tens of GeV with most towers near 0; the logarithm spreads the soft
    background and keeps the hard jet cores in range. Outputs therefore stay above −bias.
    """

    def __init__(self, bias: float = 0.1) -> None:
        super().__init__()
        if bias <= 0:
            raise ConfigValueError(f"log_bias={bias}: must be > 0 (ln(E + bias) at E = 0).")
        self.bias = bias

    def forward(self, energy: torch.Tensor) -> torch.Tensor:
        return torch.log(energy.clamp_min(0.0) + self.bias)

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return torch.exp(y) - self.bias


class Identity(nn.Module):
    """No normalisation (images already in [0, 1]), with the same interface as :class:`LogEnergy`."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return y


class StratifiedCycleGAN(AdversarialModule):
    """UVCGAN-S: decompose mixtures b into background a0 and signal a1 without paired examples.

    Training batches (:mod:`datamodules.sphenix`): ``{"background": {"image": (B, C0, H, W)},
    "signal": {"image": (B, C1, H, W)}, "embed": {"image": (B, Cb, H, W)}}``, unpaired;
    evaluation batches: ``{"embed": (B, Cb, H, W)}`` plus, when known, the true ``signal`` and
    ``background``. Physical units throughout (GeV per tower).

    Args:
        domain_channels: (C0, C1, Cb), channels of background, signal and mixture (linked from
            the datamodule).
        image_shape: (H, W) (linked from the datamodule).
        generator: keyword arguments of :class:`~hepgen.nn.vit_modnet.ViTModNetGenerator` for
            both generators (the defaults are the reference sPHENIX sizes, 32.1M parameters each).
        discriminator: ``resnet`` (spectral-norm ResNet, sPHENIX) or ``patchgan`` (the toy's).
        discriminator_args: keyword arguments of that discriminator.
        gan_loss: ``hinge`` (reference) or ``lsgan``.
        lambda_adv: (a0, a1, b) weights of the adversarial terms.
        lambda_cycle: (a0, a1, b) weights of the cycle terms (sPHENIX: the jet's cycle weighs 10×).
        lambda_idt_aa, lambda_idt_bb: weights of the two identity terms (relative to the cycles).
        lambda_conservation: weight of the L1 (GeV per tower) between a mixture and the sum of
            its decomposed parts; 0 (the reference) leaves it out.
        lambda_local_energy: weight of :func:`local_energy_error` on the synthetic mixtures a0 + a1
            (the relative L1 of the signal energy summed over boxes of ``local_energy_window``
            towers, φ periodic); 0 (the reference) leaves it out.
        local_energy_window: the box's side in towers, odd (9: an R = 0.4 jet on the sPHENIX grid).
        gp_weight: λ of the zero-centred gradient penalty (sPHENIX 0.01, toy 1.0).
        data_norm: ``log`` (ln(E + log_bias)) or ``none``.
        log_bias: the bias of the log normalisation, GeV.
        grad_clip: gradient-norm clip of each optimizer (``None``: off).
        ema_decay: decay of the generators' EMA copies.
        ema_warmup: warm the EMA decay up from 0 (see :class:`~hepgen.models.gan.AdversarialModule`),
            so that evaluations early in a run judge trained weights; the reference's plain EMA
            still holds 37 % of its random start after 10k updates at decay 0.9999.
        optimizer_g, optimizer_d: factories (default Adam lr 5e-5, betas (0.5, 0.99)).
        lr_scheduler_g, lr_scheduler_d: schedulers stepped once per epoch (the reference warms
            up linearly: ``LinearLR(start_factor=0.01, total_iters=32)``).
        monitor: the validation metric that picks the best checkpoint: ``val/l1_sig`` (the
            extracted signal's error, needs the truth) or ``val/cycle_b`` (the mixtures rebuilt
            from their decomposition, for data without truth, e.g. the real sPHENIX files).
    """

    optimizer_names = ("generators", "discriminators")
    discriminator_names = ("discriminators",)
    monitor_mode = "min"

    def __init__(
        self,
        domain_channels: Sequence[int] = (1, 1, 1),
        image_shape: Sequence[int] = (24, 64),
        generator: dict | None = None,
        discriminator: Literal["resnet", "patchgan"] = "resnet",
        discriminator_args: dict | None = None,
        gan_loss: GANLoss = "hinge",
        lambda_adv: Sequence[float] = (1.0, 1.0, 1.0),
        lambda_cycle: Sequence[float] = (10.0, 100.0, 10.0),
        lambda_idt_aa: float = 0.5,
        lambda_idt_bb: float = 0.5,
        lambda_conservation: float = 0.0,
        lambda_local_energy: float = 0.0,
        local_energy_window: int = 9,
        gp_weight: float = 0.01,
        data_norm: Literal["log", "none"] = "log",
        log_bias: float = 0.1,
        grad_clip: float | None = 0.5,
        ema_decay: float = 0.9999,
        ema_warmup: bool = True,
        optimizer_g: OptimizerCallable | None = None,
        optimizer_d: OptimizerCallable | None = None,
        lr_scheduler_g: LRSchedulerCallable | None = None,
        lr_scheduler_d: LRSchedulerCallable | None = None,
        monitor: str = "val/l1_sig",
    ) -> None:
        adam = partial(torch.optim.Adam, lr=5e-5, betas=(0.5, 0.99))
        super().__init__(
            optimizers={"generators": optimizer_g or adam, "discriminators": optimizer_d or adam},
            lr_schedulers={"generators": lr_scheduler_g, "discriminators": lr_scheduler_d},
            averaged={"gen_ab": "ema", "gen_ba": "ema"},
            ema_decay=ema_decay,
            ema_warmup=ema_warmup,
        )
        self.save_hyperparameters()
        self.monitor = monitor
        if len(domain_channels) != 3 or len(image_shape) != 2:
            raise ConfigValueError(
                f"domain_channels={list(domain_channels)}, image_shape={list(image_shape)}: need (C0, C1, Cb) and (H, W)."
            )
        for name, weights in (("lambda_adv", lambda_adv), ("lambda_cycle", lambda_cycle)):
            if len(weights) != 3:
                raise ConfigValueError(f"{name}={list(weights)}: give three weights, for a0, a1 and b.")
        if lambda_conservation < 0 or lambda_local_energy < 0:
            raise ConfigValueError(
                f"lambda_conservation={lambda_conservation}, lambda_local_energy={lambda_local_energy}: weights must be >= 0."
            )
        if local_energy_window < 1 or local_energy_window % 2 == 0:
            raise ConfigValueError(f"local_energy_window={local_energy_window}: give an odd number of towers.")
        if gan_loss not in ("hinge", "lsgan"):
            raise ConfigValueError(f"gan_loss={gan_loss!r}: choose hinge or lsgan.")
        if data_norm not in ("log", "none"):
            raise ConfigValueError(f"data_norm={data_norm!r}: choose log or none.")
        self.channels = tuple(int(c) for c in domain_channels)
        c0, c1, cb = self.channels
        if cb != c0:
            # idt_bb puts a mixture where a background goes
            raise ConfigValueError(f"domain_channels={list(domain_channels)}: mixtures need the background's channel count.")
        shape = tuple(int(s) for s in image_shape)
        generator = dict(generator or {})
        self.gen_ab = ViTModNetGenerator(c0 + c1, cb, shape, **generator)
        self.gen_ba = ViTModNetGenerator(cb, c0 + c1, shape, **generator)
        disc_args = dict(discriminator_args or {})
        if discriminator == "resnet":
            make_disc = partial(ResNetDiscriminator, **disc_args)
        elif discriminator == "patchgan":
            make_disc = partial(PatchGANDiscriminator, **disc_args)
        else:
            raise ConfigValueError(f"discriminator={discriminator!r}: choose resnet or patchgan.")
        self.disc_a0, self.disc_a1, self.disc_b = make_disc(c0), make_disc(c1), make_disc(cb)
        self.norm = LogEnergy(log_bias) if data_norm == "log" else Identity()
        self.build_averages()

    # --- networks by optimizer ------------------------------------------------------------------
    def parameters_of(self, name: str):
        if name == "generators":
            return [*self.gen_ab.parameters(), *self.gen_ba.parameters()]
        return [*self.disc_a0.parameters(), *self.disc_a1.parameters(), *self.disc_b.parameters()]

    # --- the maps in physical units ---------------------------------------------------------------
    def split(self, a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, C0 + C1, H, W) -> background (B, C0, H, W), signal (B, C1, H, W)."""
        return a[:, : self.channels[0]], a[:, self.channels[0] :]

    @torch.no_grad()
    def decompose(self, mixture: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mixtures (B, Cb, H, W) -> (background, signal), physical units, with the generator
        used for evaluation (its EMA copy unless training)."""
        return self.split(self.norm.inverse(self.network("gen_ba")(self.norm(mixture))))

    # --- training -------------------------------------------------------------------------------
    def generator_losses(self, a0: torch.Tensor, a1: torch.Tensor, b: torch.Tensor) -> tuple[dict, dict]:
        """The generator's loss terms, unweighted, and the fakes the discriminators judge next."""
        kind, n = self.hparams.gan_loss, self.norm
        a_n = n(torch.cat([a0, a1], dim=1))
        b_n = n(b)
        # cycle a -> b -> a; the inner step stays normalised, only the ends are in GeV
        fake_b_n = self.gen_ab(a_n)
        fake_b = n.inverse(fake_b_n)
        reco_a0, reco_a1 = self.split(n.inverse(self.gen_ba(fake_b_n)))
        # cycle b -> a -> b
        fake_a_n = self.gen_ba(b_n)
        fake_a0, fake_a1 = self.split(n.inverse(fake_a_n))
        reco_b = n.inverse(self.gen_ab(fake_a_n))
        # a mixture in the background slot and nothing in the signal slot mixes to itself
        empty_signal = b.new_zeros(b.shape[0], self.channels[1], *b.shape[2:])
        idt_bb = n.inverse(self.gen_ab(n(torch.cat([b, empty_signal], dim=1))))
        # two independent components, summed, decompose into themselves
        idt_aa0, idt_aa1 = self.split(n.inverse(self.gen_ba(n(a0 + a1))))
        terms = {
            "gen_ab": generator_loss(self.disc_b(fake_b), kind),
            "cycle_a0": F.l1_loss(reco_a0, a0),
            "cycle_a1": F.l1_loss(reco_a1, a1),
            "gen_ba0": generator_loss(self.disc_a0(fake_a0), kind),
            "gen_ba1": generator_loss(self.disc_a1(fake_a1), kind),
            "cycle_b": F.l1_loss(reco_b, b),
            "idt_bb": F.l1_loss(idt_bb, b),
            "idt_aa_a0": F.l1_loss(idt_aa0, a0),
            "idt_aa_a1": F.l1_loss(idt_aa1, a1),
            "conservation": F.l1_loss(fake_a0 + fake_a1, b),
            "local_energy": local_energy_error(idt_aa1, a1, self.hparams.local_energy_window),
        }
        return terms, {"a0": fake_a0.detach(), "a1": fake_a1.detach(), "b": fake_b.detach()}

    def generator_objective(self, terms: dict[str, torch.Tensor]) -> torch.Tensor:
        """The weighted sum of :meth:`generator_losses` (the reference's weights, see the module)."""
        (adv0, adv1, advb), (cyc0, cyc1, cycb) = self.hparams.lambda_adv, self.hparams.lambda_cycle
        h = self.hparams
        return (
            advb * terms["gen_ab"]
            + 0.5 * cyc0 * terms["cycle_a0"]
            + 0.5 * cyc1 * terms["cycle_a1"]
            + 0.5 * adv0 * terms["gen_ba0"]
            + 0.5 * adv1 * terms["gen_ba1"]
            + cycb * terms["cycle_b"]
            + h.lambda_idt_bb * cycb * terms["idt_bb"]
            + 0.5 * h.lambda_idt_aa * (cyc0 * terms["idt_aa_a0"] + cyc1 * terms["idt_aa_a1"])
            + h.lambda_conservation * terms["conservation"]
            + h.lambda_local_energy * terms["local_energy"]
        )

    def discriminator_losses(self, real: dict, fake: dict) -> dict[str, torch.Tensor]:
        """Per discriminator: its scaled GAN loss (``disc_*``) and gradient penalty (``gp_*``)."""
        kind = self.hparams.gan_loss
        adv0, adv1, advb = self.hparams.lambda_adv
        losses = {}
        for name, disc, scale in (("a0", self.disc_a0, 0.5 * adv0), ("a1", self.disc_a1, 0.5 * adv1), ("b", self.disc_b, advb)):
            # real and fake go through separately: BatchNorm then normalises each with its own statistics
            losses[f"disc_{name}"] = scale * discriminator_loss(disc(real[name]), disc(fake[name]), kind)
            if self.hparams.gp_weight > 0:
                losses[f"gp_{name}"] = self.hparams.gp_weight * zero_centred_gradient_penalty(disc, real[name], fake[name])
        return losses

    def training_step(self, batch: dict, batch_idx: int) -> dict[str, torch.Tensor]:
        a0, a1, b = batch["background"]["image"], batch["signal"]["image"], batch["embed"]["image"]
        discriminators = (self.disc_a0, self.disc_a1, self.disc_b)
        for disc in discriminators:
            disc.requires_grad_(False)
        terms, fakes = self.generator_losses(a0, a1, b)
        g_loss = self.generator_objective(terms)
        g_norm = self.take_step("generators", g_loss, self.hparams.grad_clip)
        for disc in discriminators:
            disc.requires_grad_(True)
        d_terms = self.discriminator_losses({"a0": a0, "a1": a1, "b": b}, fakes)
        d_loss = sum(d_terms.values())
        d_norm = self.take_step("discriminators", d_loss, self.hparams.grad_clip)
        self.update_averages()
        logged = {**terms, **d_terms}
        if g_norm is not None:
            logged.update(grad_norm_gen=g_norm, grad_norm_disc=d_norm)
        self.log_dict({f"train/{k}": v.detach() for k, v in logged.items()}, on_step=False, on_epoch=True, batch_size=len(b))
        self.log_dict({"train/g_loss": g_loss.detach(), "train/d_loss": d_loss.detach()}, on_step=False, on_epoch=True, prog_bar=True, batch_size=len(b))
        return {"g_loss": g_loss.detach(), "d_loss": d_loss.detach()}

    # --- evaluation -------------------------------------------------------------------------------
    def _evaluate(self, batch: dict, stage: str) -> None:
        b = batch["embed"]
        background, signal = self.decompose(b)
        # the mixture rebuilt from its parts: defined without truth, so always logged
        rebuilt = self.norm.inverse(self.network("gen_ab")(self.norm(torch.cat([background, signal], dim=1))))
        self.log(f"{stage}/cycle_b", F.l1_loss(rebuilt, b), batch_size=len(b), sync_dist=True)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, "test")

    def evaluation_samples(self, batch: dict, generator: torch.Generator | None = None) -> dict[str, tuple]:
        """(truth, extracted) pairs in physical units: ``signal`` and ``background`` (B, C, H, W),
        and ``embed`` (the mixture twice); the truth is NaN when the batch has none."""
        b = batch["embed"]
        background, signal = self.decompose(b)
        missing = torch.full_like(signal, float("nan"))
        return {
            "signal": (batch.get("signal", missing), signal),
            "background": (batch.get("background", torch.full_like(background, float("nan"))), background),
            "embed": (b, b),
        }

    def predict_step(self, batch: dict, batch_idx: int) -> dict[str, torch.Tensor]:
        """The decomposition of a batch of mixtures: ``embed`` (the input), ``signal`` and
        ``background`` (extracted), and ``true_signal``/``true_background`` when known."""
        background, signal = self.decompose(batch["embed"])
        out = {"embed": batch["embed"], "signal": signal, "background": background}
        for key in ("signal", "background"):
            if key in batch:
                out[f"true_{key}"] = batch[key]
        return out
