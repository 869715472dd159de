"""Validation figures: observable overlays, mean shower images, response vs incident energy.

Every function builds a :class:`matplotlib.figure.Figure` directly (no pyplot), so no global
figure state leaks and no interactive backend is needed; the caller logs or saves it, e.g. with
:func:`save_figure`.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from hepgen.metrics.distributions import ks_statistic
from hepgen.physics.calo_geometry import CELL_SIZE_MM, LAYER_KEYS, LAYER_SHAPES, TRANSVERSE_SIZE_MM
from hepgen.physics.calo_observables import OBSERVABLE_BINNING, OBSERVABLE_LABELS, Binning

#: Panels per row in :func:`histogram_overlays`.
GRID_COLUMNS = 4


def _finite(x: np.ndarray) -> np.ndarray:
    """The finite values of ``x``, flattened to float64 (what a histogram can show)."""
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    return x[np.isfinite(x)]


def _widen(lo: float, hi: float, log: bool) -> tuple[float, float]:
    """A non-degenerate interval around a constant sample."""
    if hi > lo:
        return lo, hi
    return (lo / 2, hi * 2) if log else (lo - 0.5, hi + 0.5)


def _lattice_edges(x: np.ndarray, bins: int) -> np.ndarray:
    """About ``bins`` edges halfway between lattice points, each bin holding as many points.

    The lattice step is the smallest gap between distinct values of ``x`` (at least two).
    """
    step = float(np.diff(np.unique(x)).min())
    lo, hi = float(x.min()) - step / 2, float(x.max()) + step / 2
    width = step * max(1, math.ceil((hi - lo) / step / bins))
    return lo + width * np.arange(math.ceil((hi - lo) / width - 1e-9) + 1)


def histogram_edges(
    reference: np.ndarray, binning: Binning = Binning(), bins: int = 50
) -> tuple[np.ndarray, bool]:
    """Bin edges for an overlay: the binning's fixed range, else the reference's min-max.

    Log binning uses the positive reference values only (zeros, e.g. empty layers, cannot be
    drawn on a log axis) and falls back to linear bins when the range is not positive.
    Discrete observables get bins aligned to their lattice (:func:`_lattice_edges`).

    Returns:
        Increasing edges ((bins + 1,) unless aligned to a lattice), and whether they are
        log-spaced.
    """
    x = _finite(reference)
    positive = x[x > 0]
    log = binning.log and positive.size > 0
    if binning.range is not None:
        lo, hi = binning.range
    elif x.size == 0:
        lo, hi = 0.0, 1.0
    elif binning.discrete and np.unique(x).size > 1:
        return _lattice_edges(x, bins), False
    else:
        x = positive if log else x
        lo, hi = _widen(float(x.min()), float(x.max()), log)
    log = log and lo > 0
    edges = np.geomspace(lo, hi, bins + 1) if log else np.linspace(lo, hi, bins + 1)
    return edges, log


def _plain_log_ticks(ax: Axes, decades: float) -> None:
    """Label a log x axis with plain numbers ("0.2", "50").

    Over less than two decades the major ticks alone leave it nearly unlabelled, so the
    minor ticks at 2 and 5 per decade are labelled too; the others stay blank so that the
    labels do not overlap.
    """

    def minor(value: float, _pos: int) -> str:
        leading = round(value / 10 ** math.floor(math.log10(value)))
        return f"{value:g}" if decades < 2 and leading in (2, 5) else ""

    ax.xaxis.set_major_formatter(FuncFormatter(lambda value, _pos: f"{value:g}"))
    ax.xaxis.set_minor_formatter(FuncFormatter(minor))


def _panel_grid(n: int, panel_size: tuple[float, float]) -> tuple[Figure, list[Axes]]:
    """A figure with ``n`` axes in rows of up to :data:`GRID_COLUMNS` (unused cells removed)."""
    ncols = min(GRID_COLUMNS, n)
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(panel_size[0] * ncols, panel_size[1] * nrows), layout="constrained")
    axes = list(fig.subplots(nrows, ncols, squeeze=False).ravel())
    for ax in axes[n:]:
        fig.delaxes(ax)
    return fig, axes[:n]


def _overlay_panel(
    ax: Axes, name: str, ref: np.ndarray, gen: np.ndarray, labels: Sequence[str], bins: int
) -> None:
    """Step histograms of one observable, each normalised to the fraction of its events."""
    edges, log = histogram_edges(ref, OBSERVABLE_BINNING.get(name, Binning()), bins)
    # KS on the raw values, so that NaN from a generator counts against it.
    ks = ks_statistic(ref, gen) if np.size(ref) and np.size(gen) else float("nan")
    for x, label in ((_finite(ref), labels[0]), (_finite(gen), f"{labels[1]} (KS={ks:.3f})")):
        weights = np.full(x.size, 1.0 / max(x.size, 1))
        ax.hist(x, bins=edges, weights=weights, histtype="step", label=label)
    if log:
        ax.set_xscale("log")
        _plain_log_ticks(ax, decades=float(np.log10(edges[-1] / edges[0])))
    ax.set_xlabel(OBSERVABLE_LABELS.get(name, name))
    ax.set_ylabel("fraction of events")
    ax.legend(fontsize="small")


def histogram_overlays(
    reference: dict[str, np.ndarray],
    generated: dict[str, np.ndarray],
    names: list[str] | None = None,
    labels: Sequence[str] = ("reference", "generated"),
    title: str | None = None,
    bins: int = 50,
) -> Figure:
    """A grid of reference vs generated histograms, one panel per observable.

    Binning is shared and taken from the reference (:func:`histogram_edges` with the
    observable's :data:`OBSERVABLE_BINNING`); the legend gives the KS distance.

    Args:
        reference, generated: ``{name: (N,) values}``, e.g. from ``compute_observables``.
        names: observables to draw; default all reference names also in ``generated``.
        labels: legend labels of the two samples.
        title: figure title.
        bins: bins per panel.

    Returns:
        Figure with one axes per name.
    """
    names = [n for n in reference if n in generated] if names is None else list(names)
    if not names:
        raise ValueError("no observable to plot")
    fig, axes = _panel_grid(len(names), (3.6, 3.0))
    for ax, name in zip(axes, names):
        _overlay_panel(ax, name, reference[name], generated[name], labels, bins)
    if title:
        fig.suptitle(title)
    return fig


def _mean_image(showers: dict[str, np.ndarray], key: str) -> np.ndarray:
    """Mean cell energy over the events whose cells are all finite, (rows, cols), MeV.

    A model that generates a NaN or inf somewhere (the metrics report how often) must not take
    the picture of all its other showers with it.
    """
    layer = np.asarray(showers[key])
    if layer.shape[1:] != LAYER_SHAPES[key]:
        raise ValueError(f"{key} has shape {layer.shape}; expected (N, *{LAYER_SHAPES[key]})")
    finite = np.isfinite(layer).all(axis=(1, 2))
    if not finite.any():
        return np.zeros(layer.shape[1:])
    return layer[finite].mean(axis=0, dtype=np.float64)


def shared_log_norm(images: Sequence[np.ndarray], dynamic_range: float = 1e6) -> LogNorm:
    """One log colour scale for several images: their positive min to max, at most 6 decades."""
    values = np.concatenate([im.reshape(-1) for im in images])
    positive = values[values > 0]
    if positive.size == 0:
        return LogNorm(vmin=1e-3, vmax=1.0)
    vmax = float(positive.max())
    return LogNorm(vmin=max(float(positive.min()), vmax / dynamic_range), vmax=vmax)


def mean_shower_images(
    reference_showers: dict[str, np.ndarray],
    generated_showers: dict[str, np.ndarray],
    labels: Sequence[str] = ("reference", "generated"),
) -> Figure:
    """Mean shower per layer: rows reference / generated, columns layers 0-2.

    Images are drawn in mm (each layer spans the full 480 x 480 mm readout), so the cells
    keep their physical aspect (layer 0: 160 x 5 mm strips). Both rows of a layer share one
    log colour scale; cells never hit are white.

    Args:
        reference_showers, generated_showers: ``{"layer_0": (N, 3, 96), ...}``, MeV.
        labels: row titles.

    Returns:
        Figure with 6 image axes and 3 colour-bar axes.
    """
    half = TRANSVERSE_SIZE_MM / 2
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="white", under="white")
    fig = Figure(figsize=(12, 7), layout="constrained")
    axes = fig.subplots(2, len(LAYER_KEYS))
    for col, key in enumerate(LAYER_KEYS):
        images = [_mean_image(reference_showers, key), _mean_image(generated_showers, key)]
        norm = shared_log_norm(images)
        for row, (image, label) in enumerate(zip(images, labels)):
            ax = axes[row, col]
            # Row index runs along the first array axis, drawn upwards (origin="lower") to
            # match the ascending cell centres of calo_geometry.cell_centres_mm.
            im = ax.imshow(
                np.ma.masked_less_equal(image, 0),
                origin="lower",
                extent=(-half, half, -half, half),
                aspect="equal",
                cmap=cmap,
                norm=norm,
                interpolation="nearest",
            )
            size0, size1 = CELL_SIZE_MM[key]
            ax.set_title(f"{label}: {key}\n({size0:g} x {size1:g} mm cells)", fontsize="small")
            ax.set_xlabel("array axis 1 [mm]")
            ax.set_ylabel("array axis 0 [mm]")
        fig.colorbar(im, ax=axes[:, col], label="mean cell energy [MeV]", shrink=0.8)
    return fig


def _binned_mean_std(
    x: np.ndarray, y: np.ndarray, edges: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std of y in bins of x; NaN in empty bins (matplotlib leaves a gap)."""
    idx = np.clip(np.searchsorted(edges, x, side="right") - 1, 0, edges.size - 2)
    inside = (x >= edges[0]) & (x <= edges[-1])
    idx, y = idx[inside], y[inside]
    n = np.bincount(idx, minlength=edges.size - 1).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.bincount(idx, weights=y, minlength=edges.size - 1) / n
        second = np.bincount(idx, weights=y**2, minlength=edges.size - 1) / n
    return mean, np.sqrt(np.clip(second - mean**2, 0.0, None))


def response_vs_energy(
    e_inc_ref: np.ndarray,
    response_ref: np.ndarray,
    e_inc_gen: np.ndarray,
    response_gen: np.ndarray,
    bins: int = 10,
    labels: Sequence[str] = ("reference", "generated"),
) -> Figure:
    """Linearity and resolution: mean and std of E_tot/E_inc in bins of incident energy.

    Bins are ``bins`` equal-width intervals over the reference incident-energy range.

    Args:
        e_inc_ref, e_inc_gen: incident energies, (N,) or (N, 1), GeV.
        response_ref, response_gen: E_tot / E_inc per event, (N,).
        bins: number of incident-energy bins.
        labels: legend labels of the two samples.

    Returns:
        Figure with 2 axes: mean response (top) and its spread (bottom).
    """
    e_ref = np.asarray(e_inc_ref, dtype=np.float64).reshape(-1)
    e_gen = np.asarray(e_inc_gen, dtype=np.float64).reshape(-1)
    lo, hi = _widen(float(e_ref.min()), float(e_ref.max()), log=False)
    edges = np.linspace(lo, hi, bins + 1)
    centres = 0.5 * (edges[1:] + edges[:-1])

    fig = Figure(figsize=(6, 6), layout="constrained")
    ax_mean, ax_std = fig.subplots(2, 1, sharex=True)
    samples = ((e_ref, response_ref, labels[0], "o"), (e_gen, response_gen, labels[1], "s"))
    for e_inc, response, label, marker in samples:
        r = np.asarray(response, dtype=np.float64).reshape(-1)
        mean, std = _binned_mean_std(e_inc, r, edges)
        ax_mean.errorbar(centres, mean, yerr=std, marker=marker, capsize=3, label=label)
        ax_std.plot(centres, std, marker=marker, label=label)
    ax_mean.set_ylabel(r"mean $E_\mathrm{tot}/E_\mathrm{inc}$ (bars: std)")
    ax_mean.legend()
    ax_std.set_ylabel(r"std of $E_\mathrm{tot}/E_\mathrm{inc}$")
    ax_std.set_xlabel(r"$E_\mathrm{inc}$ [GeV]")
    return fig


def save_figure(fig: Figure, path: str | Path) -> Path:
    """Save ``fig`` (PNG at 100 dpi unless ``path`` names another format), then close it.

    Parent directories are created; a path without suffix gets ``.png``.

    Returns:
        The path written.
    """
    path = Path(path)
    path = path if path.suffix else path.with_suffix(".png")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    # Only a pyplot-made figure needs closing (pyplot keeps a reference to it), and one can
    # only exist if pyplot was imported; Figures built here are freed with their last reference.
    pyplot = sys.modules.get("matplotlib.pyplot")
    if pyplot is not None:
        pyplot.close(fig)
    return path


def metric_history(
    epochs: Sequence[float],
    series: dict[str, Sequence[float]],
    ylabel: str,
    title: str | None = None,
    log: bool = False,
    reference_lines: dict[str, float] | None = None,
) -> Figure:
    """Curves of one or more metrics against the epoch, e.g. chi2 per variable or D accuracy.

    Args:
        epochs: x values, (T,).
        series: ``{legend label: (T,) values}``; NaN leaves a gap (a metric not computed then).
        ylabel: y-axis label.
        title: axes title.
        log: logarithmic y axis.
        reference_lines: ``{label: y}`` horizontal dashed lines (a target or a floor).
    """
    fig = Figure(figsize=(6.4, 4.0), layout="constrained")
    ax = fig.subplots()
    for label, values in series.items():
        ax.plot(epochs, values, marker=".", markersize=3, label=label)
    for label, y in (reference_lines or {}).items():
        ax.axhline(y, linestyle="--", color="gray", linewidth=1)
        ax.annotate(label, (0.01, y), xycoords=("axes fraction", "data"), fontsize="small", color="gray")
    if log:
        ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    if series:
        ax.legend(fontsize="small")
    return fig


def metric_panels(
    epochs: Sequence[float], panels: dict[str, Sequence[float]], ylabel: str, title: str | None = None, log: bool = True
) -> Figure:
    """One small panel per metric against the epoch (e.g. the gradient norm of every layer)."""
    if not panels:
        raise ValueError("no metric to plot")
    fig, axes = _panel_grid(len(panels), (3.4, 2.6))
    for ax, (name, values) in zip(axes, panels.items()):
        ax.plot(epochs, values)
        ax.set_title(name, fontsize="small")
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        if log and np.nanmin(np.asarray(values, dtype=float), initial=np.inf) > 0:
            ax.set_yscale("log")
    if title:
        fig.suptitle(title)
    return fig
