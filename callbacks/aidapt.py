"""A(i)DAPT metrics (chi2 per invariant, unfolding closure, physical region), the GAN training monitor, the writer."""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities import rank_zero_warn
from matplotlib.figure import Figure

from callbacks.base import PhysicsMetric, gather_predictions
from hepgen.io.aidapt import write_atomically, write_event_file
from hepgen.metrics.classifier import two_sample_auc
from hepgen.metrics.distributions import binned_chi2_ndf, density_chi2
from hepgen.physics.kinematics import (
    COLUMNS,
    INVARIANT_NAMES,
    in_physical_region,
    invariants_to_lab,
    reproduces_invariants,
)
from hepgen.plotting import histogram_overlays, metric_history, metric_panels, save_figure

#: Axis labels of the invariants, physical units.
INVARIANT_LABELS = {
    "sppim": r"$s_{p\pi^-}$ [GeV$^2$]",
    "spipm": r"$s_{\pi^+\pi^-}$ [GeV$^2$]",
    "tpip": r"$t_{\pi^+}$ [GeV$^2$]",
    "alpha": r"$\alpha$ [rad]",
}
#: The levels an A(i)DAPT model may generate, in the order they are reported.
LEVELS = ("detector", "vertex")


def _numpy(x: torch.Tensor) -> np.ndarray:
    return x.detach().to("cpu", torch.float64).numpy()


class AIDAPTMetrics(PhysicsMetric):
    """chi2 per invariant at every level the model generates, against the known truth.

    For the folding GAN the level is ``detector`` (generated vs simulated detector invariants
    of the same vertex events); for the unfolding GAN also ``vertex``: the closure test of
    unfolded vs true vertex invariants (made data only: real data have no truth). Reads the
    model's ``evaluation_samples``: per level ``<level>`` (B, 4) physical invariants (GeV^2,
    GeV^2, GeV^2, rad), ``<level>_scaled`` (B, 4) the same in the model's [-1, 1] units,
    ``<level>_condition`` the scaled condition of the discriminator, and ``<level>_s`` (B, 1)
    the s (GeV^2) at which each side's invariants live. Per level and invariant it logs

    * ``<level>/chi2/<var>``: the reference's chi2 (100 density bins on the scaled [-1, 1]),
    * ``<level>/chi2_floor/<var>``: the same chi2 between the reference sample and an
      independent one of the same size from the training split (its statistical floor),
    * ``<level>/chi2_ndf/<var>``: the Pearson chi2/ndf of the two histograms with errors,

    per level ``<level>/unphysical_fraction``: the fraction of generated events outside the
    physical region of gamma p -> pi+ pi- p (:func:`hepgen.physics.kinematics.in_physical_region`),
    and ``<level>/unphysical_fraction_ref`` the same of the reference (not 0 at detector level:
    the measured pi- is the missing four-vector, off its mass shell), and in ``test``
    ``<level>/classifier_auc``: a classifier two-sample test on (condition, invariants)
    (0.5: indistinguishable). Plots: ``distributions`` (detector level) and
    ``unfolded_vertex`` (vertex level), physical units.

    Args:
        bins: histogram bins on [-1, 1] (reference 100).
        classifier_epochs: epochs of the test classifier.
        **kwargs: see :class:`callbacks.base.PhysicsMetric`.
    """

    def __init__(self, bins: int = 100, classifier_epochs: int = 30, **kwargs) -> None:
        super().__init__(**kwargs)
        self.bins = bins
        self.classifier_epochs = classifier_epochs
        self._independent: dict[str, np.ndarray] = {}

    def collect(self, samples):
        # float64: the chi2 histograms and the physical-region round trip see exact values
        return {k: _numpy(ref) for k, (ref, _) in samples.items()}, {k: _numpy(gen) for k, (_, gen) in samples.items()}

    def before_compute(self, trainer, pl_module, events: int) -> None:
        """Draw the independent sample: the first ``events`` training events, reference side only."""
        datamodule = getattr(trainer, "datamodule", None)
        drawn = min((len(v) for v in self._independent.values()), default=0)
        if not hasattr(datamodule, "training_sample") or drawn >= events:
            return
        sample = datamodule.training_sample(events)
        sample = {k: v.to(pl_module.device) for k, v in sample.items()}
        # the reference side does not depend on the generator; a separate one leaves the
        # evaluation's noise stream alone
        generator = torch.Generator(device=pl_module.device).manual_seed(self.seed)
        with torch.no_grad():
            levels = pl_module.evaluation_samples(sample, generator)
        self._independent = {lvl: _numpy(levels[f"{lvl}_scaled"][0]) for lvl in LEVELS if f"{lvl}_scaled" in levels}

    def _levels(self, reference: dict) -> list[str]:
        return [k for k in LEVELS if k in reference]

    def compute(self, reference, generated, stage):
        values: dict[str, float] = {}
        for level in self._levels(reference):
            ref, gen = reference[f"{level}_scaled"], generated[f"{level}_scaled"]
            independent = self._independent.get(level)
            for i, name in enumerate(INVARIANT_NAMES):
                values[f"{level}/chi2/{name}"] = density_chi2(gen[:, i], ref[:, i], self.bins)
                chi2, ndf = binned_chi2_ndf(gen[:, i], ref[:, i], self.bins)
                values[f"{level}/chi2_ndf/{name}"] = chi2 / max(ndf, 1)
                if independent is not None and len(independent) >= len(ref):
                    values[f"{level}/chi2_floor/{name}"] = density_chi2(independent[: len(ref), i], ref[:, i], self.bins)
            values.update(self._unphysical(level, reference, generated))
            if stage == "test":
                condition = reference[f"{level}_condition"]
                values[f"{level}/classifier_auc"] = two_sample_auc(
                    np.concatenate([condition, ref], axis=1),
                    np.concatenate([condition, gen], axis=1),
                    epochs=self.classifier_epochs,
                )
        return values

    def _unphysical(self, level: str, reference: dict, generated: dict) -> dict[str, float]:
        if f"{level}_s" not in reference:
            rank_zero_warn(f"AIDAPTMetrics: evaluation_samples give no '{level}_s'; no {level}/unphysical_fraction.")
            return {}

        def fraction(sample: dict) -> float:
            return 1.0 - in_physical_region(sample[level], sample[f"{level}_s"]).mean()

        return {
            f"{level}/unphysical_fraction": fraction(generated),
            f"{level}/unphysical_fraction_ref": fraction(reference),
        }

    def figures(self, reference, generated, stage):
        figures = {}
        titles = {"detector": "detector level", "vertex": "vertex level: unfolded vs truth"}
        labels = {"detector": ("detector simulation", "GAN"), "vertex": ("truth", "unfolded")}
        names = {"detector": "distributions", "vertex": "unfolded_vertex"}
        for level in self._levels(reference):
            ref = {INVARIANT_LABELS[n]: reference[level][:, i] for i, n in enumerate(INVARIANT_NAMES)}
            gen = {INVARIANT_LABELS[n]: generated[level][:, i] for i, n in enumerate(INVARIANT_NAMES)}
            figures[names[level]] = histogram_overlays(
                ref, gen, labels=labels[level], title=f"{titles[level]} ({stage})", bins=self.bins
            )
        return figures


#: File-name abbreviations of today's two-network GANs (``gen_layer_gradient_norms.png``, ...).
_SHORT_NAMES = {"generator": "gen", "discriminator": "disc"}
#: Legend labels of the A(i)DAPT losses; any other ``<x>_loss`` is labelled ``<x>``.
_LOSS_LABELS = {"d_loss": "discriminator", "g_loss": "generator"}


class GANMonitor(Callback):
    """Losses, discriminator accuracy and layer-by-layer gradient norms of an adversarial model.

    Works with any number of optimizers, named by ``pl_module.optimizer_names`` (in the order of
    ``configure_optimizers``; ``optimizer_<i>`` without it). The losses are the keys of the
    ``training_step`` output that end in ``_loss``, plus ``disc_acc`` if present. Gradient
    norms (Frobenius norm of every parameter's gradient: kernels and biases separately, and
    their aggregate sqrt(sum ||g||^2)) are taken just before each optimizer step on the epochs
    that are due (every ``grad_every_n_epochs``): per training step the last update of each
    optimizer (e.g. the last of a discriminator's n_disc updates), averaged over the epoch as in
    the A(i)DAPT reference. Validation chi2 per invariant and D accuracy (``val/chi2/<var>``,
    ``val/disc_acc``) are recorded when the model logs them.

    Plots in ``<run dir>/plots/train/`` (and W&B), every ``plot_every_n_epochs`` and at the end:
    ``training_analysis`` (losses, aggregate gradient norms; the loss the model reaches at
    equilibrium, ``pl_module.loss_equilibrium``, as a line when it is known, e.g. ln 2 for BCE),
    ``<name>_layer_gradient_norms`` per optimizer (``gen``/``disc`` for ``generator`` and
    ``discriminator``), ``disc_acc_vs_epoch``, ``chi2_vs_epoch``. The history is saved in
    checkpoints, so a resumed run's plots cover the whole training.

    Args:
        grad_every_n_epochs: gradient-norm frequency in epochs (0: never).
        plot_every_n_epochs: plot frequency in epochs (plots are also made when training ends).
    """

    def __init__(self, grad_every_n_epochs: int = 1, plot_every_n_epochs: int = 50) -> None:
        self.grad_every_n_epochs = grad_every_n_epochs
        self.plot_every_n_epochs = plot_every_n_epochs
        self.history: dict[str, list] = {"train": [], "val": [], "grad": []}
        self._names: list[str] = []
        self._param_names: list[list[str]] = []
        self._equilibrium: float | None = None
        self._reset_epoch()

    # --- state ---------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"history": self.history}

    def load_state_dict(self, state_dict: dict) -> None:
        self.history = state_dict["history"]

    # --- gradient norms ---------------------------------------------------------------------------
    def on_fit_start(self, trainer, pl_module) -> None:
        n = len(trainer.optimizers)
        self._names = list(getattr(pl_module, "optimizer_names", None) or (f"optimizer_{i}" for i in range(n)))
        names = {id(p): name for name, p in pl_module.named_parameters()}
        self._param_names = [[names[id(p)] for g in opt.param_groups for p in g["params"]] for opt in trainer.optimizers]
        self._equilibrium = getattr(pl_module, "loss_equilibrium", None)

    def _grads_due(self, trainer) -> bool:
        k = self.grad_every_n_epochs
        return k > 0 and (trainer.current_epoch + 1) % k == 0

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._reset_epoch()

    def _reset_epoch(self) -> None:
        # Also called from __init__: a run resumed from a checkpoint written during an epoch's
        # validation restarts at on_train_epoch_end, and Lightning skips on_train_epoch_start.
        self._sums: dict[str, float] = {}
        self._steps = 0
        self._grad_sums: dict[int, torch.Tensor] = {}
        self._grad_counts: dict[int, int] = {}
        self._last: dict[int, torch.Tensor] = {}

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if not self._grads_due(trainer):
            return
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        if not grads:
            return
        raw = getattr(optimizer, "_optimizer", optimizer)  # a LightningOptimizer wraps the torch one
        index = next((i for i, o in enumerate(trainer.optimizers) if o is raw), None)
        if index is None:
            return
        # overwritten until the training step's last update of this optimizer
        self._last[index] = torch.stack(torch._foreach_norm(grads)).detach().to("cpu", torch.float64)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        for index, norms in self._last.items():
            self._grad_sums[index] = norms + self._grad_sums.get(index, 0.0)
            self._grad_counts[index] = self._grad_counts.get(index, 0) + 1
        self._last = {}
        if not isinstance(outputs, dict):
            return
        for key, value in outputs.items():
            if key.endswith("_loss") or key == "disc_acc":
                self._sums[key] = self._sums.get(key, 0.0) + float(value)
        self._steps += 1

    # --- epoch records --------------------------------------------------------------------------
    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        metrics = trainer.callback_metrics
        record = {"epoch": trainer.current_epoch + 1}
        for key, value in metrics.items():
            if key == "val/disc_acc" or key.startswith("val/chi2/"):
                record[key] = float(value)
        self.history["val"].append(record)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        epoch = trainer.current_epoch + 1
        if self._steps:
            self.history["train"].append({"epoch": epoch, **{k: v / self._steps for k, v in self._sums.items()}})
        if self._grad_counts:
            record = {"epoch": epoch}
            logged = {}
            for index in sorted(self._grad_counts):
                net = self._names[index]
                norms = self._grad_sums[index] / self._grad_counts[index]
                for name, value in zip(self._param_names[index], norms.tolist()):
                    record[name] = value
                aggregate = float(torch.sqrt((norms**2).sum()))
                record[f"{net}/aggregate"] = aggregate
                logged[f"train/grad_norm/{net}"] = aggregate
            self.history["grad"].append(record)
            pl_module.log_dict(logged, on_step=False, on_epoch=True)
        k = self.plot_every_n_epochs
        if k > 0 and epoch % k == 0:
            self._plot(trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        self._plot(trainer)

    # --- plots -------------------------------------------------------------------------------------
    def figures(self) -> dict[str, Figure]:
        """The monitor's figures from the recorded history (those with data)."""
        figures = {}
        train, val, grad = self.history["train"], self.history["val"], self.history["grad"]
        if train:
            figures["training_analysis"] = self._training_analysis(train, grad)
        if any("disc_acc" in r for r in train):
            acc = {"train (last D pass, epoch mean)": [r.get("disc_acc", math.nan) for r in train]}
            fig = metric_history([r["epoch"] for r in train], acc, "discriminator accuracy", reference_lines={"0.5": 0.5})
            if any("val/disc_acc" in r for r in val):
                ax = fig.axes[0]
                ax.plot([r["epoch"] for r in val], [r.get("val/disc_acc", math.nan) for r in val], marker=".", label="validation")
                ax.legend(fontsize="small")
            figures["disc_acc_vs_epoch"] = fig
        chi2_keys = list(dict.fromkeys(k for r in val for k in r if k.startswith("val/chi2/")))
        if chi2_keys:
            rows = [r for r in val if any(k in r for k in chi2_keys)]
            series = {k.removeprefix("val/chi2/"): [r.get(k, math.nan) for r in rows] for k in chi2_keys}
            figures["chi2_vs_epoch"] = metric_history(
                [r["epoch"] for r in rows], series, r"$\chi^2$ (reference definition)", log=True
            )
        for index, net in enumerate(self._names):
            rows = [r for r in grad if f"{net}/aggregate" in r]
            if rows:
                keys = [f"{net}/aggregate"] + [k for k in self._param_names[index] if k in rows[-1]]
                panels = {k: [r.get(k, math.nan) for r in rows] for k in keys}
                figures[f"{_SHORT_NAMES.get(net, net)}_layer_gradient_norms"] = metric_panels(
                    [r["epoch"] for r in rows], panels, "gradient norm", title=f"{net} gradient norms"
                )
        return figures

    def _training_analysis(self, train: list[dict], grad: list[dict]) -> Figure:
        fig = Figure(figsize=(11, 4), layout="constrained")
        ax_loss, ax_grad = fig.subplots(1, 2)
        epochs = [r["epoch"] for r in train]
        losses = dict.fromkeys(k for r in train for k in r if k.endswith("_loss"))
        for key in losses:
            ax_loss.plot(epochs, [r.get(key, math.nan) for r in train], label=_LOSS_LABELS.get(key, key.removesuffix("_loss")))
        if self._equilibrium is not None:
            y = self._equilibrium
            label = "ln 2" if math.isclose(y, math.log(2)) else f"{y:.3g}"
            ax_loss.axhline(y, linestyle="--", color="gray", linewidth=1)
            ax_loss.annotate(f"{label} (equilibrium)", (0.01, y), xycoords=("axes fraction", "data"), fontsize="small")
        ax_loss.set(xlabel="epoch", ylabel="loss (epoch mean)", title="losses")
        ax_loss.legend(fontsize="small")
        for net in self._names:
            rows = [r for r in grad if f"{net}/aggregate" in r]
            ax_grad.plot([r["epoch"] for r in rows], [r[f"{net}/aggregate"] for r in rows], label=net)
        ax_grad.set(xlabel="epoch", ylabel="aggregate gradient norm", title="gradient norms")
        if grad:
            ax_grad.set_yscale("log")
            ax_grad.legend(fontsize="small")
        return fig

    def _plot(self, trainer) -> None:
        if not trainer.is_global_zero:
            return
        for name, fig in self.figures().items():
            for logger in trainer.loggers:
                if isinstance(logger, WandbLogger):
                    logger.log_image(key=f"train/{name}", images=[fig], caption=[f"epoch {trainer.current_epoch}"])
            save_figure(fig, Path(trainer.default_root_dir) / "plots" / "train" / f"{name}.png")


class AIDAPTWriter(BasePredictionWriter):
    """Write ``predict`` output into ``<run dir>/predictions/`` (never overwriting).

    * ``<level>_invariants.npy``: (N, 5) = the 4 generated invariants and s (GeV^2, rad), all
      N generated events;
    * ``<level>_physical.npy``: (N,) bool, whether row i lies in the physical region of
      gamma p -> pi+ pi- p, i.e. whether lab four-vectors with exactly these invariants exist
      (:func:`hepgen.physics.kinematics.reproduces_invariants`);
    * ``<level>_0.npy``: (M, 16) lab events in the A(i)DAPT layout rebuilt from the M physical
      rows only, with the pi+ azimuth of the input event, readable by
      :class:`datamodules.aidapt.AIDAPTDataModule`. Its ``event_id`` column is the row of the
      event in ``<level>_invariants.npy`` (the indices where ``<level>_physical.npy`` is True).
      Every written row gives back its invariants; unphysical ones have no such four-vectors.

    ``level`` is ``detector`` for the folding GAN and ``vertex`` for the unfolding GAN. When a
    file exists, all three get the suffix ``.1`` (``.2``, ...) so that they stay a set.
    """

    def __init__(self) -> None:
        super().__init__(write_interval="epoch")

    @staticmethod
    def _paths(out: Path, level: str) -> dict[str, Path]:
        n = 0
        while True:
            tag = f".{n}" if n else ""
            paths = {k: out / f"{level}_{k}{tag}.npy" for k in ("invariants", "physical", "0")}
            if not any(p.exists() for p in paths.values()):
                return paths
            n += 1

    def write_on_epoch_end(self, trainer, pl_module, predictions, batch_indices) -> None:
        level = predictions[0]["level"]
        local = gather_predictions(trainer, predictions, ("invariants", "s", "phi"))
        if local is None:
            return
        inv, s, phi = (local[k].astype(np.float64) for k in ("invariants", "s", "phi"))
        s, phi = s[:, 0], phi[:, 0]
        with np.errstate(all="ignore"):  # unphysical rows may overflow a cosine; they are flagged
            physical = reproduces_invariants(invariants_to_lab(inv, s, phi), inv, s)
        kept = np.flatnonzero(physical)
        events = invariants_to_lab(inv[kept], s[kept], phi[kept])
        events[:, COLUMNS.index("event_id")] = kept  # the row in <level>_invariants.npy
        paths = self._paths(Path(trainer.default_root_dir) / "predictions", level)
        write_atomically(paths["invariants"], partial(np.save, arr=np.concatenate([inv, s[:, None]], axis=1)))
        write_atomically(paths["physical"], partial(np.save, arr=physical))
        write_event_file(paths["0"], events)
        dropped = len(inv) - len(kept)
        print(f"hepgen: wrote {len(inv)} generated {level}-level invariants to {paths['invariants']}")
        print(
            f"hepgen: {dropped} of them ({100 * dropped / max(len(inv), 1):.2f} %) lie outside the physical region "
            f"(flagged False in {paths['physical']}); the other {len(kept)} went to {paths['0']} as lab "
            "events (16-column layout, event_id = row in the invariants file)"
        )
