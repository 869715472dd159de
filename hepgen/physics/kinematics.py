"""Relativistic kinematics of γp → π+π−p and the A(i)DAPT invariants, for numpy and torch.

Units are GeV (energies, momenta, masses) and GeV² (Mandelstam invariants). Four-vectors are
arrays whose last axis is (E, px, py, pz); the metric is a·b = a0 b0 − a1 b1 − a2 b2 − a3 b3.
The lab frame has the photon beam along +z and the proton target at rest.

Every function takes numpy arrays or torch tensors (and returns the same kind and dtype), so the
same code makes the training targets from files and the physics metrics from model output. The
few operations whose numpy and torch names differ go through the small ``_`` helpers below.

Events use the 16-column A(i)DAPT layout :data:`COLUMNS` (defined here, next to the formulas
that read it, so that ``hepgen.physics`` imports nothing from ``hepgen.io``; the file reader
:mod:`hepgen.io.aidapt` takes it from here); it is component-major (all px, then all py, ...),
not particle-major.
"""

from __future__ import annotations

import math

import numpy as np
import torch

#: The 16 columns of an A(i)DAPT event (lab frame, GeV); see :mod:`hepgen.io.aidapt` for their meaning.
COLUMNS = (
    "event_id", "MX2", "E_gamma", "phi_pip",
    "px_p", "px_pip", "px_pim",
    "py_p", "py_pip", "py_pim",
    "pz_p", "pz_pip", "pz_pim",
    "E_p", "E_pip", "E_pim",
)  # fmt: skip

#: Proton and charged-pion masses, GeV (the values of the A(i)DAPT config).
M_PROTON = 0.93827
M_PION = 0.13957

#: Output columns of :func:`lab_to_invariants` before ``s``: s_{pπ−}, s_{π+π−}, t_{π+} (GeV²)
#: and the angle alpha (rad).
INVARIANT_NAMES = ("sppim", "spipm", "tpip", "alpha")

_TWO_PI = 2.0 * math.pi
#: Column of (E, px, py, pz) for each particle in the 16-column layout.
_PARTICLE_COLUMNS = {
    name: tuple(COLUMNS.index(f"{c}_{name}") for c in ("E", "px", "py", "pz")) for name in ("p", "pip", "pim")
}
_E_GAMMA = COLUMNS.index("E_gamma")


# ------------------------------------------------------------------ numpy / torch dispatch


def _is_torch(x) -> bool:
    return isinstance(x, torch.Tensor)


def _sqrt(x):
    return torch.sqrt(x) if _is_torch(x) else np.sqrt(x)


def _arccos(x):
    return torch.acos(x) if _is_torch(x) else np.arccos(x)


def _clip(x, low=None, high=None):
    return torch.clamp(x, low, high) if _is_torch(x) else np.clip(x, low, high)


def _where(condition, a, b):
    return torch.where(condition, a, b) if _is_torch(condition) else np.where(condition, a, b)


def _stack(parts, axis: int = -1):
    return torch.stack(parts, dim=axis) if _is_torch(parts[0]) else np.stack(parts, axis=axis)


def _tiny(x) -> float:
    """Smallest positive normal number of x's float type (guards divisions by a vanishing norm)."""
    return torch.finfo(x.dtype).tiny if _is_torch(x) else float(np.finfo(np.result_type(x, np.float32)).tiny)


# ------------------------------------------------------------------ four-vector algebra


def minkowski_dot(a, b):
    """a·b = a0 b0 − a·b for four-vectors (..., 4); returns (...)."""
    return a[..., 0] * b[..., 0] - a[..., 1] * b[..., 1] - a[..., 2] * b[..., 2] - a[..., 3] * b[..., 3]


def mass2(p):
    """Invariant mass squared p² (GeV²) of four-vectors (..., 4); returns (...)."""
    return minkowski_dot(p, p)


def two_body_momentum(mass, m1, m2):
    """Momentum p*(M; m1, m2) of either daughter in the rest frame of a two-body decay M → m1 m2.

    p* = √[(M² − (m1+m2)²)(M² − (m1−m2)²)] / (2M), GeV. Arguments broadcast; a product that
    rounding makes slightly negative at threshold is clipped to 0.
    """
    product = (mass**2 - (m1 + m2) ** 2) * (mass**2 - (m1 - m2) ** 2)
    return _sqrt(_clip(product, 0.0)) / (2 * mass)


def boost(p, beta):
    """Boost four-vectors (..., 4) by the velocity beta (..., 3) (|beta| < 1).

    A particle at rest ends up moving with velocity beta: E' = γ(E + β·p),
    p' = p + [γ²/(γ+1) β·p + γE] β. Writing (γ−1)/β² as γ²/(γ+1) keeps beta = 0 finite.
    """
    b2 = (beta * beta).sum(-1)
    gamma = 1.0 / _sqrt(1.0 - b2)
    bp = (beta * p[..., 1:]).sum(-1)
    energy = gamma * (p[..., 0] + bp)
    scale = gamma**2 / (gamma + 1.0) * bp + gamma * p[..., 0]
    momentum = p[..., 1:] + scale[..., None] * beta
    return _stack([energy, momentum[..., 0], momentum[..., 1], momentum[..., 2]])


def lab_to_cm(p, s):
    """Pure z-boost of lab four-vectors (..., 4) into the γp centre-of-mass frame at s (...) GeV².

    E' = c1 E + c2 pz, pz' = c2 E + c1 pz with c1 = (Mp² + s)/(2 Mp √s) = γ and
    c2 = (Mp² − s)/(2 Mp √s) = −γβ, β = E_γ/(E_γ + Mp): the A(i)DAPT ``_lab_to_com``.
    """
    root_s = _sqrt(s)
    c1 = (M_PROTON**2 + s) / (2 * M_PROTON * root_s)
    c2 = (M_PROTON**2 - s) / (2 * M_PROTON * root_s)
    energy, pz = p[..., 0], p[..., 3]
    return _stack([c1 * energy + c2 * pz, p[..., 1], p[..., 2], c2 * energy + c1 * pz])


def four_vectors(events):
    """The lab (E, px, py, pz) of the proton, π+ and π− of events (..., 16): three arrays (..., 4)."""
    if events.shape[-1] != len(COLUMNS):
        raise ValueError(f"events: last axis has {events.shape[-1]} columns, expected {len(COLUMNS)} {COLUMNS}.")
    return tuple(_stack([events[..., c] for c in cols]) for cols in _PARTICLE_COLUMNS.values())


# ------------------------------------------------------------------ the A(i)DAPT invariants


def _unit(v):
    """v / |v| for 3-vectors (..., 3), with a zero vector left at zero."""
    norm = _sqrt((v * v).sum(-1))
    return v / _clip(norm, _tiny(v))[..., None]


def _cross(a, b):
    return _stack(
        [
            a[..., 1] * b[..., 2] - a[..., 2] * b[..., 1],
            a[..., 2] * b[..., 0] - a[..., 0] * b[..., 2],
            a[..., 0] * b[..., 1] - a[..., 1] * b[..., 0],
        ]
    )


def alpha_angle(pip_cm, pim_cm):
    """The Mokeev angle alpha_{π+} (rad, in [0, 2π)) from CM four-vectors (..., 4) of π+ and π−.

    The angle, measured around the π+ direction n+, between the plane (beam axis, π+) and the
    plane (π+, π−): g is the part of −ez perpendicular to n+, b the part of n− perpendicular
    to n+ (both normalised), alpha = arccos(g·b), or 2π − arccos(g·b) when (g × b)·n+ < 0.
    In the CM the (π+, π−) plane is also the (π+, p') plane, so alpha is the angle between the
    production and decay planes. The normalisations use the vectors' own norms, equal to the
    reference's √(1 − (ez·n+)²) and √(1 − (n−·n+)²) but free of rounding outside [−1, 1].
    """
    n_plus = _unit(pip_cm[..., 1:])
    n_minus = _unit(pim_cm[..., 1:])
    cos_z = n_plus[..., 2]
    minus_ez = _stack([0.0 * cos_z, 0.0 * cos_z, 0.0 * cos_z - 1.0])
    g = _unit(minus_ez + cos_z[..., None] * n_plus)
    b = _unit(n_minus - (n_minus * n_plus).sum(-1)[..., None] * n_plus)
    angle = _arccos(_clip((g * b).sum(-1), -1.0, 1.0))
    handed = (_cross(g, b) * n_plus).sum(-1) >= 0
    # 2π − 0 would be 2π; the remainder maps it back to 0 so that alpha stays in [0, 2π).
    return _where(handed, angle, _TWO_PI - angle) % _TWO_PI


def lab_to_invariants(events):
    """The A(i)DAPT invariants of events in the 16-column lab layout.

    Args:
        events: (N, 16) numpy array or torch tensor (any leading shape works), GeV.

    Returns:
        (N, 5) of the same kind and dtype: [s_{pπ−}, s_{π+π−}, t_{π+} (GeV², t < 0),
        alpha (rad, [0, 2π)), s = Mp² + 2 Mp E_γ (GeV²)], with
        s_{pπ−} = (p + π−)², s_{π+π−} = (π+ + π−)², t_{π+} = (π+ − q)², q = (E_γ, 0, 0, E_γ).
        At detector level the π− columns hold the missing four-vector, whose mass is not m_π.
    """
    p, pip, pim = four_vectors(events)
    e_gamma = events[..., _E_GAMMA]
    s = M_PROTON**2 + 2 * M_PROTON * e_gamma
    sppim = mass2(p + pim)
    spipm = mass2(pip + pim)
    # (π+ − q)² with q = (E_γ, 0, 0, E_γ), written out component by component.
    tpip = (pip[..., 0] - e_gamma) ** 2 - pip[..., 1] ** 2 - pip[..., 2] ** 2 - (pip[..., 3] - e_gamma) ** 2
    alpha = alpha_angle(lab_to_cm(pip, s), lab_to_cm(pim, s))
    return _stack([sppim, spipm, tpip, alpha, s])


def phase_space_limits(s) -> dict:
    """Analytic ranges of s_{pπ−}, s_{π+π−} and t_{π+} (GeV²) in γp → π+π−p at s (GeV²).

    * s_{pπ−} ∈ [(Mp + mπ)², (W − mπ)²] and s_{π+π−} ∈ [4 mπ², (W − Mp)²], W = √s;
    * t_{π+} = mπ² − 2 k (E*π − p*π cos θ*) with k = (s − Mp²)/(2W) the CM photon momentum;
      E*π ∓ p*π is monotonic in p*π, so both extremes sit at the largest π+ momentum,
      p*(W; mπ, Mp + mπ) (the p π− pair at threshold), with cos θ* = ±1.

    Args:
        s: scalar, numpy array or torch tensor.

    Returns:
        ``{"sppim": (low, high), "spipm": (low, high), "tpip": (low, high)}``, each bound
        shaped like ``s``.
    """
    w = _sqrt(s)
    k = (s - M_PROTON**2) / (2 * w)
    p_max = two_body_momentum(w, M_PION, M_PROTON + M_PION)
    e_max = _sqrt(p_max**2 + M_PION**2)
    zero = 0.0 * s
    return {
        "sppim": (zero + (M_PROTON + M_PION) ** 2, (w - M_PION) ** 2),
        "spipm": (zero + 4 * M_PION**2, (w - M_PROTON) ** 2),
        "tpip": (M_PION**2 - 2 * k * (e_max + p_max), M_PION**2 - 2 * k * (e_max - p_max)),
    }


# ------------------------------------------------------------------ back from invariants to lab events


def invariants_to_lab(invariants: np.ndarray, s: np.ndarray, phi_pip: np.ndarray) -> np.ndarray:
    """Lab events (N, 16) with given invariants: the inverse of :func:`lab_to_invariants`.

    The four invariants fix the final state at given s up to one overall rotation about the
    beam, which ``phi_pip`` (the π+ azimuth) supplies. In the CM: the π+ energy follows from
    s_{pπ−} (its recoil mass), its polar angle from t_{π+}; the π− energy from
    s_{pπ+} = s + Mp² + 2mπ² − s_{pπ−} − s_{π+π−}, its angle to the π+ from s_{π+π−}, and its
    azimuth about the π+ from alpha; the proton balances momentum and energy. Both pions are
    put on the π mass shell, so a rebuilt detector-level event has MX2 = mπ². Invariants
    outside the physical region (a generator may produce them) are brought to its edge by
    clipping the cosines to [−1, 1] and momenta² to ≥ 0; rebuilding them does not restore the
    originals.

    Args:
        invariants: (N, 4) s_{pπ−}, s_{π+π−}, t_{π+} (GeV²), alpha (rad).
        s: (N,) GeV².
        phi_pip: (N,) lab azimuth of the π+, rad.

    Returns:
        (N, 16) float64 in the :data:`COLUMNS` layout; event_id = row index.
    """
    inv = np.asarray(invariants, dtype=np.float64)
    s = np.asarray(s, dtype=np.float64).reshape(-1)
    phi = np.asarray(phi_pip, dtype=np.float64).reshape(-1)
    sppim, spipm, tpip, alpha = inv.T
    w = np.sqrt(s)
    k = (s - M_PROTON**2) / (2 * w)  # photon momentum in the CM
    e_gamma = (s - M_PROTON**2) / (2 * M_PROTON)
    sppip = s + M_PROTON**2 + 2 * M_PION**2 - sppim - spipm
    e_plus = (s + M_PION**2 - sppim) / (2 * w)
    e_minus = (s + M_PION**2 - sppip) / (2 * w)
    p_plus = np.sqrt(np.clip(e_plus**2 - M_PION**2, 0.0, None))
    p_minus = np.sqrt(np.clip(e_minus**2 - M_PION**2, 0.0, None))
    tiny = np.finfo(np.float64).tiny
    cos_plus = np.clip((tpip - M_PION**2 + 2 * k * e_plus) / np.maximum(2 * k * p_plus, tiny), -1.0, 1.0)
    cos_open = np.clip(
        (2 * M_PION**2 + 2 * e_plus * e_minus - spipm) / np.maximum(2 * p_plus * p_minus, tiny), -1.0, 1.0
    )
    sin_plus, sin_open = np.sqrt(1.0 - cos_plus**2), np.sqrt(1.0 - cos_open**2)
    n_plus = np.stack([sin_plus * np.cos(phi), sin_plus * np.sin(phi), cos_plus], axis=-1)
    # g: the unit vector along -ez perpendicular to n+ (alpha's reference direction, see alpha_angle)
    g = _unit(np.stack([0.0 * s, 0.0 * s, -1.0 + 0.0 * s], axis=-1) + cos_plus[:, None] * n_plus)
    # b is g turned by alpha about n+: then (g x b).n+ = sin(alpha), alpha's handedness
    b = np.cos(alpha)[:, None] * g + np.sin(alpha)[:, None] * _cross(n_plus, g)
    n_minus = cos_open[:, None] * n_plus + sin_open[:, None] * b
    pip = np.concatenate([e_plus[:, None], p_plus[:, None] * n_plus], axis=-1)
    pim = np.concatenate([e_minus[:, None], p_minus[:, None] * n_minus], axis=-1)
    proton = np.concatenate([(w - e_plus - e_minus)[:, None], -(pip[:, 1:] + pim[:, 1:])], axis=-1)
    # CM -> lab: the z-boost with beta = E_gamma / (E_gamma + Mp), inverse of lab_to_cm
    gamma = (s + M_PROTON**2) / (2 * M_PROTON * w)
    gamma_beta = (s - M_PROTON**2) / (2 * M_PROTON * w)

    def to_lab(p):
        return np.stack([gamma * p[:, 0] + gamma_beta * p[:, 3], p[:, 1], p[:, 2], gamma_beta * p[:, 0] + gamma * p[:, 3]], -1)

    particles = {"p": to_lab(proton), "pip": to_lab(pip), "pim": to_lab(pim)}
    events = np.zeros((len(s), len(COLUMNS)))
    events[:, COLUMNS.index("event_id")] = np.arange(len(s))
    events[:, COLUMNS.index("MX2")] = mass2(particles["pim"])
    events[:, _E_GAMMA] = e_gamma
    events[:, COLUMNS.index("phi_pip")] = phi
    for name, p in particles.items():
        for component, column in zip(range(4), _PARTICLE_COLUMNS[name]):
            events[:, column] = p[:, component]
    return events


# ------------------------------------------------------------------ the physical region

#: Default tolerance of the round trip invariants -> lab -> invariants: GeV² for s_{pπ−},
#: s_{π+π−}, t_{π+} and s, rad for alpha. Float64 rounding stays below 1e-10 inside the region;
#: the detector resolution is 1e-2, so 1e-6 separates rounding from a real mismatch.
ROUND_TRIP_ATOL = 1e-6


def reproduces_invariants(events, invariants, s, atol: float = ROUND_TRIP_ATOL) -> np.ndarray:
    """Whether lab events have the given invariants: (N,) bool.

    Args:
        events: (N, 16) lab events in the :data:`COLUMNS` layout, GeV.
        invariants: (N, 4) s_{pπ−}, s_{π+π−}, t_{π+} (GeV²), alpha (rad).
        s: (N,) or (N, 1) GeV².
        atol: largest accepted difference (GeV², rad). alpha is compared modulo 2π (an angle),
            so alpha = 2π + x is reproduced by an event with alpha = x.
    """
    inv = np.asarray(invariants, dtype=np.float64)
    rebuilt = lab_to_invariants(np.asarray(events, dtype=np.float64))
    with np.errstate(invalid="ignore"):
        close = np.abs(rebuilt[:, :3] - inv[:, :3]) <= atol
        turn = (rebuilt[:, 3] - inv[:, 3] + math.pi) % _TWO_PI - math.pi
        s_close = np.abs(rebuilt[:, 4] - np.asarray(s, dtype=np.float64).reshape(-1)) <= atol
    return close.all(axis=1) & (np.abs(turn) <= atol) & s_close


def in_physical_region(invariants, s, atol: float = ROUND_TRIP_ATOL) -> np.ndarray:
    """Whether invariants at s lie in the physical region of γp → π+π−p: (N,) bool.

    Physical means that a final state p, π+, π− on their mass shells exists with exactly these
    invariants: :func:`invariants_to_lab` builds it, and :func:`lab_to_invariants` gives them
    back within ``atol``. Outside the region invariants_to_lab clips a cosine or a momentum, and
    the round trip lands elsewhere. The region is the Dalitz region of (s_{pπ−}, s_{π+π−}) at
    W = √s together with |cos θ*_{π+}| ≤ 1 for t_{π+}; alpha is any angle. Non-finite values
    are unphysical.

    Args:
        invariants: (N, 4) s_{pπ−}, s_{π+π−}, t_{π+} (GeV²), alpha (rad); numpy or torch.
        s: (N,) or (N, 1) GeV².
        atol: see :func:`reproduces_invariants`.
    """
    inv = np.asarray(invariants, dtype=np.float64)
    s = np.asarray(s, dtype=np.float64).reshape(-1)
    with np.errstate(all="ignore"):  # far outside, a cosine overflows: clipped, then flagged
        events = invariants_to_lab(inv, s, np.zeros_like(s))
    return reproduces_invariants(events, inv, s, atol)
