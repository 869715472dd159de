"""High-level features of CaloChallenge showers, as the challenge's evaluation defines them.

Definitions follow ``code/HighLevelFeatures.py`` and ``code/evaluate.py`` of the challenge
(CaloChallenge/homepage; arXiv:2410.21611). Every feature is per event, computed after the
readout threshold: voxels below ``binning.threshold_mev`` count as empty (energy 0).

======================  =================================================================  ====
name                    definition                                                         unit
======================  =================================================================  ====
``e_tot``               E_tot = sum of all voxels                                          MeV
``e_ratio``             E_tot / E_inc                                                      --
``e_layer_<l>``         E_l = sum of the voxels of layer l                                 MeV
``sparsity_<l>``        1 - (fraction of the voxels of layer l with energy > 0)            --
``ec_eta_<l>``          <x>_l = sum x E / sum E over layer l, x = r cos(alpha)             mm
``ec_phi_<l>``          <y>_l likewise, y = r sin(alpha)                                   mm
``width_eta_<l>``       sqrt(clip(<x^2>_l - <x>_l^2, 0))                                   mm
``width_phi_<l>``       sqrt(clip(<y^2>_l - <y>_l^2, 0))                                   mm
``ec_r_<l>``            <r>_l, r the radial bin's midpoint                                 mm
``width_r_<l>``         sqrt(clip(<r^2>_l - <r>_l^2, 0))                                   mm
======================  =================================================================  ====

``<l>`` is the layer id of the binning file (dataset 1 photons: 0, 1, 2, 3, 12). The challenge
calls the two transverse directions "eta" and "phi"; ``ec_eta``/``ec_phi`` and their widths exist
only for layers binned in alpha (the others' voxels are rings, all centred on the x axis).
Voxel positions are the voxel centres (:meth:`LayerBinning.voxel_centres_mm`).

Empty layers: the challenge divides by (sum E + 1e-16), so a layer without energy has centre 0
and width 0; here the centre of an empty layer is exactly 0, and the same within 1e-16 relative
otherwise. The sparsity counts a voxel as hit if it is > 0 after the threshold (the challenge
computes it on the thresholded shower with its default threshold 0).

:func:`feature_vector` stacks them into the input of the challenge's ``cls-high`` classifier and
of FPD/KPD; :func:`histogram_edges` gives the binning of the challenge's ``hist-chi`` separation
power for each feature.
"""

from __future__ import annotations

import math
import re

import numpy as np

from hepgen.io.calochallenge import apply_threshold
from hepgen.physics.calochallenge import CaloChallengeBinning, LayerBinning

#: Per-layer feature groups, in the order of :func:`feature_vector`'s blocks.
LAYER_GROUPS = ("e_layer", "ec_eta", "ec_phi", "width_eta", "width_phi", "sparsity", "ec_r", "width_r")
#: The groups defined only for layers binned in alpha.
ALPHA_GROUPS = ("ec_eta", "ec_phi", "width_eta", "width_phi")

_LAYER_NAME = re.compile(r"^(?P<group>[a-z_]+?)_(?P<layer>\d+)$")


def resolve_threshold(threshold: bool | float | None, binning: CaloChallengeBinning) -> float | None:
    """The threshold in MeV: the dataset's for ``True``, none for ``False``/``None``, else the value."""
    if threshold is True:
        return binning.threshold_mev
    if threshold is False or threshold is None:
        return None
    return float(threshold)


def _radial_centres_mm(layer: LayerBinning) -> np.ndarray:
    """(n_voxels,) midpoint of each voxel's radial bin, mm, in the file's voxel order."""
    edges = np.asarray(layer.r_edges_mm)
    return np.tile(0.5 * (edges[1:] + edges[:-1]), layer.n_alpha)


def _moments(energy: np.ndarray, total: np.ndarray, position: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Energy-weighted mean and width of ``position`` over one layer's voxels.

    Args:
        energy: (N, v) voxel energies, MeV, float64.
        total: (N,) their sum.
        position: (v,) voxel coordinate, mm.

    Returns:
        (centre, width), each (N,), mm; 0 for an empty layer (as the challenge's 1e-16 gives).
    """
    filled = total > 0
    centre = np.divide(energy @ position, total, out=np.zeros_like(total), where=filled)
    second = np.divide(energy @ (position * position), total, out=np.zeros_like(total), where=filled)
    # Round-off (or negative voxels of an unthresholded generator) can make the variance < 0.
    return centre, np.sqrt(np.clip(second - centre**2, 0.0, None))


def high_level_features(
    showers_mev: np.ndarray,
    incident_mev: np.ndarray,
    binning: CaloChallengeBinning,
    threshold: bool | float | None = True,
) -> dict[str, np.ndarray]:
    """The challenge's high-level features of every shower (see the module docstring).

    Each layer is thresholded and converted to float64 on its own, so no copy of all showers
    is made (a dataset 3 sample is 40,500 voxels per event).

    Args:
        showers_mev: (N, n_voxels) voxel energies, MeV, in the file's order.
        incident_mev: (N, 1) or (N,) incident energies, MeV.
        binning: the dataset's geometry.
        threshold: ``True`` zeroes voxels below ``binning.threshold_mev`` first (the challenge's
            evaluation does so for both samples), a number uses that threshold (MeV), ``False``
            none.

    Returns:
        ``{name: (N,) float64}``: ``e_tot``, ``e_ratio``, then per layer ``e_layer_<l>``,
        ``sparsity_<l>``, ``ec_r_<l>``, ``width_r_<l>`` and, for layers binned in alpha,
        ``ec_eta_<l>``, ``ec_phi_<l>``, ``width_eta_<l>``, ``width_phi_<l>``.
    """
    showers_mev = np.asarray(showers_mev)
    if showers_mev.ndim != 2 or showers_mev.shape[1] != binning.n_voxels:
        raise ValueError(
            f"showers of dataset {binning.dataset} must be (N, {binning.n_voxels}); got {showers_mev.shape}"
        )
    incident = np.asarray(incident_mev, dtype=np.float64).reshape(-1)
    if incident.shape[0] != showers_mev.shape[0]:
        raise ValueError(f"{incident.shape[0]} incident energies for {showers_mev.shape[0]} showers")
    cut = resolve_threshold(threshold, binning)

    features: dict[str, np.ndarray] = {}
    e_tot = np.zeros(len(incident))
    for layer, where in zip(binning.layers, binning.layer_slices):
        energy = showers_mev[:, where]
        energy = np.asarray(energy if cut is None else apply_threshold(energy, cut), dtype=np.float64)
        total = energy.sum(axis=1)
        e_tot += total
        l = layer.layer_id
        features[f"e_layer_{l}"] = total
        features[f"sparsity_{l}"] = 1.0 - (energy > 0).mean(axis=1)
        features[f"ec_r_{l}"], features[f"width_r_{l}"] = _moments(energy, total, _radial_centres_mm(layer))
        if layer.binned_in_alpha:
            x, y = layer.voxel_centres_mm()
            features[f"ec_eta_{l}"], features[f"width_eta_{l}"] = _moments(energy, total, x)
            features[f"ec_phi_{l}"], features[f"width_phi_{l}"] = _moments(energy, total, y)
    with np.errstate(divide="ignore", invalid="ignore"):
        return {"e_tot": e_tot, "e_ratio": e_tot / incident, **features}


def feature_names(binning: CaloChallengeBinning) -> list[str]:
    """The columns of :func:`feature_vector`, as ``<transform>(<feature>)`` strings."""
    ids = [layer.layer_id for layer in binning.layers]
    alpha = [layer.layer_id for layer in binning.layers if layer.binned_in_alpha]
    return [
        "log10(e_inc)",
        *(f"log10(e_layer_{l} + 1e-8)" for l in ids),
        *(f"ec_eta_{l}/100" for l in alpha),
        *(f"ec_phi_{l}/100" for l in alpha),
        *(f"width_eta_{l}/100" for l in alpha),
        *(f"width_phi_{l}/100" for l in alpha),
        "log10(e_tot + 1e-8)",
        *(f"sparsity_{l}" for l in ids),
        *(f"ec_r_{l}/100" for l in ids),
        *(f"width_r_{l}/100" for l in ids),
    ]


def feature_vector(
    features: dict[str, np.ndarray], incident_mev: np.ndarray, binning: CaloChallengeBinning
) -> np.ndarray:
    """The challenge's ``cls-high`` and FPD/KPD input (``evaluate.py``'s
    ``prepare_high_data_for_classifier`` without its label column).

    Columns (:func:`feature_names`), each block in layer order:
    [log10 E_inc, log10(E_l + 1e-8) for all layers, EC_eta/100, EC_phi/100, width_eta/100,
    width_phi/100 for the layers binned in alpha, log10(E_tot + 1e-8), sparsity for all layers,
    EC_r/100 and width_r/100 for all layers]. Energies in MeV, lengths in units of 100 mm.
    Dataset 1 photons has 30 columns, 1 pions 46, datasets 2 and 3 each 362.

    Args:
        features: the output of :func:`high_level_features`.
        incident_mev: (N, 1) or (N,) incident energies, MeV.
        binning: the binning the features were computed with.

    Returns:
        (N, F) float64.
    """
    ids = [layer.layer_id for layer in binning.layers]
    alpha = [layer.layer_id for layer in binning.layers if layer.binned_in_alpha]
    e_inc = np.asarray(incident_mev, dtype=np.float64).reshape(-1, 1)
    with np.errstate(divide="ignore", invalid="ignore"):
        columns = [
            np.log10(e_inc),
            np.log10(np.stack([features[f"e_layer_{l}"] for l in ids], axis=1) + 1e-8),
            *(np.stack([features[f"{g}_{l}"] for l in alpha], axis=1) / 1e2 for g in ALPHA_GROUPS if alpha),
            np.log10(features["e_tot"].reshape(-1, 1) + 1e-8),
            np.stack([features[f"sparsity_{l}"] for l in ids], axis=1),
            np.stack([features[f"ec_r_{l}"] for l in ids], axis=1) / 1e2,
            np.stack([features[f"width_r_{l}"] for l in ids], axis=1) / 1e2,
        ]
    return np.concatenate(columns, axis=1)


def split_feature_name(name: str) -> tuple[str, int | None]:
    """``"ec_eta_12"`` -> ``("ec_eta", 12)``; ``"e_ratio"`` -> ``("e_ratio", None)``."""
    match = _LAYER_NAME.match(name)
    if match and match["group"] in LAYER_GROUPS:
        return match["group"], int(match["layer"])
    return name, None


def _log_edges(low: float, reference_max: float, n_edges: int) -> np.ndarray | None:
    """log-spaced edges from the threshold to the reference maximum (``None`` if that is empty)."""
    if not (np.isfinite(reference_max) and reference_max > low > 0):
        return None
    return np.logspace(math.log10(low), math.log10(reference_max), n_edges)


def histogram_edges(name: str, reference: np.ndarray, binning: CaloChallengeBinning) -> np.ndarray | None:
    """The challenge's ``hist-chi`` bin edges for feature ``name`` (``evaluate_plotting_helper.py``).

    ============================  =========================================================
    feature                       edges
    ============================  =========================================================
    ``e_ratio``                   linspace(0.5, 1.5, 101)
    ``e_layer_<l>``               40 log-spaced edges, threshold .. reference maximum (MeV)
    ``ec_eta``, ``ec_phi``        101 edges on +-30 mm (ds 2, 3), +-500 mm (ds 1 layers 12,
                                  13), +-100 mm (other ds 1 layers)
    ``width_eta``, ``width_phi``  101 edges on [0, 30] / [0, 400] / [0, 100] mm, likewise
    ``sparsity_<l>``              linspace(0, 1, 21)
    ``ec_r_<l>``                  101 edges on [0, 42] mm (ds 2, 3), [0, 1500] (ds 1 layers
                                  12, 13, 14), [0, 500] (other ds 1 layers)
    ``width_r_<l>``               101 edges on [0, 20] / [0, 1500] / [0, 500] mm, likewise
    ============================  =========================================================

    Args:
        name: a key of :func:`high_level_features`.
        reference: the reference sample of that feature (for the data-driven ranges).
        binning: the dataset's binning (dataset name, threshold).

    Returns:
        Increasing edges, or ``None`` where the challenge defines no histogram (``e_tot``) or
        the reference leaves it undefined (a layer whose reference maximum is below threshold).
    """
    group, layer = split_feature_name(name)
    fine = binning.dataset in ("2", "3")  # ds 2/3: 45 thin layers, mm-scale cores
    if group == "e_ratio":
        return np.linspace(0.5, 1.5, 101)
    if group == "e_layer":
        return _log_edges(binning.threshold_mev, float(np.max(reference, initial=-np.inf)), 40)
    if group == "sparsity":
        return np.linspace(0.0, 1.0, 21)
    if group in ("ec_eta", "ec_phi"):
        half = 30.0 if fine else 500.0 if layer in (12, 13) else 100.0
        return np.linspace(-half, half, 101)
    if group in ("width_eta", "width_phi"):
        return np.linspace(0.0, 30.0 if fine else 400.0 if layer in (12, 13) else 100.0, 101)
    if group in ("ec_r", "width_r"):
        top = (42.0 if group == "ec_r" else 20.0) if fine else 1500.0 if layer in (12, 13, 14) else 500.0
        return np.linspace(0.0, top, 101)
    return None


def voxel_histogram_edges(reference_showers_mev: np.ndarray, binning: CaloChallengeBinning) -> np.ndarray | None:
    """The challenge's voxel-energy spectrum binning: 50 log-spaced edges, threshold .. reference max (MeV)."""
    return _log_edges(binning.threshold_mev, float(np.max(reference_showers_mev, initial=-np.inf)), 50)


def discrete_energy_bins(binning: CaloChallengeBinning) -> list[tuple[float, float, np.ndarray]]:
    """Dataset 1's E_tot/E_inc histograms per incident energy (``plot_Etot_Einc_discrete``).

    Returns:
        One ``(E_low, E_high, edges)`` per discrete energy 2^k MeV (k = 8 .. 22): the events with
        E_low <= E_inc < E_high = 2^(k+1), histogrammed on linspace(0.4, 1.4, 21), or on
        linspace(0.9, 1.1, 21) for photons above 2^11 MeV (their response is narrower). Empty
        for datasets 2 and 3.
    """
    bins = []
    for i, energy in enumerate(binning.discrete_energies_mev):
        narrow = i > 3 and binning.particle == "photon"
        edges = np.linspace(0.9, 1.1, 21) if narrow else np.linspace(0.4, 1.4, 21)
        bins.append((float(energy), 2.0 * float(energy), edges))
    return bins
