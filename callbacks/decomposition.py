"""Judging a decomposition of mixtures into signal and background, and writing it out.

:class:`DecompositionMetrics` scores the model's extracted signal and background against the
truth of the same events, side by side with the standard subtractions (per-η-row median ρ and
jet-area ρ·A, :mod:`hepgen.physics.jets`); :class:`DecompositionWriter` writes ``hepgen predict``'s
decomposition as HDF5.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import h5py
import numpy as np
from lightning.pytorch.callbacks import BasePredictionWriter
from lightning.pytorch.utilities import rank_zero_warn
from matplotlib.figure import Figure

from callbacks.base import PhysicsMetric, gather_predictions
from hepgen.physics.jets import (
    area_jet_metrics,
    cone_metrics,
    cone_pairs,
    fit_jet_calibration,
    jet_metrics,
    median_rho_subtraction,
    tower_l1,
    truth_jets_by_radius,
)
from hepgen.io.files import write_atomically
from hepgen.plotting import save_figure
from hepgen.run import next_free_path


class DecompositionWriter(BasePredictionWriter):
    """Write ``hepgen predict`` output as one HDF5 file in ``<run dir>/predictions/``.

    Datasets (N, C, H, W) float32, physical units, LZF with one chunk per event as the sPHENIX
    inputs: ``embed`` (the mixtures), ``signal`` and ``background`` (extracted), and
    ``true_signal``/``true_background`` when the split has them. Events in the split's order.
    Nothing is overwritten (``decomposition.1.h5``, ... when the name is taken). With
    ``png_examples`` > 0 the first events are also written as PNG panels (mixture, extracted
    parts, truth), the equivalent of the reference's ``translate_images.py --format image``.

    Args:
        filename: the HDF5 file's name.
        png_examples: events drawn as PNG panels.
    """

    def __init__(self, filename: str = "decomposition.h5", png_examples: int = 0) -> None:
        super().__init__(write_interval="epoch")
        self.filename = filename
        self.png_examples = png_examples

    def write_on_epoch_end(self, trainer, pl_module, predictions, batch_indices) -> None:
        arrays = gather_predictions(trainer, predictions, predictions[0].keys())
        if arrays is None:
            return
        path = next_free_path(Path(trainer.default_root_dir) / "predictions" / self.filename)

        def write(fileobj) -> None:
            with h5py.File(fileobj, "w") as f:
                for key, array in arrays.items():
                    array = np.asarray(array, dtype=np.float32)
                    f.create_dataset(key, data=array, compression="lzf", chunks=(1, *array.shape[1:]))
                f.attrs["hepgen_generated_by"] = type(pl_module).__name__

        write_atomically(path, write)
        if self.png_examples > 0:
            save_figure(example_events(arrays, self.png_examples), path.with_name(path.stem + "_examples.png"))
        print(f"hepgen: wrote the decomposition of {len(arrays['embed'])} events to {path}")


def _panel_image(image: np.ndarray) -> tuple[np.ndarray, dict]:
    """A (C, H, W) image as imshow input: one channel as a GeV map, three as RGB in [0, 1]."""
    if image.shape[0] == 1:
        return image[0], {"cmap": "viridis", "origin": "lower", "aspect": "auto"}
    return np.clip(np.moveaxis(image[:3], 0, -1), 0.0, 1.0), {}


def example_events(arrays: dict[str, np.ndarray], n: int = 4) -> Figure:
    """Example decompositions, one row per event: the mixture, the true and extracted signal,
    the true and extracted background (truth columns only when known).

    ``arrays`` holds (N, C, H, W) images under ``embed``, ``signal``, ``background`` and optionally
    ``true_signal``, ``true_background``. Calorimeter maps share one colour scale per row (GeV;
    rows are η, columns φ); RGB images are shown as they are.
    """
    columns = [("embed", "mixture")]
    for part in ("signal", "background"):
        if f"true_{part}" in arrays:
            columns.append((f"true_{part}", f"true {part}"))
        columns.append((part, f"extracted {part}"))
    n = min(n, len(arrays["embed"]))
    fig = Figure(figsize=(2.6 * len(columns), 1.5 * n + 0.6), layout="constrained")
    axes = np.asarray(fig.subplots(n, len(columns), squeeze=False))
    for row in range(n):
        vmax = max(float(np.nanmax(arrays[key][row])) for key, _ in columns)
        for col, (key, title) in enumerate(columns):
            ax = axes[row, col]
            image, style = _panel_image(arrays[key][row])
            shown = ax.imshow(image, vmin=0.0, vmax=vmax, **style) if style else ax.imshow(image)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(title, fontsize="small")
        if style:
            fig.colorbar(shown, ax=axes[row, :].tolist(), label="GeV", shrink=0.8)
    axes[-1, 0].set_xlabel(r"$\phi$")
    axes[-1, 0].set_ylabel(r"$\eta$")
    return fig


#: The methods compared, as they appear in metric names and plots.
METHOD_LABELS = {"model": "UVCGAN-S", "median_rho": r"median $\rho$ per $\eta$ row", "area": r"$\rho \cdot A$"}


class DecompositionMetrics(PhysicsMetric):
    """Scores of the extracted signal and background against the truth, with two baselines.

    Reads the model's ``evaluation_samples``: ``signal`` and ``background`` as (truth, extracted)
    and ``embed`` (the mixture), each (B, C, H, W) in GeV (pixel values for the toy). Logged,
    for the model (no prefix) and the baselines (``median_rho/``, ``area/``), on the same events:

    * ``l1_sig``, ``l1_bkg``: per-tower mean absolute error, GeV (the reference's numbers);
    * calorimeter images (one channel) also get the true-axis R = 0.4 cone scores ``jes``,
      ``jer``, ``jer_cal`` (GeV) and, on anti-kT jets of R = 0.2 and 0.4 matched to the truth
      jets, ``jet/jes_r04``, ``jet/jer_r04`` (14-50 GeV), per pT bin (``jet/jer_r04_20_30``),
      efficiency and fake rate (``jet/eff_r04_14_20``, ``jet/fake_r04_14_20``);
    * ``jer_r04_over_area`` and ``jer_cal_over_median_rho``: the model's resolution relative to
      the baseline's (below 1 is better);
    * with ``calibrate``, the jets calibrated as an experiment calibrates its jets on simulation:
      per method and radius the line pT_reco = a + b pT_true is fitted to matched validation jets,
      frozen, and inverted, pT_cal = (pT_reco - a) / b. In validation it is fitted on the second
      half of the scored events and applied to the first (the published analysis' protocol); in
      test it is fitted on the first ``max_events`` events of the validation split and applied to
      every test event, so on the quenched test split it carries the unquenched calibration to
      quenched jets. Keys ``jet/jes_cal_r04``, ``jet/jer_cal_r04`` (and per bin), the line's
      ``jet/calib_a_r04`` (GeV) and ``jet/calib_b_r04``, and ``jer_cal_r04_over_area``.

    The baselines do not depend on the model: they are computed once per split and reused at
    every later epoch. Plots: ``examples`` (mixture, true and extracted parts) and, for
    calorimeters, ``jet_response`` (JES and JER vs true pT, R = 0.2 and 0.4, model vs ρ·A vs
    median ρ) and ``cone_energy`` (extracted vs true cone energy).

    Args:
        max_events: events scored (all ranks together); jet finding costs about 10 ms per event
            and the ρ·A baseline (computed once) about 50 ms.
        every_n_epochs: evaluate during validation every this many epochs (test always).
        radii: anti-kT radii of the jet scores.
        pt_bins: true-pT bin edges of the jet scores, GeV.
        examples: events drawn in the ``examples`` plot.
        calibrate: also score linearly calibrated jets (see above); in test this costs one pass
            of the model and the baselines over ``max_events`` validation events.
    """

    def __init__(
        self,
        max_events: int = 2_000,
        every_n_epochs: int = 1,
        radii: tuple[float, ...] = (0.2, 0.4),
        pt_bins: tuple[float, ...] = (14.0, 20.0, 30.0, 50.0),
        examples: int = 4,
        calibrate: bool = True,
    ) -> None:
        super().__init__(max_events=max_events, every_n_epochs=every_n_epochs)
        self.radii = tuple(radii)
        self.pt_bins = tuple(pt_bins)
        self.examples = examples
        self.calibrate = calibrate
        self._baselines: dict[tuple, tuple[dict, dict]] = {}
        self._per_jet: dict[str, dict] = {}
        self._calibration: dict[str, dict] | None = None  # per method {R: (a, b)}, fitted on val, for test

    # --- the scores -----------------------------------------------------------------------------
    def compute(self, reference: dict, generated: dict, stage: str) -> dict[str, float]:
        true_sig, true_bkg = reference["signal"], reference["background"]
        if np.isnan(true_sig).all():
            return {}  # no truth in this split: nothing to score against
        values = {"l1_sig": tower_l1(generated["signal"], true_sig), "l1_bkg": tower_l1(generated["background"], true_bkg)}
        if true_sig.shape[1] != 1:  # RGB images: no jets
            return values
        embed, truth, extracted = reference["embed"][:, 0], true_sig[:, 0], generated["signal"][:, 0]
        calibration = self._calibration if stage == "test" else None
        baseline, baseline_jets = self._baseline_scores(embed, truth, true_bkg[:, 0], stage, calibration)
        values.update(cone_metrics(extracted, truth))
        model_jets = jet_metrics(extracted, truth, self.radii, self.pt_bins, truth_jets=self._truth_jets,
                                 **self._calibration_args("model", stage, calibration))  # fmt: skip
        values.update({f"jet/{k}": v for k, v in model_jets.scalars.items()})
        values.update(baseline)
        if 0.4 in self.radii:
            values["jer_r04_over_area"] = _ratio(values["jet/jer_r04"], baseline["area/jet/jer_r04"])
            if "jet/jer_cal_r04" in values:
                values["jer_cal_r04_over_area"] = _ratio(values["jet/jer_cal_r04"], baseline["area/jet/jer_cal_r04"])
        values["jer_cal_over_median_rho"] = _ratio(values["jer_cal"], baseline["median_rho/jer_cal"])
        self._per_jet = {"model": model_jets.per_jet, **baseline_jets}
        self._cones = {"model": cone_pairs(extracted, truth), "median_rho": self._median_cones}
        return values

    def _calibration_args(self, method: str, stage: str, calibration: dict | None) -> dict:
        """The calibration arguments of :func:`jet_metrics` for a method in a stage."""
        if not self.calibrate:
            return {}
        if stage != "test":
            return {"calibrate": True}  # fitted on the second half of the scored events
        return {"calibration": calibration[method]} if calibration else {}

    def _baseline_scores(
        self, embed: np.ndarray, truth: np.ndarray, true_bkg: np.ndarray, stage: str, calibration: dict | None
    ) -> tuple[dict, dict]:
        """The baselines' scores on these events, computed on the first call for them."""
        key = (embed.shape, float(np.float64(embed).sum()), float(np.float64(truth).sum()), repr(calibration))
        if key not in self._baselines:
            self._truth_jets = truth_jets_by_radius(truth, self.radii)
            signal, background = median_rho_subtraction(embed)
            median_jets, area_jets = self._baseline_jets(embed, signal, truth, self._truth_jets, stage, calibration)
            scores = {
                "median_rho/l1_sig": tower_l1(signal, truth),
                "median_rho/l1_bkg": tower_l1(background, true_bkg),
                **{f"median_rho/{k}": v for k, v in cone_metrics(signal, truth).items()},
                **{f"median_rho/jet/{k}": v for k, v in median_jets.scalars.items()},
                **{f"area/jet/{k}": v for k, v in area_jets.scalars.items()},
            }
            per_jet = {"median_rho": median_jets.per_jet, "area": area_jets.per_jet}
            self._baselines = {key: (scores, per_jet, self._truth_jets, cone_pairs(signal, truth))}
        scores, per_jet, self._truth_jets, self._median_cones = self._baselines[key]
        return scores, per_jet

    def _baseline_jets(self, embed, median_signal, truth, truth_jets, stage: str, calibration: dict | None):
        """(median ρ, ρ·A) :class:`~hepgen.physics.jets.JetEvaluation` of these events."""
        median = jet_metrics(median_signal, truth, self.radii, self.pt_bins, truth_jets=truth_jets,
                             **self._calibration_args("median_rho", stage, calibration))  # fmt: skip
        area = area_jet_metrics(embed, truth, self.radii, self.pt_bins, truth_jets=truth_jets,
                                **self._calibration_args("area", stage, calibration))  # fmt: skip
        return median, area

    # --- the test calibration, fitted on validation events ---------------------------------------
    def _values(self, trainer, pl_module, batches, stage):
        self._calibration = None
        if stage == "test" and self.calibrate:
            self._calibration = self._validation_calibration(trainer, pl_module)
        return super()._values(trainer, pl_module, batches, stage)

    def _validation_calibration(self, trainer, pl_module) -> dict[str, dict] | None:
        """Rank 0: every method's ``{R: (a, b)}`` fitted on the validation events the val metrics
        score (the first ``max_events``, whole batches), decomposed by the model under test;
        ``None`` without such a split."""
        datasets = getattr(trainer.datamodule, "datasets", None) or {}
        if len(datasets.get("val", ())) == 0:
            rank_zero_warn("DecompositionMetrics: no validation split to calibrate the test jets on; "
                           "the test scores are uncalibrated.")  # fmt: skip
            return None
        loader = iter(trainer.datamodule.dataloader(datasets["val"], shuffle=False, split="val", sharded=False))
        first = next(loader)
        if "signal" not in first or first["signal"].shape[1] != 1:
            return None  # not calorimeter towers with truth (e.g. the toy image mix): no jets
        # the batches validation scores (the same cut at max_events), so the same events
        limit = self._batch_limit(first)  # inf without max_events: all of them
        batches = [first, *itertools.islice(loader, None if math.isinf(limit) else int(limit) - 1)]
        reference, generated = self.samples(pl_module, batches)
        embed, truth, extracted = reference["embed"][:, 0], reference["signal"][:, 0], generated["signal"][:, 0]
        truth_jets = truth_jets_by_radius(truth, self.radii)
        # uncalibrated evaluations (stage test, no calibration): only their matched pairs are used
        median, area = self._baseline_jets(embed, median_rho_subtraction(embed)[0], truth, truth_jets, "test", None)
        model = jet_metrics(extracted, truth, self.radii, self.pt_bins, truth_jets=truth_jets)
        evaluations = {"model": model, "median_rho": median, "area": area}
        return {name: fit_jet_calibration(e, self.radii, self.pt_bins) for name, e in evaluations.items()}

    # --- the plots ------------------------------------------------------------------------------
    def figures(self, reference: dict, generated: dict, stage: str) -> dict[str, Figure]:
        if np.isnan(reference["signal"]).all():
            return {}
        arrays = {
            "embed": reference["embed"],
            "true_signal": reference["signal"],
            "signal": generated["signal"],
            "true_background": reference["background"],
            "background": generated["background"],
        }
        figures = {"examples": example_events(arrays, self.examples)}
        if reference["signal"].shape[1] == 1 and self._per_jet:
            figures["jet_response"] = jet_response_figure(self._per_jet, self.radii, self.pt_bins)
            figures["cone_energy"] = cone_energy_figure(self._cones)
        return figures


def _ratio(a: float, b: float) -> float:
    """a / b, NaN when b is 0 or NaN (too few jets in a small evaluation)."""
    return float(a) / float(b) if b and np.isfinite(b) else float("nan")


def _binned(x: np.ndarray, y: np.ndarray, edges: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and std of y in bins of x (NaN where a bin has fewer than 2 entries)."""
    which = np.digitize(x, edges) - 1
    mean = np.full(len(edges) - 1, np.nan)
    std = np.full(len(edges) - 1, np.nan)
    for k in range(len(edges) - 1):
        sel = y[which == k]
        if len(sel) > 1:
            mean[k], std[k] = sel.mean(), sel.std()
    return 0.5 * (edges[1:] + edges[:-1]), mean, std


def jet_response_figure(per_jet: dict[str, dict], radii, pt_bins) -> Figure:
    """JES (mean pT_reco / pT_true) and JER (its std) vs true jet pT, one column per radius,
    one line per method; ``per_jet[method]`` holds the ``pt_true_rXX``/``response_rXX`` arrays."""
    edges = np.linspace(min(pt_bins), max(pt_bins), 9)
    fig = Figure(figsize=(4.2 * len(radii), 5.6), layout="constrained")
    axes = np.asarray(fig.subplots(2, len(radii), sharex=True, squeeze=False))
    for col, R in enumerate(radii):
        tag = f"r{round(R * 10):02d}"
        for method, arrays in per_jet.items():
            if f"pt_true_{tag}" not in arrays:
                continue
            centres, mean, std = _binned(arrays[f"pt_true_{tag}"], arrays[f"response_{tag}"], edges)
            axes[0, col].plot(centres, mean, marker="o", label=METHOD_LABELS.get(method, method))
            axes[1, col].plot(centres, std, marker="o", label=METHOD_LABELS.get(method, method))
        axes[0, col].axhline(1.0, color="gray", linestyle="--", linewidth=0.8)
        axes[0, col].set(title=f"anti-$k_T$ R = {R:g}", ylabel=r"JES $\langle p_T^{reco}/p_T^{true} \rangle$")
        axes[1, col].set(xlabel=r"$p_T^{true}$ [GeV]", ylabel=r"JER $\sigma(p_T^{reco}/p_T^{true})$")
        axes[1, col].set_ylim(bottom=0.0)
    axes[0, 0].legend(fontsize="small")
    return fig


def cone_energy_figure(cones: dict[str, tuple[np.ndarray, np.ndarray]]) -> Figure:
    """Extracted vs true energy in the R = 0.4 cone around the leading truth jet, per method."""
    fig = Figure(figsize=(4.5 * len(cones), 4.0), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(cones), sharey=True))
    for ax, (method, (e_ext, e_true)) in zip(axes, cones.items()):
        ax.scatter(e_true, e_ext, s=3, alpha=0.4)
        hi = float(np.nanmax(np.concatenate([e_true, e_ext, [1.0]])))
        ax.plot([0, hi], [0, hi], color="gray", linestyle="--", linewidth=0.8)
        ax.set(title=METHOD_LABELS.get(method, method), xlabel="true cone energy [GeV]")
    axes[0].set_ylabel("extracted cone energy [GeV]")
    return fig
