"""Made γp → π+π−p events and a toy CLAS (g11) detector, in the A(i)DAPT file layout.

Units: GeV, GeV², rad. Lab frame: photon beam along +z, proton target at rest.

Beam
----
Bremsstrahlung photons, flux ∝ 1/E_γ on [3.0, 3.8] GeV (the g11 2π analysis window), drawn by
inverting the CDF: E_γ = E_lo (E_hi/E_lo)^u. Then s = Mp² + 2 Mp E_γ, W = √s.

Phase space (``ps``)
--------------------
Three-body phase space by Raubold–Lynch (GENBOD, ROOT's TGenPhaseSpace) at each event's W:

1. M23 = M(π+π−) uniform on [2 mπ, W − Mp], kept with probability ∝
   p*(W; Mp, M23) · p*(M23; mπ, mπ), the exact density of dΦ3 in M23. Per-event bound:
   the first factor falls and the second rises with M23, so the product of their maxima bounds it.
2. In the CM the proton goes along an isotropic direction with p*(W; Mp, M23), the π+π−
   system the opposite way; the pair decays isotropically in its rest frame.
3. Everything is boosted along z to the lab, β = E_γ/(E_γ + Mp).

The Dalitz plot is then flat at fixed W and the A(i)DAPT angle alpha uniform.

Realistic (``realistic``)
-------------------------
A mixture standing in for real physics in the closure test; each channel is made directly as a
quasi-two-body process γp → X Y (no accept-reject on the peaks):

=========== ======== =========================================== ==================
channel     fraction production                                  decay
=========== ======== =========================================== ==================
ρ⁰ p        0.60     dσ/dt ∝ e^{b t}, b = 6 GeV⁻², t = (q − p_ρ)²  ρ → π+π− isotropic
Δ⁺⁺ π−      0.25     b = 3 GeV⁻², t = (q − p_π−)²                Δ⁺⁺ → p π+ isotropic
non-res.    0.15     three-body phase space                      -
=========== ======== =========================================== ==================

Resonance masses are Breit–Wigner (ρ: 0.775, Γ 0.149; Δ: 1.232, Γ 0.117 GeV) truncated to the
kinematically allowed range, sampled as M = M0 + (Γ/2) tan(a), a uniform between the arctan
images of the limits. At fixed masses t = M_X² − 2k(E*_X − p*_f cos θ*) is linear in cos θ*,
so the truncated exponential in t is drawn as one in cos θ*.

Toy CLAS detector (g11-like, "3-track" mode)
--------------------------------------------
* Smearing per track: |p| by 0.6 %, θ by 2 mrad, φ by 4 mrad (Gaussian), E rebuilt with the
  particle's mass; tagged photon energy by 0.1 %.
* Fiducial cuts on the smeared tracks: six sectors, |local φ| < 26° (coil gaps);
  proton p > 0.32 GeV, θ > 10°, not (p < 0.45 GeV and θ < 35°); pions p > 0.125 GeV and
  10° < θ < 120°. The p, the π+ and (in "3-track" mode) the π− must all pass; "2-track" mode
  drops the π− requirement.
* As in the g11 2π analyses the stored π− is the missing four-vector
  beam_rec + target − p_rec − π+_rec; its mass² is MX2 (column 1). With the π− required in
  the detector this reproduces the alpha humps at π/2, 3π/2 seen in the A(i)DAPT tutorial.

Files
-----
:func:`make_aidapt` writes, per sample kind, accepted events only and row-paired
``{kind}_vertex_{k}.npy`` / ``{kind}_detector_{k}.npy`` (16 columns, :data:`hepgen.io.aidapt.COLUMNS`),
all generated events with their acceptance in ``{kind}_generated.npz`` (the truth an
acceptance-aware unfolding must recover), and ``{kind}_made.json`` with the settings.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path

import numpy as np

from hepgen.io.aidapt import COLUMNS, N_COLUMNS, write_event_file
from hepgen.io.files import write_atomically
from hepgen.physics.kinematics import M_PION, M_PROTON, boost, mass2, two_body_momentum

#: The sample kinds: three-body phase space and the resonance mixture.
SAMPLES = ("ps", "realistic")

#: ρ⁰(770) and Δ⁺⁺(1232) Breit–Wigner mass and width, GeV.
RHO_MASS, RHO_WIDTH = 0.775, 0.149
DELTA_MASS, DELTA_WIDTH = 1.232, 0.117

#: g11 fiducial cuts (Battaglieri et al., detailed version; momenta in GeV, angles in degrees).
SECTOR_HALF_WIDTH_DEG = 26.0
PROTON_P_MIN, PROTON_THETA_MIN_DEG = 0.32, 10.0
#: Slow forward protons stop before the drift chambers: reject p < 0.45 GeV at θ < 35°.
PROTON_SLOW_P, PROTON_SLOW_THETA_DEG = 0.45, 35.0
PION_P_MIN, PION_THETA_RANGE_DEG = 0.125, (10.0, 120.0)


@dataclass(frozen=True)
class Physics:
    """Beam window (GeV) and the realistic mixture: fractions (non-resonant = the rest) and
    t-slopes (GeV⁻²)."""

    e_gamma_min: float = 3.0
    e_gamma_max: float = 3.8
    rho_fraction: float = 0.6
    delta_fraction: float = 0.25
    rho_slope: float = 6.0
    delta_slope: float = 3.0

    def __post_init__(self) -> None:
        if not 0 < self.e_gamma_min <= self.e_gamma_max:
            raise ValueError(
                f"beam window: need 0 < e_gamma_min <= e_gamma_max, got {self.e_gamma_min}, {self.e_gamma_max}."
            )
        fractions = (self.rho_fraction, self.delta_fraction)
        if min(fractions) < 0 or sum(fractions) > 1:
            raise ValueError(f"rho_fraction, delta_fraction: need >= 0 and a sum <= 1, got {fractions}.")
        if min(self.rho_slope, self.delta_slope) <= 0:
            raise ValueError(f"slopes must be > 0 GeV^-2, got {self.rho_slope}, {self.delta_slope}.")


@dataclass(frozen=True)
class ToyCLAS:
    """Detector resolutions (relative for |p| and the tagger, rad for the angles) and topology."""

    sigma_p: float = 0.006
    sigma_theta: float = 0.002
    sigma_phi: float = 0.004
    sigma_tagger: float = 0.001
    mode: str = "3-track"

    def __post_init__(self) -> None:
        if self.mode not in ("3-track", "2-track"):
            raise ValueError(f"mode: '3-track' or '2-track', got {self.mode!r}.")


# ================================================================== generator helpers


def beam_energies(rng: np.random.Generator, n: int, physics: Physics = Physics()) -> np.ndarray:
    """(n,) photon energies, GeV, with flux ∝ 1/E on the beam window (inverse CDF)."""
    lo, hi = physics.e_gamma_min, physics.e_gamma_max
    return lo * (hi / lo) ** rng.random(n)


def _directions(rng: np.random.Generator, n: int, cos_theta: np.ndarray | None = None) -> np.ndarray:
    """(n, 3) unit vectors with uniform azimuth; polar cosine uniform on [−1, 1] unless given."""
    if cos_theta is None:
        cos_theta = rng.uniform(-1.0, 1.0, n)
    phi = rng.uniform(0.0, 2 * np.pi, n)
    sin_theta = np.sqrt(np.clip(1.0 - cos_theta**2, 0.0, None))
    return np.stack([sin_theta * np.cos(phi), sin_theta * np.sin(phi), cos_theta], axis=1)


def _four(momentum: np.ndarray, mass: np.ndarray | float) -> np.ndarray:
    """(n, 4) on-shell four-vectors from 3-momenta (n, 3) and masses."""
    energy = np.sqrt((momentum**2).sum(1) + np.asarray(mass) ** 2)
    return np.concatenate([energy[:, None], momentum], axis=1)


def _two_body_decay(
    rng: np.random.Generator, parent: np.ndarray, mass: np.ndarray, m1: float, m2: float
) -> tuple[np.ndarray, np.ndarray]:
    """Isotropic decays of parents (n, 4) of masses (n,) into m1 + m2; daughters (n, 4) each,
    in the parents' frame. The mass is passed, not recomputed, to keep it exact."""
    q = two_body_momentum(mass, m1, m2)[:, None] * _directions(rng, len(mass))
    velocity = parent[:, 1:] / parent[:, :1]
    return boost(_four(q, m1), velocity), boost(_four(-q, m2), velocity)


def _pion_pair_mass(rng: np.random.Generator, w: np.ndarray) -> np.ndarray:
    """(n,) M(π+π−) distributed as three-body phase space at CM energies w (n,), by accept-reject."""
    lo, hi = 2 * M_PION, w - M_PROTON
    bound = two_body_momentum(w, M_PROTON, lo) * two_body_momentum(hi, M_PION, M_PION)
    m23 = np.empty_like(w)
    todo = np.arange(len(w))
    while todo.size:  # each pass keeps ~35 % of the rest: ~30 ever shorter passes for 4e5 events
        trial = lo + (hi[todo] - lo) * rng.random(todo.size)
        weight = two_body_momentum(w[todo], M_PROTON, trial) * two_body_momentum(trial, M_PION, M_PION)
        keep = rng.random(todo.size) * bound[todo] < weight
        m23[todo[keep]] = trial[keep]
        todo = todo[~keep]
    return m23


def phase_space_cm(rng: np.random.Generator, w: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Three-body phase space γp → p π+ π− at CM energies w (n,) GeV.

    Returns:
        CM four-vectors (n, 4) of p, π+, π−; the beam is along +z.
    """
    m23 = _pion_pair_mass(rng, w)
    q1 = two_body_momentum(w, M_PROTON, m23)[:, None] * _directions(rng, len(w))
    pair = _four(-q1, m23)
    pip, pim = _two_body_decay(rng, pair, m23, M_PION, M_PION)
    return _four(q1, M_PROTON), pip, pim


def _truncated_breit_wigner(
    rng: np.random.Generator, mass: float, width: float, lo: np.ndarray | float, hi: np.ndarray
) -> np.ndarray:
    """(n,) masses from a Breit–Wigner (mass, width) truncated to [lo, hi] (inverse CDF)."""
    a_lo = np.arctan(2 * (lo - mass) / width)
    a_hi = np.arctan(2 * (hi - mass) / width)
    sampled = mass + width / 2 * np.tan(a_lo + rng.random(len(hi)) * (a_hi - a_lo))
    return np.clip(sampled, lo, hi)  # tan's rounding could step a hair outside


def _quasi_two_body(
    rng: np.random.Generator, w: np.ndarray, m_x: np.ndarray | float, m_y: np.ndarray | float, slope: float
) -> tuple[np.ndarray, np.ndarray]:
    """γp → X Y at CM energies w (n,) with dσ/dt ∝ e^{slope·t}, t = (q − p_X)², within the
    physical limits. Returns the CM four-vectors (n, 4) of X and Y.

    With k the photon CM momentum, t = M_X² − 2k(E*_X − p*_f cos θ*) runs from t_hi (cos = 1)
    down over Δ = 4 k p*_f; x = t_hi − t is a truncated exponential on [0, Δ].
    """
    s = w**2
    k = (s - M_PROTON**2) / (2 * w)
    p_f = two_body_momentum(w, m_x, m_y)
    span = 4 * k * p_f
    x = -np.log1p(rng.random(len(w)) * np.expm1(-slope * span)) / slope
    cos_theta = np.clip(1.0 - x / np.maximum(2 * k * p_f, np.finfo(float).tiny), -1.0, 1.0)
    q = p_f[:, None] * _directions(rng, len(w), cos_theta)
    return _four(q, m_x), _four(-q, m_y)


def realistic_cm(
    rng: np.random.Generator, w: np.ndarray, physics: Physics = Physics()
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ρ⁰p / Δ⁺⁺π− / phase-space mixture (module docstring) at CM energies w (n,) GeV.

    Returns:
        CM four-vectors (n, 4) of p, π+, π−; the beam is along +z.
    """
    n = len(w)
    fractions = [physics.rho_fraction, physics.delta_fraction]
    channel = rng.choice(3, size=n, p=[*fractions, 1.0 - sum(fractions)])
    p, pip, pim = (np.empty((n, 4)) for _ in range(3))

    rho = np.flatnonzero(channel == 0)  # diffractive ρ⁰ p, ρ → π+π−
    m_rho = _truncated_breit_wigner(rng, RHO_MASS, RHO_WIDTH, 2 * M_PION, w[rho] - M_PROTON)
    rho_cm, p[rho] = _quasi_two_body(rng, w[rho], m_rho, M_PROTON, physics.rho_slope)
    pip[rho], pim[rho] = _two_body_decay(rng, rho_cm, m_rho, M_PION, M_PION)

    delta = np.flatnonzero(channel == 1)  # π− exchange-like Δ⁺⁺ π−, Δ⁺⁺ → p π+
    m_delta = _truncated_breit_wigner(rng, DELTA_MASS, DELTA_WIDTH, M_PROTON + M_PION, w[delta] - M_PION)
    pim[delta], delta_cm = _quasi_two_body(rng, w[delta], M_PION, m_delta, physics.delta_slope)
    p[delta], pip[delta] = _two_body_decay(rng, delta_cm, m_delta, M_PROTON, M_PION)

    flat = np.flatnonzero(channel == 2)  # non-resonant
    p[flat], pip[flat], pim[flat] = phase_space_cm(rng, w[flat])
    return p, pip, pim


def generate_vertex(
    rng: np.random.Generator, kind: str, n: int, physics: Physics = Physics()
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """n true events of one kind: photon energies (n,) and lab four-vectors (n, 4) of p, π+, π−."""
    e_gamma = beam_energies(rng, n, physics)
    w = np.sqrt(M_PROTON**2 + 2 * M_PROTON * e_gamma)
    cm = phase_space_cm(rng, w) if kind == "ps" else realistic_cm(rng, w, physics)
    velocity = np.zeros((n, 3))
    velocity[:, 2] = e_gamma / (e_gamma + M_PROTON)  # the CM moves along the beam
    return (e_gamma, *(boost(p, velocity) for p in cm))


def pack_events(
    event_id: np.ndarray, mx2: np.ndarray | float, e_gamma: np.ndarray, p: np.ndarray, pip: np.ndarray, pim: np.ndarray
) -> np.ndarray:
    """(n, 16) float64 events in the A(i)DAPT layout from per-event values and four-vectors (n, 4)."""
    events = np.empty((len(e_gamma), N_COLUMNS))
    events[:, COLUMNS.index("event_id")] = event_id
    events[:, COLUMNS.index("MX2")] = mx2
    events[:, COLUMNS.index("E_gamma")] = e_gamma
    events[:, COLUMNS.index("phi_pip")] = np.arctan2(pip[:, 2], pip[:, 1])
    for component, axis in (("E", 0), ("px", 1), ("py", 2), ("pz", 3)):
        for name, vec in (("p", p), ("pip", pip), ("pim", pim)):
            events[:, COLUMNS.index(f"{component}_{name}")] = vec[:, axis]
    return events


# ================================================================== toy detector


def _smear(
    rng: np.random.Generator, p4: np.ndarray, mass: float, detector: ToyCLAS
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Smear tracks (n, 4) in |p|, θ, φ; returns the measured four-vectors (n, 4) with the PID
    mass and their |p| (GeV), θ and φ (rad), recomputed from the smeared momentum."""
    n = len(p4)
    momentum = np.linalg.norm(p4[:, 1:], axis=1)
    theta = np.arccos(np.clip(p4[:, 3] / momentum, -1.0, 1.0))
    phi = np.arctan2(p4[:, 2], p4[:, 1])
    momentum = momentum * (1.0 + detector.sigma_p * rng.standard_normal(n))
    theta = theta + detector.sigma_theta * rng.standard_normal(n)
    phi = phi + detector.sigma_phi * rng.standard_normal(n)
    three = momentum[:, None] * np.stack([np.sin(theta) * np.cos(phi), np.sin(theta) * np.sin(phi), np.cos(theta)], 1)
    measured = _four(three, mass)
    # A smeared θ just below 0 (or above π) is a direction on the other side: read it back.
    size = np.abs(momentum)
    return measured, size, np.arccos(np.clip(three[:, 2] / size, -1.0, 1.0)), np.arctan2(three[:, 1], three[:, 0])


def _in_sector(phi: np.ndarray) -> np.ndarray:
    """Inside a sector's fiducial φ window: local φ = ((φ + 30°) mod 60°) − 30°, |local φ| < 26°."""
    local = np.mod(np.degrees(phi) + 30.0, 60.0) - 30.0
    return np.abs(local) < SECTOR_HALF_WIDTH_DEG


def _proton_accepted(momentum: np.ndarray, theta: np.ndarray, phi: np.ndarray) -> np.ndarray:
    theta_deg = np.degrees(theta)
    slow_forward = (momentum < PROTON_SLOW_P) & (theta_deg < PROTON_SLOW_THETA_DEG)
    return (momentum > PROTON_P_MIN) & (theta_deg > PROTON_THETA_MIN_DEG) & ~slow_forward & _in_sector(phi)


def _pion_accepted(momentum: np.ndarray, theta: np.ndarray, phi: np.ndarray) -> np.ndarray:
    theta_deg = np.degrees(theta)
    lo, hi = PION_THETA_RANGE_DEG
    return (momentum > PION_P_MIN) & (theta_deg > lo) & (theta_deg < hi) & _in_sector(phi)


def simulate_detector(
    rng: np.random.Generator,
    e_gamma: np.ndarray,
    p: np.ndarray,
    pip: np.ndarray,
    pim: np.ndarray,
    detector: ToyCLAS = ToyCLAS(),
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Reconstruct true events (photon energies (n,), lab four-vectors (n, 4)) in the toy CLAS.

    Returns:
        measured photon energy (n,), proton and π+ (n, 4), the missing four-vector that stands
        for the π− (n, 4), and the acceptance flag (n,) bool. Every event is reconstructed;
        the flag says which ones the detector keeps.
    """
    e_rec = e_gamma * (1.0 + detector.sigma_tagger * rng.standard_normal(len(e_gamma)))
    p_rec, *p_track = _smear(rng, p, M_PROTON, detector)
    pip_rec, *pip_track = _smear(rng, pip, M_PION, detector)
    _, *pim_track = _smear(rng, pim, M_PION, detector)
    accepted = _proton_accepted(*p_track) & _pion_accepted(*pip_track)
    if detector.mode == "3-track":
        accepted &= _pion_accepted(*pim_track)
    initial = np.zeros_like(p_rec)
    initial[:, 0] = e_rec + M_PROTON
    initial[:, 3] = e_rec
    return e_rec, p_rec, pip_rec, initial - p_rec - pip_rec, accepted


# ================================================================== samples and files


def sample_seed(seed: int, kind: str) -> int:
    """The seed make_aidapt uses for one sample kind: a SeedSequence hash of (seed, kind index),
    so the kinds never share a stream and do not depend on which others are requested."""
    state = np.random.SeedSequence([int(seed), SAMPLES.index(kind)]).generate_state(1, np.uint32)
    return int(state[0])


def simulate_sample(
    kind: str, events: int, seed: int, physics: Physics = Physics(), detector: ToyCLAS = ToyCLAS()
) -> dict[str, np.ndarray]:
    """Generate and reconstruct ``events`` events of one kind (``"ps"`` or ``"realistic"``).

    Returns:
        ``{"vertex": (N, 16), "detector": (N, 16), "accepted": (N,) bool}``; vertex holds the
        true kinematics (MX2 = mπ²), detector the reconstruction of every event (π− = missing
        four-vector, MX2 its mass²); event_id is the row index. The same arguments give the
        same arrays.
    """
    if kind not in SAMPLES:
        raise ValueError(f"kind: one of {SAMPLES}, got {kind!r}.")
    rng = np.random.default_rng(seed)
    e_gamma, p, pip, pim = generate_vertex(rng, kind, events, physics)
    e_rec, p_rec, pip_rec, missing, accepted = simulate_detector(rng, e_gamma, p, pip, pim, detector)
    event_id = np.arange(events, dtype=np.float64)
    return {
        "vertex": pack_events(event_id, M_PION**2, e_gamma, p, pip, pim),
        "detector": pack_events(event_id, mass2(missing), e_rec, p_rec, pip_rec, missing),
        "accepted": accepted,
    }


def _check_integer(value, name: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name}: need an integer >= {low}, got {value!r}.")
    return int(value)


def _file_names(kind: str, n_files: int) -> list[str]:
    """Every file make_aidapt writes for one kind, in writing order (the sidecar last)."""
    pairs = [f"{kind}_{level}_{k}.npy" for level in ("vertex", "detector") for k in range(n_files)]
    return [*pairs, f"{kind}_generated.npz", f"{kind}_made.json"]


def _settings(kind: str, physics: Physics, detector: ToyCLAS) -> dict:
    """What made a sample, for the sidecar."""
    beam = {"e_gamma_min": physics.e_gamma_min, "e_gamma_max": physics.e_gamma_max, "spectrum": "1/E"}
    mixture = {k: v for k, v in asdict(physics).items() if k not in ("e_gamma_min", "e_gamma_max")}
    process = (
        {"process": "three-body phase space (Raubold-Lynch)"}
        if kind == "ps"
        else {
            "process": "rho0 p / Delta++ pi- / phase space mixture",
            **mixture,
            "rho": [RHO_MASS, RHO_WIDTH],
            "delta": [DELTA_MASS, DELTA_WIDTH],
        }
    )
    fiducial = {
        "sector_half_width_deg": SECTOR_HALF_WIDTH_DEG,
        "proton_p_min": PROTON_P_MIN,
        "proton_theta_min_deg": PROTON_THETA_MIN_DEG,
        "proton_reject_below": [PROTON_SLOW_P, PROTON_SLOW_THETA_DEG],
        "pion_p_min": PION_P_MIN,
        "pion_theta_range_deg": list(PION_THETA_RANGE_DEG),
    }
    return {
        "physics": {"beam": beam, "masses": {"proton": M_PROTON, "pion": M_PION}, **process},
        "detector": {**asdict(detector), "fiducial": fiducial, "pim": "missing four-vector"},
    }


def _write_bytes(f, data: bytes) -> None:
    f.write(data)


def make_aidapt(
    out: str | Path,
    events: int = 200_000,
    seed: int = 0,
    samples: Sequence[str] = ("ps", "realistic"),
    n_files: int = 4,
    progress: bool = True,
) -> list[Path]:
    """Write made A(i)DAPT files for each sample kind into the folder ``out`` (flat).

    Per kind, ``events`` events are generated (before acceptance) with the seed
    :func:`sample_seed` (seed, kind), and written as

    * ``{kind}_vertex_{k}.npy`` / ``{kind}_detector_{k}.npy``, k < n_files: accepted events only,
      row-paired, (n_k, 16) float64, the accepted events split into n_files nearly equal parts;
    * ``{kind}_generated.npz``: ``vertex`` (events, 16) truth of all generated events and
      ``accepted`` (events,) bool; ``vertex[accepted]`` equals the concatenated vertex files;
    * ``{kind}_made.json``: ``hepgen_made``, ``kind``, ``events``, ``seed`` (the per-kind seed,
      so ``simulate_sample(kind, events, seed)`` reproduces the arrays), settings, ``accepted``.

    Every file is written atomically and never over an existing one.

    Returns:
        the written paths, in writing order.

    Raises:
        ValueError: unknown or repeated kind, events < 1, seed < 0, n_files < 1, or fewer
            accepted events than files.
        FileExistsError: a target file exists (checked before generating anything).
    """
    events = _check_integer(events, "events", 1)
    seed = _check_integer(seed, "seed", 0)
    n_files = _check_integer(n_files, "n_files", 1)
    samples = [samples] if isinstance(samples, str) else list(samples)
    if not samples or len(set(samples)) != len(samples) or not set(samples) <= set(SAMPLES):
        raise ValueError(f"samples: need distinct kinds from {SAMPLES}, got {samples}.")
    out = Path(out)
    for kind in samples:
        for name in _file_names(kind, n_files):
            if (out / name).exists():
                raise FileExistsError(
                    f"{out / name} exists; hepgen never overwrites a data file. Remove it or choose another folder."
                )
    physics, detector = Physics(), ToyCLAS()
    written: list[Path] = []
    for kind in samples:
        used = sample_seed(seed, kind)
        sample = simulate_sample(kind, events, used, physics, detector)
        accepted = sample["accepted"]
        n_accepted = int(accepted.sum())
        if n_accepted < n_files:
            raise ValueError(f"{kind}: {n_accepted} accepted events cannot fill {n_files} files; raise events.")
        names = iter(_file_names(kind, n_files))
        for level in ("vertex", "detector"):
            for part in np.array_split(sample[level][accepted], n_files):
                written.append(write_event_file(out / next(names), part))
        truth = partial(np.savez, vertex=sample["vertex"], accepted=accepted)
        written.append(write_atomically(out / next(names), truth))
        made = {
            "hepgen_made": "aidapt",
            "kind": kind,
            "events": events,
            "seed": used,
            "base_seed": seed,
            "n_files": n_files,
            **_settings(kind, physics, detector),
            "accepted": n_accepted,
        }
        text = (json.dumps(made, indent=2) + "\n").encode()
        written.append(write_atomically(out / next(names), partial(_write_bytes, data=text)))
        if progress:
            print(f"aidapt {kind}: {events} generated, {n_accepted} accepted ({n_accepted / events:.3f}) -> {out}")
    return written
