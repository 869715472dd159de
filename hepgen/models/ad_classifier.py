"""The weakly supervised classifier every anomaly-detection method ends with.

In the signal region (SR), "data" (background plus perhaps a little signal) is told apart from a
background reference: the true background (Ideal), or a template that a method built from the
control region (Reweight, Generate, Morph). In the SR p_data/p_bkg = 1 + (S/B) p_sig/p_bkg is
monotone in the signal-to-background likelihood ratio, so a classifier trained on the two
samples is, with enough events, the optimal signal-vs-background discriminant without ever
having seen a signal label (CWoLa, Metodiev, Nachman, Thaler 2017). Trained on signal vs
background instead, the same network is the fully supervised reference.

One run trains an ensemble of ``members`` MLPs side by side (:class:`hepgen.nn.ensemble.EnsembleMLP`)
on the same batches from different initialisations, as the seed code trains its 20 runs on one
fixed train/validation split. Each member stops on its own: the weights of its epoch with the
lowest validation loss are kept (``best``), and it counts as stopped after ``patience`` epochs
without an improvement of ``min_delta``; the run ends when every member has stopped. The score
is the mean of the members' sigmoid outputs at their best epochs, the seed's ensemble average.
"""

from __future__ import annotations

import math
import pickle

import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch import LightningModule
from lightning.pytorch.utilities import rank_zero_warn
from torchmetrics import MeanMetric

from datamodules.datasets import head
from hepgen.errors import ConfigValueError
from hepgen.nn.ensemble import EnsembleMLP
from hepgen.nn.scaling import StandardScaler


class WeakClassifier(LightningModule):
    """An ensemble of MLPs: label 1 ("data" or signal) vs label 0 (background reference), weighted BCE.

    Batches are dicts with ``features`` (B, F) in the datamodule's units, ``label`` (B,) 0/1
    and ``weight`` (B,) event weights (a reweighted template's weights, class totals already
    equalised by the datamodule). Inputs are standardised by a scaler fitted on the training
    split (weighted), saved with the weights.

    Args:
        n_features: F, linked from the datamodule.
        hidden: hidden-layer widths (the seed's SR discriminator: 64, 64, 64).
        members: classifiers in the ensemble (the seed: 20).
        lr: Adam learning rate (the seed: 1e-3).
        weight_decay: Adam weight decay.
        patience: epochs without improvement after which a member stops (the seed: 5).
        min_delta: the validation-loss decrease that counts as an improvement (the seed: 1e-5).
    """

    monitor = "val/loss"
    monitor_mode = "min"

    def __init__(
        self,
        n_features: int | None = None,
        hidden: tuple[int, ...] = (64, 64, 64),
        members: int = 20,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        patience: int = 5,
        min_delta: float = 1e-5,
    ) -> None:
        super().__init__()
        if n_features is None:
            raise ValueError("n_features is not set: it comes from the datamodule (hepgen links it), or pass it.")
        if members < 1:
            raise ValueError(f"members={members}: an ensemble needs at least one member.")
        self.save_hyperparameters()
        self.scaler = StandardScaler(n_features)
        self.net = EnsembleMLP(members, n_features, tuple(hidden))
        # the best epoch's weights of every member: a frozen copy, updated member by member
        self.best = EnsembleMLP(members, n_features, tuple(hidden)).requires_grad_(False)
        self.best.load_state_dict(self.net.state_dict())
        self.register_buffer("best_loss", torch.full((members,), math.inf, dtype=torch.float64))
        self.register_buffer("bad_epochs", torch.zeros(members, dtype=torch.long))
        self.register_buffer("best_epoch", torch.full((members,), -1, dtype=torch.long))
        self.train_loss = MeanMetric()  # the epoch's mean training loss per member, all ranks' events
        self._val_sums: torch.Tensor | None = None

    # --- statistics on training data --------------------------------------------------------
    def on_fit_start(self) -> None:
        if bool(self.scaler.fitted):
            return
        train = self.trainer.datamodule.training_sample()
        self.scaler.fit(train["features"], train.get("weight"))

    def _ensure_scaler(self) -> None:
        if not bool(self.scaler.fitted):
            rank_zero_warn("this WeakClassifier is untrained (no checkpoint given): its scores are noise.")
            self.on_fit_start()

    on_test_start = _ensure_scaler
    on_predict_start = _ensure_scaler

    # --- the loss ------------------------------------------------------------------------------
    def member_losses(self, net: EnsembleMLP, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-member weighted BCE summed over the batch, (M,), and the batch's total weight."""
        logits = net(self.scaler(batch["features"]))
        label = batch["label"].to(logits.dtype).expand_as(logits)
        weight = batch["weight"].to(logits.dtype)
        bce = F.binary_cross_entropy_with_logits(logits, label, reduction="none")
        return (bce * weight).sum(-1), weight.sum()

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        sums, _ = self.member_losses(self.net, batch)
        # mean over events of w * BCE (torch's weighted BCE, as the seed): under DDP the mean of
        # the ranks' means is then exactly the mean of their joint batch. Summing the members
        # keeps their gradients independent.
        loss = (sums / len(batch["label"])).sum()
        # averaged here and logged once an epoch: a self.log per step is a large part of a small step on CPU
        self.train_loss.update(loss.detach() / self.hparams.members, weight=len(batch["label"]))
        return loss

    def on_train_epoch_end(self) -> None:
        self.log("train/loss", self.train_loss, prog_bar=True)

    # --- validation: per-member early stopping -----------------------------------------------
    def on_validation_epoch_start(self) -> None:
        self._val_sums = torch.zeros(self.hparams.members + 1, dtype=torch.float64, device=self.device)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        sums, total = self.member_losses(self.net, batch)
        self._val_sums += torch.cat([sums, total[None]]).detach().to(torch.float64)

    def on_validation_epoch_end(self) -> None:
        sums = self.trainer.strategy.reduce(self._val_sums, reduce_op="sum")  # all ranks' events
        losses = sums[:-1] / sums[-1]
        self.log("val/loss", losses.mean().float(), prog_bar=True, sync_dist=False)
        if self.trainer.sanity_checking:
            return
        improved = losses < self.best_loss - self.hparams.min_delta
        self.best_loss.copy_(torch.where(improved, losses, self.best_loss))
        self.bad_epochs.copy_(torch.where(improved, torch.zeros_like(self.bad_epochs), self.bad_epochs + 1))
        self.best_epoch.copy_(torch.where(improved, torch.full_like(self.best_epoch, self.current_epoch), self.best_epoch))
        with torch.no_grad():
            for best, current in zip(self.best.parameters(), self.net.parameters()):
                mask = improved.view(-1, *[1] * (current.dim() - 1))
                best.copy_(torch.where(mask, current, best))
        stopped = self.bad_epochs >= self.hparams.patience
        self.log("val/best_loss", self.best_loss.mean().float(), sync_dist=False)
        self.log("val/members_training", (~stopped).sum().float(), sync_dist=False)
        if bool(stopped.all()):
            self.trainer.should_stop = True

    # --- scores ----------------------------------------------------------------------------
    @torch.no_grad()
    def score(self, features: torch.Tensor) -> torch.Tensor:
        """(B, F) features -> (B,) ensemble score in [0, 1]: the mean member probability at its best epoch."""
        return torch.sigmoid(self.best(self.scaler(features))).mean(0)

    def evaluation_scores(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The score-metric protocol: (score, label, weight), each (B,)."""
        return self.score(batch["features"]), batch["label"], batch["weight"]

    def test_step(self, batch: dict, batch_idx: int) -> None:
        sums, total = self.member_losses(self.best, batch)
        self.log("test/loss", (sums / total).mean(), on_step=False, on_epoch=True, sync_dist=True)

    def predict_step(self, batch: dict, batch_idx: int) -> dict[str, torch.Tensor]:
        return {"score": self.score(batch["features"]), **{k: v for k, v in batch.items() if k != "features"}}

    def configure_optimizers(self):
        return torch.optim.Adam(self.net.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)


class TreeClassifier(LightningModule):
    """Gradient-boosted decision trees instead of MLPs, the same task and score protocol.

    ``members`` scikit-learn ``HistGradientBoostingClassifier`` fits, scores averaged (the "Back
    to the Roots" recipe, Finke et al. 2023: max_iter 200, 31 leaves, validation_fraction 0.5, an
    ensemble of runs). Each member fits on the training and validation splits together and
    early-stops on its own random half of them (its ``random_state``): with one fixed validation
    set the fits would be identical, since boosting is deterministic given its data. Trees need no feature scaling and, unlike
    MLPs, hardly notice uninformative extra features. The fit happens once, at the start of
    ``hepgen fit``, on the whole training split; set ``trainer.max_epochs: 1``. The fitted trees
    are pickled into the checkpoint. Trees train in one process: under DDP every rank would fit
    the same trees, so run this model on one device.

    Args:
        n_features: F, linked from the datamodule (checked against the batches).
        members: independent fits averaged (BackToTheRoots: 10).
        max_iter: boosting iterations at most.
        max_leaf_nodes: leaves per tree.
        learning_rate: shrinkage.
        min_samples_leaf: events in a leaf at least (scikit-learn: 20).
        l2_regularization: L2 penalty on the leaf values (scikit-learn: 0).
        n_iter_no_change: early-stopping patience in iterations.
        validation_fraction: each member's random share of the events for its early stopping.

    With a signal of a fraction of a per cent, most of what a tree can split on is the sampling
    noise of the two samples; larger leaves and an L2 penalty on their values keep the trees off
    it, and averaging more members (each early-stopped on a different random half) averages it
    out. On the real LHCO signal region the idealized classifier's max SIC rose from about 8.5 with
    scikit-learn's defaults and 5 members to about 12 with leaves of at least 300 events, an L2
    penalty of 1 and 20 to 50 members (``experiments/ad/study_lhco_sr.yaml``; README).
    """

    monitor = "val/loss"
    monitor_mode = "min"

    def __init__(
        self,
        n_features: int | None = None,
        members: int = 10,
        max_iter: int = 200,
        max_leaf_nodes: int = 31,
        learning_rate: float = 0.1,
        min_samples_leaf: int = 20,
        l2_regularization: float = 0.0,
        n_iter_no_change: int = 10,
        validation_fraction: float = 0.5,
    ) -> None:
        super().__init__()
        if min_samples_leaf < 1 or l2_regularization < 0:
            raise ConfigValueError(
                f"TreeClassifier: min_samples_leaf={min_samples_leaf}, l2_regularization={l2_regularization}: "
                "a leaf needs at least 1 event and the L2 penalty must be >= 0."
            )
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.trees: list = []
        # Lightning counts optimizer steps to decide when a checkpoint is new; the fit counts as
        # one step of this placeholder (it has no gradient, so the step changes nothing)
        self.fit_marker = torch.nn.Parameter(torch.zeros(()), requires_grad=True)
        self._val_sums: torch.Tensor | None = None

    @staticmethod
    def _numpy(batch: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return tuple(batch[k].detach().cpu().numpy().astype(np.float64) for k in ("features", "label", "weight"))

    def on_fit_start(self) -> None:
        if self.trees:
            return  # resumed: the trees came with the checkpoint
        try:
            from sklearn.ensemble import HistGradientBoostingClassifier
        except ImportError as error:
            raise ConfigValueError(
                'model TreeClassifier needs scikit-learn: pip install -e ".[trees]" (or pip install scikit-learn).'
            ) from error
        datamodule = self.trainer.datamodule
        train, val = self._numpy(datamodule.training_sample()), self._numpy(head(datamodule.datasets["val"]))
        x, y, w = (np.concatenate([a, b]) for a, b in zip(train, val))
        # the global seed (seed_everything) fixes every member's random state
        base = int(torch.initial_seed()) % (2**31 - self.hparams.members)
        hp = self.hparams
        for m in range(hp.members):
            model = HistGradientBoostingClassifier(
                max_iter=hp.max_iter,
                max_leaf_nodes=hp.max_leaf_nodes,
                learning_rate=hp.learning_rate,
                min_samples_leaf=hp.min_samples_leaf,
                l2_regularization=hp.l2_regularization,
                early_stopping=True,
                validation_fraction=hp.validation_fraction,
                n_iter_no_change=hp.n_iter_no_change,
                random_state=base + m,
            )
            self.trees.append(model.fit(x, y, w))

    def training_step(self, batch: dict, batch_idx: int) -> None:
        # the trees were fitted in on_fit_start; the epoch only runs validation
        if self.global_step == 0:
            self.optimizers().step()

    def _warn_untrained(self) -> None:
        if not self.trees:
            rank_zero_warn("this TreeClassifier is untrained (no checkpoint given): every event scores 0.5.")

    on_test_start = _warn_untrained
    on_predict_start = _warn_untrained

    def score(self, features: torch.Tensor) -> torch.Tensor:
        """(B, F) -> (B,) mean predicted probability of label 1 over the members (0.5 untrained)."""
        if not self.trees:
            return torch.full((len(features),), 0.5, device=features.device)
        x = features.detach().cpu().numpy().astype(np.float64)
        p = np.mean([tree.predict_proba(x)[:, 1] for tree in self.trees], axis=0)
        return torch.as_tensor(p, dtype=torch.float32, device=features.device)

    def evaluation_scores(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self.score(batch["features"]), batch["label"], batch["weight"]

    def on_validation_epoch_start(self) -> None:
        self._val_sums = torch.zeros(2, dtype=torch.float64, device=self.device)

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        if not self.trees:  # the sanity check runs before the fit
            return
        p = self.score(batch["features"]).double().clamp(1e-7, 1 - 1e-7)
        y, w = batch["label"].double(), batch["weight"].double()
        loss = -(w * (y * p.log() + (1 - y) * (1 - p).log())).sum()
        self._val_sums += torch.stack([loss, w.sum()])

    def on_validation_epoch_end(self) -> None:
        if self.trees:
            sums = self.trainer.strategy.reduce(self._val_sums, reduce_op="sum")
            self.log("val/loss", (sums[0] / sums[1]).float())

    def test_step(self, batch: dict, batch_idx: int) -> None:
        return None  # the score metrics are the AnomalyMetrics callback's

    def predict_step(self, batch: dict, batch_idx: int) -> dict[str, torch.Tensor]:
        return {"score": self.score(batch["features"]), **{k: v for k, v in batch.items() if k != "features"}}

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["trees"] = pickle.dumps(self.trees)

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.trees = pickle.loads(checkpoint["trees"])

    def configure_optimizers(self):
        return torch.optim.SGD([self.fit_marker], lr=0.0)
