"""A(i)DAPT GAN metrics: chi2 per invariant, unfolding closure, training monitor, prediction writer."""

from __future__ import annotations

import math
from functools import partial
from pathlib import Path

import numpy as np
import torch
from lightning.pytorch import Callback
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.loggers import WandbLogger
from matplotlib.figure import Figure

from callbacks.base import PhysicsMetric, gather_predictions
from hepgen.io.aidapt import write_atomically, write_event_file
from hepgen.metrics.classifier import two_sample_auc
from hepgen.metrics.distributions import binned_chi2_ndf, density_chi2
from hepgen.physics.kinematics import INVARIANT_NAMES
from hepgen.plotting import histogram_overlays, metric_history, metric_panels, save_figure
from hepgen.run import next_free_path

#: Axis labels of the invariants, physical units.
INVARIANT_LABELS = {
    "sppim": r"$s_{p\pi^-}$ [GeV$^2$]",
    "spipm": r"$s_{\pi^+\pi^-}$ [GeV$^2$]",
    "tpip": r"$t_{\pi^+}$ [GeV$^2$]",
    "alpha": r"$\alpha$ [rad]",
}
_SCALER_OF_LEVEL = {"vertex": "v_scaler", "detector": "d_scaler"}


def _numpy(x: torch.Tensor) -> np.ndarray:
    return x.detach().to("cpu", torch.float64).numpy()


class AIDAPTMetrics(PhysicsMetric):
    """chi2 per invariant at every level the model generates, against the known truth.

    For the folding GAN the level is ``detector`` (generated vs simulated detector invariants
    of the same vertex events); for the unfolding GAN also ``vertex``: the closure test of
    unfolded vs true vertex invariants (made data only: real data have no truth). Per level
    and invariant it logs

    * ``<level>/chi2/<var>``: the reference's chi2 (100 density bins on the scaled [-1, 1]),
    * ``<level>/chi2_floor/<var>``: the same chi2 between the reference sample and an
      independent one of the same size from the training split (its statistical floor),
    * ``<level>/chi2_ndf/<var>``: the Pearson chi2/ndf of the two histograms with errors,

    and in ``test`` ``<level>/classifier_auc``: a classifier two-sample test on (condition,
    invariants) (0.5: indistinguishable). Plots: ``distributions`` (detector level) and
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

    def collect(self, pl_module, batch, generator):
        reference, generated = {}, {}
        with torch.no_grad():
            condition = _numpy(pl_module.discriminator_label(batch))
            for level, (ref, gen) in pl_module.evaluation_samples(batch, generator).items():
                scaler = getattr(pl_module, _SCALER_OF_LEVEL[level])
                ref = ref.to(pl_module.device, torch.float32)
                reference[level], generated[level] = _numpy(ref), _numpy(gen)
                reference[f"{level}_scaled"], generated[f"{level}_scaled"] = _numpy(scaler(ref)), _numpy(scaler(gen))
                reference[f"{level}_condition"] = generated[f"{level}_condition"] = condition
                self._remember_independent(pl_module, level, scaler)
        return reference, generated

    def _remember_independent(self, pl_module, level: str, scaler) -> None:
        """Training-split events of ``level``: a sample independent of the evaluated one."""
        datamodule = getattr(pl_module.trainer, "datamodule", None)
        if level in self._independent or datamodule is None or "train" not in getattr(datamodule, "datasets", {}):
            return
        events = datamodule.datasets["train"].tensors[level][: self.max_events]
        self._independent[level] = _numpy(scaler(events.to(pl_module.device)))

    def _levels(self, reference: dict) -> list[str]:
        return [k for k in ("detector", "vertex") if k in reference]

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
            if stage == "test":
                condition = reference[f"{level}_condition"]
                values[f"{level}/classifier_auc"] = two_sample_auc(
                    np.concatenate([condition, ref], axis=1),
                    np.concatenate([condition, gen], axis=1),
                    epochs=self.classifier_epochs,
                )
        return values

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


class GANMonitor(Callback):
    """Losses, discriminator accuracy and layer-by-layer gradient norms of a two-network GAN.

    The model's ``training_step`` returns ``d_loss``, ``g_loss`` and ``disc_acc``; gradient
    norms (Frobenius norm of every parameter's gradient: kernels and biases separately, and
    their aggregate sqrt(sum ||g||^2)) are taken just before each optimizer step on the epochs
    that are due (every ``grad_every_n_epochs``): for G its one update per step, for D the last
    of its updates, averaged over the epoch as in the reference. Validation chi2 per invariant
    and D accuracy (``val/chi2/<var>``, ``val/disc_acc``) are recorded when validation runs.

    Plots in ``<run dir>/plots/train/`` (and W&B), every ``plot_every_n_epochs`` and at the end:
    ``training_analysis`` (losses, aggregate gradient norms), ``disc_layer_gradient_norms``,
    ``gen_layer_gradient_norms``, ``disc_acc_vs_epoch``, ``chi2_vs_epoch``. The history is
    saved in checkpoints, so a resumed run's plots cover the whole training.

    Args:
        grad_every_n_epochs: gradient-norm frequency in epochs (0: never).
        plot_every_n_epochs: plot frequency in epochs (plots are also made when training ends).
    """

    def __init__(self, grad_every_n_epochs: int = 1, plot_every_n_epochs: int = 50) -> None:
        self.grad_every_n_epochs = grad_every_n_epochs
        self.plot_every_n_epochs = plot_every_n_epochs
        self.history: dict[str, list] = {"train": [], "val": [], "grad": []}

    # --- state ---------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"history": self.history}

    def load_state_dict(self, state_dict: dict) -> None:
        self.history = state_dict["history"]

    # --- gradient norms ---------------------------------------------------------------------------
    def on_fit_start(self, trainer, pl_module) -> None:
        names = {id(p): n for n, p in pl_module.named_parameters()}
        # (G, D) in the order of configure_optimizers
        self._param_names = [[names[id(p)] for g in opt.param_groups for p in g["params"]] for opt in trainer.optimizers]

    def _grads_due(self, trainer) -> bool:
        k = self.grad_every_n_epochs
        return k > 0 and (trainer.current_epoch + 1) % k == 0

    def on_train_epoch_start(self, trainer, pl_module) -> None:
        self._sums: dict[str, float] = {}
        self._steps = 0
        self._grad_sums = [None, None]
        self._grad_counts = [0, 0]
        self._d_last = None

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        if not self._grads_due(trainer):
            return
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        if not grads:
            return
        norms = torch.stack(torch._foreach_norm(grads)).detach().to("cpu", torch.float64)
        if optimizer is trainer.optimizers[0]:  # the generator's
            self._add_grad(0, norms)
        else:
            self._d_last = norms  # overwritten until the step's last D update

    def _add_grad(self, index: int, norms: torch.Tensor) -> None:
        total = self._grad_sums[index]
        self._grad_sums[index] = norms if total is None else total + norms
        self._grad_counts[index] += 1

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._d_last is not None:
            self._add_grad(1, self._d_last)
            self._d_last = None
        if not isinstance(outputs, dict):
            return
        for key in ("d_loss", "g_loss", "disc_acc"):
            if key in outputs:
                self._sums[key] = self._sums.get(key, 0.0) + float(outputs[key])
        self._steps += 1

    # --- epoch records --------------------------------------------------------------------------
    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.sanity_checking:
            return
        metrics = trainer.callback_metrics
        record = {"epoch": trainer.current_epoch + 1}
        for key in ("val/disc_acc", *(f"val/chi2/{n}" for n in INVARIANT_NAMES)):
            if key in metrics:
                record[key] = float(metrics[key])
        self.history["val"].append(record)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        epoch = trainer.current_epoch + 1
        if self._steps:
            self.history["train"].append({"epoch": epoch, **{k: v / self._steps for k, v in self._sums.items()}})
        if self._grad_counts[0] or self._grad_counts[1]:
            record = {"epoch": epoch}
            logged = {}
            for index, net in enumerate(("generator", "discriminator")):
                if not self._grad_counts[index]:
                    continue
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
            acc = {"train (last D pass, epoch mean)": [r.get("disc_acc", math.nan) for r in train]}
            fig = metric_history([r["epoch"] for r in train], acc, "discriminator accuracy", reference_lines={"0.5": 0.5})
            if any("val/disc_acc" in r for r in val):
                ax = fig.axes[0]
                ax.plot([r["epoch"] for r in val], [r.get("val/disc_acc", math.nan) for r in val], marker=".", label="validation")
                ax.legend(fontsize="small")
            figures["disc_acc_vs_epoch"] = fig
        chi2_rows = [r for r in val if any(k.startswith("val/chi2/") for k in r)]
        if chi2_rows:
            series = {n: [r.get(f"val/chi2/{n}", math.nan) for r in chi2_rows] for n in INVARIANT_NAMES}
            figures["chi2_vs_epoch"] = metric_history(
                [r["epoch"] for r in chi2_rows], series, r"$\chi^2$ (reference definition)", log=True
            )
        for index, (net, short) in enumerate((("generator", "gen"), ("discriminator", "disc"))):
            rows = [r for r in grad if f"{net}/aggregate" in r]
            if rows:
                keys = [f"{net}/aggregate"] + [k for k in rows[-1] if k.startswith(f"{net}.")]
                panels = {k: [r.get(k, math.nan) for r in rows] for k in keys}
                figures[f"{short}_layer_gradient_norms"] = metric_panels(
                    [r["epoch"] for r in rows], panels, "gradient norm", title=f"{net} gradient norms"
                )
        return figures

    @staticmethod
    def _training_analysis(train: list[dict], grad: list[dict]) -> Figure:
        fig = Figure(figsize=(11, 4), layout="constrained")
        ax_loss, ax_grad = fig.subplots(1, 2)
        epochs = [r["epoch"] for r in train]
        for key, label in (("d_loss", "discriminator"), ("g_loss", "generator")):
            ax_loss.plot(epochs, [r.get(key, math.nan) for r in train], label=label)
        ax_loss.axhline(math.log(2), linestyle="--", color="gray", linewidth=1)
        ax_loss.annotate("ln 2 (equilibrium)", (0.01, math.log(2)), xycoords=("axes fraction", "data"), fontsize="small")
        ax_loss.set(xlabel="epoch", ylabel="BCE loss (epoch mean)", title="losses")
        ax_loss.legend(fontsize="small")
        for net in ("generator", "discriminator"):
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

    * ``<level>_invariants.npy``: (N, 5) = the 4 generated invariants and s (GeV^2, rad);
    * ``<level>_0.npy``: (N, 16) lab events in the A(i)DAPT layout rebuilt from them, with the
      pi+ azimuth of the input event, readable by :class:`datamodules.aidapt.AIDAPTDataModule`.

    ``level`` is ``detector`` for the folding GAN and ``vertex`` for the unfolding GAN.
    """

    def __init__(self) -> None:
        super().__init__(write_interval="epoch")

    def write_on_epoch_end(self, trainer, pl_module, predictions, batch_indices) -> None:
        from hepgen.physics.kinematics import invariants_to_lab

        level = predictions[0]["level"]
        local = gather_predictions(trainer, predictions, ("invariants", "s", "phi"))
        if local is None:
            return
        local = {k: v.astype(np.float64) for k, v in local.items()}
        out = Path(trainer.default_root_dir) / "predictions"
        invariants = np.concatenate([local["invariants"], local["s"]], axis=1)
        events = invariants_to_lab(local["invariants"], local["s"][:, 0], local["phi"][:, 0])
        path = next_free_path(out / f"{level}_invariants.npy")
        write_atomically(path, partial(np.save, arr=invariants))
        print(f"hepgen: wrote {len(invariants)} generated {level}-level invariants to {path}")
        path = next_free_path(out / f"{level}_0.npy")
        write_event_file(path, events)
        print(f"hepgen: wrote them as {level}-level lab events (16-column layout) to {path}")

