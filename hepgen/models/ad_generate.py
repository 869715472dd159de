"""Generate (CATHODE): a background template sampled from a flow fitted outside the signal region.

CATHODE (Hallin et al., PRD 106, 055006, 2022) and the seed's Generate
(hep-lbdl/non-resonant-AD-extrapolation, ``run_generate.py``) learn the conditional density
p(x | c) of the features x given the context c (m_jj; HT and MET) on data in the control region
(for a resonance, the sidebands), by maximum likelihood with a conditional MAF. Where the
background's p(x | c) varies smoothly with c, the flow carries it into the signal region (SR):
sampled at SR contexts it gives a background template, which the SR classifier then tells from
the SR data (:class:`~hepgen.models.ad_classifier.WeakClassifier` with ``method: template``).
A signal localised in the SR never entered the fit, so it stands out against the template.

Choices, and where they come from:

* features standardised (or CATHODE's min-max -> logit -> standardise, ``preprocessing: logit``)
  and the context standardised, with statistics fitted once on the training split and kept as
  buffers; samples are mapped back to physical units (:class:`hepgen.nn.maf.FlowPreprocessing`).
* Adam (the seed: lr 1e-3) with a cosine decay over ``max_epochs``, stepped once per epoch. The
  seed stepped its ``CosineAnnealingLR(T_max=n_epochs)`` after every batch, so its learning rate
  went round a full cosine every n_epochs batches instead of decaying over the run.
* the ``n_best`` epochs with the lowest validation loss are kept (frozen copies, saved in every
  checkpoint) and the template draws an equal share from each (CATHODE: 10 epochs): an ensemble
  over the end of training smooths the epoch-to-epoch wobble of a flow's tails.
"""

from __future__ import annotations

import math

import torch
from lightning.pytorch import LightningModule
from lightning.pytorch.utilities import rank_zero_warn
from torch import nn
from torchmetrics import MeanMetric

from hepgen.nn.maf import FlowPreprocessing, conditional_maf, sample_flow
from hepgen.nn.scaling import StandardScaler


def adam_with_cosine(parameters, hparams, max_epochs: int | None):
    """Adam (``hparams.lr``, ``hparams.weight_decay``) with, when ``hparams.cosine``, a cosine decay
    over ``max_epochs`` stepped once per epoch (constant without an epoch budget: max_steps only).

    The fused kernel updates all of a flow's parameter tensors (72 in a 4 x 64 MAF) at once; the
    default loop of small operations per tensor was a quarter of the flow's training step on CPU
    (benchmarks/ad.py). It computes the same update, rounded differently: equal to about 1e-6.
    """
    optimizer = torch.optim.Adam(parameters, lr=hparams.lr, weight_decay=hparams.weight_decay, fused=True)
    if not hparams.cosine or not max_epochs or max_epochs < 1:
        return optimizer
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max_epochs)
    return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"}}


class ConditionalFlow(LightningModule):
    """p(x | c) by maximum likelihood; samples a background template at given contexts.

    Batches are dicts with ``context`` (B, C) and ``features`` (B, D) in physical units
    (:class:`~datamodules.ad_regions.RegionDataModule`). The loss is the mean negative
    log-likelihood per event in the flow's (standardised) space, in nats; ``*/nll_physical`` adds
    the log-Jacobian of the preprocessing, giving -log p(x | c) in the data's units, comparable
    between preprocessings and with other density models.

    Args:
        n_features: D, linked from the datamodule.
        n_context: C, linked from the datamodule.
        transforms, hidden, blocks, batch_norm: the MAF (:func:`hepgen.nn.maf.conditional_maf`;
            the seed: 4 x 128).
        preprocessing: ``standard`` or ``logit`` (CATHODE).
        logit_margin: widening of the logit box, a fraction of the training range per side.
        lr: Adam learning rate (the seed: 1e-3; CATHODE: 1e-4).
        weight_decay: Adam weight decay (CATHODE: 1e-6).
        cosine: decay the learning rate on a cosine over ``trainer.max_epochs``.
        n_best: lowest-validation-loss epochs kept for sampling (CATHODE: 10).
        oversample: k, samples drawn per context (CATHODE oversamples; the seed's k = 1).
    """

    monitor = "val/nll"
    monitor_mode = "min"

    def __init__(
        self,
        n_features: int | None = None,
        n_context: int | None = None,
        transforms: int = 4,
        hidden: int = 128,
        blocks: int = 2,
        batch_norm: bool = False,
        preprocessing: str = "standard",
        logit_margin: float = 0.05,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        cosine: bool = True,
        n_best: int = 5,
        oversample: int = 4,
    ) -> None:
        super().__init__()
        if n_features is None or n_context is None:
            raise ValueError("n_features and n_context are not set: they come from the datamodule (hepgen links them).")
        if n_best < 1 or oversample < 1:
            raise ValueError(f"n_best={n_best}, oversample={oversample}: both must be at least 1.")
        self.save_hyperparameters()

        def maf() -> nn.Module:
            return conditional_maf(n_features, n_context, transforms, hidden, blocks, batch_norm)

        self.flow = maf()
        self.features = FlowPreprocessing(n_features, preprocessing, logit_margin)
        self.context = StandardScaler(n_context)
        # the kept epochs: frozen copies, filled as validation finds better ones
        self.best = nn.ModuleList([maf().requires_grad_(False) for _ in range(n_best)])
        self.register_buffer("best_nll", torch.full((n_best,), math.inf, dtype=torch.float64))
        self.register_buffer("best_epoch", torch.full((n_best,), -1, dtype=torch.long))
        self._val_sums: torch.Tensor | None = None
        self.train_nll = MeanMetric()  # the epoch's mean training NLL, all ranks' events

    # --- statistics on training data --------------------------------------------------------
    def on_fit_start(self) -> None:
        if self.features.fitted:
            return  # resumed: the statistics came with the checkpoint
        train = self.trainer.datamodule.training_sample()
        self.features.fit(train["features"])
        self.context.fit(train["context"])

    def _ensure_fitted(self) -> None:
        if not self.features.fitted:
            rank_zero_warn("this ConditionalFlow is untrained (no checkpoint given): its samples are noise.")
            self.on_fit_start()

    on_test_start = _ensure_fitted
    on_predict_start = _ensure_fitted

    # --- likelihood -------------------------------------------------------------------------
    def _standardised(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(y (B, D), c (B, C), log|dy/dx| (B,)) of a batch in physical units."""
        y, log_det = self.features(batch["features"])
        return y, self.context(batch["context"].to(torch.float64)).float(), log_det

    def _mixture_log_prob(self, y: torch.Tensor, c: torch.Tensor, ensemble: bool) -> torch.Tensor:
        """log p(y | c) (B,) float64 in the flow's space: of the kept epochs' equal mixture,
        log (1/E) sum_e p_e(y | c), the density the template is drawn from; or of the current weights."""
        flows = self._sampling_flows() if ensemble else [self.flow]
        with _evaluating(flows):
            terms = torch.stack([flow.log_prob(y, context=c).double() for flow in flows])
        return torch.logsumexp(terms, 0) - math.log(len(flows))

    @torch.no_grad()
    def log_prob(self, features: torch.Tensor, context: torch.Tensor, ensemble: bool = True) -> torch.Tensor:
        """log p(x | c) in physical units, (B,) float64 nats, of x (B, D) at c (B, C) (see ``ensemble``
        in :meth:`_mixture_log_prob`): the flow's log-density plus log|dy/dx| of the preprocessing."""
        y, c, log_det = self._standardised({"features": features, "context": context})
        return self._mixture_log_prob(y, c, ensemble) + log_det

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        y, c, _ = self._standardised(batch)
        loss = -self.flow.log_prob(y, context=c).mean()
        # averaged here and logged once an epoch: a self.log per step cost a fifth of this small
        # flow's step on CPU (benchmarks/ad.py)
        self.train_nll.update(loss.detach(), weight=len(y))
        return loss

    def on_train_epoch_end(self) -> None:
        self.log("train/nll", self.train_nll, prog_bar=True)

    def on_validation_epoch_start(self) -> None:
        self._val_sums = torch.zeros(3, dtype=torch.float64, device=self.device)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        y, c, log_det = self._standardised(batch)
        nll = -self.flow.log_prob(y, context=c).double()
        count = torch.tensor(float(len(nll)), dtype=torch.float64, device=nll.device)
        self._val_sums += torch.stack([nll.sum(), (nll - log_det).sum(), count])

    def on_validation_epoch_end(self) -> None:
        sums = self.trainer.strategy.reduce(self._val_sums, reduce_op="sum")  # all ranks' events
        nll, nll_physical = sums[0] / sums[2], sums[1] / sums[2]
        self.log("val/nll", nll.float(), prog_bar=True, sync_dist=False)
        self.log("val/nll_physical", nll_physical.float(), sync_dist=False)
        if self.trainer.sanity_checking or not torch.isfinite(nll):
            return
        slot = int(torch.argmax(self.best_nll))  # the worst kept epoch, or an empty slot (inf)
        if nll < self.best_nll[slot]:
            self.best[slot].load_state_dict(self.flow.state_dict())
            self.best_nll[slot] = nll
            self.best_epoch[slot] = self.current_epoch
        self.log("val/best_nll", self.best_nll.min().float(), sync_dist=False)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        # the template's own density (the kept epochs' mixture) on the test sample, e.g. the true SR background
        y, c, log_det = self._standardised(batch)
        log_p = self._mixture_log_prob(y, c, ensemble=True)
        logged = dict(on_step=False, on_epoch=True, sync_dist=True, batch_size=len(y))  # event-weighted means
        self.log("test/nll", -log_p.mean().float(), **logged)
        self.log("test/nll_physical", -(log_p + log_det).mean().float(), **logged)

    # --- sampling ---------------------------------------------------------------------------
    def kept_epochs(self) -> list[int]:
        """Slots of :attr:`best` holding a kept epoch, in the order of their epochs."""
        filled = [i for i in range(len(self.best)) if math.isfinite(float(self.best_nll[i]))]
        return sorted(filled, key=lambda i: int(self.best_epoch[i]))

    def _sampling_flows(self) -> list[nn.Module]:
        kept = self.kept_epochs()
        return [self.best[i] for i in kept] if kept else [self.flow]

    @staticmethod
    def member_of(rows: torch.Tensor, oversample: int, members: int) -> torch.Tensor:
        """Which kept epoch draws each sample: (N * k,) int64 for contexts with global indices rows (N,).

        Copy j of context n is drawn by member (rows[n] k + j) mod E: every member draws an equal
        share (to one sample) of any run of contexts, and the k copies of a context spread over
        the members. Global indices make the assignment independent of how contexts are batched.
        """
        copy = torch.arange(oversample, device=rows.device)
        return ((rows[:, None] * oversample + copy) % members).reshape(-1)

    @torch.no_grad()
    def sample_template(
        self,
        contexts: torch.Tensor,
        oversample: int | None = None,
        generator: torch.Generator | None = None,
        rows: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Template rows [c, x] (N k, C + D) in physical units, k samples x ~ p(x | c) per context.

        Row n k + j holds context n beside its own j-th sample: the contexts are repeated with
        ``repeat_interleave`` and the samples drawn for exactly those repeated rows. (The seed
        drew (N, k, D) and flattened the samples beside N contexts, which is right only for k = 1.)

        Args:
            contexts: (N, C) physical; the dtype of the output (float64 keeps them exact).
            oversample: k (default: the model's ``oversample``).
            generator: draws the base noise, (N k, D) at once before it is shared out.
            rows: (N,) int64 global indices of the contexts (default 0..N-1), see :meth:`member_of`.
        """
        k = self.hparams.oversample if oversample is None else int(oversample)
        if not self.features.fitted:
            raise RuntimeError("ConditionalFlow: fit the model (or load a checkpoint) before sampling.")
        contexts = contexts.to(self.device)
        rows = torch.arange(len(contexts), device=self.device) if rows is None else rows.to(self.device)
        c = self.context(contexts.repeat_interleave(k, dim=0).to(torch.float64)).float()  # (N k, C)
        where = self.device if generator is None else generator.device
        noise = torch.randn(len(c), self.hparams.n_features, generator=generator, device=where).to(self.device)
        flows = self._sampling_flows()
        member = self.member_of(rows, k, len(flows))
        y = torch.empty_like(noise)
        with _evaluating(flows):
            for m, flow in enumerate(flows):
                pick = member == m
                if pick.any():
                    y[pick] = sample_flow(flow, noise[pick], c[pick])
        x = self.features.inverse(y)
        return torch.cat([contexts.repeat_interleave(k, dim=0), x.to(contexts.dtype)], dim=1)

    def predict_step(self, batch: dict, batch_idx: int) -> dict[str, torch.Tensor]:
        """k template rows per context of the batch, with the context's weight and row repeated."""
        k = self.hparams.oversample
        rows = batch["row"]
        # the noise of a batch depends on the global seed and its first context only
        generator = torch.Generator(device=self.device).manual_seed(torch.initial_seed() + int(rows[0]))
        samples = self.sample_template(batch["context"], k, generator, rows)
        out = {"samples": samples, "weight": batch["weight"].repeat_interleave(k), "row": rows.repeat_interleave(k)}
        if "region" in batch:  # 0 SR, 1 held-out CR (the closure template)
            out["region"] = batch["region"].repeat_interleave(k)
        return out

    def configure_optimizers(self):
        return adam_with_cosine(self.flow.parameters(), self.hparams, self.trainer.max_epochs)


class _evaluating:
    """Context manager: the flows in evaluation mode (batch norm's running statistics), then as before."""

    def __init__(self, flows: list[nn.Module]) -> None:
        self.flows = flows

    def __enter__(self) -> None:
        self.modes = [flow.training for flow in self.flows]
        for flow in self.flows:
            flow.eval()

    def __exit__(self, *exc) -> None:
        for flow, mode in zip(self.flows, self.modes):
            flow.train(mode)
