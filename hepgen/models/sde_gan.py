"""SDE-GAN: a neural-SDE generator and a neural-CDE critic trained as a Wasserstein GAN.

Kidger et al., "Neural SDEs as Infinite-Dimensional GANs" (ICML 2021, arXiv:2102.03657), with
the training of "Efficient and Accurate Gradients for Neural SDEs" (arXiv:2105.13493), as in
torchsde's ``examples/sde_gan.py``: reversible Heun with its exact adjoint, a Lipschitz critic by
weight clipping and LipSwish, Adadelta with weight decay, and stochastic weight averaging (SWA).

The critic D estimates the Wasserstein-1 distance between real and generated path laws through
the Kantorovich-Rubinstein dual: D descends ``mean D(fake) - mean D(real)``, G ascends
``mean D(fake)``. ``n_critic = 1`` is the reference's simultaneous update (one backward, the
generator's gradients negated); ``n_critic = k`` gives D one update per training batch and G one
every k-th batch.

Paths are normalised per channel with statistics fitted once on training data and saved with
the weights; generated paths leave the model in physical units.
"""

from __future__ import annotations

from functools import partial
from typing import Literal

import torch
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_warn

from datamodules.base import global_batch_index
from hepgen.errors import ConfigValueError
from hepgen.io.timeseries import interpolate_missing
from hepgen.models.gan import AdversarialModule
from hepgen.nn.sde import CDEDiscriminator, SDEGenerator

#: Largest seed a torchsde Brownian interval takes.
MAX_ENTROPY = 2**31 - 1


class SDEGAN(AdversarialModule):
    """Neural SDE generator, neural CDE critic, Wasserstein loss, SWA.

    Batches (from :mod:`datamodules.timeseries`): ``times`` (B, T) in time units, ``values``
    (B, T, C) physical units with NaN where missing, ``path`` (B, T, 1 + C) = (time, values with
    NaN filled by linear interpolation), which the critic reads.

    Args:
        data_size: C, channels of a path (linked from the datamodule's ``channels``).
        t_size: T, observations per path (linked from the datamodule's ``t_size``); the
            generator solves on t = 0, 1, ..., T - 1.
        initial_noise, noise, hidden, width, layers: sizes (reference 5, 3, 16, 16, 1); the
            critic uses the same hidden size, width and depth.
        initial_scale, field_scale: factors on the generator's initial weights (reference 3, 0.5).
        solver: torchsde method of the generator (``reversible_heun``, ``midpoint``, ``euler_heun``, ...).
        adjoint: backpropagate with the adjoint method (reversible Heun's is exact, O(1) memory);
            ``False`` stores the solver steps.
        dt: fixed solver step of generator and critic, in time units.
        n_critic: critic updates per generator update (1: simultaneous, as the reference).
        lipschitz: ``clip`` (|W| <= 1/out_features after every critic step, the reference) or
            ``gp`` (gradient penalty on interpolates; the critic then solves without adjoint,
            whose backward cannot be differentiated again).
        gp_weight: weight of the gradient penalty.
        swa_start: first generator step (0-based) that enters the averages (reference: 5001).
        normalize: ``initial`` (mean and std of the observed values at t = 0, the reference,
            which keeps the initial spread at 1) or ``all`` (over all times).
        optimizer_g, optimizer_d: optimizer factories (default Adadelta lr 2e-4 / 1e-3, weight
            decay 0.01, as the reference).
        lr_scheduler_g, lr_scheduler_d: optional schedulers, stepped once per epoch.
        eval_seed: seed of the generation noise in validation, test and predict.
        mask_generated: observe each generated path as its real partner in the batch was: drop
            the values the real one is missing and fill them the same way (linear interpolation).
            The reference shows the critic complete generated paths beside interpolated real ones;
            an interpolated stretch is smoother (dropping 30 % of an OU path's values takes about
            30 % off its quadratic variation), so the critic rewards a generator with too little
            noise. ``False`` (default) is the reference's rule.
        critic_quadratic_variation: if > 0, drive the critic also by each channel's running sum
            of squared increments (standardised units) times this factor, which puts the paths'
            noise level into the critic's first order (see
            :func:`hepgen.nn.sde.with_quadratic_variation`). 0 (default) is the reference.
        critic_innovation_variation: if > 0, drive the critic also by each channel's running sum
            of squared innovations, the part of each step that a per-step linear predictor
            fitted on the training paths misses, standardised by its training scale, times this
            factor (:class:`hepgen.nn.sde.StepInnovations`, fitted with the normalisation and
            saved with the weights). It shows the critic the noise step by step, at quiet early
            times as well as loud late ones. Regular series (every path ``t_size`` long). 0
            (default): off.
    """

    #: the mean marginal Wasserstein-1 distance, logged by the PathMetrics callback
    monitor = "val/w1_mean"
    monitor_mode = "min"

    def __init__(
        self,
        data_size: int = 1,
        t_size: int = 64,
        initial_noise: int = 5,
        noise: int = 3,
        hidden: int = 16,
        width: int = 16,
        layers: int = 1,
        initial_scale: float = 3.0,
        field_scale: float = 0.5,
        solver: str = "reversible_heun",
        adjoint: bool = True,
        dt: float = 1.0,
        n_critic: int = 1,
        lipschitz: Literal["clip", "gp"] = "clip",
        gp_weight: float = 10.0,
        swa_start: int = 5001,
        normalize: Literal["initial", "all"] = "initial",
        optimizer_g: OptimizerCallable | None = None,
        optimizer_d: OptimizerCallable | None = None,
        lr_scheduler_g: LRSchedulerCallable | None = None,
        lr_scheduler_d: LRSchedulerCallable | None = None,
        eval_seed: int = 0,
        mask_generated: bool = False,
        critic_quadratic_variation: float = 0.0,
        critic_innovation_variation: float = 0.0,
    ) -> None:
        if n_critic < 1:
            raise ConfigValueError(f"n_critic={n_critic}: must be at least 1.")
        if t_size < 2:
            raise ConfigValueError(f"t_size={t_size}: a path needs at least 2 observations.")
        factors = {"critic_quadratic_variation": critic_quadratic_variation,
                   "critic_innovation_variation": critic_innovation_variation}  # fmt: skip
        for name, factor in factors.items():
            if factor < 0:
                raise ConfigValueError(f"{name}={factor}: a factor >= 0 (0: off).")
        if lipschitz not in ("clip", "gp"):
            raise ConfigValueError(f"lipschitz={lipschitz!r}: choose 'clip' or 'gp'.")
        if solver == "reversible_heun" or not adjoint:
            adjoint_method = "adjoint_reversible_heun" if adjoint else None
        else:  # torchsde picks the adjoint of other solvers itself
            adjoint_method = solver
        super().__init__(
            optimizers={
                "generator": optimizer_g or partial(torch.optim.Adadelta, lr=2e-4, weight_decay=0.01),
                "discriminator": optimizer_d or partial(torch.optim.Adadelta, lr=1e-3, weight_decay=0.01),
            },
            lr_schedulers={"generator": lr_scheduler_g, "discriminator": lr_scheduler_d},
            averaged={"generator": "swa", "discriminator": "swa"},
        )
        self.save_hyperparameters()
        self.generator = SDEGenerator(
            data_size, initial_noise, noise, hidden, width, layers, initial_scale, field_scale,
            method=solver, adjoint_method=adjoint_method, dt=dt,
        )  # fmt: skip
        # a gradient penalty differentiates the critic's backward: no adjoint there
        self.discriminator = CDEDiscriminator(
            data_size, hidden, width, layers, adjoint=adjoint and lipschitz == "clip", dt=dt,
            quadratic_variation=critic_quadratic_variation, innovation_variation=critic_innovation_variation,
            t_size=t_size,
        )  # fmt: skip
        self.build_averages()
        self.register_buffer("ts", torch.arange(t_size, dtype=torch.float32))
        # normalisation of the value channels, fitted on training data and saved with the weights
        self.register_buffer("value_mean", torch.zeros(data_size))
        self.register_buffer("value_std", torch.ones(data_size))
        self.register_buffer("normalization_fitted", torch.tensor(False))
        # updates done so far (Lightning's global_step counts the steps of both optimizers)
        self.register_buffer("generator_steps", torch.tensor(0, dtype=torch.long))
        self.register_buffer("critic_steps", torch.tensor(0, dtype=torch.long))

    # --- normalisation ---------------------------------------------------------------------------
    def fit_normalization(self, values: torch.Tensor) -> None:
        """Per-channel mean and std of the observed (non-NaN) ``values`` (N, T, C), physical units."""
        sample = values[:, :1] if self.hparams.normalize == "initial" else values
        sample = sample.reshape(-1, values.shape[-1]).to(self.value_mean.device, torch.float64)
        observed = ~torch.isnan(sample)
        count = observed.sum(0)
        if bool((count < 2).any()):
            channel = int((count < 2).nonzero()[0])
            raise ConfigValueError(
                f"normalize={self.hparams.normalize}: channel {channel} has fewer than 2 observed training values "
                f"{'at t = 0' if self.hparams.normalize == 'initial' else ''}; use normalize: all or check the data."
            )
        mean = torch.where(observed, sample, 0.0).sum(0) / count
        var = torch.where(observed, (sample - mean) ** 2, 0.0).sum(0) / (count - 1)
        self.value_mean.copy_(mean.float())
        self.value_std.copy_(var.sqrt().clamp_min(1e-6).float())
        self.normalization_fitted.fill_(True)

    def _ensure_normalization(self, training: bool) -> None:
        if bool(self.normalization_fitted):
            return
        datamodule = self.trainer.datamodule
        if datamodule is None:
            raise RuntimeError("SDEGAN without a datamodule: call model.fit_normalization(values) first.")
        if not training:
            rank_zero_warn(
                "this SDEGAN is untrained (no checkpoint given): its normalisation is fitted on the training split "
                "now and its paths are noise. Pass --ckpt_path last (or best, or a file) to evaluate a trained one."
            )
        sample = datamodule.training_sample()
        self.fit_normalization(sample["values"])
        if self.hparams.critic_innovation_variation > 0:
            self.fit_critic_innovations(sample["path"])

    def fit_critic_innovations(self, path: torch.Tensor) -> None:
        """Fit the critic's innovation predictor (and its averaged copy's) on training paths
        (N, T, 1 + C), physical units, filled; after :meth:`fit_normalization`."""
        path = self.normalized(path.to(self.value_mean.device))
        for critic in (self.discriminator, self.averages["discriminator"].module):
            critic.innovations.fit(path)

    def on_fit_start(self) -> None:
        super().on_fit_start()
        self._ensure_normalization(training=True)

    def on_validation_start(self) -> None:
        self._ensure_normalization(training=True)

    def on_test_start(self) -> None:
        self._ensure_normalization(training=False)

    def on_predict_start(self) -> None:
        self._ensure_normalization(training=False)

    def normalized(self, path: torch.Tensor) -> torch.Tensor:
        """(B, T, 1 + C) physical -> the same with standardised value channels."""
        return torch.cat([path[..., :1], (path[..., 1:] - self.value_mean) / self.value_std], dim=-1)

    # --- generation ----------------------------------------------------------------------------
    def _generate_normalized(
        self, n: int, generator: torch.Generator | None = None, times: torch.Tensor | None = None
    ) -> torch.Tensor:
        """n generated paths (n, T, 1 + C) with standardised values, observed at ``times`` (n, T).

        Without ``times``, at t = 0 .. T - 1. Generated paths are observed when the real ones
        were: otherwise the critic could tell irregularly sampled real paths from generated ones
        by their time channel alone. When the rows' times differ, the SDE is solved on a grid of
        step ``dt`` up to the latest time and each path is read off at its own times (linear
        interpolation, the way the critic sees any path).
        """
        initial = self.noise((n, self.hparams.initial_noise), generator)
        device = generator.device if generator is not None else "cpu"
        entropy = int(torch.randint(MAX_ENTROPY, (1,), generator=generator, device=device))
        sde = self.network("generator")
        if times is None:
            times = self.ts.expand(n, -1)
        if bool((times == times[:1]).all()):  # one time grid for all: solve there
            values = sde(times[0], initial, entropy)
        else:
            grid = torch.arange(0.0, float(times.max()) + self.hparams.dt, self.hparams.dt, device=times.device)
            values = _interpolate(grid, sde(grid, initial, entropy), times)
        return torch.cat([times.unsqueeze(-1), values], dim=-1)

    def _generate_like(
        self, real: torch.Tensor, missing: torch.Tensor, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """Generated paths (B, T, 1 + C) for the critic, observed at the times of ``real`` (B, T, 1 + C)
        and, with ``mask_generated``, missing (then filled) where ``missing`` (B, T, C) says."""
        fake = self._generate_normalized(len(real), generator, real[..., 0])
        if not self.hparams.mask_generated:
            return fake
        values = interpolate_missing(fake[..., 1:], missing, fake[..., 0])
        return torch.cat([fake[..., :1], values], dim=-1)

    @torch.no_grad()
    def generate(self, n: int, generator: torch.Generator | None = None, times: torch.Tensor | None = None) -> torch.Tensor:
        """n paths (n, T, C) in physical units, observed at ``times`` (n, T) (default t = 0 .. T - 1)."""
        path = self._generate_normalized(n, generator, times)
        return path[..., 1:] * self.value_std + self.value_mean

    # --- the Wasserstein objective -------------------------------------------------------------
    def critic_gap(self, real: torch.Tensor, fake: torch.Tensor, critic=None) -> torch.Tensor:
        """mean D(fake) - mean D(real): minus the critic's estimate of W1 (what D minimises)."""
        critic = critic or self.discriminator
        return critic(fake).mean() - critic(real).mean()

    def gradient_penalty(self, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        """E[(|grad D(x)| - 1)^2] on random interpolates x of real and (detached) fake paths."""
        eps = torch.rand(real.shape[0], 1, 1, device=real.device, dtype=real.dtype)
        mixed = (eps * real + (1 - eps) * fake.detach()).requires_grad_(True)
        (grad,) = torch.autograd.grad(self.discriminator(mixed).sum(), mixed, create_graph=True)
        return ((grad.flatten(1).norm(dim=1) - 1.0) ** 2).mean()

    def _critic_loss(self, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
        loss = self.critic_gap(real, fake)
        if self.hparams.lipschitz == "gp":
            loss = loss + self.hparams.gp_weight * self.gradient_penalty(real, fake)
        return loss

    def after_discriminator_step(self) -> None:
        if self.hparams.lipschitz == "clip":
            self.discriminator.clip_weights()

    def should_update_averages(self, name: str) -> bool:
        # called after generator step number generator_steps - 1 (0-based)
        return int(self.generator_steps) - 1 >= self.hparams.swa_start

    # --- training ----------------------------------------------------------------------------
    def training_step(self, batch: dict, batch_idx: int) -> dict[str, torch.Tensor]:
        real = self.normalized(batch["path"])
        missing = torch.isnan(batch["values"])
        if self.hparams.n_critic == 1:
            losses = self._simultaneous_step(real, missing)
        else:
            losses = self._alternating_step(real, missing)
        self.log_dict(
            {f"train/{k}": v for k, v in losses.items()}, on_step=False, on_epoch=True, prog_bar=True,
            batch_size=len(real),
        )  # fmt: skip
        return losses

    def _simultaneous_step(self, real: torch.Tensor, missing: torch.Tensor) -> dict[str, torch.Tensor]:
        """The reference update: one backward of mean D(fake) - mean D(real) for both networks,
        the generator's gradients negated (it ascends what D descends), both optimizers stepped."""
        fake = self._generate_like(real, missing)
        loss = self._critic_loss(real, fake)
        g_opt, d_opt = self.optimizer("generator"), self.optimizer("discriminator")
        g_opt.zero_grad(set_to_none=True)
        d_opt.zero_grad(set_to_none=True)
        self.manual_backward(loss)
        for p in self.generator.parameters():
            if p.grad is not None:
                p.grad.neg_()
        g_opt.step()
        d_opt.step()
        self.after_discriminator_step()
        self.critic_steps += 1
        self._after_generator_step()
        return {"d_loss": loss.detach(), "g_loss": -loss.detach()}

    def _alternating_step(self, real: torch.Tensor, missing: torch.Tensor) -> dict[str, torch.Tensor]:
        """One critic update on this batch; every n_critic-th batch also one generator update.

        take_step sets gradients to None before each backward, so what the generator's backward
        leaves in D's gradients never reaches D's next update (the seed's leak).
        """
        with torch.no_grad():
            fake = self._generate_like(real, missing)
        d_loss = self._critic_loss(real, fake)
        self.take_step("discriminator", d_loss)
        self.critic_steps += 1
        losses = {"d_loss": d_loss.detach()}
        if int(self.critic_steps) % self.hparams.n_critic == 0:
            with self.toggled_optimizer(self.optimizer("generator")):
                g_loss = -self.discriminator(self._generate_like(real, missing)).mean()
                self.take_step("generator", g_loss)
            self._after_generator_step()
            losses["g_loss"] = g_loss.detach()
        return losses

    def _after_generator_step(self) -> None:
        self.generator_steps += 1
        self.update_averages()

    # --- evaluation: the critic gap on held-out paths, and the evaluation protocol --------------
    def _eval_generator(self, batch_idx: int) -> torch.Generator:
        # A fixed noise stream per batch, seeded by its index in the single-process order:
        # comparable across epochs and ranks, and the global stream (exact resume) is untouched.
        index = global_batch_index(self._trainer, batch_idx)
        return torch.Generator(device=self.device).manual_seed(self.hparams.eval_seed + index)

    def _evaluate(self, batch: dict, batch_idx: int, stage: str) -> None:
        real = self.normalized(batch["path"])
        fake = self._generate_like(real, torch.isnan(batch["values"]), self._eval_generator(batch_idx))
        gap = self.critic_gap(real, fake, self.network("discriminator"))
        self.log(f"{stage}/critic_gap", gap, batch_size=len(real), sync_dist=True)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, batch_idx, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, batch_idx, "test")

    def evaluation_samples(self, batch: dict, generator: torch.Generator) -> dict[str, tuple]:
        """Real and generated paths in physical units: ``values`` (B, T, C) (real with NaN where
        missing), ``filled`` (B, T, C) (real NaN-filled) and ``times`` (B, T)."""
        times = batch["times"]
        generated = self.generate(len(times), generator, times)
        return {
            "values": (batch["values"], generated),
            "filled": (batch["path"][..., 1:], generated),
            "times": (times, times),
        }

    def predict_step(self, batch: dict, batch_idx: int) -> dict[str, torch.Tensor]:
        """Generated paths observed at the batch's times: ``times`` (B, T), ``values`` (B, T, C) physical."""
        times = batch["times"]
        return {"times": times, "values": self.generate(len(times), self._eval_generator(batch_idx), times)}


def _interpolate(grid: torch.Tensor, values: torch.Tensor, times: torch.Tensor) -> torch.Tensor:
    """Paths ``values`` (B, G, C) known on ``grid`` (G,), read off at ``times`` (B, T) linearly."""
    right = torch.searchsorted(grid, times.contiguous()).clamp(1, len(grid) - 1)  # (B, T)
    left = right - 1
    weight = ((times - grid[left]) / (grid[right] - grid[left])).unsqueeze(-1)

    def at(idx: torch.Tensor) -> torch.Tensor:
        return values.gather(1, idx.unsqueeze(-1).expand(-1, -1, values.shape[-1]))

    return at(left) * (1 - weight) + at(right) * weight
