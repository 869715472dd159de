"""A(i)DAPT conditional GANs for gamma p -> pi+ pi- p: detector folding (inner) and unfolding (outer).

Both work on the four invariants (s_{p pi-}, s_{pi+ pi-}, t_{pi+}, alpha) of
:func:`hepgen.physics.kinematics.lab_to_invariants`, min-max scaled to [-1, 1] by scalers that
are fitted once, on the folding GAN's training data, and saved with its weights:

* :class:`FoldingGAN` learns p(detector invariants | vertex invariants [, s]) from paired
  phase-space events; it is a fast surrogate of the detector simulation.
* :class:`UnfoldingGAN` learns the vertex-level distribution p(vertex invariants | s) whose
  image under the frozen folding generator matches the measured detector-level events.

The training step is the reference's (JLab ``tf_cgan_v0``): one fake batch, ``n_disc``
discriminator updates on [fake; real] with noisy targets (0 + 0.05 U, 1 + 0.05 U), then one
non-saturating generator update. Shapes: B events, scaled units unless stated.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from lightning.pytorch.utilities import rank_zero_warn

from datamodules.base import global_batch_index
from hepgen.distributed import gather_objects
from hepgen.errors import ConfigValueError
from hepgen.metrics.distributions import density_chi2
from hepgen.models.gan import AdversarialModule
from hepgen.nn.cgan import ConditionalDiscriminator, ConditionalGenerator
from hepgen.nn.scaling import MinMaxScaler
from hepgen.physics.kinematics import INVARIANT_NAMES

BatchNormMode = Literal["batch", "frozen"]
#: Constructor arguments that are factories, not hyperparameters (they are not saved).
_FACTORIES = ["optimizer_g", "optimizer_d", "lr_scheduler_g", "lr_scheduler_d"]


def reference_adam(params) -> torch.optim.Adam:
    """The reference optimizer: Adam(lr 1e-5, beta_1 0.5) with Keras' epsilon 1e-7."""
    return torch.optim.Adam(params, lr=1e-5, betas=(0.5, 0.999), eps=1e-7)


class _AIDAPTGAN(AdversarialModule):
    """The shared step, evaluation and scalers of the AIDAPT GANs.

    Subclasses build ``generator``, ``discriminator`` and the scalers, and implement
    :meth:`discriminator_label` (the condition D sees, scaled), :meth:`_real` (real samples D sees)
    and :meth:`_fake` (a fresh generated batch in D's space).
    """

    monitor = "val/chi2"
    monitor_mode = "min"
    default_optimizer = staticmethod(reference_adam)
    # binary cross-entropy of D's output 1/2 against any target in [0, 1.05]
    loss_equilibrium = math.log(2.0)

    def __init__(
        self,
        optimizer_g: OptimizerCallable | None,
        optimizer_d: OptimizerCallable | None,
        lr_decay: bool = False,
        lr_scheduler_g: LRSchedulerCallable | None = None,
        lr_scheduler_d: LRSchedulerCallable | None = None,
    ) -> None:
        super().__init__(
            optimizers={"generator": optimizer_g, "discriminator": optimizer_d},
            lr_schedulers={"generator": lr_scheduler_g, "discriminator": lr_scheduler_d},
            lr_decay=lr_decay,
        )
        self._start_evaluation()

    # --- what a subclass provides ----------------------------------------------------------
    def discriminator_label(self, batch: dict) -> torch.Tensor:
        raise NotImplementedError

    def _real(self, batch: dict) -> torch.Tensor:
        raise NotImplementedError

    def _fake(self, batch: dict, generator: torch.Generator | None = None) -> torch.Tensor:
        raise NotImplementedError

    def critic(self, label: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """D's logits (B,) for samples x (B, 4) under the condition ``label`` (both scaled)."""
        return self.discriminator(label, x)

    def _noise(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.noise((n, self.hparams.noise_dim), generator)

    # --- training ----------------------------------------------------------------------------
    def training_step(self, batch: dict, batch_idx: int) -> dict[str, torch.Tensor]:
        label = self.discriminator_label(batch)
        real = self._real(batch)
        n = len(real)
        with torch.no_grad():
            fake = self._fake(batch)
        d_label = torch.cat([label, label])
        samples = torch.cat([fake, real])
        is_real = torch.cat([torch.zeros(n, device=self.device), torch.ones(n, device=self.device)])
        # The reference's label noise shifts both classes up by U(0, 0.05): real targets exceed 1,
        # which BCE on logits accepts (and which makes the D loss unbounded below).
        targets = is_real + self.hparams.label_noise * torch.rand(2 * n, device=self.device)
        # n_disc updates on the same fake batch and targets, as in the reference.
        for _ in range(self.hparams.n_disc):
            logits = self.critic(d_label, samples)
            d_loss = F.binary_cross_entropy_with_logits(logits, targets)
            self.take_step("discriminator", d_loss)
        # accuracy of the last D pass, taken before its update (the reference's disc_acc)
        disc_acc = ((logits.detach() > 0) == (is_real > 0.5)).float().mean()

        # G update: D's parameters are switched off, so no D weight gradients are computed.
        with self.toggled_optimizer(self.optimizer("generator")):
            g_logits = self.critic(label, self._fake(batch))
            g_loss = F.binary_cross_entropy_with_logits(g_logits, torch.ones_like(g_logits))
            self.take_step("generator", g_loss)
        self.update_averages()
        self.log_dict(
            {"train/d_loss": d_loss.detach(), "train/g_loss": g_loss.detach(), "train/disc_acc": disc_acc},
            on_step=False,
            on_epoch=True,
            prog_bar=True,
            batch_size=n,
        )
        return {"d_loss": d_loss.detach(), "g_loss": g_loss.detach(), "disc_acc": disc_acc}

    # --- validation and test: the reference chi2 and D accuracy on held-out events -------------
    def _start_evaluation(self) -> None:
        # (global batch index, generated (B, 4), real (B, 4), D correct (2B,)) per batch
        self._eval_batches: list[tuple[int, torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def _evaluation_step(self, batch: dict, batch_idx: int) -> None:
        # A fixed noise stream per batch, seeded by the batch's index in the single-process
        # order: comparable across epochs, the same events get the same noise on any number of
        # ranks, and the global random state (which exact resume relies on) is not touched.
        index = global_batch_index(self._trainer, batch_idx)
        generator = torch.Generator(device=self.device).manual_seed(self.hparams.eval_seed + index)
        label = self.discriminator_label(batch)
        real, fake = self._real(batch), self._fake(batch, generator)
        logits = self.critic(torch.cat([label, label]), torch.cat([fake, real]))
        is_real = torch.cat([torch.zeros(len(real), device=self.device), torch.ones(len(real), device=self.device)])
        correct = (logits > 0) == (is_real > 0.5)
        self._eval_batches.append((index, fake.cpu(), real.cpu(), correct.cpu()))

    def _end_evaluation(self, stage: str) -> None:
        # chi2 is not additive over ranks: every rank gathers all batches, in single-process order
        parts = gather_objects(self._trainer, self._eval_batches)
        batches = sorted((b for part in parts for b in part), key=lambda b: b[0])
        self._start_evaluation()
        if not batches:
            return
        generated = torch.cat([b[1] for b in batches]).double().numpy()
        real = torch.cat([b[2] for b in batches]).double().numpy()
        chi2 = {name: density_chi2(generated[:, i], real[:, i]) for i, name in enumerate(INVARIANT_NAMES)}
        values = {f"{stage}/chi2/{name}": v for name, v in chi2.items()}
        values[f"{stage}/chi2"] = float(np.mean(list(chi2.values())))
        values[f"{stage}/disc_acc"] = torch.cat([b[3] for b in batches]).float().mean().item()
        # Every rank holds the same values; a max over ranks keeps them exact (a mean of W equal
        # floats need not be) and every rank logs them, so ModelCheckpoint can monitor them.
        self.log_dict(values, prog_bar=False, sync_dist=True, reduce_fx="max")

    def on_validation_epoch_start(self) -> None:
        self._start_evaluation()

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluation_step(batch, batch_idx)

    def on_validation_epoch_end(self) -> None:
        self._end_evaluation("val")

    # test runs the same evaluation as validation, logged under test/
    on_test_epoch_start = on_validation_epoch_start
    test_step = validation_step

    def on_test_epoch_end(self) -> None:
        self._end_evaluation("test")


class FoldingGAN(_AIDAPTGAN):
    """Inner GAN: detector invariants = G(vertex invariants [, s], z); a learned detector.

    Batches (physical units, from :class:`datamodules.aidapt.AIDAPTDataModule`):
    ``vertex`` (B, 4) and ``detector`` (B, 4) invariants in (GeV^2, GeV^2, GeV^2, rad),
    ``s_vertex`` (B, 1) GeV^2.

    Args:
        noise_dim: dimension of z (reference 100).
        generator_widths: hidden widths of G (reference 128/256/512, BatchNorm after each).
        discriminator_widths: hidden widths of D (reference 256/128/64).
        condition_on_s: also condition on s (the reference does not; smearing depends on the
            lab momenta, hence on s).
        residual_scale: learn the migration instead of the detector value (``None``: the
            reference's plain tanh output). G then outputs vertex + sigma * residual_scale *
            tanh(...), a migration of at most ``residual_scale`` detector resolutions sigma
            (per invariant, measured on the training pairs), and D also sees the migration
            (detector - vertex) / sigma of every sample. A detector moves the invariants by a
            few resolutions, 1e-2 of their range, which a D fed raw values barely resolves.
        generator_bn: ``batch`` (BatchNorm with batch statistics in training, running ones in
            evaluation) or ``frozen`` (always the running statistics, which never move from 0/1:
            BN is then a learned affine map, exactly what the Keras reference does).
        n_disc: discriminator updates per generator update (reference 5).
        label_noise: U(0, label_noise) added to the 0/1 targets of D (reference 0.05).
        optimizer_g, optimizer_d: optimizer factories (default: the reference Adam).
        lr_decay: decay both learning rates linearly to 0 at the trainer's max_epochs
            (the reference keeps them constant; :class:`hepgen.models.gan.LinearDecayLR`).
        lr_scheduler_g, lr_scheduler_d: learning-rate schedulers instead, stepped once per epoch.
        eval_seed: seed of the validation noise (plus the global batch index).
    """

    def __init__(
        self,
        noise_dim: int = 100,
        generator_widths: Sequence[int] = (128, 256, 512),
        discriminator_widths: Sequence[int] = (256, 128, 64),
        condition_on_s: bool = False,
        residual_scale: float | None = None,
        generator_bn: BatchNormMode = "frozen",
        n_disc: int = 5,
        label_noise: float = 0.05,
        optimizer_g: OptimizerCallable | None = None,
        optimizer_d: OptimizerCallable | None = None,
        lr_decay: bool = False,
        eval_seed: int = 0,
        lr_scheduler_g: LRSchedulerCallable | None = None,
        lr_scheduler_d: LRSchedulerCallable | None = None,
    ) -> None:
        super().__init__(optimizer_g, optimizer_d, lr_decay, lr_scheduler_g, lr_scheduler_d)
        if generator_bn not in ("batch", "frozen"):
            raise ValueError(f"generator_bn={generator_bn!r}: choose 'batch' or 'frozen'.")
        self.save_hyperparameters(ignore=_FACTORIES)
        n_inv = len(INVARIANT_NAMES)
        label_dim = n_inv + int(condition_on_s)
        self.generator = ConditionalGenerator(
            label_dim, noise_dim, n_inv, generator_widths, batch_norm=True, residual_scale=residual_scale
        )
        critic_in = 2 * n_inv if residual_scale is not None else n_inv
        self.discriminator = ConditionalDiscriminator(label_dim, critic_in, discriminator_widths)
        self.v_scaler = MinMaxScaler(n_inv)
        self.d_scaler = MinMaxScaler(n_inv)
        self.s_scaler = MinMaxScaler(1)
        # detector resolution per invariant in scaled units (fitted with the scalers)
        self.register_buffer("resolution", torch.ones(n_inv))
        # Lightning 2.6 never calls .train() when fit starts (it restores each module's own mode
        # around validation), so the frozen BatchNorm layers are put in evaluation mode here.
        self.train()

    @classmethod
    def load_frozen(
        cls, spec: str | Path, option: str = "folding_ckpt", hint: str = "", root: str | Path | None = None
    ) -> FoldingGAN:
        """A trained FoldingGAN from a checkpoint path or run reference, frozen (the unfolding's ``folding_ckpt``)."""
        hint = hint or (
            "Train the folding GAN first (hepgen fit -c experiments/aidapt/inner.yaml) and point "
            f"{option} at its checkpoint (a file, or run:aidapt/inner@latest:last)."
        )
        folding = super().load_frozen(spec, option=option, hint=hint, root=root)
        if not bool(folding.v_scaler.fitted):
            raise ConfigValueError(f"{option}: {spec} holds no fitted scalers; it is not a trained FoldingGAN.")
        return folding

    # --- scalers: fitted once on the training split, then part of the checkpoint --------------
    def on_fit_start(self) -> None:
        super().on_fit_start()
        self._ensure_scalers(training=True)

    def on_test_start(self) -> None:
        self._ensure_scalers(training=False)

    def on_predict_start(self) -> None:
        self._ensure_scalers(training=False)

    def _ensure_scalers(self, training: bool) -> None:
        if bool(self.v_scaler.fitted):
            return
        datamodule = self.trainer.datamodule
        if datamodule is None:
            raise RuntimeError("FoldingGAN without a datamodule: call model.fit_scalers(vertex, detector, s) first.")
        if not training:
            rank_zero_warn(
                "this FoldingGAN is untrained (no checkpoint given): its scalers are fitted on the training "
                "split now and its output is noise. Pass --ckpt_path last (or best, or a file) to evaluate a trained one."
            )
        train = datamodule.training_sample()  # the datamodule contract: works for lazy datasets too
        self.fit_scalers(train["vertex"], train["detector"], train["s_vertex"])

    def fit_scalers(self, vertex: torch.Tensor, detector: torch.Tensor, s: torch.Tensor) -> None:
        """Fit the three scalers on training events (physical units): (N, 4), (N, 4), (N, 1)."""
        self.v_scaler.fit(vertex)
        self.d_scaler.fit(detector)
        self.s_scaler.fit(s)
        vertex_scaled = self.v_scaler(vertex.to(self.resolution.device, torch.float32))
        shift = self.d_scaler(detector.to(self.resolution.device, torch.float32)) - self._in_detector_units(vertex_scaled)
        shift = _wrap_periodic(shift)
        # a robust width (1.4826 * median absolute deviation): the few events far in the tails
        # (mismeasured tracks) must not set the scale of the typical migration
        mad = (shift - shift.median(0).values).abs().median(0).values
        self.resolution.copy_((1.4826 * mad).clamp_min(1e-6))

    def train(self, mode: bool = True):
        super().train(mode)
        if self.hparams.generator_bn == "frozen":
            for layer in self.generator.modules():
                if isinstance(layer, torch.nn.BatchNorm1d):
                    layer.eval()
        return self

    # --- the conditional map in scaled units ----------------------------------------------------
    def generator_label(self, vertex_scaled: torch.Tensor, s_scaled: torch.Tensor | None) -> torch.Tensor:
        """G's condition: (B, 4) scaled vertex invariants, plus (B, 1) scaled s if conditioned on s."""
        if not self.hparams.condition_on_s:
            return vertex_scaled
        if s_scaled is None:
            raise ValueError("this FoldingGAN is conditioned on s: pass s")
        return torch.cat([vertex_scaled, s_scaled], dim=1)

    def fold_scaled(
        self,
        vertex_scaled: torch.Tensor,
        s_scaled: torch.Tensor | None,
        generator: torch.Generator | None = None,
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Scaled vertex invariants (B, 4) [and s (B, 1)] -> scaled detector invariants (B, 4), with
        ``noise`` (B, noise_dim) standard normal given or drawn from ``generator``.

        Differentiable in ``vertex_scaled`` (the unfolding GAN trains through it).
        """
        label = self.generator_label(vertex_scaled, s_scaled)
        noise = self._noise(len(label), generator) if noise is None else noise
        generator_net = self.network("generator")  # the averaged copy in evaluation, if any
        if self.hparams.residual_scale is None:
            return generator_net(label, noise)
        migration = generator_net(label, noise)  # in detector resolutions
        return _wrap_periodic(self._in_detector_units(vertex_scaled) + self.resolution * migration)

    def _in_detector_units(self, vertex_scaled: torch.Tensor) -> torch.Tensor:
        """The same physical values expressed in the detector scaler's units (B, 4)."""
        return self.d_scaler(self.v_scaler.inverse(vertex_scaled))

    def critic(self, label: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if self.hparams.residual_scale is None:
            return self.discriminator(label, x)
        vertex_scaled = label[:, : len(INVARIANT_NAMES)]
        migration = _wrap_periodic(x - self._in_detector_units(vertex_scaled)) / self.resolution
        return self.discriminator(label, torch.cat([x, migration], dim=1))

    @torch.no_grad()
    def fold(self, vertex: torch.Tensor, s: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Physical vertex invariants (B, 4) at s (B, 1) GeV^2 -> generated detector invariants (B, 4)."""
        vertex, s = vertex.to(self.device, torch.float32), s.to(self.device, torch.float32)
        scaled = self.fold_scaled(self.v_scaler(vertex), self.s_scaler(s), generator)
        return self.d_scaler.inverse(scaled)

    # --- the adversarial step's pieces ----------------------------------------------------------
    def discriminator_label(self, batch: dict) -> torch.Tensor:
        return self.generator_label(self.v_scaler(batch["vertex"]), self.s_scaler(batch["s_vertex"]))

    def _real(self, batch: dict) -> torch.Tensor:
        return self.d_scaler(batch["detector"])

    def _fake(self, batch: dict, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.fold_scaled(self.v_scaler(batch["vertex"]), self.s_scaler(batch["s_vertex"]), generator)

    @torch.no_grad()
    def evaluation_samples(self, batch: dict, generator: torch.Generator) -> dict[str, tuple]:
        """The evaluation protocol: ``{name: (reference, generated)}``, B events each.

        ``detector`` (B, 4) physical invariants (GeV^2, GeV^2, GeV^2, rad): simulated vs folded
        from the same vertex events; ``detector_scaled`` the same in the detector scaler's
        units; ``detector_condition`` (B, 4|5) the scaled condition D sees (both sides);
        ``detector_s`` (B, 1) GeV^2, the s of each side (measured; the vertex s the GAN folds at).
        Only the generated side draws from ``generator`` (as :meth:`fold` does).
        """
        batch = _float32_on(batch, self.device)
        generated = self.fold(batch["vertex"], batch["s_vertex"], generator)
        samples = _level_samples("detector", batch["detector"], generated, self.d_scaler, self.discriminator_label(batch))
        samples["detector_s"] = (batch["s_detector"], batch["s_vertex"])  # each side's s, for the physical region
        return samples

    def export_graphs(self, dtype: torch.dtype = torch.float64) -> list:
        """The folding generator as one graph for :mod:`hepgen.export`: vertex invariants, s and the
        noise -> detector invariants, in physical units, computed in ``dtype``."""
        from hepgen.export import GeneratorGraph

        graph = _AIDAPTGraph(self, dtype, "fold")
        vertex = _invariants_spec("vertex_invariants", "vertex-level", self.v_scaler)
        inputs = [vertex, _s_spec(self), _noise_spec(self)]
        notes = [] if self.hparams.condition_on_s else ["This folding GAN is not conditioned on s: s is fed, not used."]
        outputs = [_invariants_spec("detector_invariants", "generated detector-level", None)]
        return [GeneratorGraph("folding_generator", graph, inputs, outputs, "A(i)DAPT folding generator", notes)]

    def predict_step(self, batch: dict, batch_idx: int) -> dict[str, torch.Tensor]:
        # global random stream: `--seed_everything` chooses the sample
        detector = self.fold(batch["vertex"], batch["s_vertex"])
        return {"invariants": detector, "s": batch["s_vertex"], "phi": batch["phi_vertex"], "level": "detector"}


class UnfoldingGAN(_AIDAPTGAN):
    """Outer GAN: vertex invariants = G(s, z), trained so that their folding matches the data.

    The frozen generator of a trained :class:`FoldingGAN` (``folding_ckpt``) maps generated
    vertex events to detector level with fresh noise; the discriminator compares (s, folded)
    with (s, measured detector invariants). The generator's gradient flows through the frozen
    folding generator, whose weights, BatchNorm statistics and scalers never change. The
    folding GAN's scalers are used throughout: the unfolded events live in the space the
    folding generator was trained in (the reference refits scalers here; hepgen never does).

    Batches: ``detector`` (B, 4) and ``s_detector`` (B, 1) (the data), and, for the closure
    metrics only, the true ``vertex`` (B, 4).

    Args:
        folding_ckpt: a trained :class:`FoldingGAN`: its checkpoint file or a run reference
            such as ``run:aidapt/inner@latest:last`` (see :func:`hepgen.models.gan.load_frozen`).
        noise_dim: dimension of z.
        generator_widths: hidden widths of G (reference 16/32/64/128/256/512/1024, BatchNorm).
        discriminator_widths: hidden widths of D (reference 1024/512/256/128/64/32/16).
        n_disc: discriminator updates per generator update (reference 1).
        label_noise: as in :class:`FoldingGAN`.
        optimizer_g, optimizer_d: optimizer factories (default: the reference Adam).
        lr_decay: decay both learning rates linearly to 0 at the trainer's max_epochs
            (the reference keeps them constant; :class:`hepgen.models.gan.LinearDecayLR`).
        lr_scheduler_g, lr_scheduler_d: learning-rate schedulers instead, stepped once per epoch.
        eval_seed: seed of the validation noise (plus the global batch index).
    """

    def __init__(
        self,
        folding_ckpt: str,
        noise_dim: int = 100,
        generator_widths: Sequence[int] = (16, 32, 64, 128, 256, 512, 1024),
        discriminator_widths: Sequence[int] = (1024, 512, 256, 128, 64, 32, 16),
        n_disc: int = 1,
        label_noise: float = 0.05,
        optimizer_g: OptimizerCallable | None = None,
        optimizer_d: OptimizerCallable | None = None,
        lr_decay: bool = False,
        eval_seed: int = 0,
        lr_scheduler_g: LRSchedulerCallable | None = None,
        lr_scheduler_d: LRSchedulerCallable | None = None,
    ) -> None:
        super().__init__(optimizer_g, optimizer_d, lr_decay, lr_scheduler_g, lr_scheduler_d)
        self.save_hyperparameters(ignore=_FACTORIES)
        self.folding = FoldingGAN.load_frozen(folding_ckpt)
        n_inv = len(INVARIANT_NAMES)
        self.generator = ConditionalGenerator(1, noise_dim, n_inv, generator_widths, batch_norm=True)
        self.discriminator = ConditionalDiscriminator(1, n_inv, discriminator_widths)

    @property
    def v_scaler(self) -> MinMaxScaler:
        return self.folding.v_scaler

    @property
    def d_scaler(self) -> MinMaxScaler:
        return self.folding.d_scaler

    @property
    def s_scaler(self) -> MinMaxScaler:
        return self.folding.s_scaler

    def unfold_scaled(
        self, s_scaled: torch.Tensor, generator: torch.Generator | None = None, noise: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Scaled s (B, 1) -> generated scaled vertex invariants (B, 4), with ``noise`` (B, noise_dim)
        standard normal given or drawn from ``generator``."""
        noise = self._noise(len(s_scaled), generator) if noise is None else noise
        return self.network("generator")(s_scaled, noise)

    @torch.no_grad()
    def unfold(self, s: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """s (B, 1) GeV^2 -> unfolded vertex invariants (B, 4), physical units."""
        return self.v_scaler.inverse(self.unfold_scaled(self.s_scaler(s.to(self.device, torch.float32)), generator))

    def discriminator_label(self, batch: dict) -> torch.Tensor:
        return self.s_scaler(batch["s_detector"])

    def _real(self, batch: dict) -> torch.Tensor:
        return self.d_scaler(batch["detector"])

    def _fake(self, batch: dict, generator: torch.Generator | None = None) -> torch.Tensor:
        s_scaled = self.s_scaler(batch["s_detector"])
        vertex = self.unfold_scaled(s_scaled, generator)
        return self.folding.fold_scaled(vertex, s_scaled, generator)

    @torch.no_grad()
    def evaluation_samples(self, batch: dict, generator: torch.Generator) -> dict[str, tuple]:
        """The evaluation protocol: ``{name: (reference, generated)}``, B events each.

        ``detector`` (B, 4): measured vs folded unfolded invariants (physical units),
        ``detector_scaled`` the same in scaled units, ``detector_condition`` (B, 1) the scaled
        s; when the batch holds the true ``vertex`` (made data: the closure test) also
        ``vertex`` (true vs unfolded), ``vertex_scaled`` and ``vertex_condition``; ``<level>_s``
        (B, 1) GeV^2 the s of each side. Only the
        generated sides draw from ``generator``: first the unfolding noise, then the folding's.
        """
        batch = _float32_on(batch, self.device)
        condition = self.discriminator_label(batch)
        vertex = self.unfold_scaled(condition, generator)
        folded = self.folding.fold_scaled(vertex, condition, generator)
        samples = _level_samples("detector", batch["detector"], self.d_scaler.inverse(folded), self.d_scaler, condition)
        samples["detector_s"] = (batch["s_detector"], batch["s_detector"])
        if "vertex" in batch:
            unfolded = self.v_scaler.inverse(vertex)
            samples.update(_level_samples("vertex", batch["vertex"], unfolded, self.v_scaler, condition))
            samples["vertex_s"] = (batch["s_vertex"], batch["s_detector"])
        return samples

    def export_graphs(self, dtype: torch.dtype = torch.float64) -> list:
        """The unfolding generator as one graph for :mod:`hepgen.export`: s and the noise -> unfolded
        vertex invariants in physical units, computed in ``dtype`` (the folding generator it was
        trained through is exported from its own run)."""
        from hepgen.export import GeneratorGraph

        graph = _AIDAPTGraph(self, dtype, "unfold")
        outputs = [_invariants_spec("vertex_invariants", "unfolded vertex-level", None)]
        return [GeneratorGraph("unfolding_generator", graph, [_s_spec(self), _noise_spec(self)], outputs,
                               "A(i)DAPT unfolding generator")]  # fmt: skip

    def predict_step(self, batch: dict, batch_idx: int) -> dict[str, torch.Tensor]:
        vertex = self.unfold(batch["s_detector"])
        return {"invariants": vertex, "s": batch["s_detector"], "phi": batch["phi_detector"], "level": "vertex"}


#: Units of the four invariants (INVARIANT_NAMES): three Mandelstam-like masses squared and an angle.
INVARIANT_UNITS = "GeV^2, GeV^2, GeV^2, rad"


class _AIDAPTGraph(torch.nn.Module):
    """A folding or unfolding GAN's generator on positional float32 tensors in physical units, for a
    graph export: ``fold``: vertex invariants (B, 4), s (B, 1) GeV^2, noise (B, noise_dim) ->
    (detector invariants (B, 4),); ``unfold``: s (B, 1), noise -> (vertex invariants (B, 4),)."""

    def __init__(self, model: _AIDAPTGAN, dtype: torch.dtype, direction: str) -> None:
        super().__init__()
        if not bool(model.v_scaler.fitted):
            raise ConfigValueError(f"{type(model).__name__}: its scalers are not fitted; export a trained model.")
        self.model = copy.deepcopy(model).cpu().eval().to(dtype)
        self.dtype, self.direction = dtype, direction

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor]:
        model = self.model
        *given, noise = (x.to(self.dtype) for x in inputs)
        if self.direction == "fold":
            vertex, s = given
            scaled = model.fold_scaled(model.v_scaler(vertex), model.s_scaler(s), noise=noise)
            return (model.d_scaler.inverse(scaled).float(),)
        (s,) = given
        return (model.v_scaler.inverse(model.unfold_scaled(model.s_scaler(s), noise=noise)).float(),)


def _scaler_range(scaler: MinMaxScaler) -> list[tuple[float, float]]:
    return [(float(lo), float(lo + width)) for lo, width in zip(scaler.data_min, scaler.data_range)]


def _invariants_spec(name: str, what: str, scaler: MinMaxScaler | None):
    from hepgen.export import TensorSpec

    return TensorSpec(
        name, (len(INVARIANT_NAMES),), INVARIANT_UNITS, f"{what} invariants {', '.join(INVARIANT_NAMES)}",
        valid_range=None if scaler is None else _scaler_range(scaler),
    )


def _s_spec(model: _AIDAPTGAN):
    from hepgen.export import TensorSpec

    return TensorSpec("s", (1,), "GeV^2", "squared centre-of-mass energy of the event",
                      valid_range=_scaler_range(model.s_scaler)[0])  # fmt: skip


def _noise_spec(model: _AIDAPTGAN):
    from hepgen.export import TensorSpec

    return TensorSpec("noise", (model.hparams.noise_dim,), "", "the generator's latent noise",
                      distribution="normal(0, 1)")  # fmt: skip


def _wrap_periodic(x: torch.Tensor) -> torch.Tensor:
    """Bring alpha (column 3, period 2 pi = 2 in scaled units) back into [-1, 1).

    alpha is an angle: a migration across 0 = 2 pi is small, not a jump across the range.
    Min-max scaling of a sample filling [0, 2 pi) maps the period onto 2 scaled units.
    """
    alpha = torch.remainder(x[:, 3:4] + 1.0, 2.0) - 1.0
    return torch.cat([x[:, :3], alpha], dim=1)


def _float32_on(batch: dict, device: torch.device) -> dict[str, torch.Tensor]:
    """The batch's float tensors as float32 on ``device`` (a training sample may sit on the CPU)."""
    return {k: v.to(device, torch.float32) if torch.is_floating_point(v) else v for k, v in batch.items()}


def _level_samples(level: str, reference: torch.Tensor, generated: torch.Tensor, scaler: MinMaxScaler, condition):
    """``level``, ``level_scaled`` and ``level_condition`` entries of the evaluation protocol.

    The scaled generated sample is taken from the physical one (not the generator's scaled
    output), so metrics on it are those hepgen reported before the protocol existed.
    """
    return {
        level: (reference, generated),
        f"{level}_scaled": (scaler(reference), scaler(generated)),
        f"{level}_condition": (condition, condition),
    }
