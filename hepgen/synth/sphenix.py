"""Made sPHENIX calorimeter events: PYTHIA-like jets, HIJING-like central Au+Au background, both embedded.

The layout and the scale are those of the UVCGAN-S data (Zenodo 17783990,
``2025-06-05_jet_bkg_sub``): 24 η × 64 φ towers over |η| < 1.1 and 2π
(:mod:`hepgen.physics.sphenix_geometry`), E_T in GeV per tower, float16, LZF, one chunk per event.
What is made, and the real samples' numbers it is tuned to (made values at the defaults in
brackets: the val/test files of ``make_sphenix(events=20_000)``, cones about the leading truth
axis found as the evaluation finds it):

* **signal** (PYTHIA ``jet30``, p+p at √s = 200 GeV): a back-to-back dijet, sometimes a third jet,
  and a soft underlying event. The hard scale p̂_T follows p̂_T^−n·(1 − x_T)^m above 30 GeV;
  each jet fragments into constituents (Dirichlet momentum fractions z, angles θ ≈ k_T/(zE), so
  hard fragments are collinear and soft ones wide), charged ones bend in the 1.4 T field, and
  each showers over a 5 × 5 tower window (:data:`SHOWER_PROFILE`). Real validation sample: truth
  energy in an R = 0.4 cone around the leading jet median 32 GeV, 5-95 % 23-44 [32.2, 24-45];
  event total median 75 GeV [72]; a jet covers about 50 towers [50 non-zero towers per leading
  jet; 93 % of a jet's energy lies within R = 0.4 of its axis, 83 % within 0.2].
* **background** (HIJING, 0-10 % central Au+Au at √s_NN = 200 GeV): a doubly stochastic Poisson
  field of particles. Centrality sets N_part and N_coll (Glauber), hence
  dE_T/dη = A·[(1 − x)·N_part/2 + x·N_coll]; half of it comes as minijet clusters; the whole
  density is modulated by elliptic and triangular flow about random event planes
  (1 + 2v₂cos2(φ − Ψ₂) + 2v₃cos3(φ − Ψ₃)) and mildly in η, and each particle showers like the
  jets' ones. Real: the leading jet's R = 0.4 cone holds 40 ± 10 GeV of background [40.1 ± 10.1].
* **embed** = signal + background, tower by tower (the real files are made so).
* **quenched** jets (JEWEL-like, the out-of-distribution test split): the same jets losing a
  path-length-dependent share of their energy (median 42 %, a quarter under 19 %, a tenth at the
  80 % cap), their fragments broadened; a tenth of the loss reappears as soft particles at wide
  angles, the rest goes to the medium and is not in the image (JEWEL without recoils). Real:
  median total energy 47 GeV against 75 for PYTHIA, ratio 0.63 [46.6 / 72.3 = 0.645].

Exact truth. Every tower of every part is rounded to an ADC-like step (:func:`adc_quantise`) so
that the parts *and their sum* are exact in float16: for every tower of a made ``embed`` file,
``float32(embed) == float32(signal) + float32(background)`` bit for bit.

Files (:func:`make_sphenix`): ``train/{background,signal,embed}.h5``, ``val/embed.h5`` (PYTHIA-like
jets in background) and ``test/embed.h5`` (quenched jets in background), each with dataset
``data`` (N, 24, 64). The made ``val`` and ``test`` files also hold the truth as datasets
``signal`` and ``background`` (same shape, dtype, compression and chunks); **the real files hold only
``data``** (their truth is matched through index CSVs, and for JEWEL lives in another record). The
train mixtures are made from their own signal and background draws, independent of the events in
``train/signal.h5`` and ``train/background.h5``: a model never sees a mixture's parts.

Reproducibility: each sample (``SAMPLE_STREAMS``) is made in chunks of :data:`CHUNK_EVENTS` events,
chunk i of stream s with ``SeedSequence([seed, s], spawn_key=(i,))``, so a file depends on
(seed, its size) only. Within a chunk the jets and their quenching use separate spawned streams:
the quenched test jets are the very jets an unquenched draw of the same stream gives.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
from scipy.special import ndtr

from hepgen import __version__
from hepgen.physics import sphenix_geometry as geo
from hepgen.synth import calogan

#: Events per chunk: each chunk has its own random stream (results do not depend on how chunks run).
CHUNK_EVENTS = 1000

#: The random stream of each made sample.
SAMPLE_STREAMS = {
    "train/background": 0,
    "train/signal": 1,
    "train/embed/signal": 2,
    "train/embed/background": 3,
    "val/embed/signal": 4,
    "val/embed/background": 5,
    "test/embed/signal": 6,
    "test/embed/background": 7,
}

# ================================================================== ADC-like quantisation
#: The tower energy step, GeV. float16 has 11 significant bits, so in [32, 64) GeV its spacing is
#: 2^-5 GeV and every multiple of 2^-5 below 64 GeV is exact in float16. Rounding both parts of an
#: embedded tower to multiples of 2^-5 makes their sum a multiple of 2^-5 too: exact when below
#: 64 GeV. Towers whose sum reaches 64 GeV (a hard fragment in one tower: rare at these energies) use a step
#: 2^j times coarser, the float16 spacing of the binade [64·2^(j-1), 64·2^j) holding the sum. 31 MeV is
#: also a plausible least count of a calorimeter ADC, and well below the towers that matter.
ADC_STEP_GEV = 2.0**-5


def adc_quantise(*parts: np.ndarray) -> tuple[np.ndarray, ...]:
    """Round each part (same shape, GeV ≥ 0) to a common per-tower step so that every part and
    the sum of all parts are exact float16 values.

    The step is 2^-5 GeV where the sum stays below 64 GeV, else 2^(j-5) with the smallest j such
    that (sum + rounding) < 64·2^j: a multiple of 2^(j-5) below 64·2^j has at most 11
    significant bits. Each part moves by at most half a step.

    Returns:
        the rounded parts, float64, in the order given.
    """
    parts = tuple(np.asarray(p, dtype=np.float64) for p in parts)
    total = parts[0] if len(parts) == 1 else sum(parts)
    slack = 0.5 * len(parts)  # the rounded sum exceeds the exact one by at most this many steps
    rounded = tuple(np.round(p * (1.0 / ADC_STEP_GEV)) * ADC_STEP_GEV for p in parts)
    big = total + slack * ADC_STEP_GEV >= 64.0
    if big.any():  # the rare towers whose sum reaches 64 GeV: the float16 spacing of their binade
        t = total[big]
        j = np.zeros(t.shape)
        while (grow := t + slack * ADC_STEP_GEV * 2.0**j >= 64.0 * 2.0**j).any():
            j += grow
        step = ADC_STEP_GEV * 2.0**j
        for r, p in zip(rounded, parts):
            r[big] = np.round(p[big] / step) * step
    return rounded


def _exact_sum_float16(parts: tuple[np.ndarray, ...]) -> tuple[np.ndarray, ...]:
    """The parts and their sum as float16, checked: float32(sum) == Σ float32(part) bit for bit."""
    halves = tuple(p.astype(np.float16) for p in parts)
    total = sum(parts).astype(np.float16)
    # what the files promise; guaranteed by adc_quantise, checked because exactness is the point
    if not np.array_equal(total.astype(np.float32), sum(h.astype(np.float32) for h in halves)):
        raise RuntimeError("adc_quantise: an embedded tower is not the exact float16 sum of its parts (a bug).")
    return (total, *halves)


# ================================================================== depositing particles in towers
#: Half-width of the window a particle's shower is spread over (5 × 5 towers).
SHOWER_HALF_WINDOW = 2
#: Lateral shower profile of a particle in η and φ: ((share, Gaussian σ), ...). A narrow core (EM
#: showers and the hadronic core, ≈ 0.4 tower) and a halo (the wide hadronic tail: ≈ 1 λ_int ≈
#: 20 cm of steel at r ≈ 2.2 m is ≈ 0.09 in η-φ). Jets and background go through the same towers.
SHOWER_PROFILE: tuple[tuple[float, float], ...] = ((0.85, 0.035), (0.15, 0.09))


def _window_weights(centre: np.ndarray, axis: _Axis, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """Share of a 1-D Gaussian (mean ``centre`` (M,), width ``sigma``) in each tower of a window.

    Returns (M, 2h+1) tower indices (unwrapped) and weights that sum to 1 along the window.
    """
    h = SHOWER_HALF_WINDOW
    first = np.floor(axis(centre)).astype(np.int64) - h
    edges = axis.inverse(first[:, None] + np.arange(2 * h + 2))  # the 2h+2 tower edges of the window
    cdf = ndtr((edges - centre[:, None]) / sigma)
    w = np.diff(cdf, axis=1)
    # renormalised: the window reaches ≥ 2 towers (≥ 2σ of the widest shower component) beyond
    # the particle, and the few per mille beyond it are put back in; so every particle's energy is
    # exactly in the towers or in the lost tally
    return first[:, None] + np.arange(2 * h + 1), w / w.sum(axis=1, keepdims=True)


class _Axis:
    """Map between a coordinate and fractional tower index: index = (x − x0)/width."""

    def __init__(self, x0: float, width: float) -> None:
        self.x0, self.width = x0, width

    def __call__(self, x):
        return (x - self.x0) / self.width

    def inverse(self, index):
        return self.x0 + index * self.width


_ETA_AXIS = _Axis(-geo.ETA_MAX, geo.DETA)
_PHI_AXIS = _Axis(0.0, geo.DPHI)


def _check_shower(shower: tuple[tuple[float, float], ...]) -> None:
    """A shower profile conserves energy only if its shares add up to 1."""
    shares = [float(f) for f, _ in shower]
    if not shower or abs(sum(shares) - 1.0) > 1e-9 or min(shares) < 0 or min(float(s) for _, s in shower) <= 0:
        raise ValueError(f"shower: need ((share, sigma), ...) with shares >= 0 adding up to 1 and sigma > 0, got {shower}.")


def deposit_particles(
    n_events: int,
    event: np.ndarray,
    eta: np.ndarray,
    phi: np.ndarray,
    et: np.ndarray,
    shower: tuple[tuple[float, float], ...],
) -> tuple[np.ndarray, np.ndarray]:
    """Spread point particles over the towers as showers with a Gaussian-mixture lateral profile.

    Each particle (event index, η, φ radians, E_T GeV) is spread over the 5 × 5 towers around it
    in proportion to each tower's share of Σ_k f_k·G(σ_k) (``shower`` = ((f_k, σ_k), ...), Σ f_k =
    1, σ in η-φ units); φ wraps around, and what falls in rows outside |η| < 1.1 is lost. Energy is
    conserved exactly: towers + lost = Σ E_T per event.

    Returns:
        towers (n_events, 24, 64) float64 GeV, and lost (n_events,) GeV outside the acceptance.
    """
    _check_shower(shower)
    eta, phi, et = (np.asarray(a, dtype=np.float64) for a in (eta, phi, et))
    phi = geo.wrap_phi(phi)
    weights, lost_share = 0.0, 0.0
    for share, sigma in shower:
        rows, w_eta = _window_weights(eta, _ETA_AXIS, sigma)
        cols, w_phi = _window_weights(phi, _PHI_AXIS, sigma)
        inside = (rows >= 0) & (rows < geo.N_ETA)
        # Σ_φ w_φ = 1, so the share outside depends on the η weights only
        lost_share = lost_share + share * np.where(inside, 0.0, w_eta).sum(axis=1)
        weights = weights + share * np.where(inside, w_eta, 0.0)[:, :, None] * w_phi[:, None, :]
    lost = np.bincount(event, et * lost_share, minlength=n_events)
    # rows and cols are the same for every component: the windows start at the particle's tower
    flat = (event[:, None, None] * geo.N_TOWERS + np.clip(rows, 0, geo.N_ETA - 1)[:, :, None] * geo.N_PHI
            + (cols % geo.N_PHI)[:, None, :])
    towers = np.bincount(flat.ravel(), (et[:, None, None] * weights).ravel(), minlength=n_events * geo.N_TOWERS)
    return towers.reshape(n_events, geo.N_ETA, geo.N_PHI), lost


# ================================================================== jets (PYTHIA-like)
#: Up to this many jets per event (dijet + an occasional third).
MAX_JETS = 3


@dataclass(frozen=True)
class PythiaJets:
    """PYTHIA ``jet30``-like p+p events at √s = 200 GeV, as sPHENIX towers see them.

    Energies are tower-level E_T (GeV), i.e. after the calorimeter response; angles in η-φ units
    (φ in radians).
    """

    #: √s, GeV: the kinematic limit x_T = 2p̂_T/√s → 1 steepens the spectrum.
    sqrt_s_gev: float = 200.0
    #: p̂_T threshold of the sample, GeV ("jet30").
    pt_hat_min_gev: float = 30.0
    #: dσ/dp̂_T ∝ p̂_T^-n (1 − x_T)^m: the parton-level power n and the kinematic-limit power m
    #: (local slope n + m·x_T/(1 − x_T) ≈ 7 at 30 GeV, ≈ 9 at 45 GeV, as RHIC jet spectra).
    power_n: float = 5.5
    kinematic_m: float = 4.0
    #: Visible tower E_T / p̂_T of the leading jet: calorimeter response, neutrinos, and what the
    #: parton shower radiates away; with a Gaussian spread per jet.
    response: float = 0.97
    response_sigma: float = 0.12
    #: Jet axes are drawn uniformly in |η| < this (a jet fully in the acceptance).
    eta_axis_max: float = 0.8
    #: The subleading jet: x_J = E_2/E_1 ~ Beta(a, b) (mean ≈ 0.82, as p+p dijets at RHIC), Δφ = π ±
    #: acoplanarity (k_T of the initial state), η_2 ~ N(η_1, dijet_deta_sigma) cut to |η| < eta_axis_max.
    xj_beta: tuple[float, float] = (6.0, 1.3)
    acoplanarity_sigma: float = 0.15
    dijet_deta_sigma: float = 0.5
    #: A third jet (hard wide-angle emission) in this share of events, E_3 = E_2·U(a, b).
    third_jet_probability: float = 0.3
    third_jet_fraction: tuple[float, float] = (0.2, 0.6)
    #: Constituents per jet: 1 + Poisson(a + b·ln(E/GeV)) (multiplicity grows like ln E).
    multiplicity: tuple[float, float] = (2.0, 4.0)
    #: Momentum fractions z ~ Dirichlet(k,…,k): k < 1 gives the hard leading fragment of a
    #: fragmentation function (median leading z ≈ 0.25 at 33 GeV).
    dirichlet_k: float = 0.6
    #: Transverse momentum of a fragment relative to the axis, Gamma(2) with this mean, GeV;
    #: its angle is k_T/(zE), saturating at max_angle (no fragment is wider than a hemisphere).
    kt_mean_gev: float = 0.17
    max_angle: float = 1.2
    #: Charged share of the fragments, and their bending 0.3·B·r/2 (GeV): B = 1.4 T, r ≈ 1.2 m
    #: (between the EMCal and the HCal): a charged track of E_T p lands arcsin(0.25/p) away in φ.
    charged_fraction: float = 0.65
    field_bend_gev: float = 0.25
    #: Lateral shower profile of each particle (:data:`SHOWER_PROFILE`).
    shower: tuple[tuple[float, float], ...] = SHOWER_PROFILE
    #: Underlying event of p+p jet events: E_T density per unit η-φ area (GeV) and mean E_T per
    #: particle (exponential), over |η| < 1.3 (what reaches the acceptance).
    ue_density_gev: float = 0.8
    ue_particle_et_gev: float = 0.4


@dataclass(frozen=True)
class JewelQuenching:
    """JEWEL-like energy loss of jets crossing a central Au+Au fireball (without medium recoils).

    A jet starts at a point uniform in the overlap disc of radius R and leaves it after a path L
    along its φ (back-to-back jets have correlated paths, L_1 + L_2 ≈ the chord). It keeps
    1 − ε of its energy, ε = κ·L·(E/35 GeV)^(−β)·G (G ~ Gamma(4)/4: fluctuations of the number of
    medium-induced emissions), capped at ``max_loss``. Its fragments broaden by a medium k_T,
    k_T² = q̂·L, in a random direction; a share of the lost energy reappears as soft particles at
    wide angles (r ~ U(wide_angles)), the rest thermalises in the medium and is not in the image.
    """

    #: Radius of the overlap disc of a central Au+Au collision, fm (1.12·A^(1/3) ≈ 6.5 fm).
    radius_fm: float = 6.5
    #: Fractional loss per fm at E = 35 GeV, and its energy dependence: median ε ≈ 0.42.
    loss_per_fm: float = 0.09
    loss_energy_power: float = 0.3
    loss_fluctuation_k: float = 4.0
    max_loss: float = 0.8
    #: Transport coefficient of the broadening, GeV²/fm (a modest JEWEL-like broadening).
    qhat_gev2_per_fm: float = 0.02
    #: Share of the lost energy seen as wide-angle soft particles, their mean E_T and angles.
    kept_share: float = 0.1
    wide_particle_et_gev: float = 0.7
    wide_angles: tuple[float, float] = (0.3, 0.9)


class JetParticles(NamedTuple):
    """Generated particles where they hit the calorimeter: flat arrays (M,).

    ``jet`` is the jet index within the event (0 = leading), −1 for the underlying event.
    """

    event: np.ndarray
    jet: np.ndarray
    eta: np.ndarray
    phi: np.ndarray
    et: np.ndarray


class JetEvents(NamedTuple):
    """Made jet events (signal), before quantisation.

    towers (N, 24, 64) GeV; lost_gev (N,) deposited outside |η| < 1.1; n_jets (N,); jet_eta,
    jet_phi, jet_et (N, 3): axes (φ radians) and visible E_T (GeV, what the jet's particles carry,
    after quenching) of each jet, NaN / 0 where an event has fewer jets; jet_loss (N, 3) the
    quenched share ε (0 unquenched); path_fm (N, 3) path length in the medium (NaN unquenched);
    particles: every particle (:class:`JetParticles`).
    """

    towers: np.ndarray
    lost_gev: np.ndarray
    n_jets: np.ndarray
    jet_eta: np.ndarray
    jet_phi: np.ndarray
    jet_et: np.ndarray
    jet_loss: np.ndarray
    path_fm: np.ndarray
    particles: JetParticles


def _pt_hat_table(model: PythiaJets) -> tuple[np.ndarray, np.ndarray]:
    """Inverse-CDF table of p̂_T ∝ p̂_T^-n (1 − x_T)^m on [p̂_min, √s/2): (CDF, p̂_T)."""
    pt = np.linspace(model.pt_hat_min_gev, 0.5 * model.sqrt_s_gev, 4001)[:-1]
    density = pt**-model.power_n * (1.0 - 2.0 * pt / model.sqrt_s_gev) ** model.kinematic_m
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (density[1:] + density[:-1]) * np.diff(pt))])
    return cdf / cdf[-1], pt


def _truncated_normal(rng: np.random.Generator, mean: np.ndarray, sigma: float, bound: float) -> np.ndarray:
    """N(mean, sigma) truncated to [−bound, bound] by inverting the CDF (one draw per mean)."""
    from scipy.special import ndtri

    lo, hi = ndtr((-bound - mean) / sigma), ndtr((bound - mean) / sigma)
    u = lo + (hi - lo) * rng.random(mean.shape)
    return np.clip(mean + sigma * ndtri(u), -bound, bound)


def _jet_kinematics(rng: np.random.Generator, n: int, model: PythiaJets):
    """Axes (N, 3) η, φ and visible E_T (N, 3) GeV (0 for an absent third jet)."""
    cdf, pt = _pt_hat_table(model)
    pt_hat = np.interp(rng.random(n), cdf, pt)
    response = np.clip(model.response + model.response_sigma * rng.standard_normal((n, 2)), 0.3, None)
    e1 = pt_hat * response[:, 0]
    e2 = e1 * rng.beta(*model.xj_beta, n) * response[:, 1] / model.response
    has3 = rng.random(n) < model.third_jet_probability
    e3 = np.where(has3, e2 * rng.uniform(*model.third_jet_fraction, n), 0.0)
    eta1 = rng.uniform(-model.eta_axis_max, model.eta_axis_max, n)
    eta2 = _truncated_normal(rng, eta1, model.dijet_deta_sigma, model.eta_axis_max)
    eta3 = rng.uniform(-model.eta_axis_max, model.eta_axis_max, n)
    phi1 = rng.uniform(0.0, 2 * np.pi, n)
    phi2 = phi1 + np.pi + model.acoplanarity_sigma * rng.standard_normal(n)
    # a hard emission away from both jets: at least 1 rad from the leading one
    phi3 = phi1 + rng.uniform(1.0, 2 * np.pi - 1.0, n)
    energies = np.stack([e1, e2, e3], axis=1)
    # order by visible E_T: jet 0 is the leading jet at tower level
    order = np.argsort(-energies, axis=1, kind="stable")
    take = lambda a: np.take_along_axis(a, order, axis=1)  # noqa: E731
    return (take(np.stack([eta1, eta2, eta3], axis=1)), geo.wrap_phi(take(np.stack([phi1, phi2, phi3], axis=1))),
            take(energies))


def _fragment(rng: np.random.Generator, jet_e: np.ndarray, model: PythiaJets):
    """Constituents of the jets (flat, J jets): jet id (M,), E_T (M,) summing to each jet's E_T, and
    (Δη, Δφ) offsets from the axis."""
    a, b = model.multiplicity
    count = 1 + rng.poisson(a + b * np.log(np.maximum(jet_e, 1.0)))
    jet_id = np.repeat(np.arange(len(jet_e)), count)
    g = rng.gamma(model.dirichlet_k, 1.0, len(jet_id))
    z = g / np.bincount(jet_id, g, minlength=len(jet_e))[jet_id]
    et = z * jet_e[jet_id]
    kt = rng.gamma(2.0, model.kt_mean_gev / 2.0, len(jet_id))
    # θ ≈ k_T/p: hard fragments are collinear, soft ones wide (the core + tail of a jet's profile);
    # tanh saturates the soft tail at max_angle
    r = model.max_angle * np.tanh(kt / np.maximum(et, 1e-6) / model.max_angle)
    angle = rng.uniform(0.0, 2 * np.pi, len(jet_id))
    return jet_id, et, r * np.cos(angle), r * np.sin(angle)


def _charges(rng: np.random.Generator, n: int, model: PythiaJets) -> np.ndarray:
    """(n,) charge of each particle: ±1 for the charged share, 0 for photons and neutral hadrons."""
    return np.where(rng.random(n) < model.charged_fraction, rng.choice([-1.0, 1.0], n), 0.0)


def _bend(charge: np.ndarray, et: np.ndarray, model: PythiaJets) -> np.ndarray:
    """φ shift (radians) of each particle at the calorimeter: q·arcsin(0.3·B·r/(2p)), p = its E_T."""
    return charge * np.arcsin(np.minimum(1.0, model.field_bend_gev / np.maximum(et, 1e-6)))


def _path_lengths(rng: np.random.Generator, n: int, jet_phi: np.ndarray, radius_fm: float) -> np.ndarray:
    """(N, 3) distance (fm) from a production point uniform in a disc of radius R to its edge along
    each jet's φ (all jets of an event start at the same point)."""
    r0 = radius_fm * np.sqrt(rng.random(n))
    a0 = rng.uniform(0.0, 2 * np.pi, n)
    x, y = (r0 * np.cos(a0))[:, None], (r0 * np.sin(a0))[:, None]
    ux, uy = np.cos(jet_phi), np.sin(jet_phi)
    along = x * ux + y * uy
    return -along + np.sqrt(np.maximum(radius_fm**2 - (x * x + y * y) + along**2, 0.0))


def _simulate_jet_chunk(
    seed: int, stream: int, index: int, n: int, model: PythiaJets, quench: JewelQuenching | None
) -> JetEvents:
    ss = np.random.SeedSequence([int(seed), int(stream)], spawn_key=(int(index),))
    rng, rng_q = (np.random.default_rng(s) for s in ss.spawn(2))
    jet_eta, jet_phi, jet_e = _jet_kinematics(rng, n, model)
    present = jet_e > 0
    flat_e = jet_e[present]
    jet_event = np.nonzero(present)[0]
    jet_slot = np.nonzero(present)[1]
    cid, et, d_eta, d_phi = _fragment(rng, flat_e, model)
    # the p+p underlying event, over the acceptance and 0.2 beyond (its showers reach in)
    ue_eta_max = geo.ETA_MAX + 0.2
    n_ue = rng.poisson(model.ue_density_gev * 2 * ue_eta_max * 2 * np.pi / model.ue_particle_et_gev, n)
    ue_event = np.repeat(np.arange(n), n_ue)
    ue_et = rng.exponential(model.ue_particle_et_gev, len(ue_event))
    ue_eta = rng.uniform(-ue_eta_max, ue_eta_max, len(ue_event))
    ue_phi = rng.uniform(0.0, 2 * np.pi, len(ue_event))
    charge, ue_charge = _charges(rng, len(et), model), _charges(rng, len(ue_et), model)

    loss = np.zeros((n, MAX_JETS))
    path = np.full((n, MAX_JETS), np.nan)
    extra = []
    if quench is not None:
        path = _path_lengths(rng_q, n, jet_phi, quench.radius_fm)
        fluct = rng_q.gamma(quench.loss_fluctuation_k, 1.0 / quench.loss_fluctuation_k, (n, MAX_JETS))
        eps = quench.loss_per_fm * path * (np.maximum(jet_e, 1.0) / 35.0) ** -quench.loss_energy_power * fluct
        loss = np.where(present, np.minimum(eps, quench.max_loss), 0.0)
        keep = 1.0 - loss[present][cid]
        et_kept = et * keep
        # broadening: a medium k_T² = q̂L kicks each fragment; soft fragments move most
        kt_med = np.sqrt(quench.qhat_gev2_per_fm * path[present][cid]) * np.sqrt(rng_q.exponential(1.0, len(cid)))
        kick = kt_med / np.maximum(et_kept, 1e-6)
        kick = model.max_angle * np.tanh(kick / model.max_angle)
        angle = rng_q.uniform(0.0, 2 * np.pi, len(cid))
        d_eta, d_phi = d_eta + kick * np.cos(angle), d_phi + kick * np.sin(angle)
        # the lost energy partly reappears at wide angles as soft particles; the rest is gone
        wide_e = quench.kept_share * loss[present] * flat_e
        n_wide = rng_q.poisson(wide_e / quench.wide_particle_et_gev)
        wid = np.repeat(np.arange(len(flat_e)), n_wide)
        g = rng_q.exponential(1.0, len(wid))
        norm = np.bincount(wid, g, minlength=len(flat_e))
        w_et = np.where(n_wide[wid] > 0, g / np.maximum(norm[wid], 1e-300), 0.0) * wide_e[wid]
        w_r = rng_q.uniform(*quench.wide_angles, len(wid))
        w_a = rng_q.uniform(0.0, 2 * np.pi, len(wid))
        extra = [(wid, w_et, w_r * np.cos(w_a), w_r * np.sin(w_a), _bend(_charges(rng_q, len(wid), model), w_et, model))]
        et = et_kept  # softer fragments: they bend more below
    parts = [(cid, et, d_eta, d_phi, _bend(charge, et, model)), *extra]
    p_jet = np.concatenate([c for c, *_ in parts])
    p_et = np.concatenate([e for _, e, *_ in parts])
    p_eta = np.concatenate([jet_eta[present][c] + de for c, _, de, _, _ in parts])
    p_phi = np.concatenate([jet_phi[present][c] + dp + bend for c, _, _, dp, bend in parts])
    particles = JetParticles(
        event=np.concatenate([jet_event[p_jet], ue_event]),
        jet=np.concatenate([jet_slot[p_jet], np.full(len(ue_event), -1)]),
        eta=np.concatenate([p_eta, ue_eta]),
        phi=geo.wrap_phi(np.concatenate([p_phi, ue_phi + _bend(ue_charge, ue_et, model)])),
        et=np.concatenate([p_et, ue_et]),
    )
    towers, lost = deposit_particles(n, particles.event, particles.eta, particles.phi, particles.et, model.shower)
    jet_et = np.zeros((n, MAX_JETS))
    in_jet = particles.jet >= 0
    np.add.at(jet_et, (particles.event[in_jet], particles.jet[in_jet]), particles.et[in_jet])
    return JetEvents(
        towers=towers,
        lost_gev=lost,
        n_jets=present.sum(axis=1),
        jet_eta=np.where(present, jet_eta, np.nan),
        jet_phi=np.where(present, jet_phi, np.nan),
        jet_et=jet_et,
        jet_loss=loss,
        path_fm=np.where(present, path, np.nan),
        particles=particles,
    )


# ================================================================== heavy-ion background (HIJING-like)
#: Au+Au at √s_NN = 200 GeV, optical/MC Glauber (PHENIX centrality classes): centrality (%) at the
#: class centres, ⟨N_part⟩ and ⟨N_coll⟩; interpolated linearly.
CENTRALITY_NODES = np.array([0.0, 2.5, 7.5, 12.5, 17.5, 25.0, 35.0, 45.0, 55.0, 65.0, 75.0, 86.0, 100.0])
N_PART_NODES = np.array([382.0, 351.0, 302.0, 256.0, 216.0, 167.0, 114.0, 74.0, 46.0, 26.0, 13.0, 6.0, 2.0])
N_COLL_NODES = np.array([1200.0, 1067.0, 858.0, 686.0, 540.0, 373.0, 220.0, 120.0, 61.0, 29.0, 12.0, 5.0, 1.0])
#: p_T-integrated v₂ and v₃ of charged hadrons at RHIC (STAR/PHENIX event-plane and two-particle
#: values) at the same centralities: v₂ rises from ~2.5 % in the most central events to ~7 % at
#: 40-60 %, while v₃ (from fluctuations of the initial geometry) stays at ~2 %.
V2_NODES = np.array([0.020, 0.025, 0.035, 0.042, 0.050, 0.061, 0.069, 0.073, 0.074, 0.071, 0.065, 0.055, 0.050])
V3_NODES = np.array([0.016, 0.017, 0.018, 0.019, 0.019, 0.019, 0.018, 0.017, 0.015, 0.013, 0.010, 0.008, 0.008])


@dataclass(frozen=True)
class HijingBackground:
    """HIJING-like Au+Au background at √s_NN = 200 GeV in the sPHENIX towers (E_T in GeV).

    dE_T/dη = A·[(1 − x)·N_part/2 + x·N_coll] (two-component model, x = 0.13 as PHOBOS): with
    A = 1.97 GeV, 0-10 % gives ≈ 530 GeV per unit η, i.e. ≈ 84 GeV per unit η-φ area, 0.76 GeV
    per tower and 40 GeV in the evaluation's R = 0.4 cone (the 53 towers about a tower centre);
    PHENIX measured A ≈ 2.06 GeV (599 GeV at 0-5 %), so the towers see ~95 % of it. An eighth of
    it comes as minijet clusters (HIJING's semi-hard scatterings). The ±10 GeV cone-to-cone
    fluctuations are tuned to the real files in two parts: about 5 GeV local (minijets,
    particle-level Poisson noise, flow; what remains after subtracting the true per-row mean,
    5.09 GeV in the reference's oracle) and the rest event-wide (centrality spread and the
    multiplicity fluctuation), which a per-row ρ follows.
    """

    #: Centrality range (percent), drawn uniformly per event.
    centrality: tuple[float, float] = (0.0, 10.0)
    #: A, GeV per unit η per two-component unit, and the hard share x.
    et_scale_gev: float = 1.97
    hard_share_x: float = 0.13
    #: JetParticles: mean E_T (GeV) and Gamma shape k of a particle's tower-level E_T (a thermal
    #: spectrum, k = 2, widened by the calorimeter's response fluctuations).
    particle_et_gev: float = 0.25
    particle_shape_k: float = 1.0
    #: Share of the E_T in minijet clusters, their E_T spectrum ∝ E^-p on [min, max] GeV and their
    #: angular size (Gaussian σ in η and φ, ≈ 1/p_T spread of a few-GeV minijet's hadrons).
    minijet_share: float = 0.12
    minijet_et_gev: tuple[float, float] = (2.0, 20.0)
    minijet_power: float = 4.0
    minijet_sigma: float = 0.15
    #: Relative spread of a per-event factor on the E_T density (Gamma distributed, mean 1): the
    #: multiplicity fluctuations of HIJING at a fixed centrality. They move a whole event up or
    #: down, so a per-row estimate of ρ follows them, while the minijets and the particle-level
    #: noise above make the local, cone-to-cone fluctuations that no ρ estimate can follow.
    multiplicity_fluctuation: float = 0.18
    #: ρ(η) ∝ 1 + a·η²: the shallow dip of dE_T/dη at η = 0 (η ≠ y for massive hadrons).
    eta_curvature: float = 0.05
    #: Event-by-event flow fluctuations: v_n is the length of (v̄_n, 0) + N(0, (f·v̄_n)²) in 2-D.
    flow_fluctuation: float = 0.4
    #: Lateral shower profile of each particle (:data:`SHOWER_PROFILE`), spread with the mean
    #: tower-level kernel of a particle uniform within its tower.
    shower: tuple[tuple[float, float], ...] = SHOWER_PROFILE

    def participants(self, centrality) -> tuple[np.ndarray, np.ndarray]:
        """(N_part, N_coll) at each centrality (percent)."""
        return (np.interp(centrality, CENTRALITY_NODES, N_PART_NODES),
                np.interp(centrality, CENTRALITY_NODES, N_COLL_NODES))

    def det_deta(self, centrality) -> np.ndarray:
        """dE_T/dη at η = 0 averaged over the acceptance's η shape, GeV."""
        n_part, n_coll = self.participants(centrality)
        return self.et_scale_gev * ((1.0 - self.hard_share_x) * n_part / 2.0 + self.hard_share_x * n_coll)

    def flow(self, centrality) -> tuple[np.ndarray, np.ndarray]:
        """(v̄₂, v̄₃) at each centrality (percent)."""
        return np.interp(centrality, CENTRALITY_NODES, V2_NODES), np.interp(centrality, CENTRALITY_NODES, V3_NODES)


class BackgroundEvents(NamedTuple):
    """Made background events, before quantisation: towers (N, 24, 64) float32 GeV; centrality (N,) %;
    v2, v3 (N,) and the event planes psi2, psi3 (N,) radians; n_minijets (N,)."""

    towers: np.ndarray
    centrality: np.ndarray
    v2: np.ndarray
    v3: np.ndarray
    psi2: np.ndarray
    psi3: np.ndarray
    n_minijets: np.ndarray


def _gaussian_taps(sigma: float, width: float) -> np.ndarray:
    """Share of a Gaussian (σ) centred on a tower falling in the towers at offsets −m..m, m = ⌈3σ/width⌉."""
    m = int(np.ceil(3 * sigma / width))
    d = np.arange(-m, m + 1) * width
    return ndtr((d + width / 2) / sigma) - ndtr((d - width / 2) / sigma)


def _tower_kernel(sigma: float, width: float) -> np.ndarray:
    """(2h+1,) mean share of a Gaussian shower (σ) falling in the towers at offsets −h..h from the
    tower holding the particle, for a particle uniform across that tower (width ``width``)."""
    h = SHOWER_HALF_WINDOW
    x = (np.arange(64) + 0.5) / 64 * width  # positions across the tower
    edges = (np.arange(-h, h + 2) * width)[None, :] - x[:, None]
    share = np.diff(ndtr(edges / sigma), axis=1).mean(axis=0)
    return share / share.sum()


def _spread_showers(towers: np.ndarray, shower: tuple[tuple[float, float], ...]) -> np.ndarray:
    """Spread the energy of each tower (N, R, 64) over its 5 × 5 neighbourhood with the mean shower
    kernel (φ wraps; η rows beyond the array are dropped: callers pad by SHOWER_HALF_WINDOW rows)."""
    from scipy.ndimage import correlate1d

    _check_shower(shower)
    out = np.zeros_like(towers)
    for share, sigma in shower:
        # the kernels are symmetric, so correlating is convolving
        along_phi = correlate1d(towers, _tower_kernel(sigma, geo.DPHI), axis=2, mode="wrap")
        out += share * correlate1d(along_phi, _tower_kernel(sigma, geo.DETA), axis=1, mode="constant")
    return out


def _simulate_background_chunk(seed: int, stream: int, index: int, n: int, model: HijingBackground) -> BackgroundEvents:
    from scipy.ndimage import correlate1d

    rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(stream)], spawn_key=(int(index),)))
    centrality = rng.uniform(*model.centrality, n)
    det_deta = model.det_deta(centrality)
    v2_bar, v3_bar = model.flow(centrality)
    flows = []
    for v_bar in (v2_bar, v3_bar):
        g = model.flow_fluctuation * v_bar[:, None] * rng.standard_normal((n, 2))
        flows.append(np.hypot(v_bar + g[:, 0], g[:, 1]))
    v2, v3 = flows
    psi2 = rng.uniform(0.0, np.pi, n)
    psi3 = rng.uniform(0.0, 2 * np.pi / 3, n)

    # particles are made on the acceptance's rows and SHOWER_HALF_WINDOW rows beyond each edge,
    # whose showers reach in; the extra rows are dropped at the end
    h = SHOWER_HALF_WINDOW
    rows_eta = geo.ETA_CENTRES[0] + geo.DETA * np.arange(-h, geo.N_ETA + h)
    # mean E_T per unit η-φ area, and its η shape normalised to mean 1 over the acceptance
    rho = det_deta / (2 * np.pi)
    if model.multiplicity_fluctuation > 0:
        shape = model.multiplicity_fluctuation**-2
        rho = rho * rng.standard_gamma(shape, n) / shape
    a = model.eta_curvature
    eta_shape = (1.0 + a * rows_eta**2) / (1.0 + a * geo.ETA_MAX**2 / 3.0)
    bulk = (1.0 - model.minijet_share) * rho[:, None] * geo.TOWER_AREA * eta_shape[None, :]  # (N, rows)

    # minijets: centres on a tower grid reaching 3σ beyond the rows made (their tails reach in),
    # smoothed into clusters of width σ (φ wraps), then cut to the rows made
    taps_eta = _gaussian_taps(model.minijet_sigma, geo.DETA)
    pad = len(taps_eta) // 2
    n_rows = len(rows_eta) + 2 * pad
    lo, hi = model.minijet_et_gev
    p = model.minijet_power
    mean_mj = (p - 1) / (p - 2) * (lo ** (2 - p) - hi ** (2 - p)) / (lo ** (1 - p) - hi ** (1 - p))
    area = n_rows * geo.DETA * 2 * np.pi
    n_mj = rng.poisson(model.minijet_share * rho * area / mean_mj)
    mj_event = np.repeat(np.arange(n), n_mj)
    u = rng.random(len(mj_event))
    mj_et = (lo ** (1 - p) - u * (lo ** (1 - p) - hi ** (1 - p))) ** (1.0 / (1 - p))  # truncated power law
    mj_row = rng.integers(0, n_rows, len(mj_event))
    mj_col = rng.integers(0, geo.N_PHI, len(mj_event))
    points = np.bincount((mj_event * n_rows + mj_row) * geo.N_PHI + mj_col, mj_et,
                         minlength=n * n_rows * geo.N_PHI).reshape(n, n_rows, geo.N_PHI).astype(np.float32)
    points = correlate1d(points, _gaussian_taps(model.minijet_sigma, geo.DPHI), axis=2, mode="wrap")
    minijets = correlate1d(points, taps_eta, axis=1, mode="constant")[:, pad:pad + len(rows_eta)]  # (N, rows, 64)

    # flow: the tower-averaged modulation (a tower of width Δφ sees v_n·sinc(nΔφ/2))
    phi = geo.PHI_CENTRES[None, :]
    sinc = lambda m: np.sin(m * geo.DPHI / 2) / (m * geo.DPHI / 2)  # noqa: E731
    modulation = (1.0 + 2 * v2[:, None] * sinc(2) * np.cos(2 * (phi - psi2[:, None]))
                  + 2 * v3[:, None] * sinc(3) * np.cos(3 * (phi - psi3[:, None])))  # (N, 64)
    mean_et = (bulk[:, :, None] + minijets) * modulation[:, None, :]
    # particles: a Poisson number per tower, each Gamma(k, ⟨E_T⟩/k): their sum is Gamma(N·k)
    counts = rng.poisson(mean_et / model.particle_et_gev)
    particles = np.zeros(counts.shape)
    hit = counts > 0  # about a quarter of the towers hold no particle
    k = model.particle_shape_k
    particles[hit] = rng.standard_gamma(counts[hit] * k) * (model.particle_et_gev / k)
    # float32 is ample here (the towers are rounded to 2^-5 GeV) and halves the smoothing's cost
    towers = _spread_showers(particles.astype(np.float32), model.shower)[:, h:h + geo.N_ETA]
    return BackgroundEvents(towers, centrality, v2, v3, psi2, psi3, n_mj)


# ================================================================== in memory
def _event_chunks(n_events: int) -> Iterator[tuple[int, int, int]]:
    """(chunk index, first event, size) of every chunk."""
    for index, start in enumerate(range(0, n_events, CHUNK_EVENTS)):
        yield index, start, min(CHUNK_EVENTS, n_events - start)


def _concat_jets(parts: list[JetEvents], starts: list[int]) -> JetEvents:
    particles = JetParticles(*(np.concatenate([getattr(p.particles, f) + (s if f == "event" else 0)
                                            for p, s in zip(parts, starts)]) for f in JetParticles._fields))
    fields = {f: np.concatenate([getattr(p, f) for p in parts]) for f in JetEvents._fields if f != "particles"}
    return JetEvents(**fields, particles=particles)


def simulate_jets(
    n_events: int, seed: int = 0, stream: int = 0, model: PythiaJets | None = None, quench: JewelQuenching | None = None
) -> JetEvents:
    """Made jet events (signal) in memory, with every particle; ``quench`` makes them JEWEL-like.

    (seed, stream, n_events) fix the events; with the same three, quenched and unquenched draws
    hold the same jets (the quenching has its own random stream). Towers are not quantised.
    """
    n_events, seed = calogan._check_integer(n_events, "n_events", 1), calogan._check_integer(seed, "seed", 0)
    model = model or PythiaJets()
    chunks = list(_event_chunks(n_events))
    parts = [_simulate_jet_chunk(seed, stream, i, size, model, quench) for i, _, size in chunks]
    return _concat_jets(parts, [start for _, start, _ in chunks])


def simulate_background(
    n_events: int, seed: int = 0, stream: int = 0, model: HijingBackground | None = None
) -> BackgroundEvents:
    """Made heavy-ion background events in memory; towers are not quantised."""
    n_events, seed = calogan._check_integer(n_events, "n_events", 1), calogan._check_integer(seed, "seed", 0)
    model = model or HijingBackground()
    parts = [_simulate_background_chunk(seed, stream, i, size, model) for i, _, size in _event_chunks(n_events)]
    return BackgroundEvents(*(np.concatenate(f) for f in zip(*parts)))


# ================================================================== files
def _sample_blocks(kind: str, n: int, seed: int, jets: PythiaJets, background: HijingBackground,
                   quench: JewelQuenching | None, advance) -> Iterator[dict[str, np.ndarray]]:
    """Quantised float16 blocks {dataset: (n, 24, 64)} of one file, chunk by chunk.

    kind: ``train/background``, ``train/signal``, or ``<split>/embed`` (``data``, plus ``signal`` and
    ``background`` truth outside train).
    """
    for index, _, size in _event_chunks(n):
        if kind in ("train/background", "train/signal"):
            if kind == "train/background":
                part = _simulate_background_chunk(seed, SAMPLE_STREAMS[kind], index, size, background).towers
            else:
                part = _simulate_jet_chunk(seed, SAMPLE_STREAMS[kind], index, size, jets, None).towers
            block = {"data": adc_quantise(part)[0].astype(np.float16)}
        else:
            s = _simulate_jet_chunk(seed, SAMPLE_STREAMS[f"{kind}/signal"], index, size, jets, quench).towers
            b = _simulate_background_chunk(seed, SAMPLE_STREAMS[f"{kind}/background"], index, size, background).towers
            embed, s, b = _exact_sum_float16(adc_quantise(s, b))
            block = {"data": embed} | ({"signal": s, "background": b} if kind != "train/embed" else {})
        advance(size)
        yield block


def make_sphenix(
    out: str | Path,
    events: int = 20_000,
    seed: int = 0,
    progress: bool = True,
    background_events: int | None = None,
    signal_events: int | None = None,
    val_events: int | None = None,
    test_events: int | None = None,
    centrality: tuple[float, float] | None = None,
    jets: PythiaJets | None = None,
    background: HijingBackground | None = None,
    quenching: JewelQuenching | None = None,
) -> list[Path]:
    """Write made sPHENIX data in the real layout into ``out``.

    Files (dataset ``data`` (N, 24, 64) float16 GeV, LZF, chunks (1, 24, 64)):

    * ``train/background.h5`` (``background_events``, default ``events``), ``train/signal.h5``
      (``signal_events``, default ``events``), ``train/embed.h5`` (``events`` mixtures of their own
      signal and background draws);
    * ``val/embed.h5`` (``val_events``, default events // 5): jets in background, with the truth
      as datasets ``signal`` and ``background``;
    * ``test/embed.h5`` (``test_events``, default events // 5): *quenched* jets in background
      (the out-of-distribution split), with the truth likewise;
    * ``sphenix_made.json``: the generator parameters, sizes and seed.

    Args:
        centrality: the background's centrality range, percent; overrides ``background.centrality``
            (default: the background model's, 0-10 % as the real ``cent0`` files).
        jets, background, quenching: the generators' parameters (defaults: :class:`PythiaJets`,
            :class:`HijingBackground`, :class:`JewelQuenching`).

    Returns:
        the written paths, in writing order (the JSON record last).

    Raises:
        ValueError: bad sizes, seed or centrality range.
        FileExistsError: a target file exists (checked before anything is made; never overwritten).
    """
    from hepgen.io.files import write_atomically
    from hepgen.io.sphenix import stream_sphenix

    events, seed = calogan._check_integer(events, "events", 1), calogan._check_integer(seed, "seed", 0)
    fifth = max(1, events // 5)
    size = lambda value, default, name: calogan._check_integer(default if value is None else value, name, 1)  # noqa: E731
    sizes = {
        "train/background": size(background_events, events, "background_events"),
        "train/signal": size(signal_events, events, "signal_events"),
        "train/embed": events,
        "val/embed": size(val_events, fifth, "val_events"),
        "test/embed": size(test_events, fifth, "test_events"),
    }
    background = background or HijingBackground()
    lo, hi = (float(c) for c in (background.centrality if centrality is None else centrality))
    if not 0.0 <= lo < hi <= 100.0:
        raise ValueError(f"centrality: need 0 <= low < high <= 100 (percent), got {(lo, hi)}.")
    background = HijingBackground(**{**asdict(background), "centrality": (lo, hi)})
    jets = jets or PythiaJets()
    quenching = quenching or JewelQuenching()
    out = Path(out)
    targets = {kind: out / f"{kind}.h5" for kind in sizes}
    record = out / "sphenix_made.json"
    for path in [*targets.values(), record]:
        if path.exists():
            raise FileExistsError(f"{path} exists; hepgen never overwrites a data file. Remove it or choose another folder.")

    written = []
    with calogan._progress() if progress else contextlib.nullcontext() as bar:
        for kind, path in targets.items():
            n = sizes[kind]
            keys = ["data"] + (["signal", "background"] if kind in ("val/embed", "test/embed") else [])
            quench = quenching if kind == "test/embed" else None
            blocks = _sample_blocks(kind, n, seed, jets, background, quench, calogan._bar_advance(bar, f"sPHENIX {kind}", n))
            written.append(stream_sphenix(path, n, keys, blocks))
    made = {
        "hepgen_made": "sphenix",
        "hepgen_version": __version__,
        "events": events,
        "seed": seed,
        "sizes": sizes,
        "streams": SAMPLE_STREAMS,
        "chunk_events": CHUNK_EVENTS,
        "adc_step_gev": ADC_STEP_GEV,
        "truth": {"val/embed.h5": ["signal", "background"], "test/embed.h5": ["signal", "background"]},
        "quenched": ["test/embed.h5"],
        "jets": asdict(jets),
        "background": asdict(background),
        "quenching": asdict(quenching),
    }
    text = (json.dumps(made, indent=2) + "\n").encode()
    written.append(write_atomically(record, lambda f: f.write(text)))
    return written
