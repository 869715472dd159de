"""Made CaloGAN showers: a fast, vectorised Monte-Carlo with known physics.

The showers live in the CaloGAN geometry (:mod:`hepgen.physics.calo_geometry`): a Pb/LAr
block 480 mm deep (three readout layers of 90 / 347 / 43 mm, about 5.8 / 22.4 / 2.8 X0 with
X0 = 15.5 mm) read out over 480 x 480 mm around the beam. Each event deposits its energy as
a finite set of *spots* (point deposits); the spots are binned into the 504 cells, the
per-layer overflow (inside the Geant4 block but outside the readout) and losses.

Electromagnetic showers (``eplus``, ``gamma``)
----------------------------------------------
* Longitudinal (depth t in X0):  dE/dt ∝ t^(a-1) e^(-b t), b = 0.5,
  t_max = (a - 1)/b = ln(E/E_c) + C + δ, E_c = 10 MeV, C = -0.5 (e±) or +0.5 (γ),
  δ ~ N(0, 0.7 X0) per event (where the shower starts fluctuates).
* Lateral (radius r in mm, τ = t/t_max):
  f(r) = p·2rR_c²/(r² + R_c²)² + (1 - p)·2rR_t²/(r² + R_t²)²,
  R_c = R_M (0.05 + 0.10 τ), R_t = R_M (0.50 + 0.20 τ), p = clip(1.05 - 0.20 τ, 0.2, 0.9),
  R_M = X0·E_s/E_c ≈ 33 mm; azimuth uniform. Sampled by inverting F(r) = r²/(r² + R²).
* Sampling: the shower energy E_sh = E(1 - α) (α = 2 % albedo), less the far field's share,
  is split in n = min(ceil(E/q), 1000) spots of energy (E/n)·w, w ~ Gamma(k, 1/k),
  k = E/(q n), so that Var(Σ) = q·E: σ/E = √(q/E) = 10 %/√(E/GeV) for q = 10 MeV,
  whatever the cap. A per-event factor N(1, 1 %) adds the constant term.
* Far field: soft photons leave many tiny deposits (Compton electrons, Exp(0.3 MeV) each)
  far from the axis; they make most of the non-zero cells. ν = 130 deposits per GeV, depth
  profile Gamma(a, b_far = 0.4) (the photon-dominated tail reaches further), separable Cauchy
  lateral profile with scale 60 mm along each axis. Per-cell counts are drawn directly,
  k ~ Poisson(μ_cell), with energy Gamma(k, 0.3 MeV).
* Impact point: x0, y0 ~ N(0, 3 mm) per event.

Charged pions (``piplus``)
--------------------------
* First inelastic interaction at z_int ~ Exp(λ_int), λ_int = 374 mm for the 2 mm Pb +
  4 mm LAr mix; before it the pion is a MIP (0.565 MeV/mm, 24 spots along the full depth, the
  ones beyond z_int dropped). About 27 % of pions cross the 480 mm block without interacting.
* At z_int the energy splits into an electromagnetic part f_em·E (π⁰ → γγ, an EM shower as
  above with C = +0.5) and a hadronic part, with
  ⟨f_em⟩ = 1 - (E/1 GeV)^(k-1), k = 0.82 (Groom), f_em ~ Beta with concentration 8.
  Only h = 65 % of the hadronic part is deposited (nuclear binding, neutrinos and escaping
  neutrons take the rest; e/h ≈ 1.5 for total deposits).
* Hadronic depth after z_int, s in λ_int: dE/ds ∝ s^(a_h-1) e^(-s/0.6), a_h = 1.5 + 0.2 ln(E/GeV);
  lateral f(r) as above with p = 0.5, R_c = 0.1 λ_int, R_t = 0.35 λ_int; spot quantum 30 MeV.

Zero suppression: cells below 0.1 MeV are set to exactly 0, like a readout threshold; it
removes about a quarter of the cells hit by a single far-field deposit.

Reproducibility: showers are made in chunks of 2000 events, chunk i with its own generator
``SeedSequence(seed, spawn_key=(i,))``, so a (seed, arguments) pair always gives the same arrays.

One engine, two formats
-----------------------
The physics above is written against a :class:`Medium` (radiation and interaction lengths, Molière
radius, critical energy, sampling and far-field parameters, and the map from X0 or λ_int to depth)
and ends in :class:`Spots` plus a :class:`FarField`; a *readout* then bins them. The CaloGAN block is
:data:`CALOGAN_MEDIUM` read out by :class:`CaloGANReadout`; :mod:`hepgen.synth.calochallenge` runs the
same :func:`shower_spots` in the CaloChallenge materials and bins into their r-α voxels.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Protocol

import numpy as np
from scipy.special import gammainc

from hepgen.io.calogan import write_calogan
from hepgen.physics.calo_geometry import (
    CELL_SIZE_MM,
    ENERGY_RANGE_GEV,
    LAYER_DEPTH_MM,
    LAYER_KEYS,
    LAYER_SHAPES,
    N_CELLS,
    N_CELLS_TOTAL,
    N_LAYERS,
    PARTICLES,
    TRANSVERSE_SIZE_MM,
    X0_EFFECTIVE_MM,
)

# ---------------------------------------------------------------- geometry (mm, from the front face)
#: Layer boundaries along the beam, measured from the front face: 0 / 90 / 437 / 480 mm.
LAYER_EDGES_MM = np.concatenate([[0.0], np.cumsum(LAYER_DEPTH_MM)])
DEPTH_MM = float(LAYER_EDGES_MM[-1])
HALF_READOUT_MM = TRANSVERSE_SIZE_MM / 2
#: The Geant4 block is 1000 x 1000 mm transverse: deposits beyond the readout but inside it
#: are the CaloGAN "overflow"; anything further out escapes.
HALF_BLOCK_MM = 500.0
#: One output row per event: the 504 cells, then the 3 per-layer overflows.
N_BINS = N_CELLS_TOTAL + N_LAYERS
#: Index of the bin collecting escaped energy while binning (dropped afterwards).
LOST_BIN = N_BINS
#: Every cell edge lies on this transverse grid (mm), which spans the block in N_GRID slots.
GRID_MM = 5.0
N_GRID = int(2 * HALF_BLOCK_MM / GRID_MM)

# ---------------------------------------------------------------- electromagnetic showers
#: Effective critical energy of Pb/LAr (Pb 7.4 MeV, LAr 32 MeV; the lead dominates), GeV.
CRITICAL_ENERGY_GEV = 0.010
#: Slope b of the Gamma profile, per X0 (≈ 0.5 for heavy absorbers, PDG fits).
PROFILE_SLOPE_B = 0.5
#: t_max offset C: an e± radiates at once; a photon first has to convert (mean 9/7 X0).
T_MAX_OFFSET_X0: dict[str, float] = {"eplus": -0.5, "gamma": 0.5}
#: Event-by-event spread of t_max in X0: the first hard interactions happen at random depths.
T_MAX_SPREAD_X0 = 0.7
#: t_max is kept above this (X0) so the profile keeps a > 1 even at very low energy.
T_MAX_MIN_X0 = 0.5
#: Molière radius of the stack, mm: R_M = X0·E_s/E_c = 15.5 mm · 21.2 MeV / 10 MeV ≈ 33 mm
#: (a mass-weighted Pb/LAr mix of the tabulated R_M gives ≈ 35 mm).
MOLIERE_RADIUS_MM = X0_EFFECTIVE_MM * 0.0212 / CRITICAL_ENERGY_GEV
#: Impact-point spread, mm: without it every shower would hit the same cell corner.
IMPACT_SIGMA_MM = 3.0
#: Fraction of the energy carried back out of the front face by back-scattered soft particles.
ALBEDO_FRACTION = 0.02

# ---------------------------------------------------------------- sampling fluctuations
#: Energy quantum q of the stochastic term, GeV: σ/E = √(q/E) = 10 %/√(E/GeV).
EM_QUANTUM_GEV = 0.010
#: Most spots per event for the main EM shower; the Gamma weights keep σ/E right above it.
MAX_EM_SPOTS = 1000
#: Constant term of the resolution (calibration non-uniformity), relative.
CONSTANT_TERM = 0.01

# ---------------------------------------------------------------- far field (soft photons)
#: Far-field deposits per GeV of EM shower energy (Compton electrons of soft photons); with
#: 0.3 MeV each they carry 3.9 % of the shower energy. Tuned so that e+ light up ≈ 266 of the
#: 504 cells on average over 1-100 GeV, as in the real CaloGAN e+ file.
FAR_PER_GEV = 130.0
#: Mean energy of one far-field deposit, MeV (deposits are Exp-distributed).
FAR_ENERGY_MEV = 0.3
#: Slope of the far-field depth profile, per X0: below b because the soft photons that make
#: the far field penetrate further than the charged particles (the tail is photon-dominated).
FAR_SLOPE_B = 0.4
#: Scale of the far field's (separable) Cauchy lateral profile along each axis, mm.
FAR_SCALE_MM = 60.0

# ---------------------------------------------------------------- charged pions
#: Nuclear interaction length of 2 mm Pb + 4 mm LAr, mm: 1/λ = (1/3)/176 mm + (2/3)/858 mm.
LAMBDA_INT_MM = 1.0 / ((1 / 3) / 175.9 + (2 / 3) / 857.7)
#: Minimum-ionising loss of the stack, MeV/mm: (2 mm · 1.27 + 4 mm · 0.212) MeV/mm / 6 mm.
MIP_DEDX_MEV_PER_MM = (2 * 1.274 + 4 * 0.2117) / 6
#: The MIP track is laid down as this many equal segments over the full depth.
MIP_SEGMENTS = 24
#: Spread of one MIP segment's loss: Gamma weights of this shape (relative σ = 50 %), a skewed
#: stand-in for the Landau distribution.
MIP_WEIGHT_SHAPE = 4.0
#: Groom's mean EM fraction ⟨f_em⟩ = 1 - (E/E_0)^(k-1) and the Beta concentration of f_em.
EM_FRACTION_E0_GEV = 1.0
EM_FRACTION_K = 0.82
EM_FRACTION_CONCENTRATION = 8.0
EM_FRACTION_MIN = 0.05
#: Deposited fraction of the non-EM energy (e/h ≈ 1.5 in total deposited energy).
HADRON_VISIBLE = 0.65
#: Hadronic profile after the interaction, in λ_int: shape 1.5 + 0.2 ln(E/GeV), scale 0.6.
HADRON_SHAPE_A0 = 1.5
HADRON_SHAPE_SLOPE = 0.2
HADRON_SCALE_LAMBDA = 0.6
#: Hadronic lateral profile: core fraction and radii in λ_int (hadronic showers are ~λ wide).
HADRON_CORE_FRACTION = 0.5
HADRON_CORE_RADIUS_LAMBDA = 0.10
HADRON_HALO_RADIUS_LAMBDA = 0.35
HADRON_CORE_RADIUS = HADRON_CORE_RADIUS_LAMBDA * LAMBDA_INT_MM
HADRON_HALO_RADIUS = HADRON_HALO_RADIUS_LAMBDA * LAMBDA_INT_MM
#: Hadronic energy quantum, GeV: fewer, larger spots than EM (clumpy deposits).
HADRON_QUANTUM_GEV = 0.030
MAX_HADRON_SPOTS = 600

# ---------------------------------------------------------------- output
#: Cells below this energy are set to exactly 0, MeV: a readout threshold. It removes the
#: faintest far-field cells (a lone Exp(0.3 MeV) deposit falls below it 28 % of the time).
ZERO_SUPPRESSION_MEV = 0.1
#: Events per chunk; fixed, so the showers of a seed never depend on how the work is split.
CHUNK_EVENTS = 2000
#: Per-spot arrays are float32: mm-scale positions need no more, and it halves the sampling cost.
SPOT_DTYPE = np.float32


class Spots(NamedTuple):
    """Point deposits of a chunk of events, all of shape (S,).

    ``event`` indexes the event in the chunk; ``x``, ``y`` are transverse positions (mm)
    relative to the impact point along the first and second array axes; ``z`` is the depth
    from the front face (mm); ``energy`` is in MeV.
    """

    event: np.ndarray
    x: np.ndarray
    y: np.ndarray
    z: np.ndarray
    energy: np.ndarray


class FarField(NamedTuple):
    """Per-event description of the soft-photon far field, all of shape (n,).

    ``mean_count``: expected number of deposits; ``profile_a``: a of the depth profile
    dE/dt ∝ t^(a-1) e^(-b_far t); ``z_start``: where the profile starts (mm).
    """

    mean_count: np.ndarray
    profile_a: np.ndarray
    z_start: np.ndarray


@dataclass(frozen=True)
class Medium:
    """The absorber as the shower Monte Carlo sees it: a homogeneous block ``depth_mm`` deep.

    Depth z is in mm from the front face along the particle. EM profiles are drawn in X0 and
    hadronic ones in λ_int; the ``advance_*`` methods turn those into z, so a layered stack
    (:class:`hepgen.synth.calochallenge.StackMedium`) only overrides them. Lengths are Python
    floats on purpose: numpy then keeps float32 spot arrays in float32 (the CaloGAN arrays are
    bit-for-bit those of the code before this class existed).

    Attributes:
        depth_mm: thickness of the block, mm; deposits behind it escape.
        x0_mm, lambda_mm: radiation and nuclear interaction lengths, mm.
        moliere_mm: Molière radius, mm: the scale of the EM lateral profile.
        critical_gev: critical energy E_c, GeV: t_max = ln(E/E_c) + C.
        mip_mev_per_mm: minimum-ionising loss, MeV/mm (pions before their first interaction).
        em_quantum_gev: q of the stochastic term, GeV: σ/E = √(q/E).
        constant_term: relative per-event spread of the response.
        far_per_gev, far_energy_mev, far_scale_mm: soft-photon far field, deposits per GeV of
            shower, mean energy of one deposit (MeV), Cauchy scale (mm) along each axis.
        max_em_spots: most energy quanta per EM shower.
        spot_split: each quantum is laid down as this many points (same weight, own positions),
            for readouts much finer than a quantum's energy would sample.
        mip_segments: segments of the MIP track over the full depth.
        mip_spread_mm: Gaussian transverse spread of the MIP track, mm (0: on the axis).
    """

    depth_mm: float
    x0_mm: float
    lambda_mm: float
    moliere_mm: float
    critical_gev: float
    mip_mev_per_mm: float
    em_quantum_gev: float
    constant_term: float
    far_per_gev: float
    far_energy_mev: float
    far_scale_mm: float
    max_em_spots: int = 1000
    spot_split: int = 1
    mip_segments: int = 24
    mip_spread_mm: float = 0.0

    @property
    def lateral_lambda_mm(self) -> float:
        """λ_int that sets the hadronic lateral radii, mm."""
        return self.lambda_mm

    def advance_x0(self, z_mm: np.ndarray, t_x0: np.ndarray) -> np.ndarray:
        """Depth (mm) reached t_x0 radiation lengths behind z_mm; both (S,)."""
        return z_mm + self.x0_mm * t_x0

    def advance_lambda(self, z_mm: np.ndarray, draws: np.ndarray, scale: float) -> np.ndarray:
        """Depth (mm) reached scale·draws interaction lengths behind z_mm; both (S,)."""
        return z_mm + self.lambda_mm * scale * draws

    def x0_between(self, z_mm: np.ndarray, edges_mm: np.ndarray) -> np.ndarray:
        """(n, K) radiation lengths from each z_mm (n,) to each edge (K,), 0 for edges in front."""
        return np.maximum(np.asarray(edges_mm)[None, :] - z_mm[:, None], 0.0) / self.x0_mm

    def interaction_depth(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """(n,) depths of the first inelastic interaction, mm: Exp(λ_int)."""
        return rng.exponential(self.lambda_mm, n)

    def mip_loss_mev(self, z_mm: np.ndarray) -> np.ndarray:
        """Energy (MeV) a MIP loses over the first z_mm (n,)."""
        return self.mip_mev_per_mm * z_mm

    def mip_range_mm(self, energy_mev: np.ndarray) -> np.ndarray:
        """(n,) depth at which a MIP has lost energy_mev (n,): where a slow pion stops, mm."""
        return energy_mev / self.mip_mev_per_mm

    def mip_track_segments(self) -> tuple[np.ndarray, np.ndarray]:
        """Centres (mm) and MIP energies (MeV) of the track segments over the full depth, each (M,)."""
        step = self.depth_mm / self.mip_segments
        return (np.arange(self.mip_segments) + 0.5) * step, np.full(self.mip_segments, self.mip_mev_per_mm * step)


#: The CaloGAN Pb/LAr block (numbers and reasoning at the constants above).
CALOGAN_MEDIUM = Medium(
    depth_mm=DEPTH_MM,
    x0_mm=X0_EFFECTIVE_MM,
    lambda_mm=LAMBDA_INT_MM,
    moliere_mm=MOLIERE_RADIUS_MM,
    critical_gev=CRITICAL_ENERGY_GEV,
    mip_mev_per_mm=MIP_DEDX_MEV_PER_MM,
    em_quantum_gev=EM_QUANTUM_GEV,
    constant_term=CONSTANT_TERM,
    far_per_gev=FAR_PER_GEV,
    far_energy_mev=FAR_ENERGY_MEV,
    far_scale_mm=FAR_SCALE_MM,
    max_em_spots=MAX_EM_SPOTS,
    mip_segments=MIP_SEGMENTS,
)


def _concat(parts: Sequence[Spots]) -> Spots:
    """Join spot lists of the same chunk."""
    return Spots(*(np.concatenate(field) for field in zip(*parts)))


# ============================================================ sampling helpers


def _repeat_events(counts: np.ndarray) -> np.ndarray:
    """Event index of every spot, shape (sum(counts),), for per-event spot counts (n,)."""
    return np.repeat(np.arange(len(counts)), counts)


def _quantised_energies(
    rng: np.random.Generator, energy_gev: np.ndarray, quantum_gev: float, max_spots: int, split: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """Split each event's energy into spots with Poisson-like sampling fluctuations.

    Event i gets n_i = min(ceil(E_i/q), max_spots) spots of energy (E_i/n_i)·w, w ~ Gamma(k_i, 1/k_i)
    with k_i = E_i/(q n_i): ≈ 1 (exponential weights) below the cap, > 1 above it. Then
    E[Σ] = E_i and Var[Σ] = n_i (E_i/n_i)²/k_i = q·E_i, the fluctuation of E_i/q independent
    quanta, while the number of spots stays bounded.

    With ``split`` > 1 every quantum is then cut into that many equal spots: the variance
    stays q·E (the pieces move together), but the shower is sampled at ``split`` times as many
    points, as a fine readout sees the many small deposits of a sampling calorimeter.

    Args:
        energy_gev: (n,) energy to share out per event, GeV (0 gives no spots).
    Returns:
        event index (S,) and spot energies (S,) in MeV.
    """
    counts = np.minimum(np.ceil(energy_gev / quantum_gev), max_spots).astype(np.int64)
    event = _repeat_events(counts)
    per_spot_mev = (1000.0 * energy_gev / np.maximum(counts, 1)).astype(SPOT_DTYPE)
    k = (energy_gev / (quantum_gev * np.maximum(counts, 1))).astype(SPOT_DTYPE)[event]
    weight = rng.standard_gamma(k, dtype=SPOT_DTYPE) / k
    energy = per_spot_mev[event] * weight
    if split == 1:
        return event, energy
    return np.repeat(event, split), np.repeat(energy / SPOT_DTYPE(split), split)


def _lateral_radius(
    rng: np.random.Generator, core_fraction: np.ndarray, r_core: np.ndarray, r_halo: np.ndarray
) -> np.ndarray:
    """Radii (mm) from f(r) = p·2rR_c²/(r²+R_c²)² + (1-p)·2rR_t²/(r²+R_t²)².

    Each term has CDF r²/(r²+R²), so r = R·√(u/(1-u)) for u ~ U(0, 1); the term is chosen
    with probability p. All arguments are per spot (S,) or scalars.
    """
    n = len(r_core)
    radius = np.where(rng.random(n, dtype=SPOT_DTYPE) < core_fraction, r_core, r_halo)
    u = rng.random(n, dtype=SPOT_DTYPE)
    return radius * np.sqrt(u / (1 - u))


def _transverse(rng: np.random.Generator, radius: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Uniform azimuth: (x, y) in mm for radii (S,)."""
    phi = SPOT_DTYPE(2 * np.pi) * rng.random(len(radius), dtype=SPOT_DTYPE)
    return radius * np.cos(phi), radius * np.sin(phi)


# ============================================================ electromagnetic showers


def _shower_maximum(
    rng: np.random.Generator, energy_gev: np.ndarray, offset_x0: float, critical_gev: float
) -> np.ndarray:
    """Per-event depth of the shower maximum, X0: ln(E/E_c) + C + N(0, 0.7), kept ≥ 0.5. Shape (n,)."""
    t_max = np.log(np.maximum(energy_gev, 1e-12) / critical_gev) + offset_x0
    t_max = t_max + rng.normal(0.0, T_MAX_SPREAD_X0, len(energy_gev))
    return np.maximum(t_max, T_MAX_MIN_X0)


def _profile_depth(rng: np.random.Generator, t_max: np.ndarray) -> np.ndarray:
    """Depths (X0) from dE/dt ∝ t^(a-1) e^(-bt) with a = 1 + b·t_max, per spot (S,)."""
    return rng.standard_gamma(1 + PROFILE_SLOPE_B * t_max, dtype=SPOT_DTYPE) / SPOT_DTYPE(PROFILE_SLOPE_B)


def _em_lateral(rng: np.random.Generator, tau: np.ndarray, moliere_mm: float) -> np.ndarray:
    """EM radii (mm) at relative depth τ = t/t_max (S,), in a medium of Molière radius ``moliere_mm``.

    The core (multiple scattering of the energetic electrons) and the halo (soft photons)
    both widen with depth, and the halo takes over past the maximum. These numbers put 90 % of
    the spot energy within 1.0-1.3 R_M (wider at low energy), 95 % within 1.6-2 R_M.
    """
    r_core = SPOT_DTYPE(moliere_mm) * (SPOT_DTYPE(0.05) + SPOT_DTYPE(0.10) * tau)
    r_halo = SPOT_DTYPE(moliere_mm) * (SPOT_DTYPE(0.50) + SPOT_DTYPE(0.20) * tau)
    core_fraction = np.clip(SPOT_DTYPE(1.05) - SPOT_DTYPE(0.20) * tau, 0.2, 0.9)
    return _lateral_radius(rng, core_fraction, r_core, r_halo)


def _em_shower(
    rng: np.random.Generator, energy_gev: np.ndarray, offset_x0: float, z_start_mm: np.ndarray, medium: Medium
) -> tuple[Spots, FarField]:
    """EM showers of energies (n,) GeV starting at depths (n,) mm: quantised spots and far field."""
    t_max = _shower_maximum(rng, energy_gev, offset_x0, medium.critical_gev)
    far = FarField(medium.far_per_gev * energy_gev, 1.0 + PROFILE_SLOPE_B * t_max, z_start_mm)
    main_gev = energy_gev * (1.0 - medium.far_per_gev * medium.far_energy_mev / 1000.0)
    event, energy = _quantised_energies(rng, main_gev, medium.em_quantum_gev, medium.max_em_spots, medium.spot_split)
    spot_t_max = t_max.astype(SPOT_DTYPE)[event]
    depth_x0 = _profile_depth(rng, spot_t_max)
    x, y = _transverse(rng, _em_lateral(rng, depth_x0 / spot_t_max, medium.moliere_mm))
    return Spots(event, x, y, medium.advance_x0(z_start_mm[event], depth_x0), energy), far


# ============================================================ charged pions


def _mip_track(rng: np.random.Generator, z_end_mm: np.ndarray, medium: Medium) -> Spots:
    """Minimum-ionising track up to depth z_end (n,) mm, in the medium's segments: on the axis,
    or spread by N(0, mip_spread_mm) per axis where the medium sets a spread."""
    n = len(z_end_mm)
    centres, segment_mev = medium.mip_track_segments()
    z = np.tile(centres, n)
    event = _repeat_events(np.full(n, len(centres)))
    keep = z < z_end_mm[event]
    weight = rng.standard_gamma(MIP_WEIGHT_SHAPE, keep.sum()) / MIP_WEIGHT_SHAPE
    if medium.mip_spread_mm > 0:
        x, y = rng.normal(0.0, medium.mip_spread_mm, (2, keep.sum()))
    else:
        x = y = np.zeros(keep.sum())
    return Spots(event[keep], x, y, z[keep], np.tile(segment_mev, n)[keep] * weight)


def _em_fraction(rng: np.random.Generator, energy_gev: np.ndarray) -> np.ndarray:
    """Per-event EM fraction f_em ~ Beta around Groom's ⟨f_em⟩ = 1 - (E/E_0)^(k-1). Shape (n,)."""
    mean = 1.0 - (np.maximum(energy_gev, EM_FRACTION_E0_GEV) / EM_FRACTION_E0_GEV) ** (EM_FRACTION_K - 1)
    mean = np.clip(mean, EM_FRACTION_MIN, 1.0 - EM_FRACTION_MIN)
    return rng.beta(EM_FRACTION_CONCENTRATION * mean, EM_FRACTION_CONCENTRATION * (1.0 - mean))


def _hadronic_part(
    rng: np.random.Generator, energy_gev: np.ndarray, visible_gev: np.ndarray, z_int_mm: np.ndarray, medium: Medium
) -> Spots:
    """Non-EM cascade: depth after z_int from a Gamma in λ_int units, wide lateral profile.

    ``energy_gev`` (n,) sets the profile length, ``visible_gev`` (n,) the deposited energy.
    """
    event, energy = _quantised_energies(rng, visible_gev, HADRON_QUANTUM_GEV, MAX_HADRON_SPOTS)
    shape = HADRON_SHAPE_A0 + HADRON_SHAPE_SLOPE * np.log(np.maximum(energy_gev, 1.0))
    z = medium.advance_lambda(z_int_mm[event], rng.standard_gamma(shape[event]), HADRON_SCALE_LAMBDA)
    r_core = np.full(len(event), HADRON_CORE_RADIUS_LAMBDA * medium.lateral_lambda_mm, dtype=SPOT_DTYPE)
    radius = _lateral_radius(rng, HADRON_CORE_FRACTION, r_core, HADRON_HALO_RADIUS_LAMBDA * medium.lateral_lambda_mm)
    x, y = _transverse(rng, radius)
    return Spots(event, x, y, z, energy)


def _pion_shower(rng: np.random.Generator, energy_gev: np.ndarray, medium: Medium) -> tuple[Spots, FarField]:
    """π+ showers of energies (n,) GeV: MIP track, then an EM (π⁰) and a hadronic part."""
    z_int = medium.interaction_depth(rng, len(energy_gev))
    # a pion that has lost all its energy by ionisation stops before it can interact (only below
    # 0.27 GeV in the CaloGAN block, but a 4 GeV pion can range out in the 2 m of ds1)
    z_stop = medium.mip_range_mm(1000.0 * energy_gev)
    mip = _mip_track(rng, np.minimum(np.minimum(z_int, z_stop), medium.depth_mm), medium)
    left_gev = energy_gev - medium.mip_loss_mev(z_int) / 1000.0
    left_gev = np.where((z_int < medium.depth_mm) & (z_int < z_stop), np.maximum(left_gev, 0.0), 0.0)
    f_em = _em_fraction(rng, energy_gev)
    em, far = _em_shower(rng, f_em * left_gev, T_MAX_OFFSET_X0["gamma"], z_int, medium)
    hadronic = _hadronic_part(rng, energy_gev, HADRON_VISIBLE * (1.0 - f_em) * left_gev, z_int, medium)
    return _concat([mip, em, hadronic]), far


def shower_spots(
    rng: np.random.Generator, energy_gev: np.ndarray, particle: str, medium: Medium = CALOGAN_MEDIUM
) -> tuple[Spots, FarField]:
    """The shower Monte Carlo shared by every readout: point deposits and far field of n showers.

    Args:
        energy_gev: (n,) incident energies, GeV.
        particle: ``"eplus"`` (any e±), ``"gamma"`` or ``"piplus"``.
        medium: the absorber; depths in the returned spots are mm from its front face.
    Returns:
        :class:`Spots` (S,) relative to the impact point, and the per-event :class:`FarField`.
    """
    if particle == "piplus":
        return _pion_shower(rng, energy_gev, medium)
    deposited = (1.0 - ALBEDO_FRACTION) * energy_gev
    return _em_shower(rng, deposited, T_MAX_OFFSET_X0[particle], np.zeros(len(energy_gev)), medium)


# ============================================================ binning


def _bin_table() -> np.ndarray:
    """Output bin of every (depth slot, x slot, y slot), shape (N_LAYERS + 2, G + 2, G + 2).

    All cell edges lie on a 5 mm grid, so each 5 mm square of the 1000 x 1000 mm block falls in
    exactly one cell (or one layer's overflow). Depth slots 0 and N_LAYERS + 1 are in front of and
    behind the block, transverse slots 0 and G + 1 beyond its sides: those map to LOST_BIN.
    """
    centres = -HALF_BLOCK_MM + GRID_MM * (np.arange(N_GRID) + 0.5)
    in_readout = np.abs(centres) < HALF_READOUT_MM
    table = np.full((N_LAYERS + 2, N_GRID + 2, N_GRID + 2), LOST_BIN, dtype=np.int64)
    offset = 0
    for layer, key in enumerate(LAYER_KEYS):
        (rows, cols), (size_r, size_c) = LAYER_SHAPES[key], CELL_SIZE_MM[key]
        row = ((centres + HALF_READOUT_MM) // size_r).astype(np.int64)
        col = ((centres + HALF_READOUT_MM) // size_c).astype(np.int64)
        cell = offset + row[:, None] * cols + col[None, :]
        inside = in_readout[:, None] & in_readout[None, :]
        table[layer + 1, 1:-1, 1:-1] = np.where(inside, cell, N_CELLS_TOTAL + layer)
        offset += rows * cols
    return table


_BIN_TABLE = _bin_table()


def _grid_slot(coord_mm: np.ndarray) -> np.ndarray:
    """Transverse slot 1..G of a coordinate (mm) inside the block, 0 or G + 1 outside it. Shape (S,)."""
    slot = np.floor((coord_mm + HALF_BLOCK_MM) / GRID_MM) + 1
    return np.clip(slot, 0, N_GRID + 1).astype(np.int64)


def _bin_spots(spots: Spots, impact: np.ndarray, n_events: int) -> np.ndarray:
    """Sum spot energies into (n_events, 507) rows: 504 cells, then overflow per layer (MeV).

    ``impact`` (n, 2) is the entry point in mm. Spots behind the block (z ≥ 480 mm), in front
    of it, or beyond its 500 mm transverse half-width escape and are dropped.
    """
    depth_slot = np.searchsorted(LAYER_EDGES_MM, spots.z, side="right")
    x_slot = _grid_slot(spots.x + impact[spots.event, 0])
    y_slot = _grid_slot(spots.y + impact[spots.event, 1])
    flat = spots.event * (N_BINS + 1) + _BIN_TABLE[depth_slot, x_slot, y_slot]
    binned = np.bincount(flat, weights=spots.energy, minlength=n_events * (N_BINS + 1))
    return binned.reshape(n_events, N_BINS + 1)[:, :N_BINS]


def _axis_probabilities(centre_mm: np.ndarray, n_cells: int, scale_mm: float) -> np.ndarray:
    """Probability of each of n_cells equal readout bins along one axis for a Cauchy
    (scale s = scale_mm) centred at centre_mm (n,): CDF(u) = 1/2 + arctan(u/s)/π. Shape (n, n_cells)."""
    edges = np.linspace(-HALF_READOUT_MM, HALF_READOUT_MM, n_cells + 1)
    cdf = 0.5 + np.arctan((edges[None, :] - centre_mm[:, None]) / scale_mm) / np.pi
    return np.diff(cdf, axis=1)


def _far_field(rng: np.random.Generator, far: FarField, impact: np.ndarray, medium: Medium) -> np.ndarray:
    """Soft-photon far field binned like :func:`_bin_spots`: (n, 507) MeV.

    The far field is a Poisson process of many tiny deposits, so rather than placing each one
    we draw per-cell counts k ~ Poisson(μ_cell) and energies Gamma(k, FAR_ENERGY_MEV) (a sum
    of k exponentials): the same distribution at a cost independent of the energy. μ_cell is
    mean_count × (layer fraction of the depth profile Gamma(a, b_far), from the regularised
    incomplete gamma function) × (cell probability of a separable Cauchy lateral profile);
    the lateral mass outside the readout goes to the overflow, the depth beyond the block is lost.
    """
    depth_x0 = medium.x0_between(far.z_start, LAYER_EDGES_MM)
    layer_fraction = np.diff(gammainc(far.profile_a[:, None], FAR_SLOPE_B * depth_x0), axis=1)
    mean = np.empty((len(far.profile_a), N_BINS))
    start = 0
    for layer, key in enumerate(LAYER_KEYS):
        rows, cols = LAYER_SHAPES[key]
        p_rows = _axis_probabilities(impact[:, 0], rows, medium.far_scale_mm)
        p_cols = _axis_probabilities(impact[:, 1], cols, medium.far_scale_mm)
        in_layer = far.mean_count * layer_fraction[:, layer]
        p_cells = (p_rows[:, :, None] * p_cols[:, None, :]).reshape(-1, rows * cols)
        mean[:, start : start + rows * cols] = in_layer[:, None] * p_cells
        mean[:, N_CELLS_TOTAL + layer] = in_layer * (1.0 - p_rows.sum(1) * p_cols.sum(1))
        start += rows * cols
    return far_deposits(rng, mean, medium.far_energy_mev)


def far_deposits(rng: np.random.Generator, mean: np.ndarray, energy_mev: float) -> np.ndarray:
    """Far-field energy per bin, MeV, for expected deposit counts ``mean`` (any shape): k ~ Poisson,
    energy Gamma(k, energy_mev), a sum of k exponential deposits. Same shape as ``mean``."""
    counts = rng.poisson(mean)
    energy = np.zeros(counts.shape)
    hit = counts > 0
    energy[hit] = energy_mev * rng.standard_gamma(counts[hit])
    return energy


def _split_layers(rows: np.ndarray, energy_gev: np.ndarray) -> dict[str, np.ndarray]:
    """(n, 507) binned rows -> the CaloGAN dict (float32), with zero suppression on the cells."""
    cells = np.where(rows[:, :N_CELLS_TOTAL] < ZERO_SUPPRESSION_MEV, 0.0, rows[:, :N_CELLS_TOTAL])
    out = {"energy": energy_gev.reshape(-1, 1).astype(np.float32)}
    start = 0
    for key in LAYER_KEYS:
        stop = start + N_CELLS[key]
        out[key] = cells[:, start:stop].reshape(-1, *LAYER_SHAPES[key]).astype(np.float32)
        start = stop
    out["overflow"] = rows[:, N_CELLS_TOTAL:].astype(np.float32)
    return out


# ============================================================ readouts


class Readout(Protocol):
    """The geometry step after the shower MC: where the particle enters, and the bins of its deposits."""

    def impact_points(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """(n, 2) entry points, mm, in the readout's transverse frame."""

    def bin_spots(self, spots: Spots, impact: np.ndarray, n_events: int) -> np.ndarray:
        """(n_events, n_bins) summed spot energies, MeV."""

    def far_field(self, rng: np.random.Generator, far: FarField, impact: np.ndarray, medium: Medium) -> np.ndarray:
        """(n, n_bins) far-field energies, MeV."""


class CaloGANReadout:
    """The CaloGAN cells: 504 cells, then the three per-layer overflows (:func:`_bin_spots`)."""

    n_bins = N_BINS

    def impact_points(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return rng.normal(0.0, IMPACT_SIGMA_MM, (n, 2))

    def bin_spots(self, spots: Spots, impact: np.ndarray, n_events: int) -> np.ndarray:
        return _bin_spots(spots, impact, n_events)

    def far_field(self, rng: np.random.Generator, far: FarField, impact: np.ndarray, medium: Medium) -> np.ndarray:
        return _far_field(rng, far, impact, medium)


def simulate_rows(
    rng: np.random.Generator, energy_gev: np.ndarray, particle: str, medium: Medium, readout: Readout
) -> np.ndarray:
    """Showers of incident energies (n,) GeV binned by ``readout``: (n, n_bins) MeV, before any threshold.

    The draws come in a fixed order (entry points, response scale, spots, far field), so a
    readout changes the bins but not the physics.
    """
    n = len(energy_gev)
    impact = readout.impact_points(rng, n)
    scale = rng.normal(1.0, medium.constant_term, n)
    spots, far = shower_spots(rng, energy_gev, particle, medium)
    rows = readout.bin_spots(spots, impact, n) + readout.far_field(rng, far, impact, medium)
    return scale[:, None] * rows


# ============================================================ events


def _simulate_chunk(rng: np.random.Generator, energy_gev: np.ndarray, particle: str) -> dict[str, np.ndarray]:
    """Showers for incident energies (n,) GeV of one particle species, as the CaloGAN dict."""
    rows = simulate_rows(rng, energy_gev, particle, CALOGAN_MEDIUM, CaloGANReadout())
    return _split_layers(rows, energy_gev)


def _check_particle(particle: str, name: str) -> None:
    """ValueError naming the argument ``name`` unless ``particle`` is a CaloGAN species."""
    if particle not in PARTICLES:
        raise ValueError(f"{name}: unknown particle {particle!r}; choose from {list(PARTICLES)}.")


def _check_integer(value, name: str, minimum: int) -> int:
    """``value`` as an int, or ValueError naming the argument unless it is an integer ≥ minimum."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ValueError(f"{name}: need an integer >= {minimum}, got {value!r}.")
    return int(value)


def _check_energies(
    n_events: int, energy_range_gev: tuple[float, float], energies_gev: np.ndarray | None
) -> np.ndarray | None:
    """Validate the energy arguments; return the fixed energies as (n_events,) float64, or None."""
    lo, hi = (float(v) for v in energy_range_gev)
    if not (np.isfinite(lo) and np.isfinite(hi) and 0.0 < lo <= hi):
        raise ValueError(f"energy_range_gev: need 0 < low <= high (GeV), got {tuple(energy_range_gev)}.")
    if energies_gev is None:
        return None
    energies = np.asarray(energies_gev, dtype=np.float64)
    if energies.shape not in {(n_events,), (n_events, 1)}:
        raise ValueError(f"energies_gev: shape {energies.shape}, expected ({n_events},) or ({n_events}, 1).")
    energies = energies.reshape(-1)
    if not np.all(np.isfinite(energies) & (energies > 0)):
        raise ValueError("energies_gev: all energies must be finite and > 0 GeV.")
    return energies


def _simulate(
    n_events: int,
    particle: str,
    seed: int,
    energy_range_gev: tuple[float, float],
    energies_gev: np.ndarray | None,
    advance: Callable[[int], None],
) -> dict[str, np.ndarray]:
    """Simulate in chunks of CHUNK_EVENTS, chunk i with the generator SeedSequence(seed, spawn_key=(i,)):
    independent streams, and a result fixed by the arguments. ``advance`` gets each chunk's size."""
    lo, hi = (float(v) for v in energy_range_gev)
    chunks = []
    for index, start in enumerate(range(0, n_events, CHUNK_EVENTS)):
        n = min(CHUNK_EVENTS, n_events - start)
        rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index,)))
        energy = rng.uniform(lo, hi, n) if energies_gev is None else energies_gev[start : start + n]
        chunks.append(_simulate_chunk(rng, energy, particle))
        advance(n)
    return {key: np.concatenate([c[key] for c in chunks]) for key in chunks[0]}


def _progress():
    """A rich progress bar (imported lazily; rich is only needed when progress is shown)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())


def _bar_advance(bar, description: str, total: int) -> Callable[[int], None]:
    """A callback advancing a new task of ``bar`` by n events; a no-op when ``bar`` is None."""
    if bar is None:
        return lambda n: None
    task = bar.add_task(description, total=total)
    return lambda n: bar.advance(task, n)


def simulate_showers(
    n_events: int,
    particle: str = "eplus",
    seed: int = 0,
    energy_range_gev: tuple[float, float] = (1.0, 100.0),
    energies_gev: np.ndarray | None = None,
    progress: bool = False,
) -> dict[str, np.ndarray]:
    """Simulate CaloGAN showers (see the module docstring for the physics).

    Args:
        n_events: number of showers, ≥ 1.
        particle: ``"eplus"``, ``"gamma"`` or ``"piplus"``.
        seed: non-negative integer; the same seed and arguments give the same showers.
        energy_range_gev: incident energies are drawn uniform in this range (GeV).
        energies_gev: if given, shape (N,) or (N, 1) with N = n_events, fixes the incident
            energies (GeV) instead.
        progress: show a rich progress bar.

    Returns:
        ``{"energy": (N, 1) GeV, "layer_0": (N, 3, 96) MeV, "layer_1": (N, 12, 12) MeV,
        "layer_2": (N, 12, 6) MeV, "overflow": (N, 3) MeV}``, float32.
    """
    n_events = _check_integer(n_events, "n_events", 1)
    seed = _check_integer(seed, "seed", 0)
    _check_particle(particle, "particle")
    energies = _check_energies(n_events, energy_range_gev, energies_gev)
    with _progress() if progress else contextlib.nullcontext() as bar:
        advance = _bar_advance(bar, f"CaloGAN {particle}", n_events)
        return _simulate(n_events, particle, seed, energy_range_gev, energies, advance)


def particle_seed(seed: int, particle: str) -> int:
    """The seed make_calogan uses for one particle: a SeedSequence hash of (seed, species index),
    so species never share a stream and the mapping does not depend on the order requested."""
    state = np.random.SeedSequence([int(seed), PARTICLES.index(particle)]).generate_state(1, np.uint32)
    return int(state[0])


def make_calogan(
    out_dir: str | Path,
    events: int = 10_000,
    seed: int = 0,
    particles: Sequence[str] = ("eplus",),
    progress: bool = True,
) -> list[Path]:
    """Write ``<out_dir>/<particle>.hdf5`` made showers for each particle, in the CaloGAN format.

    Each file has the attributes ``{"hepgen_made": "calogan", "particle", "events",
    "seed"}``, where ``seed`` is the per-particle seed actually used (:func:`particle_seed`),
    so ``simulate_showers(events, particle, seed)`` reproduces the file.

    Raises:
        ValueError: unknown or repeated particle, events < 1 or a negative seed.
        FileExistsError: a target file exists (checked before any simulation; never overwritten).
    """
    events = _check_integer(events, "events", 1)
    seed = _check_integer(seed, "seed", 0)
    particles = [particles] if isinstance(particles, str) else list(particles)
    for particle in particles:
        _check_particle(particle, "particles")
    if not particles or len(set(particles)) != len(particles):
        raise ValueError(f"particles: need distinct species, got {particles}.")
    paths = [Path(out_dir) / f"{particle}.hdf5" for particle in particles]
    for path in paths:  # fail before simulating; write_calogan checks again when writing
        if path.exists():
            raise FileExistsError(f"{path} exists; hepgen never overwrites a data file. Remove it or choose another path.")
    with _progress() if progress else contextlib.nullcontext() as bar:
        advances = [_bar_advance(bar, f"CaloGAN {p}", events) for p in particles]
        for particle, path, advance in zip(particles, paths, advances):
            used = particle_seed(seed, particle)
            showers = _simulate(events, particle, used, ENERGY_RANGE_GEV, None, advance)
            attrs = {"hepgen_made": "calogan", "particle": particle, "events": events, "seed": used}
            write_calogan(path, showers, attrs)
    return paths
