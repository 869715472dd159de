"""Time-series metrics: marginals, moments, signature MMD and a real-vs-generated classifier."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_warn
from matplotlib.figure import Figure

from callbacks.base import PhysicsMetric, gather_predictions
from hepgen.io.files import write_atomically
from hepgen.metrics.classifier import two_sample_accuracy
from hepgen.io.timeseries import fill_missing
from hepgen.metrics.paths import (
    marginal_w1,
    mean_autocov_error,
    normalise_paths,
    signature,
    signature_mmd,
    signature_size,
)
from hepgen.plotting import histogram_edges

#: Default marginal times, as fractions of the time axis. On the regular grid 0..63 of the
#: paper's OU data they are the times of its Figure 1, t = 6, 19, 32, 44, 57.
MARGINAL_FRACTIONS = (0.1, 0.3, 0.5, 0.7, 0.9)
#: The classifier's signature stops at this depth: its input stays at a few thousand features
#: even for 6 channels (2 800 entries), and the filled values carry the rest.
CLASSIFIER_MAX_DEPTH = 4
#: Above this many signature entries per path sig_mmd takes minutes on 10 000 paths.
LARGE_SIGNATURE = 10_000


def nearest_index(grid: np.ndarray, t: float) -> int:
    """Index of the grid point nearest to ``t``; a tie goes to the later point (31.5 -> 32)."""
    distance = np.abs(np.asarray(grid) - t)
    return int(len(distance) - 1 - np.argmin(distance[::-1]))


def _time_grid(times: np.ndarray) -> np.ndarray:
    """The typical time of each observation index, (N, T) -> (T,): the median over paths."""
    return np.nanmedian(np.asarray(times, dtype=np.float64), axis=0)


def channel_labels(datamodule, n: int) -> tuple[list[str], list[str]]:
    """Names and units of a datamodule's ``n`` channels (``ch0, ch1, ...`` and "" where it has none)."""
    names = list(getattr(datamodule, "channel_names", None) or [f"ch{i}" for i in range(n)])
    units = list(getattr(datamodule, "units", None) or [""] * n)
    if len(names) != n or len(units) != n:
        raise ValueError(f"the datamodule names {len(names)} channels and {len(units)} units for {n} channels")
    return names, units


class PathMetrics(PhysicsMetric):
    """Real vs generated paths of a time-series generator (SDE-GAN), in physical units.

    Reads the model's ``evaluation_samples``: ``values`` (reference (B, T, C) with NaN where an
    observation is missing, generated (B, T, C)) and ``times`` ((B, T) each, model time units).
    Channel names and units come from ``trainer.datamodule.channel_names`` / ``.units``
    (``ch0, ch1, ...`` and no unit without them). Logged, in the channels' units:

    * ``w1/t<time>`` (one channel) or ``w1/<channel>/t<time>``: 1-D Wasserstein-1 distance
      between the real marginal (missing values ignored) and the generated one at each marginal
      time, and ``w1_mean``, their mean over times and channels (the headline number);
    * ``mean_abs_err``: max over time of |mean_gen - mean_real|, and ``autocov_abs_err``: mean
      over lags 1..max_lag of |autocov_gen - autocov_real| (:func:`hepgen.metrics.paths.autocovariance`),
      each the mean over channels, per channel as ``mean_abs_err/<channel>`` etc. when C > 1;
    * ``sig_mmd``: unbiased MMD^2 with the depth-``signature_depth`` signature kernel, the
      paper's metric (:func:`hepgen.metrics.paths.signature_mmd`; dimensionless, 0 expected for
      a perfect generator, may then be slightly negative);
    * in ``test`` only, ``classifier_accuracy``: held-out accuracy of an MLP telling real from
      generated paths (0.5 ideal, lower is better), on the signature (depth <= 4) of each
      filled path and its filled values. Like any classifier test it grows with the number of
      paths the classifier learns from (a generator at 0.62 on 1,024 OU paths scores 0.74 on
      8,192), so compare runs at equal ``max_events`` and test split.

    The signature and the classifier need whole paths. Each generated path first loses the
    observations its reference path misses, then both are filled the same way (linear in time,
    :func:`hepgen.io.timeseries.fill_missing`): an interpolated stretch is smoother than a
    sampled one, and a filled reference against fully sampled generated paths would count the
    interpolation against the generator. So ``filled`` is not read. A non-finite generated value
    makes the metrics that see it NaN.

    Plots: ``paths`` (``n_plot_paths`` real and generated paths per channel, missing real values
    as gaps) and ``marginals`` (histograms at each marginal time, W1 in the title); one row of
    panels per channel.

    Args:
        marginal_times: where the marginals are compared, in model time units (each taken at
            the nearest observation index of the typical time grid, the median over paths);
            default the 10/30/50/70/90 % points of the time axis.
        signature_depth: truncation of the MMD's signature (the paper: 5). Its size grows as
            (C + 1)^depth; lower it for many channels.
        max_lag: largest autocovariance lag (at most T - 1).
        classifier_epochs: training epochs of the test classifier.
        n_plot_paths: paths drawn per side in ``paths``.
        plot_channels: channels drawn in the figures (the first ones; every channel is measured).
            Each adds a row of subplots, and matplotlib's layout of tens of them takes tens of
            seconds per validation.
        **kwargs: see :class:`callbacks.base.PhysicsMetric`.
    """

    def __init__(
        self,
        marginal_times: list[float] | None = None,
        signature_depth: int = 5,
        max_lag: int = 5,
        classifier_epochs: int = 30,
        n_plot_paths: int = 50,
        plot_channels: int = 4,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        if signature_depth < 1 or max_lag < 1:
            raise ValueError(f"signature_depth and max_lag must be >= 1, got {signature_depth} and {max_lag}")
        self.marginal_times = None if marginal_times is None else list(marginal_times)
        self.signature_depth = signature_depth
        self.max_lag = max_lag
        self.classifier_epochs = classifier_epochs
        self.n_plot_paths = n_plot_paths
        self.plot_channels = plot_channels
        self._datamodule = None

    def before_compute(self, trainer, pl_module, events: int) -> None:
        self._datamodule = getattr(trainer, "datamodule", None)

    # --- what is compared ----------------------------------------------------------------------
    def channels(self, n: int) -> tuple[list[str], list[str]]:
        """Names and units of the ``n`` channels."""
        return channel_labels(self._datamodule, n)

    def marginal_indices(self, times: np.ndarray) -> tuple[np.ndarray, list[int]]:
        """The typical time grid (T,) and the observation indices of the marginal times (no repeats)."""
        grid = _time_grid(times)
        start, end = grid[0], grid[-1]
        targets = self.marginal_times or [start + f * (end - start) for f in MARGINAL_FRACTIONS]
        return grid, list(dict.fromkeys(nearest_index(grid, t) for t in targets))

    @staticmethod
    def filled_pair(reference: dict, generated: dict) -> tuple[np.ndarray, ...]:
        """Reference and generated paths with the same missing values, filled the same way.

        Paths with a channel never observed are dropped from both samples (nothing to fill from).

        Returns:
            (reference (N', T, C), generated (N', T, C), reference times, generated times (N', T)).
        """
        ref, gen = reference["values"], generated["values"]
        if ref.shape != gen.shape:
            raise ValueError(f"PathMetrics pairs paths: reference {ref.shape} and generated {gen.shape} differ")
        missing = np.isnan(ref)
        keep = (~missing).any(axis=1).all(axis=1)
        ref_times, gen_times = reference["times"][keep], generated["times"][keep]
        gen = np.where(missing, np.nan, gen)[keep]
        return fill_missing(ref[keep], ref_times), fill_missing(gen, gen_times), ref_times, gen_times

    # --- metrics -----------------------------------------------------------------------------------
    def compute(self, reference, generated, stage):
        ref, gen = reference["values"], generated["values"]
        names, _ = self.channels(ref.shape[2])
        grid, indices = self.marginal_indices(reference["times"])
        w1 = marginal_w1(ref, gen, indices)
        values = {}
        for i, index in enumerate(indices):
            for c, name in enumerate(names):
                values[f"w1/t{grid[index]:g}" if len(names) == 1 else f"w1/{name}/t{grid[index]:g}"] = w1[i, c]
        values["w1_mean"] = w1.mean()
        errors = mean_autocov_error(ref, gen, min(self.max_lag, ref.shape[1] - 1))
        for key, error in zip(("mean_abs_err", "autocov_abs_err"), errors):
            values[key] = error.mean()
            if len(names) > 1:
                values.update({f"{key}/{name}": e for name, e in zip(names, error)})
        if not np.isfinite(gen).all():  # fill_missing would interpolate over the bad values
            values["sig_mmd"] = np.nan
            if stage == "test":
                values["classifier_accuracy"] = np.nan
            return values
        paths = self.filled_pair(reference, generated)
        self._warn_if_slow(ref.shape[2])
        values["sig_mmd"] = signature_mmd(paths[0], paths[1], self.signature_depth, paths[2], paths[3])
        if stage == "test":
            values["classifier_accuracy"] = self.classifier_accuracy(*paths)
        return values

    def _warn_if_slow(self, channels: int) -> None:
        size = signature_size(channels + 1, self.signature_depth)
        if size > LARGE_SIGNATURE:
            rank_zero_warn(
                f"PathMetrics: the depth-{self.signature_depth} signature of {channels} channels and time has "
                f"{size} entries per path; sig_mmd costs (T - 1) x {size} operations per path. "
                "Lower signature_depth (or max_events) if validation is slow."
            )

    def classifier_accuracy(self, reference, generated, reference_times, generated_times) -> float:
        """Held-out real-vs-generated accuracy on (signature of depth <= 4, filled values) per path.

        The signature uses the same normalisation as ``sig_mmd`` (the reference's scales); the
        values, (T * C) per path, are standardised by the classifier itself.
        """
        depth = min(self.signature_depth, CLASSIFIER_MAX_DEPTH)

        def features(paths: np.ndarray, times: np.ndarray) -> np.ndarray:
            path = normalise_paths(paths, times, reference, reference_times)
            return np.concatenate([signature(path, depth), paths.reshape(len(paths), -1)], axis=1)

        return two_sample_accuracy(
            features(reference, reference_times), features(generated, generated_times), epochs=self.classifier_epochs
        )

    # --- figures -------------------------------------------------------------------------------------
    def figures(self, reference, generated, stage):
        names, units = self.channels(reference["values"].shape[2])
        labels = [f"{name} [{unit}]" if unit else name for name, unit in zip(names, units)]
        labels = labels[: self.plot_channels]
        return {
            "paths": self.paths_figure(reference, generated, labels, stage),
            "marginals": self.marginals_figure(reference, generated, labels, stage),
        }

    def paths_figure(self, reference: dict, generated: dict, labels: list[str], stage: str) -> Figure:
        """The first ``n_plot_paths`` paths: real (left, gaps where missing) and generated (right)."""
        n = self.n_plot_paths
        fig = Figure(figsize=(10, 2.8 * len(labels)), layout="constrained")
        axes = fig.subplots(len(labels), 2, sharex=True, sharey="row", squeeze=False)
        sides = ((reference, "real (gaps: missing values)", "C0"), (generated, "generated", "C1"))
        for col, (sample, title, colour) in enumerate(sides):
            times, values = sample["times"][:n], sample["values"][:n]
            for row, label in enumerate(labels):
                ax = axes[row, col]
                # a marker on every point: an observation between two missing ones has no line
                ax.plot(times.T, values[:, :, row].T, color=colour, alpha=0.4, linewidth=0.8, marker=".", markersize=2)
                ax.set_ylabel(label)
                ax.set_title(title, fontsize="small")
            axes[-1, col].set_xlabel("time")
        fig.suptitle(f"sample paths ({stage})")
        return fig

    def marginals_figure(self, reference: dict, generated: dict, labels: list[str], stage: str) -> Figure:
        """Histograms of the real and generated values at each marginal time, per channel."""
        ref, gen = reference["values"], generated["values"]
        grid, indices = self.marginal_indices(reference["times"])
        w1 = marginal_w1(ref, gen, indices)
        fig = Figure(figsize=(3.2 * len(indices), 2.8 * len(labels)), layout="constrained")
        axes = fig.subplots(len(labels), len(indices), squeeze=False)
        for row, label in enumerate(labels):
            for col, index in enumerate(indices):
                ax = axes[row, col]
                real, fake = ref[:, index, row], gen[:, index, row]
                real, fake = real[np.isfinite(real)], fake[np.isfinite(fake)]
                # bins over both samples: generated mass outside the real range must show
                edges, _ = histogram_edges(np.concatenate([real, fake]), bins=30)
                for x, name in ((real, "real"), (fake, "generated")):
                    ax.hist(x, bins=edges, weights=np.full(x.size, 1.0 / max(x.size, 1)), histtype="step", label=name)
                ax.set_title(f"t = {grid[index]:g}: W1 = {w1[col, row]:.3g}", fontsize="small")
                ax.set_xlabel(label)
            axes[row, 0].set_ylabel("fraction of paths")
        axes[0, 0].legend(fontsize="small")
        fig.suptitle(f"marginal distributions ({stage})")
        return fig


class PathWriter(BasePredictionWriter):
    """Write ``predict`` output to ``<run dir>/predictions/paths.npz`` (``paths.1.npz``, ... if it exists).

    The archive holds ``times`` (N, T) in the data's time units, ``values`` (N, T, C) generated
    paths in physical units (one per path of the predicted split, observed at its times), and
    ``channel_names`` and ``units`` (C,) from the datamodule: ``numpy.load`` is all a reader needs.
    """

    def __init__(self) -> None:
        super().__init__(write_interval="epoch")

    def write_on_epoch_end(self, trainer, pl_module, predictions, batch_indices) -> None:
        local = gather_predictions(trainer, predictions, ("times", "values"))
        if local is None:
            return
        channels = local["values"].shape[-1]
        names, units = channel_labels(getattr(trainer, "datamodule", None), channels)
        out = Path(trainer.default_root_dir) / "predictions"
        path = next(p for n in range(10**6) if not (p := out / f"paths{f'.{n}' if n else ''}.npz").exists())
        arrays = dict(local, channel_names=np.array(names), units=np.array(units))
        write_atomically(path, partial(np.savez, **arrays))
        print(f"hepgen: wrote {len(local['values'])} generated paths ({channels} channels) to {path}")
