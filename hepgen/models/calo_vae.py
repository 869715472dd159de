"""CaloVAE: a conditional VAE with KL annealing for fast calorimeter-shower simulation.

The model learns p(shower | E_inc, particle) for a calorimeter read out in layers of cells: the
CaloGAN geometry (three layers) by default, or any layers the datamodule names (``layer_shapes``;
the CaloChallenge r-alpha binnings). Its decoder generates, per layer, an energy (Gaussian in
log(E_l / E_inc)), a set of hit cells (Bernoulli per cell) and the sharing of the layer energy
among the hit cells, so that energy and sparsity are modelled explicitly (see
:mod:`hepgen.nn.shower`). The sharing is a softmax of the decoder's logits (``sharing: softmax``:
each z gives one shape) or log-normal per cell (``lognormal``: the shape fluctuates around it
from shower to shower, as real showers do), in chosen layers a mixture of log-normals per cell
(``sharing_components``: a cell lit by soft photons only or by a shower particle); the fractions are
scored as the cells' log-energies or with their normalisation integrated out (``sharing_shift``).
With ``cells_given_energies`` the hit cells and their sharing are drawn given the layer energies
drawn first, and with ``cells_given_centroids`` given the chosen layers' centres as well; in the
``brightest_cell_layers`` the shares of the brightest cells are drawn with them (a mixture of
Gaussians each), then where those cells are, then the other cells for the rest. The loss per shower is

    L = NLL_energy [+ NLL_centre + NLL_brightest_share] + BCE_hits + NLL_sharing
        + beta(step) * sum_d max(KL_d, free_bits)

with ``beta`` from :func:`hepgen.models.kl_schedule.kl_weight`. The best checkpoint is chosen by
``val/objective``, L at the final beta (``kl_beta_max``): what training minimises once the warm-up
is over. ``val/neg_elbo`` is the true negative ELBO (beta = 1, no free bits); with a small final beta
it stops improving while the codes still learn (their KL grows by more than the reconstruction
gains), and as a monitor it picked checkpoints from a third of the way through training.

Generation draws z from N(0, I) (``latent_density: normal``) or from a conditional flow fitted,
during training, to the encoder's codes (``flow``): with a small beta the aggregate posterior is
far from N(0, I), and codes drawn from the prior would be showers the decoder never learnt.
"""

from __future__ import annotations

import copy
import math
from typing import Literal

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn

from datamodules.base import global_batch_index
from hepgen.errors import ConfigValueError
from hepgen.memory import keep_freed_memory
from hepgen.models.seeding import reseed_for_rank
from hepgen.models.kl_schedule import KLScheduleName, kl_weight
from hepgen.nn.flows import ConditionalCouplingFlow
from hepgen.nn.shower import (
    BrightestShares, LayerCentroids, LayerwiseDecoder, LayerwiseEncoder, ShowerRepresentation,
    brightest_cell_nll, condition_features, gaussian_mixture_nll,
    brightest_first_from_uniform, cells_from_uniform, lognormal_mixture_sharing_nll, lognormal_sharing_nll,
    shift_marginal_sharing_nll,
)  # fmt: skip
from hepgen.physics.calo_geometry import LAYER_SHAPES

#: Showers per pass of :meth:`CaloVAE.generate` (and of :class:`CompiledShowerGenerator`) on a CPU:
#: 10,000 CaloGAN showers make tensors of 10 MB per layer, and each element-wise step is a pass
#: through main memory; in chunks of 4,096 more of it stays in cache (at one thread 15-20 % more
#: showers/s at batch 10,000, at two 0-4 %; compiled, no chunk size of 1,024 to 4,096 was clearly
#: best). The chunks decide which random numbers each shower gets: a seeded batch larger than this
#: gives the same showers only with the same chunk size.
CPU_GENERATION_CHUNK = 4096
#: Gaussians in the mixture a brightest cell's share is drawn from: a layer reached by one shower
#: particle, by two, or by soft photons only (CaloGAN's last layer: shares near 0.9, 0.5 and below 0.4).
BRIGHTEST_SHARE_COMPONENTS = 3
#: Showers per batch when the latent flow is refitted to the encoder's codes (:meth:`CaloVAE.refit_latent_flow`).
FLOW_REFIT_BATCH = 1024

SharingName = Literal["softmax", "lognormal"]
SharingShiftName = Literal["fixed", "marginal"]
LatentDensityName = Literal["normal", "flow"]
GenerationDtypeName = Literal["float32", "bfloat16"]


def _components_per_layer(components: int | list[int], sharing: str, layer_keys: tuple[str, ...]) -> list[int]:
    """``sharing_components`` as one count per layer, checked against the layers and the sharing."""
    counts = [components] * len(layer_keys) if isinstance(components, int) else list(components)
    if len(counts) != len(layer_keys):
        raise ConfigValueError(
            f"model sharing_components={components}: give one number, or one per layer "
            f"({len(layer_keys)}: {', '.join(layer_keys)})."
        )
    if any(k < 1 for k in counts):
        raise ConfigValueError(f"model sharing_components={components}: each layer needs at least 1 Gaussian per cell.")
    if sharing == "softmax" and any(k != 1 for k in counts):
        raise ConfigValueError(
            f"model sharing_components={components} needs sharing: lognormal (a softmax has no per-cell noise)."
        )
    return counts


def _brightest_cell_layers(keys: list[str], layer_keys: tuple[str, ...], sharing: str, given_energies: bool):
    """``brightest_cell_layers`` checked against the layers and the options: the chosen keys in layer order."""
    for key in keys:
        if key not in layer_keys:
            raise ConfigValueError(
                f"model brightest_cell_layers: {key!r} is not a layer; the layers are {', '.join(layer_keys)}."
            )
    if keys and sharing != "lognormal":
        raise ConfigValueError(
            "model brightest_cell_layers needs sharing: lognormal (a softmax has no per-cell noise)."
        )
    if keys and not given_energies:
        raise ConfigValueError(
            "model brightest_cell_layers needs cells_given_energies: true (the brightest cell's share is drawn "
            "with the layer energies, before the cells)."
        )
    return [key for key in layer_keys if key in keys]


def _centroid_layers(keys: list[str], shapes: dict[str, tuple[int, ...]], given_energies: bool) -> list[str]:
    """``cells_given_centroids`` checked against the layers: grids of (rows, columns), drawn for."""
    for key in keys:
        if key not in shapes:
            raise ConfigValueError(
                f"model cells_given_centroids: {key!r} is not a layer; the layers are {', '.join(shapes)}."
            )
        if len(shapes[key]) != 2:
            raise ConfigValueError(
                f"model cells_given_centroids: layer {key!r} has shape {list(shapes[key])}; a centre needs "
                "a grid of (rows, columns)."
            )
    if keys and not given_energies:
        raise ConfigValueError(
            "model cells_given_centroids needs cells_given_energies: true (the centres are drawn with the "
            "layer energies, before the cells)."
        )
    return list(keys)


class CaloVAE(LightningModule):
    """Conditional VAE for calorimeter showers read out in layers.

    Args:
        layer_shapes: ``{batch key: cell-array shape}`` of the layers, in order (the datamodule's
            ``layer_shapes``, linked by the CLI); the CaloGAN layers when unset.
        latent_dim: dimension of z.
        hidden: width of the encoder/decoder trunks.
        branch: width of the per-layer branches.
        num_particles: number of particle species in the data (the datamodule's ``particles``).
        kl_schedule: ``constant``, ``linear``, ``sigmoid`` or ``cyclical`` (see kl_schedule).
        kl_warmup_steps: optimizer steps of the KL warm-up.
        kl_beta_max: KL weight after warm-up (1 = the true ELBO).
        kl_cycles: number of cycles of the ``cyclical`` schedule.
        free_bits: KL floor per latent dimension in nats (0 = off); keeps codes from collapsing.
        sharing: how a layer's energy is shared among its hit cells: ``softmax`` or ``lognormal``.
        sharing_components: for ``lognormal``, the Gaussians of each cell's log-fraction: one
            number for every layer or one per layer, in layer order (1: one Gaussian; more: a
            mixture, for layers whose cells hold either soft photons or a shower particle).
        sharing_shift: how ``lognormal`` scores the fractions: ``fixed`` takes log s as the cells'
            log-energies; ``marginal`` integrates out the normalisation that hides their common
            shift, the density of the drawn sharing (exact for one Gaussian per cell, by Laplace's
            method for a mixture: :func:`shift_marginal_sharing_nll`).
        latent_density: what generation draws z from: ``normal`` (the prior) or ``flow``.
        flow_transforms, flow_hidden: coupling layers and their width for ``latent_density: flow``.
        flow_refit_epochs: with ``latent_density: flow``, after the last step of every epoch past
            the KL warm-up (before that epoch's validation and checkpoint), fit the flow again for
            this many passes over the codes the encoder now gives the training sample
            (:meth:`refit_latent_flow`); 0: the flow only learns alongside the encoder.
        cells_given_energies: draw the layer energies first and each layer's cells given them
            (the decoder's branches see the standardised layer energies), instead of both side by
            side from z.
        cells_given_centroids: layers (keys of ``layer_shapes``, each a grid of rows and columns)
            whose energy-weighted centre is drawn with the layer energies and given to the cells
            (:class:`~hepgen.nn.shower.LayerCentroids`); needs ``cells_given_energies``.
        brightest_cell_layers: layers (keys of ``layer_shapes``) whose brightest cells come first:
            their shares are drawn with the layer energies, each from a mixture of
            ``BRIGHTEST_SHARE_COMPONENTS`` Gaussians given the shares drawn before it
            (:class:`~hepgen.nn.shower.BrightestShares`), then where they are, then the other cells
            for the rest (:func:`~hepgen.nn.shower.brightest_cell_nll`); for a layer whose energy often comes from
            one or two shower particles. Needs ``sharing: lognormal`` and ``cells_given_energies``.
        brightest_cells: how many of the brightest cells of the ``brightest_cell_layers`` are drawn
            first, each with its share of what the ones before it left (1 or more).
        generation_dtype: the precision of the decoder's trunk and layer branches (its energy
            head, the latent flow and the brightest shares' mixtures stay float32) when showers are
            generated (in :meth:`generate`, and so in the evaluation and ``predict``; training stays
            float32): ``bfloat16`` runs those matrix products, most of generation's arithmetic,
            twice as fast on CPUs with AVX512-BF16 or AMX and on GPUs (and slower than float32 on
            other CPUs). A cell's energy then differs from float32's by 1-2 % (median; quickstart
            model), well inside its shower-to-shower spread.
        compile_generation: ``predict`` draws its showers with a :class:`CompiledShowerGenerator` of
            the weights it predicts with (the first batch compiles, for about half a minute): on a CPU
            1.6-1.9 times the showers/s of :meth:`generate` at batch 10,000 and about 4 times at
            batch 1, the same showers up to rounding. (``predict`` makes malloc keep freed memory
            either way, :func:`hepgen.memory.keep_freed_memory`.)
        optimizer: optimizer factory (Adam, lr 1e-3 by default).
        lr_scheduler: optional scheduler factory, stepped once per epoch.
    """

    monitor = "val/objective"
    monitor_mode = "min"

    def __init__(
        self,
        latent_dim: int = 16,
        hidden: int = 256,
        branch: int = 128,
        num_particles: int = 1,
        kl_schedule: KLScheduleName = "linear",
        kl_warmup_steps: int = 2000,
        kl_beta_max: float = 1.0,
        kl_cycles: int = 4,
        free_bits: float = 0.0,
        sharing: SharingName = "softmax",
        sharing_components: int | list[int] = 1,
        sharing_shift: SharingShiftName = "fixed",
        latent_density: LatentDensityName = "normal",
        flow_transforms: int = 6,
        flow_hidden: int = 64,
        flow_refit_epochs: int = 0,
        cells_given_energies: bool = False,
        cells_given_centroids: list[str] | None = None,
        brightest_cell_layers: list[str] | None = None,
        brightest_cells: int = 1,
        layer_shapes: dict[str, list[int]] | None = None,
        generation_dtype: GenerationDtypeName = "float32",
        compile_generation: bool = False,
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        super().__init__()
        if sharing not in ("softmax", "lognormal"):
            raise ValueError(f"sharing={sharing!r}: choose 'softmax' or 'lognormal'.")
        if sharing_shift not in ("fixed", "marginal"):
            raise ConfigValueError(f"model sharing_shift={sharing_shift!r}: choose 'fixed' or 'marginal'.")
        if sharing_shift == "marginal" and sharing == "softmax":
            raise ConfigValueError(
                "model sharing_shift: marginal needs sharing: lognormal (a softmax has no shift to integrate)."
            )
        if latent_density not in ("normal", "flow"):
            raise ValueError(f"latent_density={latent_density!r}: choose 'normal' or 'flow'.")
        if flow_refit_epochs < 0 or (flow_refit_epochs and latent_density != "flow"):
            raise ConfigValueError(
                f"model flow_refit_epochs={flow_refit_epochs}: a number of passes (0 = off) for latent_density: flow."
            )
        if generation_dtype not in ("float32", "bfloat16"):
            raise ConfigValueError(f"model generation_dtype={generation_dtype!r}: choose 'float32' or 'bfloat16'.")
        self.save_hyperparameters()
        self._predict_generator: CompiledShowerGenerator | None = None  # set for a predict (compile_generation)
        # (lowest, highest) incident energy of the training showers, GeV: the valid range of an
        # exported generator's condition; kept in the checkpoint (None in checkpoints from before)
        self.incident_energy_range_gev: tuple[float, float] | None = None
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        shapes = layer_shapes or LAYER_SHAPES
        self.layer_shapes = {k: tuple(v) for k, v in shapes.items()}
        self.layer_keys = tuple(self.layer_shapes)
        cells = [math.prod(shape) for shape in self.layer_shapes.values()]
        cond_dim = 1 + (num_particles if num_particles > 1 else 0)
        self.sharing_components = _components_per_layer(sharing_components, sharing, self.layer_keys)
        share_params = [1 if sharing == "softmax" else 2 if k == 1 else 3 * k for k in self.sharing_components]
        self.representation = ShowerRepresentation(cells)
        self.centroid_keys = _centroid_layers(cells_given_centroids or [], self.layer_shapes, cells_given_energies)
        self.centroids = (
            LayerCentroids([self.layer_shapes[k] for k in self.centroid_keys]) if self.centroid_keys else None
        )
        self.brightest_keys = _brightest_cell_layers(
            brightest_cell_layers or [], self.layer_keys, sharing, cells_given_energies
        )
        if brightest_cells < 1:
            raise ConfigValueError(f"model brightest_cells={brightest_cells}: draw at least 1 cell first.")
        n_shares = len(self.brightest_keys) * brightest_cells
        self.brightest_shares = BrightestShares(len(self.brightest_keys), brightest_cells) if n_shares else None
        extra_summaries = 2 * len(self.centroid_keys) + n_shares
        # a brightest-first layer's branch gives where its brightest cells are: n + 1 logits
        brightest_outputs = [n + 1 if key in self.brightest_keys else 0 for n, key in zip(cells, self.layer_keys)]
        self.encoder = LayerwiseEncoder(cells, cond_dim, latent_dim, hidden, branch)
        self.decoder = LayerwiseDecoder(
            cells, cond_dim, latent_dim, hidden, branch, share_params, cells_given_energies, extra_summaries,
            brightest_outputs, n_shares, BRIGHTEST_SHARE_COMPONENTS,
        )
        self.latent_flow = (
            ConditionalCouplingFlow(latent_dim, cond_dim, flow_transforms, flow_hidden)
            if latent_density == "flow"
            else None
        )

    @property
    def share_params(self) -> list[int]:
        """Sharing parameters per cell of each layer, as the decoder's branches give them (1 softmax,
        2 one Gaussian, 3 K a mixture of K; 5 two Gaussians in a copy folded for generation)."""
        return self.decoder.share_params

    # --- data in the model's representation ----------------------------------------------------
    def _cells(self, batch: dict) -> list[torch.Tensor]:
        return [batch[k].flatten(1) for k in self.layer_keys]

    def _summaries(self, batch: dict, energies: torch.Tensor) -> torch.Tensor:
        """What the cells are drawn for, standardised (B, L + 2 k + b): the layer energies (B, L)
        given, then the centres of the ``cells_given_centroids`` layers of ``batch`` and the
        brightest cells' shares of the ``brightest_cell_layers``."""
        parts = [energies]
        if self.centroids is not None:
            parts.append(self.centroids([batch[k].flatten(1) for k in self.centroid_keys]))
        if self.brightest_shares is not None:
            parts.append(self.brightest_shares([batch[k].flatten(1) for k in self.brightest_keys]))
        return torch.cat(parts, dim=1)

    def _condition(self, batch: dict) -> torch.Tensor:
        particle = batch.get("particle")
        if particle is None:
            # (B,) zeros shaped by the energies, not by len(): a graph export keeps B symbolic
            particle = torch.zeros_like(batch["energy"][:, 0], dtype=torch.long)
        return condition_features(batch["energy"], particle, self.hparams.num_particles)

    def on_fit_start(self) -> None:
        datamodule = self.trainer.datamodule
        if datamodule is None:  # plain dataloaders: the caller fits the representation
            if not bool(self.representation.fitted):
                raise RuntimeError("CaloVAE without a datamodule: call model.representation.fit(...) first.")
            if self.centroids is not None and not bool(self.centroids.fitted):
                raise RuntimeError("CaloVAE without a datamodule: call model.centroids.fit(...) first.")
            if self.brightest_shares is not None and not bool(self.brightest_shares.fitted):
                raise RuntimeError("CaloVAE without a datamodule: call model.brightest_shares.fit(...) first.")
            if self.hparams.flow_refit_epochs:
                raise RuntimeError(
                    "CaloVAE flow_refit_epochs refits on the datamodule's training sample: give a datamodule."
                )
            return
        # the datamodule contract's one way to training statistics (in-RAM and lazy data alike)
        data = datamodule.training_sample()
        n_data = int(data["particle"].max()) + 1
        if n_data > self.hparams.num_particles:
            raise ValueError(
                f"the data hold {n_data} particle species but the model was built with num_particles="
                f"{self.hparams.num_particles}; set model num_particles to the number of the datamodule's particles."
            )
        self.incident_energy_range_gev = (float(data["energy"].min()), float(data["energy"].max()))
        # Statistics are fitted once, on training data, and then live in the checkpoint.
        if not bool(self.representation.fitted):
            cells = [data[k].flatten(1).to(self.device) for k in self.layer_keys]
            self.representation.fit(cells, data["energy"].to(self.device))
        if self.centroids is not None and not bool(self.centroids.fitted):
            self.centroids.fit([data[k].flatten(1).to(self.device) for k in self.centroid_keys])
        if self.brightest_shares is not None and not bool(self.brightest_shares.fitted):
            self.brightest_shares.fit([data[k].flatten(1).to(self.device) for k in self.brightest_keys])

    def on_train_start(self) -> None:
        reseed_for_rank(self.trainer)  # each DDP rank its own reparametrisation noise

    # --- the objective ------------------------------------------------------------------------
    def _encode(self, cells: list[torch.Tensor], energies: torch.Tensor, cond: torch.Tensor):
        """The layers' sharing fractions (B, n_l) and q(z | shower): mean and log-variance (B, latent_dim)."""
        sharing = [ShowerRepresentation.sharing_fractions(x) for x in cells]
        shapes = [ShowerRepresentation.shape_features(s) for s in sharing]
        return sharing, *self.encoder(shapes, energies, cond)

    def losses(self, batch: dict, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Per-batch mean of each loss term, (scalar tensors)."""
        cells = self._cells(batch)
        cond = self._condition(batch)
        energies = self.representation.encode_energies(cells, batch["energy"])
        sharing, mean, log_var = self._encode(cells, energies, cond)
        eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        z = mean + torch.exp(0.5 * log_var) * eps
        summaries = self._summaries(batch, energies)
        # the cells are scored given the shower's own layer energies (and centres; teacher forcing);
        # generation draws these first and the cells for them
        h, e_mean, e_log_var = self.decoder.energies(z, cond)
        hit_logits, share_params = self.decoder.cells(h, summaries)

        energies_and_centres, shares = summaries.split([e_mean.shape[1], self._summary_sizes()[2]], dim=1)
        nll_summaries = 0.5 * (e_log_var + (energies_and_centres - e_mean) ** 2 / e_log_var.exp())
        nll_energy, nll_centre = (part.sum(1) for part in nll_summaries.split(self._summary_sizes()[:2], dim=1))
        nll_brightest_share = (
            gaussian_mixture_nll(*self.decoder.summary_mixture(h, shares), shares).sum(1)
            if self.brightest_keys
            else torch.zeros_like(nll_energy)
        )
        bce_hits = nll_sharing = 0.0
        per_layer = zip(
            self.layer_keys, hit_logits, share_params, sharing, cells, self.share_params, self.sharing_components
        )
        for key, hl, sp, s, x, p, k in per_layer:
            hit, bce_weight = x > 0, 1.0
            if key in self.brightest_keys:  # the brightest cell's location first, the other cells for the rest
                sp, location = sp.split([p * x.shape[1], x.shape[1] + 1], dim=1)
                nll_location, s, hit, bce_weight = brightest_cell_nll(location, s, hit, self.hparams.brightest_cells)
                nll_sharing = nll_sharing + nll_location
            bce = nn.functional.binary_cross_entropy_with_logits(hl, (x > 0).to(hl.dtype), reduction="none")
            bce_hits = bce_hits + (bce * bce_weight).sum(1)
            # sharing among the cells that are really hit; empty layers contribute 0
            if self.hparams.sharing == "softmax":  # a categorical: the cross-entropy of the fractions
                nll_sharing = nll_sharing - (s * torch.log_softmax(sp.masked_fill(~hit, -1e4), 1)).sum(1)
            else:
                nll_sharing = nll_sharing + self._sharing_nll(sp, s, hit, k)
        kl_per_dim = 0.5 * (mean**2 + log_var.exp() - 1.0 - log_var)  # (B, latent_dim)
        kl_floored = kl_per_dim.mean(0).clamp_min(self.hparams.free_bits).sum()
        recon = (nll_energy + nll_centre + nll_brightest_share + bce_hits + nll_sharing).mean()
        kl = kl_per_dim.sum(1).mean()
        terms = {
            "nll_energy": nll_energy.mean(),
            "bce_hits": bce_hits.mean(),
            "nll_sharing": nll_sharing.mean(),
            **({} if self.centroids is None else {"nll_centre": nll_centre.mean()}),
            **({} if self.brightest_shares is None else {"nll_brightest_share": nll_brightest_share.mean()}),
            "kl": kl,
            "kl_floored": kl_floored,
            "neg_elbo": recon + kl,
            "objective": recon + self.hparams.kl_beta_max * kl_floored,
            "recon": recon,
        }
        if self.latent_flow is not None:
            # the flow learns the codes the encoder gives (detached: it does not shape them)
            terms["flow_nll"] = -self.latent_flow.log_prob(z.detach(), cond).mean()
            if self.training:
                self._widen_code_support(z.detach())
        return terms

    def _summary_sizes(self) -> list[int]:
        """How many of the summaries are layer energies, centres and brightest shares."""
        shares = len(self.brightest_keys) * self.hparams.brightest_cells
        return [len(self.layer_keys), 2 * len(self.centroid_keys), shares]

    def _sharing_nll(self, params: torch.Tensor, sharing: torch.Tensor, hit: torch.Tensor, components: int):
        """-log p (B,) of one layer's log-normal sharing (see ``sharing_shift``): ``params``
        (B, share_params * n), ``sharing`` (B, n) fractions, ``hit`` (B, n) bool."""
        if self.hparams.sharing_shift == "marginal":
            return shift_marginal_sharing_nll(params, sharing, hit, components)
        if components == 1:
            return lognormal_sharing_nll(params, sharing, hit)
        return lognormal_mixture_sharing_nll(params, sharing, hit)

    def _widen_code_support(self, z: torch.Tensor) -> None:
        """Let the flow know the range of the codes (B, latent_dim) of this step, on all ranks."""
        low, high = z.min(0).values, z.max(0).values
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(low, op=torch.distributed.ReduceOp.MIN)
            torch.distributed.all_reduce(high, op=torch.distributed.ReduceOp.MAX)
        self.latent_flow.widen_support(low, high)

    def on_train_batch_end(self, outputs, batch: dict, batch_idx: int) -> None:
        # after the epoch's last step, before its validation and checkpoint (which then hold the refit flow)
        last_of_epoch = batch_idx + 1 == self.trainer.num_training_batches
        if self.hparams.flow_refit_epochs and last_of_epoch and self.global_step >= self.hparams.kl_warmup_steps:
            self.refit_latent_flow(self.trainer.datamodule.training_sample(), self.hparams.flow_refit_epochs)

    @torch.enable_grad()
    def refit_latent_flow(self, data: dict[str, torch.Tensor], epochs: int) -> None:
        """Fit the latent flow again, alone, to the codes the encoder as it is now gives the showers
        of ``data`` (``{key: (N, ...)}`` in physical units, a training sample): ``epochs`` passes in
        batches of ``FLOW_REFIT_BATCH``, one code drawn from q(z | shower) per shower and pass, Adam
        at lr 1e-3.

        Trained alongside the encoder, the flow learns codes that keep moving and lags behind them:
        in one quickstart seed its draws landed where the decoder makes 2.7 pp too many hit cells in
        layer 0, and 8 passes over the final codes took that away (CaloVAE+INN fits its flow after
        the VAE). A copy is trained and loaded back, so DDP's gradient hooks on the flow never fire;
        its noise comes from a generator seeded by the global step, so every rank fits the same flow.
        """
        generator = torch.Generator(device=self.device).manual_seed(self.global_step)
        codes = []
        with torch.no_grad():
            for start in range(0, len(data["energy"]), FLOW_REFIT_BATCH):
                batch = {k: v[start : start + FLOW_REFIT_BATCH].to(self.device) for k, v in data.items()}
                cells, cond = self._cells(batch), self._condition(batch)
                energies = self.representation.encode_energies(cells, batch["energy"])
                _, mean, log_var = self._encode(cells, energies, cond)
                codes.append((mean, log_var, cond))
        mean, log_var, cond = (torch.cat(parts) for parts in zip(*codes))
        flow = copy.deepcopy(self.latent_flow)
        optimizer = torch.optim.Adam(flow.parameters(), lr=1e-3)
        for _ in range(epochs):
            for index in torch.randperm(len(mean), generator=generator, device=self.device).split(FLOW_REFIT_BATCH):
                noise = torch.randn(len(index), mean.shape[1], generator=generator, device=self.device)
                z = mean[index] + torch.exp(0.5 * log_var[index]) * noise
                loss = -flow.log_prob(z, cond[index]).mean()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
        self.latent_flow.load_state_dict(flow.state_dict())

    def beta(self) -> float:
        h = self.hparams
        return kl_weight(self.global_step, h.kl_schedule, h.kl_warmup_steps, h.kl_beta_max, h.kl_cycles)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        terms = self.losses(batch)
        beta = self.beta()
        loss = terms["recon"] + beta * terms["kl_floored"] + terms.get("flow_nll", 0.0)
        # Logging costs about as much as a tenth of a CPU step: log only on the steps that are kept.
        if self.global_step % self.trainer.log_every_n_steps == 0:
            logged = {"train/loss": loss, "train/kl": terms["kl"], "train/beta": beta}
            if "flow_nll" in terms:
                logged["train/flow_nll"] = terms["flow_nll"]
            self.log_dict(logged, prog_bar=True)
        return loss

    def _evaluate(self, batch: dict, batch_idx: int, stage: str) -> None:
        # A fixed noise stream per batch, seeded by the batch's index in the single-process order:
        # evaluation numbers are reproducible, the same on any number of DDP ranks, and do not
        # disturb the global random state (which exact resume relies on).
        generator = torch.Generator(device=self.device).manual_seed(global_batch_index(self._trainer, batch_idx))
        terms = self.losses(batch, generator)
        self.log_dict({f"{stage}/{k}": v for k, v in terms.items()}, batch_size=len(batch["energy"]), sync_dist=True)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, batch_idx, "val")

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate(batch, batch_idx, "test")

    def configure_optimizers(self):
        optimizer = self.optimizer_factory(self.parameters())
        if self.lr_scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": self.lr_scheduler_factory(optimizer)}

    # --- generation ---------------------------------------------------------------------------
    @torch.no_grad()
    def generate(
        self,
        energy_gev: torch.Tensor,
        particle: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """Simulate showers for incident energies ``energy_gev`` (B, 1) GeV.

        Returns ``{key: (B, *shape)}`` in MeV for the layers of ``layer_shapes``; for CaloGAN
        ``{"layer_0": (B, 3, 96), "layer_1": (B, 12, 12), "layer_2": (B, 12, 6)}``.
        """
        if self.device.type == "cpu" and len(energy_gev) > CPU_GENERATION_CHUNK:
            return _in_chunks(self.generate, energy_gev, particle, generator, CPU_GENERATION_CHUNK)
        energy_gev = energy_gev.to(self.device, torch.float32)
        particle = None if particle is None else particle.to(self.device)
        return self.showers_from_noise(energy_gev, particle, self.generation_noise(len(energy_gev), generator))

    def generation_noise(self, n: int, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """The random numbers behind ``n`` showers, float32, drawn from ``generator`` in this order:
        ``latent`` (n, latent_dim) standard normal (the flow's base or the prior); ``summaries``
        (n, L + 2 k) standard normal for the L layer energies and the centres of k layers;
        ``summary_mixture`` (n, s) uniform for the s brightest shares, drawn as (s, n), one share
        after the other, and transposed; then per layer ``<key>/brightest`` (n, brightest_cells)
        uniform for the brightest cells' locations where they are drawn first, and ``<key>``
        (n, cells) uniform, one per cell (:func:`~hepgen.nn.shower.sample_cells`)."""

        def normal(*shape):
            return torch.randn(shape, generator=generator, device=self.device, dtype=torch.float32)

        def uniform(*shape):
            return torch.rand(shape, generator=generator, device=self.device, dtype=torch.float32)

        energies, centres, shares = self._summary_sizes()
        noise = {"latent": normal(n, self.hparams.latent_dim), "summaries": normal(n, energies + centres)}
        if shares:
            noise["summary_mixture"] = uniform(shares, n).T.contiguous()
        for key, cells in zip(self.layer_keys, self.decoder.layer_cells):
            if key in self.brightest_keys:
                noise[f"{key}/brightest"] = uniform(n, self.hparams.brightest_cells)
            noise[key] = uniform(n, cells)
        return noise

    def showers_from_noise(
        self, energy_gev: torch.Tensor, particle: torch.Tensor | None, noise: dict[str, torch.Tensor]
    ) -> dict[str, torch.Tensor]:
        """The showers (as :meth:`generate` returns them) for incident energies ``energy_gev`` (B, 1)
        GeV, particle labels (B,) or None, and the random numbers :meth:`generation_noise` draws: a
        deterministic function of its inputs, with no branch on their values (it compiles whole)."""
        cond = self._condition({"energy": energy_gev, "particle": particle})
        if self.latent_flow is None:
            z = noise["latent"]
        else:
            z = self.latent_flow.from_base(noise["latent"], cond)
        bfloat16 = self.hparams.generation_dtype == "bfloat16"
        h, e_mean, e_log_var = self.decoder.energies(z, cond, trunk_bfloat16=bfloat16)
        summaries = e_mean + torch.exp(0.5 * e_log_var) * noise["summaries"]  # layer energies, then any centres
        if self.brightest_keys:  # and the brightest cells' shares
            shares = self.decoder.summary_mixture_from_uniform(h, noise["summary_mixture"])
            summaries = torch.cat([summaries, shares], 1)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=bfloat16):
            hit_logits, share_params = self.decoder.cells(h, summaries)
        energies, _, brightest = summaries.split(self._summary_sizes(), dim=1)
        layer_energy = self.representation.decode_energies(energies, energy_gev)
        if self.brightest_shares is not None:
            brightest = self.brightest_shares.decode(brightest)
        showers = {}
        for i, (key, shape) in enumerate(self.layer_shapes.items()):
            p, sp, n = self.share_params[i], share_params[i], hit_logits[i].shape[1]
            if key in self.brightest_keys:
                sp, location = sp.split([p * n, n + 1], dim=1)
                r = self.hparams.brightest_cells
                j = self.brightest_keys.index(key) * r
                u_brightest = noise[f"{key}/brightest"]
                share = brightest_first_from_uniform(
                    hit_logits[i], sp, p, location, brightest[:, j : j + r], u_brightest, noise[key]
                )
            else:
                share = cells_from_uniform(hit_logits[i], sp, p, noise[key])
            showers[key] = (share * layer_energy[:, i : i + 1]).reshape(-1, *shape)
        return showers

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        if self.incident_energy_range_gev is not None:
            checkpoint["incident_energy_range_gev"] = list(self.incident_energy_range_gev)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        energy_range = checkpoint.get("incident_energy_range_gev")
        self.incident_energy_range_gev = None if energy_range is None else tuple(energy_range)

    def export_graphs(self, dtype: torch.dtype = torch.float64) -> list:
        """The generator as one graph for :mod:`hepgen.export`: incident energy (and particle), and the
        random numbers of :meth:`generation_noise` -> the showers in MeV, computed in ``dtype`` on
        a copy of the model (each cell's two weight logits folded into one, no bfloat16)."""
        from hepgen.export import GeneratorGraph, TensorSpec

        model = copy.deepcopy(self).cpu().eval()
        model.hparams.generation_dtype = "float32"  # then cast to dtype: the whole graph in one precision
        model.decoder.fold_two_component_logits()
        model.to(dtype)
        graph = ShowerGraph(model, dtype)
        inputs = [
            TensorSpec(
                "incident_energy_gev", (1,), "GeV", "incident energy of the particle",
                valid_range=self.incident_energy_range_gev,
            )
        ]
        if graph.with_particle:
            inputs.append(
                TensorSpec(
                    "particle", (), "", "particle species, as the datamodule numbers them", dtype="int64",
                    valid_range=(0, self.hparams.num_particles - 1),
                )
            )
        kinds = {"latent": "latent code's base draw", "summaries": "layer energies' (and centres') draws"}
        for key, n in zip(graph.noise_keys, graph.noise_sizes):
            normal = key in kinds
            inputs.append(
                TensorSpec(
                    "noise_" + key.replace("/", "_"), (n,), "",
                    kinds.get(key, f"one uniform per draw of {key}"),
                    distribution="normal(0, 1)" if normal else "uniform[0, 1)",
                )
            )
        outputs = [
            TensorSpec(key, shape, "MeV", f"cell energies of {key}") for key, shape in self.layer_shapes.items()
        ]
        notes = [
            "Draw every noise input independently for every event, from the distribution it names; "
            "the same inputs give the same showers.",
            f"Layers in the order of the outputs: {', '.join(self.layer_keys)} (CaloGAN: (eta, phi) cells; "
            "CaloChallenge: the voxels of each layer in the binning file's order).",
        ]
        if self.incident_energy_range_gev is None:
            notes.append("The training range of the incident energy is not recorded in this checkpoint.")
        return [GeneratorGraph("calo_vae_generator", graph, inputs, outputs, "CaloVAE shower generator", notes)]

    @torch.no_grad()
    def evaluation_samples(self, batch: dict, generator: torch.Generator) -> dict[str, tuple]:
        """The evaluation protocol: ``{name: (reference, generated)}`` for the B showers of ``batch``.

        One entry per layer (for CaloGAN ``layer_0`` (B, 3, 96), ``layer_1`` (B, 12, 12),
        ``layer_2`` (B, 12, 6)) in MeV: the batch's showers vs showers generated at their
        incident energies and particles, drawn from ``generator`` exactly as :meth:`generate`
        draws; ``energy`` (B, 1) GeV, the incident energies on both sides; ``showers``
        (B, cells) MeV, all layers flattened in order, and ``incident_energies`` (B, 1) MeV.
        """
        generated = self.generate(batch["energy"], batch.get("particle"), generator)
        samples = {k: (batch[k].to(self.device), generated[k]) for k in self.layer_keys}
        energy = batch["energy"].to(self.device)
        samples["energy"] = (energy, energy)
        # the same showers as one vector of cells in layer order (the CaloChallenge file's voxel
        # order) with the incident energy in MeV, the CaloChallenge evaluation's inputs
        samples["showers"] = tuple(torch.cat([samples[k][i].flatten(1) for k in self.layer_keys], 1) for i in (0, 1))
        samples["incident_energies"] = (1000.0 * energy, 1000.0 * energy)
        return samples

    def on_predict_start(self) -> None:
        keep_freed_memory()  # each batch frees and allocates again the same large tensors
        # the weights stay as they are from here on, so a compiled snapshot of them can draw (none
        # left from a predict that failed: the copy would carry it)
        self._predict_generator = None
        self._predict_generator = CompiledShowerGenerator(self) if self.hparams.compile_generation else None

    def on_predict_end(self) -> None:
        self._predict_generator = None

    def predict_step(self, batch: dict, batch_idx: int) -> dict[str, torch.Tensor]:
        # global random stream: `--seed_everything` chooses the sample
        generate = self._predict_generator or self.generate
        showers = generate(batch["energy"], batch.get("particle"))
        return {"energy": batch["energy"], **showers}


class ShowerGraph(nn.Module):
    """:meth:`CaloVAE.showers_from_noise` on positional tensors, for a graph export.

    Inputs: ``incident_energy_gev`` (B, 1) GeV, ``particle`` (B,) int64 when the model has several
    species, then the random numbers (B, n) in the order of :meth:`CaloVAE.generation_noise`, all
    float32 and cast to ``dtype``; outputs: each layer's cells (B, *shape) in MeV, float32.
    """

    def __init__(self, model: CaloVAE, dtype: torch.dtype) -> None:
        super().__init__()
        self.model, self.dtype = model, dtype
        self.with_particle = model.hparams.num_particles > 1
        shapes = model.generation_noise(1, torch.Generator(device=model.device))  # a local stream: no global draw
        self.noise_keys = tuple(shapes)
        self.noise_sizes = tuple(x.shape[1] for x in shapes.values())

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        energy_gev, rest = inputs[0].to(self.dtype), inputs[1:]
        particle = rest[0] if self.with_particle else None
        noise = {k: x.to(self.dtype) for k, x in zip(self.noise_keys, rest[int(self.with_particle) :])}
        showers = self.model.showers_from_noise(energy_gev, particle, noise)
        return tuple(showers[k].float() for k in self.model.layer_keys)


class CompiledShowerGenerator:
    """:meth:`CaloVAE.generate` compiled with ``torch.compile``, for mass production on a CPU.

    Eagerly, each of a cell's dozen element-wise steps (hit, mixture component, inverse-CDF
    Gaussian, softmax over the hit cells) is a pass through memory and the flow is sixty small
    operations; compiled, they fuse into one loop per layer, and with the weights frozen into the
    compiled code (inductor's ``freezing``: prepacked oneDNN matrices, casts to bfloat16 done once)
    the linear layers run faster too. The generator therefore holds its own copy of the model: a
    snapshot, which further training of the model does not change. In the copy each layer with two
    Gaussians per cell has its two weight logits folded into their difference
    (:meth:`~hepgen.nn.shower.LayerwiseDecoder.fold_two_component_logits`): a seventh fewer outputs
    of the largest matrices, the same draws.

    It draws the random numbers :meth:`CaloVAE.generation_noise` draws, in the same order and, with
    the default ``chunk``, in the same chunks, so a seeded generator gives the showers of
    :meth:`CaloVAE.generate` up to floating-point rounding (the fused arithmetic, and the polynomial
    inverse CDF of :func:`~hepgen.nn.shower.standard_normal_quantile`): on the quickstart's model in
    float32, 2 cells in 1.5 million hit or missed where the other's were not (a uniform next to its
    cell's hit probability), energies within 0.1 % (median 1e-6). The first call compiles (about
    half a minute for the quickstart's model, with the C++ compiler inductor needs); later calls of
    any batch size above one reuse it. A batch of one compiles once more (the compiler specialises
    sizes 0 and 1), for a code path four times as fast at that size, and so does a call with
    ``particle`` after calls without it. Constructing one makes malloc keep freed memory
    for the rest of the process (:func:`hepgen.memory.keep_freed_memory`): each chunk frees and
    allocates again the same few-MB tensors, and pages handed back to the system fault again when
    touched (in some processes a fifth of the time).

    Args:
        model: a trained CaloVAE (copied).
        chunk: showers per compiled call on a CPU (larger batches are cut into chunks that keep each
            layer's per-cell tensors in cache).
    """

    def __init__(self, model: CaloVAE, chunk: int = CPU_GENERATION_CHUNK) -> None:
        if model.device.type == "cpu":
            _check_cpp_compiler()
        keep_freed_memory()
        self.model = copy.deepcopy(model).eval()
        self.model.decoder.fold_two_component_logits()
        self.chunk = chunk
        self._showers_from_noise = torch.compile(self.model.showers_from_noise, dynamic=True)

    @torch.no_grad()
    def __call__(
        self,
        energy_gev: torch.Tensor,
        particle: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """Showers ``{key: (B, *shape)}`` in MeV for incident energies ``energy_gev`` (B, 1) GeV, as
        :meth:`CaloVAE.generate` returns them."""
        model = self.model
        if model.device.type == "cpu" and len(energy_gev) > self.chunk:
            return _in_chunks(self, energy_gev, particle, generator, self.chunk)
        # copies, never views of a caller's tensor (or of a larger batch): a compiled graph checks
        # whether its inputs are views and compiles again when that changes
        energy_gev = energy_gev.to(model.device, torch.float32, copy=True)
        particle = None if particle is None else particle.to(model.device, copy=True)
        noise = model.generation_noise(len(energy_gev), generator)
        # set for every call, not passed as a compile option: dynamo reads it while tracing
        with torch._inductor.config.patch(freezing=True):
            return self._showers_from_noise(energy_gev, particle, noise)


def _in_chunks(generate, energy_gev: torch.Tensor, particle: torch.Tensor | None, generator, chunk: int) -> dict:
    """``generate(energy, particle, generator)`` for each chunk of ``chunk`` showers in turn, concatenated."""
    parts = [
        generate(energy_gev[i : i + chunk], None if particle is None else particle[i : i + chunk], generator)
        for i in range(0, len(energy_gev), chunk)
    ]
    return {k: torch.cat([part[k] for part in parts]) for k in parts[0]}


def _check_cpp_compiler() -> None:
    """On a CPU, torch.compile (inductor) builds C++: fail at once, in one line, without a compiler."""
    from torch._inductor import cpp_builder

    try:
        cpp_builder.get_cpp_compiler()
    except Exception as error:  # inductor's InvalidCxxCompiler
        raise ConfigValueError(
            "model compile_generation: compiling the generator on a CPU needs a C++ compiler (torch.compile "
            "builds C++), and none was found (g++, or the one $CXX names): install one, or set "
            "compile_generation: false."
        ) from error
