"""The CaloChallenge 2022 evaluation (``evaluate.py``) as a metric callback, and its table row."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from lightning.pytorch.callbacks import BasePredictionWriter
from matplotlib.figure import Figure

from callbacks.base import PhysicsMetric, gather_predictions
from hepgen.io.calochallenge import apply_threshold, write_calochallenge
from hepgen.metrics.calo_classifier import challenge_split, classifier_test, low_level_inputs
from hepgen.metrics.distributions import binned_separation_power
from hepgen.metrics.frechet import frechet_physics_distance, kernel_physics_distance
from hepgen.physics.calochallenge import VOXELS, CaloChallengeBinning, load_binning
from hepgen.plotting import shared_log_norm
from hepgen.run import next_free_path
from hepgen.physics.calochallenge_features import (
    LAYER_GROUPS,
    discrete_energy_bins,
    feature_vector,
    high_level_features,
    histogram_edges,
    resolve_threshold,
    split_feature_name,
    voxel_histogram_edges,
)

#: Axis labels of the feature groups (``<l>`` is filled with the layer id).
FEATURE_LABELS = {
    "e_ratio": r"$E_\mathrm{tot}/E_\mathrm{inc}$",
    "e_layer": "$E$ in layer {l} [MeV]",
    "ec_eta": r"centre of energy in $\eta$ (x), layer {l} [mm]",
    "ec_phi": r"centre of energy in $\phi$ (y), layer {l} [mm]",
    "width_eta": r"width in $\eta$ (x), layer {l} [mm]",
    "width_phi": r"width in $\phi$ (y), layer {l} [mm]",
    "sparsity": "sparsity (fraction of empty voxels), layer {l}",
    "ec_r": "centre of energy in r, layer {l} [mm]",
    "width_r": "width in r, layer {l} [mm]",
    "voxel_energy": "voxel energy [MeV]",
}
_LOG_X = ("e_layer", "voxel_energy")
#: Drawn with a linear y axis, as the challenge's plots (the others: log y).
_LINEAR_Y = ("e_ratio", "sparsity")

#: Header of :func:`metric_table`, the columns of the summary paper's tables (arXiv:2410.21611).
METRIC_TABLE_HEADER = "| model | AUC low | AUC high | FPD×10³ | KPD×10³ |\n|---|---|---|---|---|"


def separation_powers(
    reference: dict[str, np.ndarray], generated: dict[str, np.ndarray], binning: CaloChallengeBinning
) -> dict[str, float]:
    """``hist-chi`` separation power of every high-level feature on the challenge's binning.

    Args:
        reference, generated: outputs of :func:`high_level_features` (one binning).
        binning: the dataset's binning.

    Returns:
        ``{feature: S}`` for every feature with a challenge histogram (not ``e_tot``; not a layer
        whose reference never exceeds the threshold). S is NaN if one sample has no value inside
        the histogram's range.
    """
    values = {}
    for name, ref in reference.items():
        edges = histogram_edges(name, ref, binning)
        if edges is not None:
            values[name] = binned_separation_power(ref, generated[name], edges)
    return values


def energy_separation_powers(
    ref_ratio: np.ndarray, ref_incident: np.ndarray, gen_ratio: np.ndarray, gen_incident: np.ndarray,
    binning: CaloChallengeBinning,
) -> dict[str, float]:  # fmt: skip
    """Dataset 1: separation power of E_tot/E_inc at each incident energy (``e_ratio_at_<E>mev``).

    Energies without events in either sample are left out (datasets 2 and 3: an empty dict).
    """
    ref_incident, gen_incident = np.reshape(ref_incident, -1), np.reshape(gen_incident, -1)
    values = {}
    for low, high, edges in discrete_energy_bins(binning):
        ref_in = (ref_incident >= low) & (ref_incident < high)
        gen_in = (gen_incident >= low) & (gen_incident < high)
        if ref_in.any() and gen_in.any():
            values[f"e_ratio_at_{low:.0f}mev"] = binned_separation_power(ref_ratio[ref_in], gen_ratio[gen_in], edges)
    return values


def _group_means(sep: dict[str, float]) -> dict[str, float]:
    """Mean separation power over the layers of each per-layer group (NaN layers skipped)."""
    means = {}
    for group in LAYER_GROUPS:
        finite = [v for k, v in sep.items() if split_feature_name(k)[0] == group and np.isfinite(v)]
        if finite:
            means[group] = float(np.mean(finite))
    return means


def _plotted_layers(binning: CaloChallengeBinning, max_layers: int) -> list[int]:
    """Layer indices to draw: all of them, or ``max_layers`` evenly spaced including first and last."""
    n = len(binning.layers)
    if n <= max_layers:
        return list(range(n))
    return sorted({int(round(i)) for i in np.linspace(0, n - 1, max_layers)})


def _panel_grid(n: int, ncols: int, size: tuple[float, float], **subplot_kw) -> tuple[Figure, list]:
    ncols = min(ncols, n)
    nrows = math.ceil(n / ncols)
    fig = Figure(figsize=(size[0] * ncols, size[1] * nrows), layout="constrained")
    axes = list(fig.subplots(nrows, ncols, squeeze=False, subplot_kw=subplot_kw).ravel())
    for ax in axes[n:]:
        fig.delaxes(ax)
    return fig, axes[:n]


def _overlay(ax, ref: np.ndarray, gen: np.ndarray, edges: np.ndarray, label: str, sep: float, group: str) -> None:
    """Step histograms on the challenge's edges, each normalised to unit sum inside the range."""
    for x, name in ((ref, "reference"), (gen, f"generated (S={sep:.2g})")):
        x = np.asarray(x, dtype=np.float64).reshape(-1)
        counts, _ = np.histogram(x[np.isfinite(x)], bins=edges)
        fractions = counts / max(counts.sum(), 1)
        ax.stairs(fractions, edges, label=name)
    if group in _LOG_X:
        ax.set_xscale("log")
    if group not in _LINEAR_Y:
        ax.set_yscale("log")
    ax.set_xlabel(label, fontsize="small")
    ax.set_ylabel("fraction of events")
    ax.legend(fontsize="x-small")


def _mean_layer_image(showers, binning: CaloChallengeBinning, index: int, threshold_mev: float | None) -> np.ndarray:
    """(n_alpha, n_r) mean energy (MeV) of one layer over the showers whose voxels there are all
    finite (a broken generator's NaN must not blank the picture), thresholded layer by layer."""
    layer = np.asarray(showers)[:, binning.layer_slices[index]]
    layer = layer[np.isfinite(layer).all(axis=1)]
    if len(layer) == 0:
        return np.zeros((binning.layers[index].n_alpha, binning.layers[index].n_r))
    layer = layer if threshold_mev is None else apply_threshold(layer, threshold_mev)
    return layer.mean(axis=0, dtype=np.float64).reshape(binning.layers[index].n_alpha, -1)


def mean_shower_figure(
    reference_showers: np.ndarray,
    generated_showers: np.ndarray,
    binning: CaloChallengeBinning,
    layers: list[int],
    threshold_mev: float | None = None,
) -> Figure:
    """Mean voxel energy per layer on polar (alpha, r) axes: reference above, generated below.

    Dataset 1's radial bins span 0.5 mm to 2 m, so its radius is drawn as log(1 + r/mm) (the
    challenge's plots use log r too); datasets 2 and 3 use r in mm. The angle is alpha, counted
    from the x ("eta") axis. Both images of a layer share one log colour scale; voxels never hit
    are blank.

    Args:
        reference_showers, generated_showers: (N, n_voxels) MeV.
        binning: the dataset's binning.
        layers: indices into ``binning.layers`` to draw.
        threshold_mev: voxels below it count as 0 (``None``: none).
    """
    ncols = min(len(layers), 5)
    blocks = math.ceil(len(layers) / ncols)
    fig = Figure(figsize=(2.6 * ncols, 5.6 * blocks), layout="constrained")
    axes = fig.subplots(2 * blocks, ncols, squeeze=False, subplot_kw={"projection": "polar"})
    log_r = binning.dataset.startswith("1")
    for position, index in enumerate(layers):
        block, col = divmod(position, ncols)
        layer = binning.layers[index]
        images = [_mean_layer_image(s, binning, index, threshold_mev) for s in (reference_showers, generated_showers)]
        norm = shared_log_norm(images)
        # Polar quads have straight sides: split each angular bin into pieces so that rings look
        # round (a layer with one angular bin would otherwise have no area at all).
        pieces = math.ceil(72 / layer.n_alpha)
        r_edges = np.asarray(layer.r_edges_mm)
        theta, radius = np.meshgrid(
            np.linspace(-math.pi, math.pi, layer.n_alpha * pieces + 1), np.log1p(r_edges) if log_r else r_edges
        )
        pair = [axes[2 * block, col], axes[2 * block + 1, col]]
        for ax, image, name in zip(pair, images, ("reference", "generated")):
            # image[a, r] is voxel (alpha bin a, radial bin r); pcolormesh wants rows along r.
            shown = np.repeat(image, pieces, axis=0).T
            mesh = ax.pcolormesh(theta, radius, np.ma.masked_less_equal(shown, 0), norm=norm, cmap="viridis")
            ax.set_title(f"{name}: layer {layer.layer_id}", fontsize="small")
            ax.set_xticklabels([])
            ax.set_yticklabels([])
            ax.grid(False)
        fig.colorbar(mesh, ax=pair, label="mean voxel energy [MeV]", orientation="horizontal", shrink=0.8)
    for position in range(len(layers), blocks * ncols):
        block, col = divmod(position, ncols)
        fig.delaxes(axes[2 * block, col])
        fig.delaxes(axes[2 * block + 1, col])
    radius = "log(1 + r/mm)" if log_r else "r [mm]"
    fig.suptitle(f"mean shower, dataset {binning.dataset} (angle alpha, radius {radius})", fontsize="small")
    return fig


class CaloChallengeMetrics(PhysicsMetric):
    """The CaloChallenge 2022 evaluation of generated showers against the reference.

    Reads the model's ``evaluation_samples``: ``showers`` (B, n_voxels) MeV and
    ``incident_energies`` (B, 1) MeV, each a (reference, generated) pair. The binning is that of
    ``dataset`` if given, else the datamodule's ``binning`` attribute, else the dataset whose
    voxel count the showers have. Both samples are thresholded at the dataset's readout threshold
    first, as the challenge does (``threshold``).

    Logged every evaluation (keys as in :mod:`hepgen.physics.calochallenge_features`):

    * ``sep/<feature>``: separation power on the challenge's histogram binning of ``e_ratio``
      and every per-layer feature; ``sep/voxel_energy`` (the voxel spectrum); dataset 1 also
      ``sep/e_ratio_at_<E>mev`` per incident energy. ``sep_mean/<group>``: the mean over layers.
    * ``nonfinite_fraction``: the generated showers with a NaN or inf voxel.

    In ``test`` (and at validation if ``distances_at_validation``):

    * ``fpd_x1e3``, ``fpd_x1e3_err``, ``kpd_x1e3``, ``kpd_x1e3_err``: FPD and KPD of the
      high-level feature vector times 10^3, as the paper reports them.

    In ``test`` only (the classifiers are the costly part):

    * ``cls_low/auc``, ``cls_low/auc_std``, ``cls_low/jsd``, ``cls_low/jsd_std`` and the same for
      ``cls_high``: the challenge's DNN classifier on the voxels and on the feature vector, mean
      and std over ``classifier_repeats`` trainings (:mod:`hepgen.metrics.calo_classifier`).

    Plots: ``hlf_<group>`` (reference vs generated histograms of every feature, S in the legend),
    ``hlf_totals`` (E_tot/E_inc and the voxel spectrum), ``e_ratio_per_energy`` (dataset 1),
    ``mean_shower`` (polar images per layer).

    Cost at the challenge's defaults: the classifiers (3 x 2048-wide layers, 50 epochs, 10
    repeats, two input kinds) take minutes on a GPU and hours on a CPU; lower
    ``classifier_hidden``, ``classifier_epochs`` or ``classifier_repeats`` for quick runs, and
    compare only numbers taken with the same settings. KPD at ``kpd_batch_size`` 10,000 takes
    tens of seconds on a CPU.

    Args:
        dataset: ``1-photons``, ``1-pions``, ``2`` or ``3`` (default: the datamodule's binning).
        threshold: zero voxels below the dataset's readout threshold in both samples.
        classifier_repeats: trainings averaged per classifier (the paper: 10).
        classifier_epochs, classifier_hidden, classifier_layers, classifier_batch_size,
            classifier_lr: the DNN and its schedule (challenge: 50, 2048, 2, 1000, 2e-4).
        classifier_split: train/test/val fractions (default: the challenge's for the dataset).
        classifier_device: where the classifiers train (default: the model's device).
        classifier_seed: seed of the first training.
        fpd_min_samples, fpd_max_samples, kpd_batch_size: FPD/KPD sample sizes (the challenge's
            calls: 10,000, 50,000, 10,000).
        distances_at_validation: also compute FPD and KPD at validation.
        max_plotted_layers: per-layer plots show at most this many layers (evenly spaced).
        **kwargs: see :class:`callbacks.base.PhysicsMetric` (``max_events``, ``every_n_epochs``, ``seed``).
    """

    def __init__(
        self,
        dataset: str | None = None,
        threshold: bool = True,
        classifier_repeats: int = 10,
        classifier_epochs: int = 50,
        classifier_hidden: int = 2048,
        classifier_layers: int = 2,
        classifier_batch_size: int = 1000,
        classifier_lr: float = 2e-4,
        classifier_split: tuple[float, float, float] | None = None,
        classifier_device: str | None = None,
        classifier_seed: int = 0,
        fpd_min_samples: int = 10_000,
        fpd_max_samples: int = 50_000,
        kpd_batch_size: int = 10_000,
        distances_at_validation: bool = False,
        max_plotted_layers: int = 9,
        **kwargs,
    ) -> None:
        super().__init__(**kwargs)
        self.dataset = dataset
        self.binning: CaloChallengeBinning | None = None if dataset is None else load_binning(dataset)
        self.threshold = threshold
        self.classifier_repeats = classifier_repeats
        self.classifier_epochs = classifier_epochs
        self.classifier_hidden = classifier_hidden
        self.classifier_layers = classifier_layers
        self.classifier_batch_size = classifier_batch_size
        self.classifier_lr = classifier_lr
        self.classifier_split = None if classifier_split is None else tuple(classifier_split)
        self.classifier_device = classifier_device
        self.classifier_seed = classifier_seed
        self.fpd_min_samples = fpd_min_samples
        self.fpd_max_samples = fpd_max_samples
        self.kpd_batch_size = kpd_batch_size
        self.distances_at_validation = distances_at_validation
        self.max_plotted_layers = max_plotted_layers
        self._device = "cpu"
        self._cache: tuple | None = None

    # --- binning and features -------------------------------------------------------------------
    def before_compute(self, trainer, pl_module, events: int) -> None:
        if self.binning is None:
            self.binning = getattr(getattr(trainer, "datamodule", None), "binning", None)
        self._device = str(getattr(pl_module, "device", "cpu"))

    def _binning(self, n_voxels: int) -> CaloChallengeBinning:
        if self.binning is None:
            matches = [name for name, count in VOXELS.items() if count == n_voxels]
            if len(matches) != 1:
                raise ValueError(
                    f"CaloChallengeMetrics: no binning for showers of {n_voxels} voxels; set `dataset` "
                    "or use a datamodule with a `binning` attribute."
                )
            self.binning = load_binning(matches[0])
        if self.binning.n_voxels != n_voxels:
            raise ValueError(
                f"CaloChallengeMetrics: showers have {n_voxels} voxels but dataset {self.binning.dataset} "
                f"has {self.binning.n_voxels}."
            )
        return self.binning

    def _features(self, reference: dict, generated: dict):
        """(binning, reference features, generated features), computed once per evaluation."""
        # compute() and figures() get the same dicts: keep them (not their ids, which Python
        # reuses) with the features until figures() is done.
        cache = self._cache
        if cache is None or cache[0] is not reference or cache[1] is not generated:
            binning = self._binning(np.shape(reference["showers"])[1])
            feats = [
                high_level_features(s["showers"], s["incident_energies"], binning, self.threshold)
                for s in (reference, generated)
            ]
            self._cache = cache = (reference, generated, binning, *feats)
        return cache[2:]

    # --- metrics ------------------------------------------------------------------------------
    def compute(self, reference, generated, stage):
        binning, ref, gen = self._features(reference, generated)
        threshold = resolve_threshold(self.threshold, binning)
        sep = separation_powers(ref, gen, binning)
        # The voxel spectrum's edges start at the threshold, so thresholding would not change it.
        edges = voxel_histogram_edges(reference["showers"], binning)
        if edges is not None:
            sep["voxel_energy"] = binned_separation_power(reference["showers"], generated["showers"], edges)
        sep.update(
            energy_separation_powers(
                ref["e_ratio"], reference["incident_energies"], gen["e_ratio"], generated["incident_energies"], binning
            )
        )
        values = {f"sep/{k}": v for k, v in sep.items()}
        values.update({f"sep_mean/{k}": v for k, v in _group_means(sep).items()})
        # generated showers with a NaN or inf voxel: a numerically broken generator, never physics
        values["nonfinite_fraction"] = float((~np.isfinite(np.asarray(generated["showers"])).all(axis=1)).mean())

        if stage == "test" or self.distances_at_validation:
            x_ref = feature_vector(ref, reference["incident_energies"], binning)
            x_gen = feature_vector(gen, generated["incident_energies"], binning)
            fpd, fpd_err = frechet_physics_distance(
                x_ref, x_gen, min_samples=self.fpd_min_samples, max_samples=self.fpd_max_samples
            )
            kpd, kpd_err = kernel_physics_distance(x_ref, x_gen, batch_size=self.kpd_batch_size)
            values.update(fpd_x1e3=1e3 * fpd, fpd_x1e3_err=1e3 * fpd_err)
            values.update(kpd_x1e3=1e3 * kpd, kpd_x1e3_err=1e3 * kpd_err)
        if stage == "test":
            values.update(self._classifiers(reference, generated, ref, gen, binning, threshold))
        return values

    def _classifiers(self, reference, generated, ref, gen, binning, threshold) -> dict[str, float]:
        settings = dict(
            repeats=self.classifier_repeats, seed=self.classifier_seed,
            split=self.classifier_split or challenge_split(binning.dataset),
            hidden=self.classifier_hidden, n_layer=self.classifier_layers, epochs=self.classifier_epochs,
            batch_size=self.classifier_batch_size, lr=self.classifier_lr,
            device=self.classifier_device or self._device,
        )  # fmt: skip
        pairs = ((reference, ref), (generated, gen))
        inputs = {
            "cls_low": [low_level_inputs(s["showers"], s["incident_energies"], threshold) for s, _ in pairs],
            "cls_high": [feature_vector(f, s["incident_energies"], binning) for s, f in pairs],
        }
        values = {}
        for name, (x_ref, x_gen) in inputs.items():
            result = classifier_test(x_ref, x_gen, **settings)
            for key in ("auc", "auc_std", "jsd", "jsd_std"):
                values[f"{name}/{key}"] = result[key]
        return values

    # --- plots --------------------------------------------------------------------------------
    def figures(self, reference, generated, stage):
        binning, ref, gen = self._features(reference, generated)
        self._cache = None
        threshold = resolve_threshold(self.threshold, binning)
        layers = _plotted_layers(binning, self.max_plotted_layers)
        figures = {}
        for group in LAYER_GROUPS:
            names = [f"{group}_{binning.layers[i].layer_id}" for i in layers]
            panels = [(n, histogram_edges(n, ref[n], binning)) for n in names if n in ref]
            panels = [(n, e) for n, e in panels if e is not None]
            if panels:
                fig, axes = _panel_grid(len(panels), 5, (3.4, 2.9))
                for ax, (name, edges) in zip(axes, panels):
                    label = FEATURE_LABELS[group].format(l=split_feature_name(name)[1])
                    sep = binned_separation_power(ref[name], gen[name], edges)
                    _overlay(ax, ref[name], gen[name], edges, label, sep, group)
                fig.suptitle(f"{group} ({stage})")
                figures[f"hlf_{group}"] = fig
        figures["hlf_totals"] = self._totals_figure(reference, generated, ref, gen, binning, stage)
        if binning.discrete_energies_mev:
            figures["e_ratio_per_energy"] = self._energy_figure(reference, generated, ref, gen, binning, stage)
        figures["mean_shower"] = mean_shower_figure(
            reference["showers"], generated["showers"], binning, layers, threshold
        )
        return figures

    def _totals_figure(self, reference, generated, ref, gen, binning, stage) -> Figure:
        ref_voxels, gen_voxels = reference["showers"], generated["showers"]
        panels = [("e_ratio", ref["e_ratio"], gen["e_ratio"], histogram_edges("e_ratio", ref["e_ratio"], binning))]
        voxel_edges = voxel_histogram_edges(ref_voxels, binning)
        if voxel_edges is not None:
            panels.append(("voxel_energy", ref_voxels, gen_voxels, voxel_edges))
        fig, axes = _panel_grid(len(panels), 2, (4.2, 3.4))
        for ax, (name, r, g, edges) in zip(axes, panels):
            sep = binned_separation_power(r, g, edges)
            _overlay(ax, r, g, edges, FEATURE_LABELS[name], sep, name)
        fig.suptitle(f"CaloChallenge dataset {binning.dataset} ({stage})")
        return fig

    def _energy_figure(self, reference, generated, ref, gen, binning, stage) -> Figure:
        e_ref = np.reshape(reference["incident_energies"], -1)
        e_gen = np.reshape(generated["incident_energies"], -1)
        bins = discrete_energy_bins(binning)
        fig, axes = _panel_grid(len(bins), 5, (3.2, 2.7))
        for ax, (low, high, edges) in zip(axes, bins):
            r = ref["e_ratio"][(e_ref >= low) & (e_ref < high)]
            g = gen["e_ratio"][(e_gen >= low) & (e_gen < high)]
            sep = binned_separation_power(r, g, edges) if r.size and g.size else float("nan")
            _overlay(ax, r, g, edges, FEATURE_LABELS["e_ratio"] + f" at {low / 1e3:.4g} GeV", sep, "e_ratio")
        fig.suptitle(f"E_tot/E_inc per incident energy ({stage})")
        return fig


def _cell(values: dict, key: str, digits: str) -> str:
    value, error = values.get(key), values.get(f"{key}_err", values.get(f"{key}_std"))
    if value is None or not np.isfinite(value):
        return "–"
    return f"{value:{digits}}" + ("" if error is None else f" ± {error:.2g}")


def metric_table(values: dict[str, float], name: str = "hepgen", header: bool = False) -> str:
    """A markdown row in the columns of the summary paper's tables (:data:`METRIC_TABLE_HEADER`).

    Args:
        values: the test metrics of :class:`CaloChallengeMetrics`, with or without a ``test/``
            prefix (e.g. ``metrics.json["test"]``).
        name: the model column.
        header: put the header lines first.

    Returns:
        ``| name | AUC low ± std | AUC high ± std | FPD×10³ ± err | KPD×10³ ± err |``; a dash for
        a missing value.
    """
    plain = {k.removeprefix("test/"): v for k, v in values.items()}
    cells = [
        name,
        _cell(plain, "cls_low/auc", ".3f"),
        _cell(plain, "cls_high/auc", ".3f"),
        _cell(plain, "fpd_x1e3", ".3g"),
        _cell(plain, "kpd_x1e3", ".3g"),
    ]
    row = "| " + " | ".join(cells) + " |"
    return f"{METRIC_TABLE_HEADER}\n{row}" if header else row


class CaloChallengeWriter(BasePredictionWriter):
    """Write ``predict`` output as a CaloChallenge file in ``<run dir>/predictions/``.

    The file is ``dataset_<d>_generated.hdf5`` (``.1.hdf5``, ... if it exists: nothing is
    overwritten) with ``incident_energies`` (N, 1) and ``showers`` (N, voxels) in MeV, the voxels
    in the file order of the datamodule's binning: the challenge's ``evaluate.py`` reads it, and
    so does ``CaloChallengeDataModule(data_dir=<run dir>/predictions, file_name=...)``.

    Args:
        filename: the file name instead of ``dataset_<d>_generated.hdf5``.
    """

    def __init__(self, filename: str | None = None) -> None:
        super().__init__(write_interval="epoch")
        self.filename = filename

    def write_on_epoch_end(self, trainer, pl_module, predictions, batch_indices) -> None:
        local = gather_predictions(trainer, predictions, predictions[0].keys())
        if local is None:
            return
        binning = trainer.datamodule.binning
        keys = [f"layer_{layer.layer_id}" for layer in binning.layers]
        showers = np.concatenate([local[k].reshape(len(local[k]), -1) for k in keys], axis=1)
        filename = self.filename or f"dataset_{binning.dataset.replace('-', '_')}_generated.hdf5"
        path = next_free_path(Path(trainer.default_root_dir) / "predictions" / filename)
        incident_mev = 1000.0 * np.asarray(local["energy"], dtype=np.float64).reshape(-1, 1)
        write_calochallenge(path, incident_mev, showers, binning, attrs={"hepgen_generated_by": type(pl_module).__name__})
        print(f"hepgen: wrote {len(showers)} generated showers to {path}")
