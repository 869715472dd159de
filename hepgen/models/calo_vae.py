"""CaloVAE: a conditional VAE with KL annealing for fast calorimeter-shower simulation.

The model learns p(shower | E_inc, particle) for the CaloGAN geometry (three readout layers).
Its decoder generates, per layer, an energy (Gaussian in log(E_l / E_inc)), a set of hit cells
(Bernoulli per cell) and the sharing of the layer energy among the hit cells (softmax), so that
energy and sparsity are modelled explicitly (see :mod:`hepgen.nn.shower`). The loss per shower is

    L = NLL_energy + BCE_hits + CE_sharing + beta(step) * sum_d max(KL_d, free_bits)

with ``beta`` from :func:`hepgen.models.kl_schedule.kl_weight`. ``val/neg_elbo`` is the same
objective at beta = 1 without free bits; the best checkpoint is chosen by it.
"""

from __future__ import annotations

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.cli import LRSchedulerCallable, OptimizerCallable
from torch import nn

from datamodules.base import global_batch_index
from hepgen.models.seeding import reseed_for_rank
from hepgen.models.kl_schedule import KLScheduleName, kl_weight
from hepgen.nn.shower import LayerwiseDecoder, LayerwiseEncoder, ShowerRepresentation, condition_features
from hepgen.physics.calo_geometry import LAYER_KEYS, LAYER_SHAPES, N_CELLS


class CaloVAE(LightningModule):
    """Conditional VAE for CaloGAN showers.

    Args:
        latent_dim: dimension of z.
        hidden: width of the encoder/decoder trunks.
        branch: width of the per-layer branches.
        num_particles: number of particle species in the data (the datamodule's ``particles``).
        kl_schedule: ``constant``, ``linear``, ``sigmoid`` or ``cyclical`` (see kl_schedule).
        kl_warmup_steps: optimizer steps of the KL warm-up.
        kl_beta_max: KL weight after warm-up (1 = the true ELBO).
        kl_cycles: number of cycles of the ``cyclical`` schedule.
        free_bits: KL floor per latent dimension in nats (0 = off); keeps codes from collapsing.
        optimizer: optimizer factory (Adam, lr 1e-3 by default).
        lr_scheduler: optional scheduler factory, stepped once per epoch.
    """

    monitor = "val/neg_elbo"
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
        optimizer: OptimizerCallable = torch.optim.Adam,
        lr_scheduler: LRSchedulerCallable | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.optimizer_factory = optimizer
        self.lr_scheduler_factory = lr_scheduler
        cells = [N_CELLS[k] for k in LAYER_KEYS]
        cond_dim = 1 + (num_particles if num_particles > 1 else 0)
        self.representation = ShowerRepresentation(cells)
        self.encoder = LayerwiseEncoder(cells, cond_dim, latent_dim, hidden, branch)
        self.decoder = LayerwiseDecoder(cells, cond_dim, latent_dim, hidden, branch)

    # --- data in the model's representation ----------------------------------------------------
    def _cells(self, batch: dict) -> list[torch.Tensor]:
        return [batch[k].flatten(1) for k in LAYER_KEYS]

    def _condition(self, batch: dict) -> torch.Tensor:
        particle = batch.get("particle")
        if particle is None:
            particle = torch.zeros(len(batch["energy"]), dtype=torch.long, device=self.device)
        return condition_features(batch["energy"], particle, self.hparams.num_particles)

    def on_fit_start(self) -> None:
        datamodule = self.trainer.datamodule
        if datamodule is None:  # plain dataloaders: the caller fits the representation
            if not bool(self.representation.fitted):
                raise RuntimeError("CaloVAE without a datamodule: call model.representation.fit(...) first.")
            return
        # the datamodule contract's one way to training statistics (in-RAM and lazy data alike)
        data = datamodule.training_sample()
        n_data = int(data["particle"].max()) + 1
        if n_data > self.hparams.num_particles:
            raise ValueError(
                f"the data hold {n_data} particle species but the model was built with num_particles="
                f"{self.hparams.num_particles}; set model num_particles to the number of the datamodule's particles."
            )
        # Statistics are fitted once, on training data, and then live in the checkpoint.
        if bool(self.representation.fitted):
            return
        cells = [data[k].flatten(1).to(self.device) for k in LAYER_KEYS]
        self.representation.fit(cells, data["energy"].to(self.device))

    def on_train_start(self) -> None:
        reseed_for_rank(self.trainer)  # each DDP rank its own reparametrisation noise

    # --- the objective ------------------------------------------------------------------------
    def losses(self, batch: dict, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """Per-batch mean of each loss term, (scalar tensors)."""
        cells = self._cells(batch)
        cond = self._condition(batch)
        energies = self.representation.encode_energies(cells, batch["energy"])
        sharing = [ShowerRepresentation.sharing_fractions(x) for x in cells]
        shapes = [ShowerRepresentation.shape_features(s) for s in sharing]
        mean, log_var = self.encoder(shapes, energies, cond)
        eps = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
        z = mean + torch.exp(0.5 * log_var) * eps
        e_mean, e_log_var, hit_logits, share_logits = self.decoder(z, cond)

        nll_energy = 0.5 * (e_log_var + (energies - e_mean) ** 2 / e_log_var.exp()).sum(1)
        bce_hits = sum(
            nn.functional.binary_cross_entropy_with_logits(hl, (x > 0).to(hl.dtype), reduction="none").sum(1)
            for hl, x in zip(hit_logits, cells)
        )
        # Sharing: a categorical over the cells that are really hit; empty layers contribute 0.
        ce_sharing = sum(
            -(s * torch.log_softmax(sl.masked_fill(x <= 0, -1e4), 1)).sum(1)
            for sl, s, x in zip(share_logits, sharing, cells)
        )
        kl_per_dim = 0.5 * (mean**2 + log_var.exp() - 1.0 - log_var)  # (B, latent_dim)
        kl_floored = kl_per_dim.mean(0).clamp_min(self.hparams.free_bits).sum()
        recon = (nll_energy + bce_hits + ce_sharing).mean()
        kl = kl_per_dim.sum(1).mean()
        return {
            "nll_energy": nll_energy.mean(),
            "bce_hits": bce_hits.mean(),
            "ce_sharing": ce_sharing.mean(),
            "kl": kl,
            "kl_floored": kl_floored,
            "neg_elbo": recon + kl,
            "recon": recon,
        }

    def beta(self) -> float:
        h = self.hparams
        return kl_weight(self.global_step, h.kl_schedule, h.kl_warmup_steps, h.kl_beta_max, h.kl_cycles)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        terms = self.losses(batch)
        beta = self.beta()
        loss = terms["recon"] + beta * terms["kl_floored"]
        # Logging costs about as much as a tenth of a CPU step: log only on the steps that are kept.
        if self.global_step % self.trainer.log_every_n_steps == 0:
            self.log_dict({"train/loss": loss, "train/kl": terms["kl"], "train/beta": beta}, prog_bar=True)
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

        Returns ``{"layer_0": (B, 3, 96), "layer_1": (B, 12, 12), "layer_2": (B, 12, 6)}`` in MeV.
        """
        energy_gev = energy_gev.to(self.device, torch.float32)
        cond = self._condition({"energy": energy_gev, "particle": particle})
        z = torch.randn((len(energy_gev), self.hparams.latent_dim), generator=generator, device=self.device)
        e_mean, e_log_var, hit_logits, share_logits = self.decoder(z, cond)
        noise = torch.randn(e_mean.shape, generator=generator, device=self.device)
        layer_energy = self.representation.decode_energies(e_mean + torch.exp(0.5 * e_log_var) * noise, energy_gev)
        showers = {}
        for i, key in enumerate(LAYER_KEYS):
            hits = torch.rand(hit_logits[i].shape, generator=generator, device=self.device) < torch.sigmoid(hit_logits[i])
            share = torch.softmax(share_logits[i].masked_fill(~hits, -1e4), dim=1) * hits
            showers[key] = (share * layer_energy[:, i : i + 1]).reshape(-1, *LAYER_SHAPES[key])
        return showers

    @torch.no_grad()
    def evaluation_samples(self, batch: dict, generator: torch.Generator) -> dict[str, tuple]:
        """The evaluation protocol: ``{name: (reference, generated)}`` for the B showers of ``batch``.

        ``layer_0`` (B, 3, 96), ``layer_1`` (B, 12, 12), ``layer_2`` (B, 12, 6) in MeV: the
        batch's showers vs showers generated at their incident energies and particles, drawn
        from ``generator`` exactly as :meth:`generate` draws; ``energy`` (B, 1) GeV, the
        incident energies on both sides.
        """
        generated = self.generate(batch["energy"], batch.get("particle"), generator)
        samples = {k: (batch[k].to(self.device), generated[k]) for k in LAYER_KEYS}
        energy = batch["energy"].to(self.device)
        samples["energy"] = (energy, energy)
        return samples

    def predict_step(self, batch: dict, batch_idx: int) -> dict[str, torch.Tensor]:
        # global random stream: `--seed_everything` chooses the sample
        showers = self.generate(batch["energy"], batch.get("particle"))
        return {"energy": batch["energy"], **showers}
