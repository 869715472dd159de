"""Jets on sPHENIX-style calorimeter images, and the scores of a background subtraction.

UVCGAN-S (arXiv:2510.23717) splits an embedded heavy-ion event (PYTHIA or JEWEL jets in central
HIJING) into an extracted signal (the jets) and a background (the underlying event). This module
judges that split against the known truth, with the reference definitions of a third-party
rebuild of the paper's analysis (``/work/shared/reference/uvcgan_s.md`` §8.2-8.3), and provides
the standard baselines.

Images are (N, 24, 64) or (24, 64) arrays of tower E_T in GeV: 24 rows of eta over |eta| < 1.1,
64 columns of phi over 2 pi. Tower centres eta = -1.1 + (row + 0.5) d_eta, phi = (col + 0.5) d_phi,
with d_eta = 2.2 / 24 and d_phi = 2 pi / 64; phi wraps around, eta does not. Every function takes
the tower centres as ``eta``, ``phi`` arguments (default: this grid). A tower is a massless
constituent at its centre with p_T = E_T (so its rapidity is its eta); towers <= ``min_et``
(default 0 GeV) are dropped before any jet finding, as the rebuild does.

Two families of scores:

* **True-axis cone** (§8.3a, :func:`cone_metrics`): the energy in a Delta R <= R cone around the
  leading truth jet, extracted E_ext against true E_true. ``jes`` = mean(E_ext / E_true);
  ``jer`` = std(E_ext - E_true) [GeV]; ``jer_cal`` = std of the residual about the least-squares
  line E_ext = a + b E_true, divided by b [GeV] (the resolution left after an offset-and-scale
  calibration, in units of E_true); ``bias`` = mean(E_ext - E_true) [GeV].
* **Reconstructed jets** (§8.2, §8.3b, :func:`jet_metrics`): FastJet anti-kT jets of the truth and
  of the extracted (or rho A subtracted) image, matched one-to-one; JES = mean(pT_reco / pT_true),
  JER = std(pT_reco / pT_true) per pT_true bin, efficiency and fake rate.

Baselines: :func:`median_rho_subtraction` (per-eta-row median, §8.3a),
:func:`oracle_row_mean_subtraction` (per-row mean of the *true* background, §8.3a) and
:func:`area_subtraction` (rho A with rho from kT jets, §8.2).

All jet finding and jet areas are FastJet's (the ``fastjet`` package: FastJet 3.5). Jets without
areas go through its multi-event (awkward-array) interface, all events in one call; jets with
areas, and rho, through its SWIG bindings event by event (``ClusterSequenceArea``,
``JetMedianBackgroundEstimator``). Jet collections are flat structured arrays of
:data:`JET_DTYPE` (all events, event-major, decreasing pT within an event):
``jets[jets["event"] == i]`` are event i's jets.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import awkward
import fastjet
import numpy as np

from hepgen.physics.sphenix_geometry import ETA_CENTRES, PHI_CENTRES

#: One row per jet: event index, pT [GeV], pseudorapidity, azimuth in [0, 2 pi) [rad] and the
#: active area (NaN unless areas were asked for).
JET_DTYPE = np.dtype(
    [("event", np.int64), ("pt", np.float64), ("eta", np.float64), ("phi", np.float64), ("area", np.float64)]
)

_ALGORITHMS = {
    "antikt": fastjet.antikt_algorithm,
    "kt": fastjet.kt_algorithm,
    "cambridge": fastjet.cambridge_algorithm,
}

# A tower centre exactly on the cone boundary counts as inside (the rebuild's
# ``d_eta^2 + d_phi^2 <= R^2 + 1e-9``); with the axis on a tower centre this makes cone_energy
# and the cone finder of leading_truth_axis agree to the last tower.
_CONE_TOLERANCE = 1e-9


# ------------------------------------------------------------------------------------------------
# geometry helpers


def _centres(eta, phi) -> tuple[np.ndarray, np.ndarray]:
    eta = ETA_CENTRES if eta is None else np.asarray(eta, np.float64).reshape(-1)
    phi = PHI_CENTRES if phi is None else np.asarray(phi, np.float64).reshape(-1)
    return eta, phi


def _as_events(images, eta, phi) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(images as (N, n_eta, n_phi) float64, eta, phi)``; a single (n_eta, n_phi) image gets N = 1."""
    eta, phi = _centres(eta, phi)
    images = np.asarray(images, np.float64)
    if images.ndim == 2:
        images = images[None]
    if images.ndim != 3 or images.shape[1:] != (len(eta), len(phi)):
        raise ValueError(
            f"images have shape {images.shape}; expected (N, {len(eta)}, {len(phi)}) or ({len(eta)}, {len(phi)})"
        )
    return images, eta, phi


def _wrap_dphi(dphi: np.ndarray) -> np.ndarray:
    """Azimuthal difference folded into [-pi, pi)."""
    return np.mod(np.asarray(dphi) + np.pi, 2 * np.pi) - np.pi


def _ghost_eta_max(eta: np.ndarray, ghost_eta_max: float | None) -> float:
    """Ghosts fill the calorimeter up to its edge (|eta| < 1.1 here) unless told otherwise."""
    if ghost_eta_max is not None:
        return float(ghost_eta_max)
    half_pitch = abs(eta[1] - eta[0]) / 2 if len(eta) > 1 else 0.0
    return float(np.max(np.abs(eta)) + half_pitch)


# ------------------------------------------------------------------------------------------------
# towers and jets


def towers_to_pseudojets(image, eta=None, phi=None, min_et: float = 0.0) -> list:
    """Massless FastJet constituents of the towers of one image with E_T > ``min_et``.

    Each tower becomes ``PtYPhiM(E_T, eta, phi, 0)`` (a massless tower has rapidity = eta), with
    ``user_index`` = its flat tower index ``row * n_phi + col``. Towers <= ``min_et`` are dropped;
    with the default 0 this removes the zero and negative towers a network may output (negative
    "particles" have no place in a clustering).

    Args:
        image: (n_eta, n_phi) tower E_T, GeV.
        eta: (n_eta,) tower-centre pseudorapidities (default: the sPHENIX grid).
        phi: (n_phi,) tower-centre azimuths, rad (default: the sPHENIX grid).
        min_et: tower threshold, GeV.

    Returns:
        list of ``fastjet.PseudoJet``, in flat tower order.
    """
    eta, phi = _centres(eta, phi)
    image = np.asarray(image, np.float64)
    if image.shape != (len(eta), len(phi)):
        raise ValueError(f"image has shape {image.shape}; expected ({len(eta)}, {len(phi)})")
    flat = np.flatnonzero(image > min_et)
    rows, cols = np.divmod(flat, len(phi))
    particles = []
    towers = zip(flat.tolist(), image.reshape(-1)[flat].tolist(), eta[rows].tolist(), phi[cols].tolist())
    for index, pt, y, az in towers:
        p = fastjet.PtYPhiM(pt, y, az, 0.0)
        p.set_user_index(index)
        particles.append(p)
    return particles


_GHOST_RANDOM = fastjet.GhostedAreaSpec(1.0)
_GHOST_RANDOM.checkpoint_random()


def _area_definition(ghost_area: float, ghost_eta_max: float):
    # Active area with explicit ghosts (the rebuild's choice): pure-ghost jets stay in the event,
    # so the rho median sees the empty area as zero-pT jets instead of silently skipping it.
    # The ghosts' positions are jittered by FastJet's one random generator per process, so areas
    # and rho would depend on what the process clustered before (a DDP rank and a single process
    # disagreed). Every definition restarts it from the state it had when this module loaded.
    _GHOST_RANDOM.restore_checkpoint_random()
    return fastjet.AreaDefinition(
        fastjet.active_area_explicit_ghosts, fastjet.GhostedAreaSpec(ghost_eta_max, 1, ghost_area)
    )


def _cluster_events(
    images: np.ndarray,
    radii: Sequence[float],
    algorithm: str,
    eta_max_jet: float | None,
    pt_min: float,
    min_et: float,
    area: bool,
    ghost_area: float,
    ghost_eta_max: float | None,
    eta: np.ndarray,
    phi: np.ndarray,
) -> dict[float, np.ndarray]:
    """Jets of every image at every radius (see :func:`cluster_jets`)."""
    if algorithm not in _ALGORITHMS:
        raise ValueError(f"unknown jet algorithm {algorithm!r}; choose one of {sorted(_ALGORITHMS)}")
    if area:
        jets = _cluster_events_with_area(
            images, radii, algorithm, pt_min, min_et, ghost_area, _ghost_eta_max(eta, ghost_eta_max), eta, phi
        )
    else:
        jets = _cluster_events_batched(images, radii, algorithm, pt_min, min_et, eta, phi)
    if eta_max_jet is not None:
        jets = {R: j[np.abs(j["eta"]) < eta_max_jet] for R, j in jets.items()}
    return jets


def _cluster_events_batched(
    images: np.ndarray,
    radii: Sequence[float],
    algorithm: str,
    pt_min: float,
    min_et: float,
    eta: np.ndarray,
    phi: np.ndarray,
) -> dict[float, np.ndarray]:
    """All events in one call of FastJet's multi-event (awkward-array) interface.

    The towers go to FastJet as numpy buffers, with no Python object per tower: 2-3x faster than
    building PseudoJets event by event, for the same jets (the interface runs the same C++
    ClusterSequence per event). It has no areas.
    """
    n_events, n_eta, n_phi = images.shape
    flat = images.reshape(n_events, n_eta * n_phi)
    event, tower = np.nonzero(flat > min_et)
    pt = flat[event, tower]
    rows, cols = np.divmod(tower, n_phi)
    y, az = eta[rows], phi[cols]
    # massless towers: E = pT cosh(eta), pz = pT sinh(eta)
    particles = awkward.unflatten(
        awkward.zip({"px": pt * np.cos(az), "py": pt * np.sin(az), "pz": pt * np.sinh(y), "E": pt * np.cosh(y)}),
        np.bincount(event, minlength=n_events),
    )
    out = {}
    for R in radii:
        found = fastjet.ClusterSequence(particles, fastjet.JetDefinition(_ALGORITHMS[algorithm], float(R)))
        found = found.inclusive_jets(pt_min)
        flat_jets = awkward.flatten(found)
        px, py, pz = (awkward.to_numpy(flat_jets[k]).astype(np.float64) for k in ("px", "py", "pz"))
        jets = np.zeros(len(px), dtype=JET_DTYPE)
        jets["event"] = np.repeat(np.arange(n_events), awkward.to_numpy(awkward.num(found)))
        jets["pt"] = np.hypot(px, py)
        jets["eta"] = np.arcsinh(pz / jets["pt"])
        jets["phi"] = np.mod(np.arctan2(py, px), 2 * np.pi)
        jets["area"] = np.nan
        out[R] = jets[np.lexsort((-jets["pt"], jets["event"]))]
    return out


def _cluster_events_with_area(
    images: np.ndarray,
    radii: Sequence[float],
    algorithm: str,
    pt_min: float,
    min_et: float,
    ghost_area: float,
    ghost_eta_max: float,
    eta: np.ndarray,
    phi: np.ndarray,
) -> dict[float, np.ndarray]:
    """Event by event with ``ClusterSequenceArea`` (areas need the SWIG interface), PseudoJets built once."""
    definitions = {R: fastjet.JetDefinition(_ALGORITHMS[algorithm], float(R)) for R in radii}
    area_def = _area_definition(ghost_area, ghost_eta_max)
    rows: dict[float, list[tuple]] = {R: [] for R in radii}
    for i, image in enumerate(images):
        particles = towers_to_pseudojets(image, eta, phi, min_et)
        if not particles:
            continue
        for R, jet_def in definitions.items():
            cs = fastjet.ClusterSequenceArea(particles, jet_def, area_def)
            # pt_min > 0 also drops the pure-ghost jets (pT ~ 1e-100); read the areas while cs lives
            found = fastjet.sorted_by_pt(cs.inclusive_jets(pt_min))
            rows[R].extend((i, j.pt(), j.eta(), j.phi(), j.area()) for j in found)
    return {R: np.array(r, dtype=JET_DTYPE) if r else np.zeros(0, dtype=JET_DTYPE) for R, r in rows.items()}


def cluster_jets(
    images,
    R: float,
    algorithm: str = "antikt",
    eta_max_jet: float | None = 0.6,
    pt_min: float = 5.0,
    *,
    min_et: float = 0.0,
    area: bool = False,
    ghost_area: float = 0.01,
    ghost_eta_max: float | None = None,
    eta=None,
    phi=None,
) -> np.ndarray:
    """Jets of each image with FastJet (anti-kT by default), inclusive above ``pt_min``.

    The jet axis is the E-scheme sum of the massless towers; ``eta`` is its pseudorapidity (the
    paper's |eta| < 0.6 acceptance), ``phi`` in [0, 2 pi).

    Args:
        images: (N, n_eta, n_phi) or (n_eta, n_phi) tower E_T, GeV.
        R: jet radius.
        algorithm: ``"antikt"``, ``"kt"`` or ``"cambridge"``.
        eta_max_jet: keep jets with |eta_jet| < this; None keeps all.
        pt_min: keep jets with pT >= this, GeV.
        min_et: tower threshold, GeV (towers <= it are dropped).
        area: also compute active areas (explicit ghosts of ``ghost_area`` up to |y| <
            ``ghost_eta_max``, default the calorimeter edge 1.1).
        eta, phi: tower centres (default: the sPHENIX grid).

    Returns:
        structured array of :data:`JET_DTYPE`, event-major and pT-descending within an event;
        ``area`` is NaN when ``area=False``.
    """
    images, eta, phi = _as_events(images, eta, phi)
    R = float(R)
    return _cluster_events(
        images, (R,), algorithm, eta_max_jet, pt_min, min_et, area, ghost_area, ghost_eta_max, eta, phi
    )[R]


# ------------------------------------------------------------------------------------------------
# true-axis cone metric (§8.3a)


def cone_energy(images, eta_axis, phi_axis, R: float = 0.4, *, eta=None, phi=None) -> np.ndarray:
    """Sum of the towers whose centres lie within Delta R <= R of an axis, per event.

    Delta R^2 = (eta_tower - eta_axis)^2 + (phi_tower - phi_axis)^2 with the phi difference taken
    around the circle; on the (row, col) grid this is an ellipse, since d_eta != d_phi. Towers
    are not clipped: negative towers of an extracted image count with their sign.

    Args:
        images: (N, n_eta, n_phi) or (n_eta, n_phi) tower E_T, GeV.
        eta_axis, phi_axis: (N,) or scalar axis, phi in rad (any 2 pi branch).
        R: cone radius.
        eta, phi: tower centres (default: the sPHENIX grid).

    Returns:
        (N,) float64 cone E_T, GeV.
    """
    images, eta, phi = _as_events(images, eta, phi)
    n = len(images)
    eta_axis = np.broadcast_to(np.asarray(eta_axis, np.float64), (n,))
    phi_axis = np.broadcast_to(np.asarray(phi_axis, np.float64), (n,))
    out = np.empty(n)
    # chunks bound the (chunk, n_eta, n_phi) boolean mask to a few MB
    for start in range(0, n, 4096):
        stop = min(start + 4096, n)
        deta2 = (eta[None, :] - eta_axis[start:stop, None]) ** 2
        dphi2 = _wrap_dphi(phi[None, :] - phi_axis[start:stop, None]) ** 2
        inside = deta2[:, :, None] + dphi2[:, None, :] <= R * R + _CONE_TOLERANCE
        out[start:stop] = np.einsum("nij,nij->n", images[start:stop], inside)
    return out


def _cone_sums(images: np.ndarray, eta: np.ndarray, phi: np.ndarray, R: float) -> np.ndarray:
    """Cone energy around every tower centre: (N, n_eta, n_phi) -> (N, n_eta, n_phi), GeV.

    The cone's towers at row offset di span a contiguous phi window of half-width m(di), so each
    cone sum is a few phi-window sums (differences of a circular cumulative sum) added over the
    row offsets; rows beyond the eta edges hold no towers. Needs a uniform grid.
    """
    d_eta = eta[1] - eta[0]
    d_phi = 2 * np.pi / len(phi)
    if not (np.allclose(np.diff(eta), d_eta) and np.allclose(np.diff(phi), d_phi)):
        raise ValueError("the cone finder needs uniformly spaced tower centres covering 2 pi in phi")
    n_eta, n_phi = images.shape[1:]
    n_i = int(R / d_eta + _CONE_TOLERANCE)
    n_j = min(int(R / d_phi + _CONE_TOLERANCE), (n_phi - 1) // 2)  # a window never wraps onto itself
    wrapped = np.concatenate([images[..., n_phi - n_j :], images, images[..., :n_j]], axis=-1)
    cumulative = np.concatenate([np.zeros((*images.shape[:2], 1)), np.cumsum(wrapped, axis=-1)], axis=-1)
    sums = np.zeros_like(images)
    for di in range(-n_i, n_i + 1):
        # widest phi offset with (di d_eta)^2 + (m d_phi)^2 <= R^2
        reach = R * R + _CONE_TOLERANCE - (di * d_eta) ** 2
        if reach < 0:
            continue
        m = min(int(np.sqrt(reach) / d_phi + _CONE_TOLERANCE), n_j)
        # towers c - m .. c + m of every column c (column c sits at n_j + c of the wrapped image)
        window = cumulative[..., n_j + m + 1 : n_j + m + 1 + n_phi] - cumulative[..., n_j - m : n_j - m + n_phi]
        # sums[:, r] += window[:, r + di] wherever row r + di exists
        lo, hi = max(0, -di), min(n_eta, n_eta - di)
        sums[:, lo:hi] += window[:, lo + di : hi + di]
    return sums


def leading_truth_axis(
    signal_images, R: float = 0.4, method: str = "cone", *, eta=None, phi=None
) -> tuple[np.ndarray, np.ndarray]:
    """The axis of the leading truth jet of each event, (eta_axis, phi_axis).

    ``method="cone"`` (default, the rebuild's choice behind the §8.3a reference numbers): the
    tower centre whose R cone holds the most truth E_T, a fixed-cone jet finder on the grid; among
    tied centres (a compact jet inside several cones) the one with the hardest tower. The
    axis then sits on a tower centre, so |eta_axis| < 0.7 at R = 0.4 selects exactly the rows
    whose cone lies inside the calorimeter (|eta_axis| <= 0.6875). ``method="antikt"``: the axis
    of the hardest anti-kT R jet of the truth image (towers > 0, no eta cut), NaN for an event
    without towers; it may sit anywhere, so part of its cone can fall off the calorimeter edge.

    Args:
        signal_images: (N, n_eta, n_phi) or (n_eta, n_phi) true signal E_T, GeV.
        R: jet (cone) radius.
        method: ``"cone"`` or ``"antikt"``.
        eta, phi: tower centres (default: the sPHENIX grid).

    Returns:
        ``(eta_axis, phi_axis)``, each (N,); phi in [0, 2 pi), rad.
    """
    images, eta, phi = _as_events(signal_images, eta, phi)
    if method == "cone":
        sums = _cone_sums(images, eta, phi, R).reshape(len(images), -1)
        best = sums.max(axis=1, keepdims=True)
        # A compact jet lies whole inside the cones of several tower centres, and their sums tie
        # (up to round-off). Among them take the hardest tower, the jet's core; a bare argmax
        # (the rebuild's) would take the first in row-major order, an axis up to R off the core.
        tied = sums >= best - 1e-9 * (1.0 + np.abs(best))
        core = np.where(tied, images.reshape(len(images), -1), -np.inf)
        rows, cols = np.divmod(np.argmax(core, axis=1), len(phi))
        return eta[rows], phi[cols]
    if method == "antikt":
        jets = cluster_jets(images, R, "antikt", eta_max_jet=None, pt_min=0.0, eta=eta, phi=phi)
        eta_axis = np.full(len(images), np.nan)
        phi_axis = np.full(len(images), np.nan)
        # jets are pT-descending within an event: the first row of each event is its leading jet
        events, first = np.unique(jets["event"], return_index=True)
        eta_axis[events] = jets["eta"][first]
        phi_axis[events] = jets["phi"][first]
        return eta_axis, phi_axis
    raise ValueError(f"unknown axis method {method!r}; choose 'cone' or 'antikt'")


def cone_pairs(
    extracted_signal,
    true_signal,
    R: float = 0.4,
    axis_eta_max: float = 0.7,
    e_min: float = 10.0,
    *,
    axis: str = "cone",
    eta=None,
    phi=None,
) -> tuple[np.ndarray, np.ndarray]:
    """Extracted and true cone energies around the leading truth axis, for the selected jets.

    A jet enters when its axis has |eta_axis| < ``axis_eta_max`` and E_true >= ``e_min`` (the
    rebuild's 17.5 k of 20 k val events).

    Args:
        extracted_signal, true_signal: (N, n_eta, n_phi) tower E_T, GeV.
        R, axis_eta_max, e_min: cone radius, axis acceptance, minimum true cone energy (GeV).
        axis: :func:`leading_truth_axis` method.

    Returns:
        ``(e_ext, e_true)``, each (K,) GeV, K <= N the selected jets in event order.
    """
    extracted, eta, phi = _as_events(extracted_signal, eta, phi)
    truth, _, _ = _as_events(true_signal, eta, phi)
    if extracted.shape != truth.shape:
        raise ValueError(f"extracted {extracted.shape} and true {truth.shape} signals differ in shape")
    eta_axis, phi_axis = leading_truth_axis(truth, R, axis, eta=eta, phi=phi)
    with np.errstate(invalid="ignore"):  # NaN axes of empty events fail the cut
        keep = np.abs(eta_axis) < axis_eta_max
    e_true = cone_energy(truth[keep], eta_axis[keep], phi_axis[keep], R, eta=eta, phi=phi)
    e_ext = cone_energy(extracted[keep], eta_axis[keep], phi_axis[keep], R, eta=eta, phi=phi)
    jet = e_true >= e_min
    return e_ext[jet], e_true[jet]


def cone_scores(e_ext, e_true) -> dict[str, float]:
    """``jes``, ``bias``, ``jer``, ``jer_cal`` and ``n_jets`` of paired cone energies (GeV).

    jes = mean(E_ext / E_true); bias = mean(E_ext - E_true); jer = std(E_ext - E_true); jer_cal
    = std(E_ext - a - b E_true) / b with (a, b) the least-squares line of E_ext on E_true. The
    std uses N - 1 (as the rebuild's torch ``std``). Fewer than 2 jets give NaN.
    """
    x = np.asarray(e_true, np.float64).reshape(-1)
    y = np.asarray(e_ext, np.float64).reshape(-1)
    if len(x) < 2:
        return {"jes": np.nan, "bias": np.nan, "jer": np.nan, "jer_cal": np.nan, "n_jets": float(len(x))}
    b = np.mean((x - x.mean()) * (y - y.mean())) / np.var(x)
    a = y.mean() - b * x.mean()
    return {
        "jes": float(np.mean(y / x)),
        "bias": float(np.mean(y - x)),
        "jer": float(np.std(y - x, ddof=1)),
        # dividing by the slope expresses the calibrated spread in units of E_true: a method that
        # returns half the energy with half the noise is no better than the original
        "jer_cal": float(np.std(y - a - b * x, ddof=1) / b),
        "n_jets": float(len(x)),
    }


def cone_metrics(
    extracted_signal,
    true_signal,
    R: float = 0.4,
    axis_eta_max: float = 0.7,
    e_min: float = 10.0,
    *,
    axis: str = "cone",
    eta=None,
    phi=None,
) -> dict[str, float]:
    """True-axis cone scores of an extracted signal (§8.3a): :func:`cone_pairs` then :func:`cone_scores`.

    Reference (val, 20 k events, R = 0.4): published UVCGAN-S jes 0.94, jer_cal 3.59 GeV; the
    per-row median-rho baseline (unclipped, :func:`median_rho_subtraction`) jes 1.14, jer_cal
    5.28 GeV.

    Args:
        extracted_signal, true_signal: (N, n_eta, n_phi) tower E_T, GeV.

    Returns:
        ``{"jes", "bias", "jer", "jer_cal", "n_jets"}`` (bias, jer, jer_cal in GeV).
    """
    return cone_scores(
        *cone_pairs(extracted_signal, true_signal, R, axis_eta_max, e_min, axis=axis, eta=eta, phi=phi)
    )


def tower_l1(pred, truth) -> float:
    """Per-tower mean absolute error, GeV: mean over events and towers of |pred - truth|.

    The rebuild's ``l1_sig`` / ``l1_bkg`` (published UVCGAN-S: 0.0334 / 0.0735 GeV on val).
    """
    pred = np.asarray(pred, np.float64)
    truth = np.asarray(truth, np.float64)
    if pred.shape != truth.shape:
        raise ValueError(f"pred {pred.shape} and truth {truth.shape} differ in shape")
    return float(np.mean(np.abs(pred - truth)))


# ------------------------------------------------------------------------------------------------
# baselines


def median_rho_subtraction(embed, clip: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Naive per-eta-row median-rho subtraction (§8.3a): background = each row's median over phi.

    The heavy-ion underlying event is flat in phi (up to flow) and varies slowly in eta, and a jet
    covers only a few of the 64 towers of a row, so the row median is a jet-robust estimate of the
    background per tower. numpy's median of 64 values averages the two middle ones (torch's,
    used by the rebuild, takes the lower one; the difference is one order statistic's gap).

    Args:
        embed: (N, n_eta, n_phi) or (n_eta, n_phi) embedded (signal + background) E_T, GeV.
        clip: clip the signal estimate at 0 (the background takes the rest, so signal +
            background = embed either way). The rebuild's cone numbers use the unclipped
            estimate (its jes 1.14, jer_cal 5.28 GeV), its per-tower L1 the clipped one.

    Returns:
        ``(signal_estimate, background_estimate)``, each shaped like ``embed``, GeV.
    """
    embed = np.asarray(embed, np.float64)
    rho = np.median(embed, axis=-1, keepdims=True)
    signal = embed - rho
    if clip:
        signal = np.clip(signal, 0.0, None)
    return signal, embed - signal


def oracle_row_mean_subtraction(embed, true_signal) -> tuple[np.ndarray, np.ndarray]:
    """Oracle reference (§8.3a): subtract each eta row's phi-mean of the *true* background.

    It knows the exact background level of every row of every event, but not its tower-to-tower
    fluctuations: its jer_cal (5.09 GeV on val) is the floor of any flat-per-row subtraction and
    shows that UVCGAN-S (3.59 GeV) models the fluctuations themselves.

    Args:
        embed, true_signal: (N, n_eta, n_phi) or (n_eta, n_phi) E_T, GeV.

    Returns:
        ``(signal_estimate, background_estimate)``, each shaped like ``embed``, GeV.
    """
    embed = np.asarray(embed, np.float64)
    row_mean = np.mean(embed - np.asarray(true_signal, np.float64), axis=-1, keepdims=True)
    background = np.broadcast_to(row_mean, embed.shape).copy()
    return embed - background, background


def estimate_rho(
    embed,
    R: float = 0.4,
    rap_max: float = 0.7,
    n_hardest_excluded: int = 2,
    *,
    min_et: float = 0.0,
    ghost_area: float = 0.01,
    ghost_eta_max: float | None = None,
    eta=None,
    phi=None,
) -> np.ndarray:
    """Background density rho = median over kT jets of pT / A, per event, GeV per unit area.

    FastJet's ``JetMedianBackgroundEstimator`` with kT R = 0.4 jets, active areas (explicit
    ghosts up to the calorimeter edge), selector ``SelectorAbsRapMax(0.7) * ~SelectorNHardest(2)``:
    the two hardest jets of the event are removed, then those within |y| < 0.7 enter. kT jets tile
    the event into patches of the underlying event, so their median pT / A is the background
    density; the hardest jets hold the signal and would bias it upwards. Only ~25 kT jets enter
    the median of a 24 x 64 event, so each jet patch moves it a rank: in made central events the
    exclusion takes the bias from the embedded jets from +6 % to +4 % of rho (~1 GeV less
    over-subtraction per R = 0.4 jet). The |y| < 0.7 range keeps jets whose area is cut by the
    calorimeter edge out of the median. pT / A uses the scalar
    area, the same A that :func:`area_subtraction` multiplies by.

    Args:
        embed: (N, n_eta, n_phi) or (n_eta, n_phi) embedded E_T, GeV.
        R, rap_max, n_hardest_excluded: the kT radius, the rapidity range, jets excluded.
        min_et, ghost_area, ghost_eta_max, eta, phi: as :func:`cluster_jets`.

    Returns:
        (N,) rho, GeV per unit eta-phi area.
    """
    images, eta, phi = _as_events(embed, eta, phi)
    selector = fastjet.SelectorAbsRapMax(rap_max) * ~fastjet.SelectorNHardest(n_hardest_excluded)
    estimator = fastjet.JetMedianBackgroundEstimator(
        selector,
        fastjet.JetDefinition(fastjet.kt_algorithm, float(R)),
        _area_definition(ghost_area, _ghost_eta_max(eta, ghost_eta_max)),
    )
    estimator.set_use_area_4vector(False)
    rho = np.zeros(len(images))
    for i, image in enumerate(images):
        particles = towers_to_pseudojets(image, eta, phi, min_et)
        if particles:
            estimator.set_particles(particles)
            rho[i] = estimator.rho()
    return rho


def area_subtraction(
    embed,
    R: float = 0.4,
    *,
    rho=None,
    eta_max_jet: float | None = 0.6,
    pt_min: float = 5.0,
    min_et: float = 0.0,
    ghost_area: float = 0.01,
    ghost_eta_max: float | None = None,
    eta=None,
    phi=None,
) -> tuple[np.ndarray, np.ndarray]:
    """Area-based subtraction (§8.2): anti-kT jets of the embedded image, pT_sub = pT - rho A.

    rho from :func:`estimate_rho` (kT R = 0.4, |y| < 0.7, two hardest excluded); A the jet's
    active area (explicit ghosts of ``ghost_area``, up to the calorimeter edge). As in the rebuild,
    a jet is kept when its unsubtracted pT >= ``pt_min`` and pT_sub > ``pt_min``; its axis is the
    unsubtracted one. This corrects jets, not towers, so there is no image to return.

    Args:
        embed: (N, n_eta, n_phi) or (n_eta, n_phi) embedded E_T, GeV.
        R: anti-kT radius.
        rho: (N,) precomputed rho (GeV per unit area), e.g. to share it between radii; default
            :func:`estimate_rho` with the same towers and ghosts.
        eta_max_jet, pt_min, min_et, ghost_area, ghost_eta_max, eta, phi: as :func:`cluster_jets`.

    Returns:
        ``(jets, rho)``: :data:`JET_DTYPE` jets with ``pt`` the subtracted pT (GeV) and ``area``
        their area; rho (N,).
    """
    images, eta, phi = _as_events(embed, eta, phi)
    if rho is None:
        rho = estimate_rho(images, min_et=min_et, ghost_area=ghost_area, ghost_eta_max=ghost_eta_max, eta=eta, phi=phi)
    rho = np.broadcast_to(np.asarray(rho, np.float64), (len(images),))
    jets = cluster_jets(
        images, R, "antikt", eta_max_jet, pt_min, min_et=min_et, area=True,
        ghost_area=ghost_area, ghost_eta_max=ghost_eta_max, eta=eta, phi=phi,
    )
    return _subtract_rho_area(jets, rho, pt_min), np.array(rho)


def _subtract_rho_area(jets: np.ndarray, rho: np.ndarray, pt_min: float) -> np.ndarray:
    """pT -> pT - rho A, jets with pT_sub <= pt_min dropped, pT-descending within an event again."""
    jets = jets.copy()
    jets["pt"] -= rho[jets["event"]] * jets["area"]
    jets = jets[jets["pt"] > pt_min]
    return jets[np.lexsort((-jets["pt"], jets["event"]))]


# ------------------------------------------------------------------------------------------------
# reconstructed-jet evaluation (§8.3b)


def match_jets(truth, reco, max_dr: float) -> np.ndarray:
    """Greedy one-to-one matching of jets of the same event, closest in Delta R first.

    Per event all (truth, reco) pairs with Delta R < ``max_dr`` (phi around the circle) are taken
    in increasing Delta R; a pair is kept when neither jet is matched yet. So two reco jets near
    one truth jet give one match and one unmatched (fake) reco jet.

    Args:
        truth, reco: :data:`JET_DTYPE` arrays (only ``event``, ``eta``, ``phi`` are used).
        max_dr: the matching radius (the paper: 0.75 R).

    Returns:
        (M, 2) int64 pairs of (truth index, reco index), sorted by truth index.
    """
    t_event = np.asarray(truth["event"])
    r_order = np.argsort(reco["event"], kind="stable")
    r_event = np.asarray(reco["event"])[r_order]
    # every same-event candidate pair, without a loop over events
    lo = np.searchsorted(r_event, t_event, side="left")
    n_per_truth = np.searchsorted(r_event, t_event, side="right") - lo
    ti = np.repeat(np.arange(len(t_event)), n_per_truth)
    offset = np.arange(len(ti)) - np.repeat(np.cumsum(n_per_truth) - n_per_truth, n_per_truth)
    ri = r_order[lo[ti] + offset]
    deta = truth["eta"][ti] - reco["eta"][ri]
    dr = np.hypot(deta, _wrap_dphi(truth["phi"][ti] - reco["phi"][ri]))
    close = dr < max_dr
    ti, ri, dr = ti[close], ri[close], dr[close]
    used_t = np.zeros(len(truth), bool)
    used_r = np.zeros(len(reco), bool)
    pairs = []
    # events never compete, so one pass over all candidates, closest first, is the per-event greedy
    for k in np.argsort(dr, kind="stable"):
        t, r = ti[k], ri[k]
        if not (used_t[t] or used_r[r]):
            used_t[t] = used_r[r] = True
            pairs.append((t, r))
    pairs = np.array(pairs, dtype=np.int64).reshape(-1, 2)
    return pairs[np.argsort(pairs[:, 0], kind="stable")]


class JetEvaluation(NamedTuple):
    """What :func:`jet_metrics` returns.

    ``scalars``: flat dict of floats (keys in :func:`evaluate_jets`). ``per_jet``: dict of (M,)
    arrays over the matched pairs whose truth jet is in the acceptance, per radius tag ``rXX``:
    ``event_rXX``, ``pt_true_rXX``, ``pt_reco_rXX``, ``response_rXX`` (= pT_reco / pT_true),
    ``deta_rXX`` (= eta_reco - eta_true), and with a calibration ``response_cal_rXX``.
    """

    scalars: dict[str, float]
    per_jet: dict[str, np.ndarray]


def _radius_tag(R: float) -> str:
    return f"r{round(R * 10):02d}" if abs(R * 10 - round(R * 10)) < 1e-9 else f"r{R:g}".replace(".", "p")


def _bin_tag(lo: float, hi: float) -> str:
    return f"{lo:g}_{hi:g}"


def _mean(v: np.ndarray) -> float:
    return float(np.mean(v)) if len(v) > 1 else np.nan


def _std(v: np.ndarray) -> float:
    return float(np.std(v)) if len(v) > 1 else np.nan


def _ratio(k: int, n: int) -> float:
    return k / n if n else np.nan


def evaluate_jets(
    truth: np.ndarray,
    reco: np.ndarray,
    R: float,
    pt_bins: Sequence[float] = (14.0, 20.0, 30.0, 50.0),
    eta_max_jet: float = 0.6,
    match_fraction: float = 0.75,
    calib_split: int | None = None,
    calibration: tuple[float, float] | None = None,
) -> JetEvaluation:
    """Response, efficiency and fake rate of reco jets against truth jets, one radius.

    Matching (:func:`match_jets`, Delta R < ``match_fraction`` R) runs on *all* the jets given,
    before the acceptance: a pair straddling |eta| = 0.6 is then neither an inefficiency nor a
    fake (the rebuild's order). Pass jets clustered with ``eta_max_jet=None``.

    * response pT_reco / pT_true of matched pairs with truth in |eta| < ``eta_max_jet``, binned in
      pT_true (bins [lo, hi)): ``jes_{tag}_{lo}_{hi}`` its mean, ``jer_{tag}_{lo}_{hi}`` its std
      (N, as the rebuild's numpy), ``n_matched_{tag}_{lo}_{hi}``; ``jes_{tag}``, ``jer_{tag}``
      over all bins together (14-50 GeV by default);
    * ``eff_{tag}_{lo}_{hi}``: matched / all truth jets in the acceptance and pT_true bin
      (``n_truth_...`` the denominator); ``eff_{tag}`` over all bins;
    * ``fake_{tag}_{lo}_{hi}``: unmatched / all reco jets in the acceptance, binned in pT_reco
      (``n_reco_...``); ``fake_{tag}`` over all bins;
    * with ``calib_split`` (an event index): the line pT_reco = a + b pT_true is fitted to the
      matched pairs of events >= calib_split (truth in acceptance and in the bins' range), frozen,
      and inverted, pT_cal = (pT_reco - a) / b, on events < calib_split: ``jes_cal_...``,
      ``jer_cal_...`` (per bin and all bins), ``calib_a_{tag}`` [GeV], ``calib_b_{tag}``;
    * with ``calibration`` = (a, b) instead, that frozen line (e.g. the PYTHIA val one, scored on
      JEWEL) is inverted on all events, with the same keys.

    Empty or one-jet bins give NaN. ``tag`` is ``r02``, ``r04``, ... from R.

    Args:
        truth, reco: :data:`JET_DTYPE` jets of the same events.
        R: the jet radius (for the matching radius and the tag).
        pt_bins: increasing bin edges, GeV.

    Returns:
        :class:`JetEvaluation`.
    """
    tag = _radius_tag(R)
    edges = np.asarray(pt_bins, np.float64)
    pairs = match_jets(truth, reco, match_fraction * R)
    matched_t = np.zeros(len(truth), bool)
    matched_t[pairs[:, 0]] = True
    matched_r = np.zeros(len(reco), bool)
    matched_r[pairs[:, 1]] = True
    t_acc = np.abs(truth["eta"]) < eta_max_jet
    r_acc = np.abs(reco["eta"]) < eta_max_jet

    pairs = pairs[t_acc[pairs[:, 0]]]
    t, r = truth[pairs[:, 0]], reco[pairs[:, 1]]
    pt_true, pt_reco = t["pt"], r["pt"]
    response = pt_reco / pt_true
    per_jet = {
        f"event_{tag}": t["event"],
        f"pt_true_{tag}": pt_true,
        f"pt_reco_{tag}": pt_reco,
        f"response_{tag}": response,
        f"deta_{tag}": r["eta"] - t["eta"],
    }

    scalars: dict[str, float] = {}
    ranges = [(lo, hi, _bin_tag(lo, hi)) for lo, hi in zip(edges[:-1], edges[1:])]
    ranges.append((edges[0], edges[-1], None))  # all bins together: the key has no bin part
    for lo, hi, name in ranges:
        suffix = tag if name is None else f"{tag}_{name}"
        sel = (pt_true >= lo) & (pt_true < hi)
        scalars[f"jes_{suffix}"] = _mean(response[sel])
        scalars[f"jer_{suffix}"] = _std(response[sel])
        scalars[f"n_matched_{suffix}"] = float(sel.sum())
        t_sel = t_acc & (truth["pt"] >= lo) & (truth["pt"] < hi)
        r_sel = r_acc & (reco["pt"] >= lo) & (reco["pt"] < hi)
        scalars[f"eff_{suffix}"] = _ratio(int((t_sel & matched_t).sum()), int(t_sel.sum()))
        scalars[f"fake_{suffix}"] = _ratio(int((r_sel & ~matched_r).sum()), int(r_sel.sum()))
        scalars[f"n_truth_{suffix}"] = float(t_sel.sum())
        scalars[f"n_reco_{suffix}"] = float(r_sel.sum())

    if calib_split is not None and calibration is not None:
        raise ValueError("give calib_split (fit here) or calibration (a, b), not both")
    if calibration is not None:
        a, b = calibration
        scored = np.ones(len(t), bool)
    if calib_split is not None:
        fit = (pt_true >= edges[0]) & (pt_true < edges[-1]) & (t["event"] >= calib_split)
        a, b = _fit_calibration_line(pt_true[fit], pt_reco[fit])
        scored = t["event"] < calib_split
    if calib_split is not None or calibration is not None:
        # a frozen calibration: fitted on other events than those scored, so it cannot absorb the
        # scored jets' own fluctuations (and on JEWEL it carries the PYTHIA-to-JEWEL shift)
        response_cal = (pt_reco - a) / b / pt_true
        per_jet[f"response_cal_{tag}"] = response_cal
        scalars[f"calib_a_{tag}"] = float(a)
        scalars[f"calib_b_{tag}"] = float(b)
        for lo, hi, name in ranges:
            suffix = tag if name is None else f"{tag}_{name}"
            sel = scored & (pt_true >= lo) & (pt_true < hi)
            scalars[f"jes_cal_{suffix}"] = _mean(response_cal[sel])
            scalars[f"jer_cal_{suffix}"] = _std(response_cal[sel])
    return JetEvaluation(scalars, per_jet)


def _fit_calibration_line(pt_true: np.ndarray, pt_reco: np.ndarray) -> tuple[float, float]:
    """(a, b) of the least-squares line pT_reco = a + b pT_true; NaN with fewer than 2 pairs."""
    if len(pt_true) < 2:
        return np.nan, np.nan
    b, a = np.polyfit(pt_true, pt_reco, 1)
    return float(a), float(b)


def fit_jet_calibration(
    evaluation: JetEvaluation, radii: Sequence[float], pt_bins: Sequence[float] = (14.0, 20.0, 30.0, 50.0)
) -> dict[float, tuple[float, float]]:
    """The linear jet calibration of every matched pair of an evaluation, ``{R: (a [GeV], b)}``.

    The line pT_reco = a + b pT_true is fitted to the pairs with truth in the acceptance and
    pT_true in the bins' range, as :func:`evaluate_jets` fits it on half of the events; pass the
    result as ``calibration`` to score other events (e.g. a test split) with it, frozen.
    """
    lo, hi = min(pt_bins), max(pt_bins)
    calibration = {}
    for R in radii:
        tag = _radius_tag(float(R))
        pt_true, pt_reco = evaluation.per_jet[f"pt_true_{tag}"], evaluation.per_jet[f"pt_reco_{tag}"]
        fit = (pt_true >= lo) & (pt_true < hi)
        calibration[float(R)] = _fit_calibration_line(pt_true[fit], pt_reco[fit])
    return calibration


def _merge(evaluations: list[JetEvaluation]) -> JetEvaluation:
    scalars: dict[str, float] = {}
    per_jet: dict[str, np.ndarray] = {}
    for e in evaluations:
        scalars.update(e.scalars)
        per_jet.update(e.per_jet)
    return JetEvaluation(scalars, per_jet)


def _score_radii(truth_jets, reco_jets, radii, pt_bins, eta_max_jet, match_fraction, split, calibration) -> JetEvaluation:
    """:func:`evaluate_jets` for every radius, merged into one :class:`JetEvaluation`."""
    return _merge([
        evaluate_jets(truth_jets[R], reco_jets[R], R, pt_bins, eta_max_jet, match_fraction, split,
                      None if calibration is None else calibration[R])
        for R in radii
    ])  # fmt: skip


def truth_jets_by_radius(
    true_signal,
    radii: Sequence[float] = (0.2, 0.4),
    pt_min: float = 5.0,
    min_et: float = 0.0,
    *,
    eta=None,
    phi=None,
) -> dict[float, np.ndarray]:
    """The truth jets :func:`jet_metrics` and :func:`area_jet_metrics` use, ``{R: jets}``.

    Anti-kT R on the true signal image, pT >= ``pt_min``, no eta cut (the acceptance is applied
    after the matching). Cluster them once and pass them to every evaluation of the same events.
    """
    images, eta, phi = _as_events(true_signal, eta, phi)
    radii = tuple(float(R) for R in radii)
    return _cluster_events(images, radii, "antikt", None, pt_min, min_et, False, 0.01, None, eta, phi)


def jet_metrics(
    extracted_signal,
    true_signal,
    radii: Sequence[float] = (0.2, 0.4),
    pt_bins: Sequence[float] = (14.0, 20.0, 30.0, 50.0),
    *,
    eta_max_jet: float = 0.6,
    pt_min: float = 5.0,
    min_et: float = 0.0,
    match_fraction: float = 0.75,
    calibrate: bool = False,
    calibration: dict[float, tuple[float, float]] | None = None,
    truth_jets: dict[float, np.ndarray] | None = None,
    eta=None,
    phi=None,
) -> JetEvaluation:
    """Paper-style reconstructed-jet scores of an extracted signal image (§8.2, §8.3b).

    Truth jets: anti-kT R on the true signal image; reco jets: anti-kT R on the extracted signal
    image, towers <= ``min_et`` (0) dropped; both above ``pt_min`` (5 GeV), matched within 0.75 R,
    scored in |eta| < 0.6 (:func:`evaluate_jets`). With ``calibrate`` a linear calibration is
    fitted on the second half of the events and scored on the first (the rebuild: fit on val
    events 10 000-19 999, score 0-9 999).

    Reference (val, R = 0.4, 20-30 GeV): published UVCGAN-S jes 0.982, jer 0.144, efficiency
    0.999; 14-20 GeV fake rate 0.030. Area baseline: 0.881, 0.269, 0.987, 0.192.

    Args:
        extracted_signal, true_signal: (N, n_eta, n_phi) tower E_T, GeV.
        radii: jet radii.
        pt_bins: pT bin edges, GeV.
        calibrate: fit the linear calibration on the second half of the events, score the first.
        calibration: ``{R: (a, b)}`` frozen calibrations to score all events with instead, e.g.
            ``(scalars["calib_a_r04"], scalars["calib_b_r04"])`` of a val evaluation, on JEWEL.
        truth_jets: the truth jets per radius, to reuse across evaluations (half the cost):
            ``truth_jets_by_radius(true_signal, radii)``; default: clustered here.

    Returns:
        :class:`JetEvaluation` with the keys of every radius.
    """
    extracted, eta, phi = _as_events(extracted_signal, eta, phi)
    truth, _, _ = _as_events(true_signal, eta, phi)
    if extracted.shape != truth.shape:
        raise ValueError(f"extracted {extracted.shape} and true {truth.shape} signals differ in shape")
    radii = tuple(float(R) for R in radii)
    args = ("antikt", None, pt_min, min_et, False, 0.01, None, eta, phi)
    if truth_jets is None:
        truth_jets = _cluster_events(truth, radii, *args)
    reco_jets = _cluster_events(extracted, radii, *args)
    return _score_radii(truth_jets, reco_jets, radii, pt_bins, eta_max_jet, match_fraction,
                        len(truth) // 2 if calibrate else None, calibration)


def area_jet_metrics(
    embed,
    true_signal,
    radii: Sequence[float] = (0.2, 0.4),
    pt_bins: Sequence[float] = (14.0, 20.0, 30.0, 50.0),
    *,
    eta_max_jet: float = 0.6,
    pt_min: float = 5.0,
    min_et: float = 0.0,
    match_fraction: float = 0.75,
    calibrate: bool = False,
    calibration: dict[float, tuple[float, float]] | None = None,
    ghost_area: float = 0.01,
    truth_jets: dict[float, np.ndarray] | None = None,
    eta=None,
    phi=None,
) -> JetEvaluation:
    """The scores of :func:`jet_metrics` for the area-subtraction baseline (:func:`area_subtraction`).

    rho is estimated once per event and shared by all radii. Arguments as :func:`jet_metrics`;
    ``embed`` is the (N, n_eta, n_phi) embedded image, GeV.
    """
    images, eta, phi = _as_events(embed, eta, phi)
    truth, _, _ = _as_events(true_signal, eta, phi)
    if images.shape != truth.shape:
        raise ValueError(f"embed {images.shape} and true signal {truth.shape} differ in shape")
    radii = tuple(float(R) for R in radii)
    if truth_jets is None:
        truth_jets = _cluster_events(truth, radii, "antikt", None, pt_min, min_et, False, 0.01, None, eta, phi)
    rho = estimate_rho(images, min_et=min_et, ghost_area=ghost_area, eta=eta, phi=phi)
    embed_jets = _cluster_events(images, radii, "antikt", None, pt_min, min_et, True, ghost_area, None, eta, phi)
    reco_jets = {R: _subtract_rho_area(embed_jets[R], rho, pt_min) for R in radii}
    return _score_radii(truth_jets, reco_jets, radii, pt_bins, eta_max_jet, match_fraction,
                        len(truth) // 2 if calibrate else None, calibration)
