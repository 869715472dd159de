"""Made CaloChallenge showers: the CaloGAN shower Monte Carlo in the challenge's materials and voxels.

The physics is :func:`hepgen.synth.calogan.shower_spots` (Gamma longitudinal profile in X0,
two-component lateral profile in Molière radii, sampling fluctuations, soft-photon far field; for
pions a MIP track, a first interaction and EM + hadronic parts in λ_int). Only the *medium* and the
*readout* change:

* the medium gives the depth scale (X0, λ_int, which slab of material sits where), the Molière
  radius, the critical energy and the resolution of each detector;
* :class:`ChallengeReadout` bins the point deposits in the r-α voxels of a
  :class:`~hepgen.physics.calochallenge.CaloChallengeBinning`, centred on the particle's axis as the
  challenge's voxelisation is, and draws the far field per voxel.

Datasets and depth models
-------------------------
``1-photons``, ``1-pions`` — the ATLAS barrel at |η| 0.20-0.25 (:data:`ATLAS_BARREL`): along the
particle, solenoid and cryostat (1.5 X0, lost), presampler (layer 0, 11 mm LAr), dead material
(0.5 X0), the Pb/LAr accordion in strips / middle / back (layers 1, 2, 3: 4.3 / 16 / 2 X0), the
cryostat's back walls (0.2 λ_int, lost), then the Tile calorimeter A / BC / D (layers 12, 13, 14:
1.5 / 4.1 / 1.8 λ_int). Photons leave nearly everything in layers 1-2; pions reach the Tile. The
photon files hold layers 0, 1, 2, 3, 12 only: what reaches layers 13-14 is lost, as in the real files.

``2``, ``3`` — 45 readout cells of two W/Si pairs (1.4 mm W + 0.3 mm Si each, 3.4 mm ≈ 0.81 X0 per
cell, 153 mm ≈ 36 X0 in all), a homogeneous mix (:data:`W_SI`).

What the files store. Voxel energies are *calibrated*: for ds2/3 the silicon deposit divided by the
sampling fraction 0.033, so that Σ voxels ≈ E_inc less leakage. The challenge's own evaluation says
so: its readout threshold is 0.5 keV in silicon, written as 0.5 keV / 0.033 = 15.15 keV in file
units, and it histograms E_tot/E_inc over 0.5-1.5. ds1 (ATLAS Geant4 hits) is at the EM scale too.
So a spot's energy here is the calibrated energy it stands for, the sampling fraction enters only
through the stochastic term (:data:`W_SI` ``em_quantum_gev``) and the size of one visible deposit,
and energy that lands in dead material, beyond the last layer, outside the last radial bin or in a
layer a dataset does not store is lost.

Incident energies: ds1 draws each event's energy uniformly from the 15 values 2^8 ... 2^22 MeV (the
real files hold about 10k events per energy and fewer at the highest; made files have equal odds);
ds2/3 draw log-uniform in [1 GeV, 1 TeV]. Voxels below the dataset's readout threshold
(``CaloChallengeBinning.threshold_mev``) are set to 0.

Reproducibility: events are made in chunks of a fixed size per dataset (:data:`CHUNK_EVENTS`), chunk i
with the generator ``SeedSequence([seed, dataset index], spawn_key=(i,))``, so the showers depend on
(seed, dataset, events) only, never on how the chunks are run or written. Files are written by
:func:`hepgen.io.calochallenge.write_calochallenge`, or streamed in its layout when too large for memory.
"""

from __future__ import annotations

import contextlib
import math
import os
import secrets
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import NamedTuple

import h5py
import numpy as np
from scipy.special import gammainc

from hepgen.physics.calochallenge import BINNINGS, CaloChallengeBinning, LayerBinning, load_binning
from hepgen.synth import calogan
from hepgen.synth.calogan import FarField, Medium, Spots, far_deposits, simulate_rows

# ============================================================ materials
#: Rossi's scale energy E_s, MeV: R_M = X0·E_s/E_c (the convention of the CaloGAN model).
SCALE_ENERGY_MEV = 21.2


class Material(NamedTuple):
    """Lengths in mm: radiation length, nuclear interaction length, Molière radius; MIP loss, MeV/mm."""

    x0_mm: float
    lambda_mm: float
    moliere_mm: float
    mip_mev_per_mm: float


# PDG "Atomic and nuclear properties of materials" (X0, λ_I, R_M, minimum dE/dx × density).
TUNGSTEN = Material(3.504, 99.46, 9.327, 1.145 * 19.30 / 10)
SILICON = Material(93.70, 465.2, 49.44, 1.664 * 2.329 / 10)
LEAD = Material(5.612, 175.9, 16.02, 1.122 * 11.35 / 10)
IRON = Material(17.57, 167.7, 17.19, 1.451 * 7.874 / 10)
LIQUID_ARGON = Material(140.0, 857.7, 90.43, 2.105 / 10)
ALUMINIUM = Material(88.97, 397.0, 44.19, 1.615 * 2.699 / 10)
#: Polystyrene scintillator: λ_I = 81.7 g/cm² / 1.06 g/cm³; R_M = X0·E_s/E_c with E_c = 93 MeV.
SCINTILLATOR = Material(413.1, 770.8, 413.1 * SCALE_ENERGY_MEV / 93.1, 1.936 * 1.060 / 10)


def mix(parts: Sequence[tuple[Material, float]]) -> Material:
    """A fine stack of (material, thickness mm) seen as one medium.

    Lengths add as inverses weighted by thickness fraction f_j: 1/X0 = Σ f_j/X0_j, likewise λ_int,
    and 1/R_M = Σ f_j/R_M,j (the PDG mixture rule 1/R_M = Σ w_j E_c,j/(E_s X_j), rewritten per unit
    length); the MIP loss per mm is the thickness-weighted mean.
    """
    total = sum(t for _, t in parts)
    inverse = lambda attr: 1.0 / sum(t / total / getattr(m, attr) for m, t in parts)  # noqa: E731
    mip = sum(t / total * m.mip_mev_per_mm for m, t in parts)
    return Material(inverse("x0_mm"), inverse("lambda_mm"), inverse("moliere_mm"), mip)


def critical_energy_gev(material: Material) -> float:
    """E_c = E_s X0 / R_M, GeV: the critical energy consistent with the medium's X0 and R_M."""
    return SCALE_ENERGY_MEV * material.x0_mm / material.moliere_mm / 1000.0


#: One ds2/3 sampling pair: 1.4 mm W + 0.3 mm Si. X0 ≈ 4.22 mm, R_M ≈ 10.9 mm, λ_int ≈ 115 mm,
#: E_c ≈ 8.2 MeV. (Two pairs make one 3.4 mm readout cell ≈ 0.81 X0.)
W_SI_MIX = mix([(TUNGSTEN, 1.4), (SILICON, 0.3)])
#: The ATLAS barrel accordion at |η| < 0.8 per period (plates perpendicular to the particle):
#: 1.53 mm Pb clad in 2 × 0.2 mm steel, 2 × 2.09 mm LAr gaps; the 0.3 mm kapton/Cu electrode is
#: left out (under 1 % of X0). X0 ≈ 18.8 mm, R_M ≈ 37 mm, λ_int ≈ 383 mm (22 X0 ≈ 1.1 λ_int).
ACCORDION = mix([(LEAD, 1.53), (IRON, 0.40), (LIQUID_ARGON, 4.18)])
#: The Tile calorimeter: steel and scintillator in the volume ratio 4.7 : 1. X0 ≈ 21 mm, λ_int ≈ 194 mm
#: from the mix alone (supports and gaps make the real one a little longer per λ_int; the slabs are
#: set in λ_int, so only the lateral scale of hadronic showers, 0.1-0.35 λ_int, depends on it).
TILE = mix([(IRON, 4.7), (SCINTILLATOR, 1.0)])

# ============================================================ depth model: a stack of slabs


@dataclass(frozen=True)
class Slab:
    """A slab of one material along the particle, ``thickness_mm`` deep, read out as CaloChallenge
    layer ``layer_id`` (None: dead material, its deposits are lost)."""

    name: str
    material: Material
    thickness_mm: float
    layer_id: int | None = None


def slab_x0(name: str, material: Material, n_x0: float, layer_id: int | None = None) -> Slab:
    """A slab n_x0 radiation lengths thick."""
    return Slab(name, material, n_x0 * material.x0_mm, layer_id)


def slab_lambda(name: str, material: Material, n_lambda: float, layer_id: int | None = None) -> Slab:
    """A slab n_lambda interaction lengths thick."""
    return Slab(name, material, n_lambda * material.lambda_mm, layer_id)


#: Length of one MIP-track segment, mm (the CaloGAN block uses 480 mm / 24).
MIP_STEP_MM = 20.0
#: Past the last slab, depth maps extend this far in its material, so that deposits beyond the
#: stack get finite depths (and are then lost).
TAIL_MM = 1.0e5


@dataclass(frozen=True)
class StackMedium(Medium):
    """A medium made of slabs: depth in X0 and in λ_int are piecewise linear in z (mm).

    An EM profile starting at z advances t radiation lengths through whatever slabs follow, a
    hadronic one s interaction lengths: z' = T⁻¹(T(z) + t) with T(z) the radiation lengths in front
    of z, likewise for λ_int. The lateral scales stay those of the inherited fields: ``moliere_mm``
    (set to the EM calorimeter's, where EM showers develop) and ``lambda_mm`` (set to the hadronic
    calorimeter's, which holds most of a hadronic shower's width).
    """

    slabs: tuple[Slab, ...] = ()

    @cached_property
    def _maps(self) -> dict[str, np.ndarray]:
        """Cumulative z (mm), X0, λ_int and MIP loss (MeV) at the slab edges, then TAIL_MM more."""
        thick = np.array([s.thickness_mm for s in self.slabs] + [TAIL_MM])
        materials = [s.material for s in self.slabs] + [self.slabs[-1].material]
        per_slab = {
            "t": thick / [m.x0_mm for m in materials],
            "s": thick / [m.lambda_mm for m in materials],
            "mip": thick * [m.mip_mev_per_mm for m in materials],
        }
        maps = {key: np.concatenate([[0.0], np.cumsum(v)]) for key, v in per_slab.items()}
        maps["z"] = np.concatenate([[0.0], np.cumsum(thick)])
        return maps

    def radiation_lengths(self, z_mm: np.ndarray) -> np.ndarray:
        """T(z): radiation lengths between the front face and depth z_mm (any shape)."""
        return np.interp(z_mm, self._maps["z"], self._maps["t"])

    def advance_x0(self, z_mm: np.ndarray, t_x0: np.ndarray) -> np.ndarray:
        m = self._maps
        return np.interp(np.interp(z_mm, m["z"], m["t"]) + t_x0, m["t"], m["z"])

    def advance_lambda(self, z_mm: np.ndarray, draws: np.ndarray, scale: float) -> np.ndarray:
        m = self._maps
        return np.interp(np.interp(z_mm, m["z"], m["s"]) + scale * draws, m["s"], m["z"])

    def x0_between(self, z_mm: np.ndarray, edges_mm: np.ndarray) -> np.ndarray:
        t_edges = self.radiation_lengths(np.asarray(edges_mm, dtype=np.float64))
        return np.maximum(t_edges[None, :] - self.radiation_lengths(z_mm)[:, None], 0.0)

    def interaction_depth(self, rng: np.random.Generator, n: int) -> np.ndarray:
        m = self._maps
        return np.interp(rng.standard_exponential(n), m["s"], m["z"])

    def mip_loss_mev(self, z_mm: np.ndarray) -> np.ndarray:
        return np.interp(z_mm, self._maps["z"], self._maps["mip"])

    def mip_range_mm(self, energy_mev: np.ndarray) -> np.ndarray:
        return np.interp(energy_mev, self._maps["mip"], self._maps["z"])

    def mip_track_segments(self) -> tuple[np.ndarray, np.ndarray]:
        centres, energies, front = [], [], 0.0
        for slab in self.slabs:
            n = max(1, math.ceil(slab.thickness_mm / MIP_STEP_MM))
            step = slab.thickness_mm / n
            centres.append(front + (np.arange(n) + 0.5) * step)
            energies.append(np.full(n, slab.material.mip_mev_per_mm * step))
            front += slab.thickness_mm
        return np.concatenate(centres), np.concatenate(energies)

    def layer_depths_mm(self, layer_ids: Sequence[int]) -> np.ndarray:
        """(L, 2) front and back depth (mm) of the slab read out as each layer id."""
        edges = self._maps["z"]
        where = {s.layer_id: i for i, s in enumerate(self.slabs) if s.layer_id is not None}
        return np.array([[edges[where[i]], edges[where[i] + 1]] for i in layer_ids])


# The far field's Cauchy scale, in Molière radii: the CaloGAN value, 60 mm / 33 mm ≈ 1.8 R_M.
FAR_SCALE_MOLIERE = calogan.FAR_SCALE_MM / calogan.MOLIERE_RADIUS_MM

#: The ATLAS barrel at |η| ≈ 0.225 along the particle, from the calorimeter's front. The radiation
#: and interaction lengths per sampling are the ATLAS detector paper's (JINST 3 S08003: strips /
#: middle / back ≈ 4.3 / 16 / 2 X0, Tile A / BC / D ≈ 1.5 / 4.1 / 1.8 λ_int at η ≈ 0); the dead
#: material is a rounded reading of its material plots (about 1.5 X0 of solenoid and cryostat in
#: front of the presampler, 0.5 X0 between presampler and strips, the cryostat's back walls, so that
#: the Tile starts near 1.8 λ_int). The inner detector is not in front: ds1 particles start at the
#: calorimeter's surface. The 2.5 % longer path at η = 0.225 (cosh η) is left out.
ATLAS_SLABS: tuple[Slab, ...] = (
    slab_x0("solenoid + cryostat", ALUMINIUM, 1.5),
    Slab("presampler", LIQUID_ARGON, 11.0, layer_id=0),
    slab_x0("presampler to strips", ALUMINIUM, 0.5),
    slab_x0("EMB strips", ACCORDION, 4.3, layer_id=1),
    slab_x0("EMB middle", ACCORDION, 16.0, layer_id=2),
    slab_x0("EMB back", ACCORDION, 2.0, layer_id=3),
    slab_lambda("cryostat back", ALUMINIUM, 0.2),
    slab_lambda("Tile A", TILE, 1.5, layer_id=12),
    slab_lambda("Tile BC", TILE, 4.1, layer_id=13),
    slab_lambda("Tile D", TILE, 1.8, layer_id=14),
)

ATLAS_BARREL = StackMedium(
    depth_mm=sum(s.thickness_mm for s in ATLAS_SLABS),
    x0_mm=ACCORDION.x0_mm,
    lambda_mm=TILE.lambda_mm,
    moliere_mm=ACCORDION.moliere_mm,
    critical_gev=critical_energy_gev(ACCORDION),
    mip_mev_per_mm=ACCORDION.mip_mev_per_mm,
    # LAr barrel: σ/E ≈ 10 %/√E ⊕ 0.7 % (the ATLAS design resolution)
    em_quantum_gev=0.010,
    constant_term=0.007,
    # Pb/LAr like CaloGAN: the same soft-photon far field, its width in this medium's R_M
    far_per_gev=calogan.FAR_PER_GEV,
    far_energy_mev=calogan.FAR_ENERGY_MEV,
    far_scale_mm=FAR_SCALE_MOLIERE * ACCORDION.moliere_mm,
    # a pion track wanders by multiple scattering and throws delta electrons: a few mm
    mip_spread_mm=2.0,
    slabs=ATLAS_SLABS,
)

#: ds2/3 readout cell: two W/Si pairs, mm; 45 of them.
CELL_MM = 2 * (1.4 + 0.3)
N_CELLS = 45
#: Sampling fraction of the W/Si stack for EM showers (the challenge's 0.033; a MIP's would be
#: 0.6 mm · 0.388 / (0.6 · 0.388 + 2.8 · 2.21) = 0.036, soft electrons in W lower it).
SAMPLING_FRACTION = 0.033
#: One visible silicon hit in file units, MeV: a MIP crossing 0.3 mm Si leaves
#: 0.3 mm · 0.388 MeV/mm = 0.116 MeV, / 0.033 ≈ 3.5 MeV.
SI_HIT_MEV = 0.3 * SILICON.mip_mev_per_mm / SAMPLING_FRACTION
#: Stochastic term of the W/Si stack: σ/E ≈ 15 %/√E (CALICE's SiW prototype measured 16.5 %/√E with
#: 1.4-4.2 mm W and 0.5 mm Si), q = 0.15² GeV.
W_SI_QUANTUM_GEV = 0.15**2

W_SI = Medium(
    depth_mm=N_CELLS * CELL_MM,
    x0_mm=W_SI_MIX.x0_mm,
    lambda_mm=W_SI_MIX.lambda_mm,
    moliere_mm=W_SI_MIX.moliere_mm,
    critical_gev=critical_energy_gev(W_SI_MIX),
    mip_mev_per_mm=W_SI_MIX.mip_mev_per_mm,
    # Geant4 has no miscalibration: only a small constant term for what the model leaves out
    em_quantum_gev=W_SI_QUANTUM_GEV,
    constant_term=0.005,
    # the far field carries the CaloGAN share (3.9 % of the shower) but as visible silicon hits:
    # fewer, larger deposits in file units
    far_per_gev=calogan.FAR_PER_GEV * calogan.FAR_ENERGY_MEV / SI_HIT_MEV,
    far_energy_mev=SI_HIT_MEV,
    far_scale_mm=FAR_SCALE_MOLIERE * W_SI_MIX.moliere_mm,
    # a 22.5 MeV quantum is ~6 silicon hits: each is placed on its own in the fine voxels
    spot_split=round(1000 * W_SI_QUANTUM_GEV / SI_HIT_MEV),
)


def w_si_layer_depths_mm(n_layers: int = N_CELLS) -> np.ndarray:
    """(L, 2) front and back depth (mm) of the ds2/3 readout cells: cell i spans [3.4 i, 3.4 (i+1)]."""
    edges = CELL_MM * np.arange(n_layers + 1)
    return np.stack([edges[:-1], edges[1:]], axis=1)


# ============================================================ readout: r-α voxels


def _gauss_legendre(edges: np.ndarray, nodes: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and weights (each (bins, nodes)) of Gauss-Legendre quadrature on every interval of edges."""
    x, w = np.polynomial.legendre.leggauss(nodes)
    lo, hi = edges[:-1, None], edges[1:, None]
    return 0.5 * (hi - lo) * x[None, :] + 0.5 * (hi + lo), 0.5 * (hi - lo) * w[None, :]


def cauchy_voxel_probabilities(layer: LayerBinning, scale_mm: float, nodes: int = 16) -> np.ndarray:
    """Probability of each voxel of a layer (n_voxels,) for the far field's separable Cauchy profile
    p(x, y) = c(x) c(y), c(u) = s / (π (u² + s²)), centred on the axis.

    ∫∫ p(r cos α, r sin α) r dr dα over each annular sector, by Gauss-Legendre in r (``nodes`` per
    radial bin) and composite Gauss-Legendre in α. At radius r ≫ s the profile hugs the x and y
    axes within |α| ~ s/r, so the α panels around the circle grow with the outermost radius (one
    per s/r_max, at least 8).
    """
    edges = np.asarray(layer.r_edges_mm, dtype=np.float64)
    r, wr = _gauss_legendre(edges, nodes)  # (n_r, nodes)
    panels = math.ceil(max(8, 2 * np.pi * edges[-1] / scale_mm) / layer.n_alpha)
    alpha, wa = _gauss_legendre(np.linspace(-np.pi, np.pi, layer.n_alpha * panels + 1), nodes)
    alpha, wa = alpha.reshape(layer.n_alpha, -1), wa.reshape(layer.n_alpha, -1)  # (n_alpha, panels·nodes)
    c = lambda u: scale_mm / (np.pi * (u * u + scale_mm**2))  # noqa: E731
    probability = np.empty((layer.n_alpha, layer.n_r))
    for a in range(layer.n_alpha):
        x = r[:, :, None] * np.cos(alpha[a])[None, None, :]
        y = r[:, :, None] * np.sin(alpha[a])[None, None, :]
        integrand = c(x) * c(y) * (r * wr)[:, :, None] * wa[a][None, None, :]
        probability[a] = integrand.sum(axis=(1, 2))
    return probability.reshape(-1)  # angle-major, radius-minor, as the voxels


class ChallengeReadout:
    """Bins spots into a CaloChallenge binning; layer ``k`` covers depths ``layer_depths_mm[k]``.

    The voxels are centred on the particle's axis (the challenge voxelises around the particle's
    direction), so there is no impact-point spread. Spots outside every layer's depth or beyond a
    layer's last radial edge are lost.
    """

    def __init__(self, binning: CaloChallengeBinning, layer_depths_mm: np.ndarray, far_scale_mm: float):
        depths = np.asarray(layer_depths_mm, dtype=np.float64)
        if depths.shape != (len(binning.layers), 2):
            raise ValueError(f"layer_depths_mm: shape {depths.shape}, expected ({len(binning.layers)}, 2).")
        flat = depths.reshape(-1)
        if np.any(np.diff(flat) < 0) or np.any(depths[:, 1] <= depths[:, 0]):
            raise ValueError("layer_depths_mm: layers must be non-empty, ordered and not overlap.")
        self.binning = binning
        self.layer_depths_mm = depths
        self.n_bins = binning.n_voxels
        self._starts = np.array([s.start for s in binning.layer_slices])
        # layers with the same radial edges and angular bins share one voxel lookup (all 45 in ds2/3)
        shapes = [(layer.r_edges_mm, layer.n_alpha) for layer in binning.layers]
        self._shapes = list(dict.fromkeys(shapes))
        self._shape_of_layer = np.array([self._shapes.index(shape) for shape in shapes])
        self._shape_binning = [binning.layers[shapes.index(shape)] for shape in self._shapes]
        lateral = [cauchy_voxel_probabilities(layer, far_scale_mm) for layer in self._shape_binning]
        self._far_lateral = np.concatenate([lateral[k] for k in self._shape_of_layer])
        self._voxel_layer = np.repeat(np.arange(len(binning.layers)), [layer.n_voxels for layer in binning.layers])

    def impact_points(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return np.zeros((n, 2))

    def layer_of(self, z_mm: np.ndarray) -> np.ndarray:
        """Layer position (0 .. L-1) of each depth (S,), -1 outside every layer."""
        slot = np.searchsorted(self.layer_depths_mm.reshape(-1), z_mm, side="right")
        return np.where(slot % 2 == 1, (slot - 1) // 2, -1)

    def voxel_of(self, spots: Spots, impact: np.ndarray) -> np.ndarray:
        """Flat voxel index of each spot (S,), -1 when it is lost."""
        layer = self.layer_of(spots.z)
        inside = np.flatnonzero(layer >= 0)
        layer, event = layer[inside], spots.event[inside]
        x = spots.x[inside] + impact[event, 0]
        y = spots.y[inside] + impact[event, 1]
        r, alpha = np.hypot(x, y), np.arctan2(y, x)
        shape = self._shape_of_layer[layer]
        index = np.empty(len(inside), dtype=np.int64)
        for k, binning in enumerate(self._shape_binning):
            sel = slice(None) if len(self._shapes) == 1 else np.flatnonzero(shape == k)
            index[sel] = binning.voxel_index(r[sel], alpha[sel])
        voxel = np.full(len(spots.z), -1, dtype=np.int64)
        voxel[inside] = np.where(index >= 0, self._starts[layer] + index, -1)
        return voxel

    def bin_spots(self, spots: Spots, impact: np.ndarray, n_events: int) -> np.ndarray:
        """(n_events, n_voxels) summed spot energies, MeV."""
        voxel = self.voxel_of(spots, impact)
        kept = voxel >= 0
        flat = spots.event[kept] * self.n_bins + voxel[kept]
        binned = np.bincount(flat, weights=spots.energy[kept], minlength=n_events * self.n_bins)
        return binned.reshape(n_events, self.n_bins)

    def far_field(self, rng: np.random.Generator, far: FarField, impact: np.ndarray, medium: Medium) -> np.ndarray:
        """(n, n_voxels) soft-photon far field, MeV: per-voxel counts k ~ Poisson(μ), energy Gamma(k, ε).

        μ = mean count × (share of the Gamma(a, b_far) depth profile, in X0 of the medium, inside
        the voxel's layer) × (voxel probability of the separable Cauchy lateral profile).
        """
        t = medium.x0_between(far.z_start, self.layer_depths_mm.reshape(-1))
        cdf = gammainc(far.profile_a[:, None], calogan.FAR_SLOPE_B * t)
        layer_share = cdf[:, 1::2] - cdf[:, 0::2]
        mean = far.mean_count[:, None] * layer_share[:, self._voxel_layer] * self._far_lateral[None, :]
        return far_deposits(rng, mean, medium.far_energy_mev)


# ============================================================ datasets


@dataclass(frozen=True)
class ChallengeDataset:
    """How one CaloChallenge dataset is made: the MC species, the medium and where its layers sit."""

    name: str
    particle: str  # the species of calogan.shower_spots
    medium: Medium
    layer_depths_mm: np.ndarray = field(repr=False)
    chunk_events: int

    @cached_property
    def binning(self) -> CaloChallengeBinning:
        return load_binning(self.name)

    @cached_property
    def readout(self) -> ChallengeReadout:
        return ChallengeReadout(self.binning, self.layer_depths_mm, self.medium.far_scale_mm)


def _atlas_depths(name: str) -> np.ndarray:
    return ATLAS_BARREL.layer_depths_mm([layer.layer_id for layer in BINNINGS[name].layers])


#: Events per chunk (fixed: part of what a seed means), sized to keep a chunk's (n, voxels) rows small.
CHUNK_EVENTS: dict[str, int] = {"1-photons": 2000, "1-pions": 2000, "2": 500, "3": 100}

#: The MC species per dataset: e± showers are the same in this model, so ds2/3 electrons use ``eplus``.
_SPECIES = {"1-photons": "gamma", "1-pions": "piplus", "2": "eplus", "3": "eplus"}
_DEPTHS = {"1-photons": _atlas_depths("1-photons"), "1-pions": _atlas_depths("1-pions"),
           "2": w_si_layer_depths_mm(), "3": w_si_layer_depths_mm()}  # fmt: skip
DATASETS: dict[str, ChallengeDataset] = {
    name: ChallengeDataset(name, _SPECIES[name], ATLAS_BARREL if name.startswith("1-") else W_SI, _DEPTHS[name], size)
    for name, size in CHUNK_EVENTS.items()
}


def _dataset(name: str) -> ChallengeDataset:
    if name not in DATASETS:
        raise ValueError(f"dataset: unknown CaloChallenge dataset {name!r}; choose from {list(DATASETS)}.")
    return DATASETS[name]


# ============================================================ events


def draw_incident_energies(rng: np.random.Generator, binning: CaloChallengeBinning, n: int) -> np.ndarray:
    """(n,) incident energies, MeV, as float32 values: one of the discrete energies with equal odds
    (ds1), else log-uniform over ``energy_range_mev`` (ds2/3)."""
    if binning.discrete_energies_mev:
        energies = np.asarray(binning.discrete_energies_mev)[rng.integers(len(binning.discrete_energies_mev), size=n)]
    else:
        lo, hi = np.log(binning.energy_range_mev)
        energies = np.exp(rng.uniform(lo, hi, n))
    # what is simulated is what is stored: the float32 value
    return energies.astype(np.float32)


def _chunk_generator(dataset: str, seed: int, index: int) -> np.random.Generator:
    """The generator of chunk ``index``: SeedSequence([seed, dataset index], spawn_key=(index,))."""
    entropy = [int(seed), list(DATASETS).index(dataset)]
    return np.random.default_rng(np.random.SeedSequence(entropy, spawn_key=(index,)))


def simulate_chunk(
    dataset: str, seed: int, index: int, n: int, energies_mev: np.ndarray | None = None, threshold: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """Chunk ``index`` (n events) of a dataset: incident energies (n, 1) and showers (n, n_voxels),
    float32 MeV. A pure function of its arguments: chunks may be made in any order or process.

    Args:
        energies_mev: (n,) fixed incident energies, MeV, instead of the dataset's distribution.
        threshold: set voxels below the dataset's readout threshold to 0.
    """
    spec = _dataset(dataset)
    rng = _chunk_generator(dataset, seed, index)
    if energies_mev is None:
        energies = draw_incident_energies(rng, spec.binning, n)
    else:
        energies = np.asarray(energies_mev, dtype=np.float32).reshape(n)
    rows = simulate_rows(rng, energies.astype(np.float64) / 1000.0, spec.particle, spec.medium, spec.readout)
    if threshold:
        rows = np.where(rows < spec.binning.threshold_mev, 0.0, rows)
    return energies.reshape(-1, 1), rows.astype(np.float32)


def _chunks(
    dataset: str,
    events: int,
    seed: int,
    energies_mev: np.ndarray | None,
    threshold: bool,
    advance: Callable[[int], None],
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """(first event, energies, showers) of every chunk in order; ``advance`` gets each chunk's size."""
    size = _dataset(dataset).chunk_events
    for index, start in enumerate(range(0, events, size)):
        n = min(size, events - start)
        fixed = None if energies_mev is None else energies_mev[start : start + n]
        energies, showers = simulate_chunk(dataset, seed, index, n, fixed, threshold)
        advance(n)
        yield start, energies, showers


def _check_args(dataset: str, events, seed) -> tuple[int, int]:
    _dataset(dataset)
    return calogan._check_integer(events, "events", 1), calogan._check_integer(seed, "seed", 0)


def simulate_calochallenge(
    n_events: int,
    dataset: str = "1-photons",
    seed: int = 0,
    energies_mev: np.ndarray | None = None,
    threshold: bool = True,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Made showers of a CaloChallenge dataset in memory.

    Args:
        n_events: number of showers, ≥ 1.
        dataset: ``"1-photons"``, ``"1-pions"``, ``"2"`` or ``"3"``.
        seed: non-negative integer; (seed, dataset, n_events) fix the result.
        energies_mev: (N,) or (N, 1) incident energies, MeV, instead of the dataset's distribution.
        threshold: apply the readout threshold (False shows the energies before it).
        progress: show a rich progress bar.

    Returns:
        ``incident_energies`` (N, 1) and ``showers`` (N, n_voxels), float32, MeV.
    """
    n_events, seed = _check_args(dataset, n_events, seed)
    fixed = None
    if energies_mev is not None:
        fixed = np.asarray(energies_mev, dtype=np.float64)
        if fixed.shape not in {(n_events,), (n_events, 1)} or not np.all(np.isfinite(fixed) & (fixed > 0)):
            raise ValueError(f"energies_mev: need {n_events} finite energies > 0 MeV, got shape {fixed.shape}.")
        fixed = fixed.reshape(-1)
    with calogan._progress() if progress else contextlib.nullcontext() as bar:
        advance = calogan._bar_advance(bar, f"CaloChallenge {dataset}", n_events)
        parts = list(_chunks(dataset, n_events, seed, fixed, threshold, advance))
    return np.concatenate([p[1] for p in parts]), np.concatenate([p[2] for p in parts])


#: Files up to this size are made in memory and written by :func:`hepgen.io.calochallenge.write_calochallenge`;
#: larger ones (a full ds3 file is 16 GB) are streamed chunk by chunk in the same layout.
IN_MEMORY_BYTES = 2**30


def make_calochallenge(
    path: str | Path, dataset: str = "1-photons", events: int = 10_000, seed: int = 0, progress: bool = True
) -> Path:
    """Write made showers of a CaloChallenge dataset in the challenge's HDF5 layout.

    ``incident_energies`` (N, 1) and ``showers`` (N, n_voxels), float32 MeV, gzip, chunked by
    events; attributes ``{"hepgen_made": "calochallenge", "dataset", "events", "seed"}``, so that
    ``simulate_calochallenge(events, dataset, seed)`` gives the same arrays. Written to a temporary
    file that is renamed at the end.

    Raises:
        ValueError: unknown dataset, events < 1 or a negative seed.
        FileExistsError: ``path`` exists (checked before simulating; never overwritten).
    """
    events, seed = _check_args(dataset, events, seed)
    path = Path(path)
    if path.exists():
        raise FileExistsError(f"{path} exists; hepgen never overwrites a data file. Remove it or choose another path.")
    binning = _dataset(dataset).binning
    attrs = {"hepgen_made": "calochallenge", "dataset": dataset, "events": events, "seed": seed}
    if 4 * events * binning.n_voxels > IN_MEMORY_BYTES:
        return _write_streaming(path, dataset, events, seed, attrs, progress)
    from hepgen.io.calochallenge import write_calochallenge

    energies, showers = simulate_calochallenge(events, dataset, seed, progress=progress)
    return write_calochallenge(path, energies, showers, binning, attrs)


def _write_streaming(path: Path, dataset: str, events: int, seed: int, attrs: dict, progress: bool) -> Path:
    """:func:`make_calochallenge` for files too large for memory: each chunk is checked as the
    reader checks files and written as it is made, with write_calochallenge's keys, chunks and gzip."""
    from hepgen.io import calochallenge as io

    binning = _dataset(dataset).binning
    refuse = f"{path} exists; hepgen never overwrites a data file. Remove it or choose another path."
    rows = max(1, min(events, io.CHUNK_BYTES // (4 * binning.n_voxels)))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.part")
    try:
        with h5py.File(tmp, "w") as f, calogan._progress() if progress else contextlib.nullcontext() as bar:
            gzip = {"compression": "gzip", "compression_opts": 1}
            width = binning.n_voxels
            energy = f.create_dataset(io.ENERGY_KEY, (events, 1), np.float32, chunks=(min(events, 2**16), 1), **gzip)
            showers = f.create_dataset(io.SHOWER_KEY, (events, width), np.float32, chunks=(rows, width), **gzip)
            advance = calogan._bar_advance(bar, f"CaloChallenge {dataset}", events)
            for start, e, s in _chunks(dataset, events, seed, None, True, advance):
                for key, values in ((io.ENERGY_KEY, e), (io.SHOWER_KEY, s)):
                    faults = io.RowFaults(path, key)
                    faults.scan(values, start)
                    faults.raise_if_any()
                io.check_energy_range(path, e, binning)
                energy[start : start + len(e)] = e
                showers[start : start + len(s)] = s
            f.attrs.update(attrs)
        if path.exists():  # made by another writer meanwhile
            raise FileExistsError(refuse)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def file_name(dataset: str) -> str:
    """The challenge's name of a dataset's first file, e.g. ``dataset_1_photons_1.hdf5``."""
    return f"dataset_{_dataset(dataset).name.replace('-', '_')}_1.hdf5"
