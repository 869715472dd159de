"""The CaloGAN shower observables (Paganini, de Oliveira, Nachman, arXiv:1705.02355).

Definitions follow the paper's analysis code. E_i is the energy of layer i (sum of its cells)
and E_tot = E_0 + E_1 + E_2:

==================  ===============================================================  =======
name                definition                                                       unit
==================  ===============================================================  =======
``E_tot``           E_0 + E_1 + E_2                                                  GeV
``E_i``             sum of the cells in layer i                                      GeV
``f_i``             E_i / E_tot                                                      --
``response``        E_tot / E_inc                                                    --
``shower_depth``    s_d = (E_1 + 2 E_2) / E_tot   (layer index, energy-weighted)     layer
``depth_width``     sigma_sd = sqrt((E_1 + 4 E_2) / E_tot - s_d^2)                   layer
``width_i``         energy-weighted std of the cell-centre coordinate along the      mm
                    first array axis of layer i
``E_ratio_i``       (E_(1) - E_(2)) / (E_(1) + E_(2)), the two brightest cells of    --
                    layer i (not necessarily local maxima)
``sparsity_i``      fraction of the cells of layer i with energy > threshold         --
                    (CaloGAN's "sparsity" is occupancy: 1 means every cell is hit)
==================  ===============================================================  =======

Empty showers and empty layers: every ratio whose denominator is zero (E_tot = 0, E_i = 0,
E_(1) + E_(2) = 0, E_inc = 0) is defined as 0, so no observable is ever NaN. An empty layer
thus has width 0, E_ratio 0 and sparsity 0; an empty shower has all observables 0.
Variances that round-off makes slightly negative are clipped to 0 before the square root.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from hepgen.physics.calo_geometry import LAYER_KEYS, LAYER_SHAPES, cell_centres_mm

MEV_PER_GEV = 1000.0

#: All observables returned by :func:`compute_observables`, in a reading order for plots.
OBSERVABLE_NAMES: tuple[str, ...] = (
    "E_tot",
    *(f"E_{i}" for i in range(3)),
    *(f"f_{i}" for i in range(3)),
    "response",
    "shower_depth",
    "depth_width",
    *(f"width_{i}" for i in range(3)),
    *(f"E_ratio_{i}" for i in range(3)),
    *(f"sparsity_{i}" for i in range(3)),
)

#: Axis label (with unit) for each observable.
OBSERVABLE_LABELS: dict[str, str] = {
    "E_tot": r"$E_\mathrm{tot}$ [GeV]",
    **{f"E_{i}": rf"$E_{i}$ [GeV]" for i in range(3)},
    **{f"f_{i}": rf"$f_{i} = E_{i}/E_\mathrm{{tot}}$" for i in range(3)},
    "response": r"$E_\mathrm{tot}/E_\mathrm{inc}$",
    "shower_depth": r"shower depth $s_d$ [layer]",
    "depth_width": r"shower depth width $\sigma_{s_d}$ [layer]",
    **{f"width_{i}": rf"lateral width $\sigma_{i}$ [mm]" for i in range(3)},
    **{f"E_ratio_{i}": rf"$E_{{\mathrm{{ratio}},{i}}}$" for i in range(3)},
    **{f"sparsity_{i}": rf"occupancy $\lambda_{i}$ (fraction of cells hit)" for i in range(3)},
}


class Binning(NamedTuple):
    """Default histogram binning of an observable.

    ``log``: log-spaced bins (for energies spanning decades). ``range``: fixed (low, high)
    for quantities with natural bounds; ``None`` means "take the range from the reference".
    ``discrete``: the values lie on a lattice (occupancy = k / n_cells), so bins must hold a
    whole number of lattice points or the histogram shows spurious spikes.
    """

    log: bool = False
    range: tuple[float, float] | None = None
    discrete: bool = False


#: Default binning per observable, used by :mod:`hepgen.plotting`. Fixed ranges only where the
#: quantity is bounded by construction (s_d in [0, 2], sigma_sd in [0, 1], E_ratio in [0, 1]);
#: the paper's other ranges are specific to e+ showers and would clip pions, so they come from data.
OBSERVABLE_BINNING: dict[str, Binning] = {
    "E_tot": Binning(log=True),
    **{f"E_{i}": Binning(log=True) for i in range(3)},
    **{f"f_{i}": Binning() for i in range(3)},
    "response": Binning(),
    "shower_depth": Binning(range=(0.0, 2.0)),
    "depth_width": Binning(range=(0.0, 1.0)),
    **{f"width_{i}": Binning() for i in range(3)},
    **{f"E_ratio_{i}": Binning(range=(0.0, 1.0)) for i in range(3)},
    **{f"sparsity_{i}": Binning(discrete=True) for i in range(3)},
}


def _safe_divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den elementwise, 0 where den == 0 (the empty-shower convention)."""
    num, den = np.broadcast_arrays(np.asarray(num, np.float64), np.asarray(den, np.float64))
    return np.divide(num, den, out=np.zeros(num.shape), where=den != 0)


def _layer(showers: dict[str, np.ndarray], key: str) -> np.ndarray:
    """One layer as an (N, rows, cols) array, checked against the CaloGAN geometry."""
    layer = np.asarray(showers[key])
    if layer.ndim != 3 or layer.shape[1:] != LAYER_SHAPES[key]:
        raise ValueError(
            f"{key} has shape {layer.shape}; expected (N, {', '.join(map(str, LAYER_SHAPES[key]))})"
        )
    return layer


def layer_energies(showers: dict[str, np.ndarray]) -> np.ndarray:
    """Energy per layer, E_i = sum of the cells of layer i.

    Args:
        showers: ``{"layer_0": (N, 3, 96), "layer_1": (N, 12, 12), "layer_2": (N, 12, 6)}``, MeV.
            Other keys are ignored.

    Returns:
        (N, 3) float64, MeV.
    """
    # float64 accumulation: 288 float32 cells summed per event lose ~1e-5 relative precision.
    return np.stack(
        [_layer(showers, k).sum(axis=(1, 2), dtype=np.float64) for k in LAYER_KEYS], axis=1
    )


def lateral_width(layer: np.ndarray, key: str) -> np.ndarray:
    """Energy-weighted std of the cell-centre coordinate along the first array axis.

    sigma = sqrt(sum x^2 E / E_layer - (sum x E / E_layer)^2), x the cell centres from
    :func:`cell_centres_mm` (CaloGAN: centres of linspace(-240, 240, n + 1)).

    Args:
        layer: (N, rows, cols) cell energies, MeV.
        key: layer name, selects the cell centres.

    Returns:
        (N,) float64, mm; 0 for an empty layer.
    """
    x, _ = cell_centres_mm(key)
    # Only the first axis enters, so project the energy onto it first: (N, rows).
    profile = layer.sum(axis=2, dtype=np.float64)
    e_layer = profile.sum(axis=1)
    mean = _safe_divide(profile @ x, e_layer)
    # Centred second moment: same value as <x^2> - <x>^2, without the cancellation.
    var = _safe_divide(np.einsum("nr,nr->n", profile, (x[None, :] - mean[:, None]) ** 2), e_layer)
    return np.sqrt(np.clip(var, 0.0, None))


def brightest_cell_ratio(layer: np.ndarray) -> np.ndarray:
    """E_ratio = (E_(1) - E_(2)) / (E_(1) + E_(2)) of the two brightest cells of a layer.

    Args:
        layer: (N, rows, cols) cell energies, MeV.

    Returns:
        (N,) float64; 1 when a single cell is hit, 0 for an empty layer.
    """
    flat = layer.reshape(len(layer), -1)
    top2 = np.partition(flat, flat.shape[1] - 2, axis=1)[:, -2:].astype(np.float64)
    second, first = top2[:, 0], top2[:, 1]
    return _safe_divide(first - second, first + second)


def occupancy(layer: np.ndarray, threshold_mev: float = 0.0) -> np.ndarray:
    """Fraction of the cells of a layer with energy > ``threshold_mev`` (CaloGAN "sparsity").

    Args:
        layer: (N, rows, cols) cell energies, MeV.
        threshold_mev: a cell counts as hit above this energy, MeV.

    Returns:
        (N,) float64 in [0, 1].
    """
    return (layer > threshold_mev).mean(axis=(1, 2), dtype=np.float64)


def _depth_moments(e_layers: np.ndarray, e_tot: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Shower depth s_d and its width sigma_sd: mean and std of the layer index under E_i."""
    index = np.arange(e_layers.shape[1], dtype=np.float64)
    s_d = _safe_divide(e_layers @ index, e_tot)
    second = _safe_divide(e_layers @ index**2, e_tot)
    return s_d, np.sqrt(np.clip(second - s_d**2, 0.0, None))


def compute_observables(
    showers: dict[str, np.ndarray],
    energy_gev: np.ndarray,
    threshold_mev: float = 0.0,
) -> dict[str, np.ndarray]:
    """All CaloGAN observables of a batch of showers (see the module docstring).

    Args:
        showers: ``{"layer_0": (N, 3, 96), "layer_1": (N, 12, 12), "layer_2": (N, 12, 6)}``, MeV.
        energy_gev: incident energy, (N,) or (N, 1), GeV.
        threshold_mev: cell threshold for the occupancy (``sparsity_i``) only, MeV; the energy
            observables use all cells. Zero the cells yourself for a readout threshold on all.

    Returns:
        ``{name: (N,) float64}`` for every name in :data:`OBSERVABLE_NAMES`; units as labelled
        in :data:`OBSERVABLE_LABELS`. Zero denominators give 0, never NaN.
    """
    e_layers = layer_energies(showers)  # MeV
    e_tot = e_layers.sum(axis=1)
    e_inc = np.asarray(energy_gev, dtype=np.float64).reshape(-1)
    if e_inc.shape != e_tot.shape:
        raise ValueError(f"energy_gev has {e_inc.size} entries for {e_tot.size} showers")

    s_d, sigma_sd = _depth_moments(e_layers, e_tot)
    obs = {"E_tot": e_tot / MEV_PER_GEV}
    obs |= {f"E_{i}": e_layers[:, i] / MEV_PER_GEV for i in range(3)}
    obs |= {f"f_{i}": _safe_divide(e_layers[:, i], e_tot) for i in range(3)}
    obs |= {
        "response": _safe_divide(e_tot / MEV_PER_GEV, e_inc),
        "shower_depth": s_d,
        "depth_width": sigma_sd,
    }
    for i, key in enumerate(LAYER_KEYS):
        layer = _layer(showers, key)
        obs[f"width_{i}"] = lateral_width(layer, key)
        obs[f"E_ratio_{i}"] = brightest_cell_ratio(layer)
        obs[f"sparsity_{i}"] = occupancy(layer, threshold_mev)
    return {name: obs[name] for name in OBSERVABLE_NAMES}
