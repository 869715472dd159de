"""The sPHENIX calorimeter tower grid of the UVCGAN-S jet data (Zenodo 17783990).

An event is an image (24, 64): rows are 24 η bins over |η| < 1.1, columns 64 φ bins over 2π.
Tower (row, col) has its centre at

    η = −1.1 + (row + 0.5)·Δη,   φ = (col + 0.5)·Δφ,   Δη = 2.2/24 ≈ 0.0917,  Δφ = 2π/64 ≈ 0.0982 rad,

and holds the transverse energy E_T in GeV deposited in it. φ wraps around (column 63 borders
column 0); η does not: what falls outside |η| < 1.1 is not seen. Distances are ΔR = √(Δη² + Δφ²)
with Δφ taken the short way round the circle, so an "R = 0.4 cone" is the set of towers whose
centres lie within 0.4 of an axis: an ellipse of 9 rows by 9 columns, 53 towers about a tower
centre, 55.9 on average about an arbitrary axis (πR²/(ΔηΔφ)).
"""

from __future__ import annotations

import numpy as np

N_ETA = 24
N_PHI = 64
N_TOWERS = N_ETA * N_PHI
#: Acceptance |η| < ETA_MAX.
ETA_MAX = 1.1
#: Tower size in η and in φ (radians).
DETA = 2 * ETA_MAX / N_ETA
DPHI = 2 * np.pi / N_PHI
#: Tower centres: (24,) η and (64,) φ in radians, φ in (0, 2π).
ETA_CENTRES = -ETA_MAX + (np.arange(N_ETA) + 0.5) * DETA
PHI_CENTRES = (np.arange(N_PHI) + 0.5) * DPHI
#: Tower area in η-φ (≈ 0.0090): an E_T density ρ (GeV per unit η-φ area) puts ρ·TOWER_AREA in a tower.
TOWER_AREA = DETA * DPHI


def wrap_phi(phi) -> np.ndarray:
    """φ mapped into [0, 2π) (radians, any shape)."""
    return np.mod(phi, 2 * np.pi)


def delta_phi(phi_a, phi_b) -> np.ndarray:
    """φ_a − φ_b taken the short way round, in [−π, π) radians (arrays broadcast)."""
    return np.mod(np.asarray(phi_a) - np.asarray(phi_b) + np.pi, 2 * np.pi) - np.pi
