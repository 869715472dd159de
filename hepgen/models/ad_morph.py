"""Morph (FETA): a background template made by morphing the simulation onto the data.

FETA (Golling, Klein, Mastandrea, Nachman, arXiv 2212.11285) and the seed's Morph
(hep-lbdl/non-resonant-AD-extrapolation, ``run_morph.py``) start from the simulation ("MC")
instead of from nothing. Two stages:

1. a base flow p_MC(x | c) is fitted to the MC in the control region (CR): a
   :class:`~hepgen.models.ad_generate.ConditionalFlow` trained on ``sample: mc, region: cr``;
2. the base is frozen, and an invertible transform T(x; c) is fitted by maximum likelihood to the
   *data* in the CR, with the base as its base distribution,

       log p_data(x | c) = log p_MC(T(x; c) | c) + log |det dT/dx|.

T then carries the MC towards the data. Applied backwards to the MC events in the signal region
(SR), at their own contexts, x_morphed = T^-1(x_MC; c), it gives the background template
[c, x_morphed]: the MC's SR events with the data/MC difference learnt in the CR undone. T starts
as the identity, so it only has to learn that difference (small, if the simulation is good);
FETA's premise is that this difference extrapolates into the SR more safely than the whole
density that Generate learns.

Choices, and where they come from:

* T is a stack of conditional masked affine autoregressive layers (nflows), the seed's top flow
  (4 layers of 4 hidden units), with the feature order reversed between layers and restored after
  the last one, so that T's output is in the base's feature order; each layer's network ends in
  zero weights and a bias that give scale 1 and shift 0, so that T starts exactly at the identity.
* T works in the base's space: y = pre(x), the base's standardised (or logit) features, and the
  base's standardised context. The data/MC difference is then of order 1 whatever the units.
  The likelihood in physical units adds the preprocessing's log-Jacobian, so ``*/nll_physical``
  is comparable with the base's and with Generate's.
* the base's density is its own: the equal mixture of its kept epochs
  (:meth:`ConditionalFlow.log_prob`, what its ``test/nll`` reports and its template is drawn
  from), the best estimate of p_MC it has. FETA's base is one flow; each step here evaluates
  ``n_best`` flows, so train the base with ``n_best: 1`` for a single one (and faster steps).
* the frozen base never changes: no gradient, evaluation mode whatever the parent does, not in
  the optimizer. Its weights still travel in this model's checkpoints (the pair T, base belongs
  together), and ``base_ckpt`` must still exist when a checkpoint of this model is loaded.
* Adam with a cosine decay over ``max_epochs``, stepped per epoch (the seed: lr 1e-4, 20 epochs,
  and its per-batch stepping bug, see :mod:`hepgen.models.ad_generate`).
"""

from __future__ import annotations

import math

import torch
from lightning.pytorch import LightningModule
from nflows.transforms import CompositeTransform, MaskedAffineAutoregressiveTransform, ReversePermutation
from torchmetrics import MeanMetric

from hepgen.errors import ConfigValueError
from hepgen.models.ad_generate import ConditionalFlow, adam_with_cosine
from hepgen.models.gan import load_frozen


def identity_maf_transform(features: int, context: int, transforms: int = 4, hidden: int = 4, blocks: int = 2):
    """T(y; c): R^D -> R^D conditional on c, masked affine autoregressive layers, equal to the identity at the start.

    Layers: MAF, reverse, MAF, ..., MAF (and one more reverse if the reversals are odd in number,
    so that T's output is in its input's feature order). Each layer is y_i -> s_i y_i + t_i with
    s_i = softplus(a_i) + eps and (a_i, t_i) from a MADE of (y_<i, c); zero weights in the MADE's
    last layer and a bias with softplus(a) + eps = 1 make s = 1, t = 0 for every input.

    Returns:
        an nflows ``CompositeTransform``: ``forward(y (B, D), context=c (B, C)) -> (z (B, D), log|det dz/dy| (B,))``
        and ``inverse(z, context=c) -> (y, log|det dy/dz|)``.
    """
    if features < 1 or transforms < 1:
        raise ConfigValueError(f"Morph top flow: need features >= 1 and transforms >= 1, got {features}, {transforms}.")
    layers = []
    for i in range(transforms):
        if i:
            layers.append(ReversePermutation(features))
        layer = MaskedAffineAutoregressiveTransform(
            features=features, hidden_features=hidden, context_features=context or None, num_blocks=blocks
        )
        last = layer.autoregressive_net.final_layer
        with torch.no_grad():
            last.weight.zero_()
            bias = last.bias.view(features, 2)  # (unconstrained scale a_i, shift t_i) per feature: nflows' order
            bias[:, 0] = math.log(math.expm1(1.0 - layer._epsilon))  # softplus(a) + eps = 1
            bias[:, 1] = 0.0
        layers.append(layer)
    if (transforms - 1) % 2:
        layers.append(ReversePermutation(features))
    return CompositeTransform(layers)


class MorphFlow(LightningModule):
    """T fitted to the data with a frozen MC flow as its base; predict morphs MC SR events into a template.

    Batches are dicts with ``context`` (B, C) and ``features`` (B, D) in physical units
    (:class:`~datamodules.ad_regions.RegionDataModule` with ``sample: data``); predict batches
    also ``weight`` (B,) and ``row`` (B,) (``predict_contexts: mc_sr``, whose batches carry the
    MC SR events' features). The loss is the mean negative log-likelihood per event in the base's
    preprocessed space, in nats; ``*/nll_physical`` adds the preprocessing's log-Jacobian
    (-log p(x | c) in the data's units) and ``*/base_nll`` is the frozen base alone on the same
    events (in the base's space): ``base_nll - nll`` is what the morph has learnt.

    Args:
        base_ckpt: the trained base :class:`~hepgen.models.ad_generate.ConditionalFlow` on the MC
            in the CR: a checkpoint file or a run reference such as
            ``run:ad/morph_base_toy_nr@latest:last`` (see :func:`hepgen.models.gan.load_frozen`).
        n_features: D, linked from the datamodule; must be the base's.
        n_context: C, linked from the datamodule; must be the base's.
        transforms, hidden, blocks: T (:func:`identity_maf_transform`; the seed: 4 layers of 4 hidden
            units). T is evaluated in the SR at contexts it never saw: a small T stays smoother in c
            (on small Toy NR studies 4 hidden units closed the SR better than 16).
        lr: Adam learning rate (the seed: 1e-4).
        weight_decay: Adam weight decay.
        cosine: decay the learning rate on a cosine over ``trainer.max_epochs``.
    """

    monitor = "val/nll"
    monitor_mode = "min"

    def __init__(
        self,
        base_ckpt: str,
        n_features: int | None = None,
        n_context: int | None = None,
        transforms: int = 4,
        hidden: int = 4,
        blocks: int = 2,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        cosine: bool = True,
    ) -> None:
        super().__init__()
        if n_features is None or n_context is None:
            raise ValueError("n_features and n_context are not set: they come from the datamodule (hepgen links them).")
        self.save_hyperparameters()
        self.base = load_frozen(
            ConditionalFlow, base_ckpt, option="base_ckpt",
            hint="Train the base flow on the MC control region first (hepgen fit -c "
            "experiments/ad/morph_base_toy_nr.yaml) and point base_ckpt at its checkpoint (a file, or "
            "run:ad/morph_base_toy_nr@latest:last).",
        )  # fmt: skip
        base = (self.base.hparams.n_features, self.base.hparams.n_context)
        if base != (n_features, n_context):
            raise ConfigValueError(
                f"base_ckpt: {base_ckpt} is a flow of {base[0]} features given {base[1]} context variables, "
                f"but the data has {n_features} and {n_context}; train the base on the same study."
            )
        if not self.base.features.fitted:
            raise ConfigValueError(f"base_ckpt: {base_ckpt} holds an untrained ConditionalFlow (no fitted scalers).")
        self.top = identity_maf_transform(n_features, n_context, transforms, hidden, blocks)
        self._val_sums: torch.Tensor | None = None
        self.train_nll = MeanMetric()

    def train(self, mode: bool = True):
        # the frozen base stays in evaluation mode (batch norm keeps its running statistics)
        super().train(mode)
        self.base.eval()
        return self

    # --- likelihood -------------------------------------------------------------------------
    def _log_likelihoods(
        self, batch: dict, base_alone: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """(log p_data(y | c), log p_base(y | c) if ``base_alone`` else None, log|dy/dx|), each (B,)
        float64, of a physical batch; y = pre(x) is the base's space, where
        log p_data(y | c) = log p_base(T(y; c) | c) + log|det dT/dy|."""
        y, c, log_det_pre = self.base._standardised(batch)  # the base's own preprocessing (frozen buffers)
        z, log_det_top = self.top(y, context=c)
        log_p = self.base._mixture_log_prob(z, c, ensemble=True) + log_det_top.double()
        log_p_base = None
        if base_alone:  # the MC flow without T, for comparison only
            with torch.no_grad():
                log_p_base = self.base._mixture_log_prob(y, c, ensemble=True)
        return log_p, log_p_base, log_det_pre

    @torch.no_grad()
    def log_prob(self, features: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """log p_data(x | c) in physical units, (B,) float64 nats, of x (B, D) at c (B, C)."""
        batch = {"features": features.to(self.device), "context": context.to(self.device)}
        log_p, _, log_det_pre = self._log_likelihoods(batch)
        return log_p + log_det_pre

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        log_p, _, _ = self._log_likelihoods(batch)
        loss = -log_p.mean()
        self.train_nll.update(loss.detach(), weight=len(log_p))  # logged once an epoch, as ConditionalFlow's
        return loss

    def on_train_epoch_end(self) -> None:
        self.log("train/nll", self.train_nll, prog_bar=True)

    def on_validation_epoch_start(self) -> None:
        self._val_sums = torch.zeros(4, dtype=torch.float64, device=self.device)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        log_p, log_p_base, log_det_pre = self._log_likelihoods(batch, base_alone=True)
        count = torch.tensor(float(len(log_p)), dtype=torch.float64, device=log_p.device)
        self._val_sums += torch.stack([-log_p.sum(), -(log_p + log_det_pre).sum(), -log_p_base.sum(), count])

    def on_validation_epoch_end(self) -> None:
        sums = self.trainer.strategy.reduce(self._val_sums, reduce_op="sum")  # all ranks' events
        nll, nll_physical, base_nll = (sums[:3] / sums[3]).float()
        self.log("val/nll", nll, prog_bar=True, sync_dist=False)
        self.log("val/nll_physical", nll_physical, sync_dist=False)
        self.log("val/base_nll", base_nll, sync_dist=False)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        # on the test sample (e.g. the true SR background): the morph's and the MC base's extrapolation
        log_p, log_p_base, log_det_pre = self._log_likelihoods(batch, base_alone=True)
        logged = dict(on_step=False, on_epoch=True, sync_dist=True, batch_size=len(log_p))  # event-weighted means
        self.log("test/nll", -log_p.mean().float(), **logged)
        self.log("test/nll_physical", -(log_p + log_det_pre).mean().float(), **logged)
        self.log("test/base_nll_physical", -(log_p_base + log_det_pre).mean().float(), **logged)

    # --- the template -------------------------------------------------------------------------
    @torch.no_grad()
    def morph(self, features: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """x_morphed = pre^-1(T^-1(pre(x); c)) (N, D) float64, physical units, of MC events x (N, D) at c (N, C)."""
        y, c, _ = self.base._standardised({"features": features.to(self.device), "context": context.to(self.device)})
        y_data, _ = self.top.inverse(y, context=c)
        return self.base.features.inverse(y_data)

    def predict_step(self, batch: dict, batch_idx: int) -> dict[str, torch.Tensor]:
        """The template rows [c, x_morphed] of the batch's SR events, with their contexts' weights and rows."""
        if "features" not in batch:
            raise ConfigValueError(
                "MorphFlow transports SR events, and the predict batches hold contexts only: "
                "set data.predict_contexts mc_sr (the MC's SR events; KDE draws have no features)."
            )
        context = batch["context"]
        x = self.morph(batch["features"], context).to(context.dtype)
        out = {"samples": torch.cat([context, x], dim=1), "weight": batch["weight"], "row": batch["row"]}
        if "region" in batch:  # 0 SR, 1 held-out CR (the closure template)
            out["region"] = batch["region"]
        return out

    def configure_optimizers(self):
        # T alone: the base is frozen and never seen by the optimizer
        return adam_with_cosine(self.top.parameters(), self.hparams, self.trainer.max_epochs)
