"""The CaloGAN calorimeter (Paganini, de Oliveira, Nachman, arXiv:1705.02355).

A Pb/LAr sampling calorimeter (80 layers of 2 mm Pb + 4 mm LAr) read out in three
longitudinal layers. The readout volume is 480 x 480 mm transverse, z in [-240, 240] mm,
with layer boundaries at z = -240 / -150 / 197 / 240 mm. Cell sizes below are
(first array axis) x (second array axis) x depth, in mm; the particle enters
perpendicular to the front face at the centre.

Cell energies are in MeV (sum of all deposits, absorber and active), the incident
energy in GeV.
"""

from __future__ import annotations

import numpy as np

#: HDF5 key -> (rows, columns) of the cell array in that layer.
LAYER_SHAPES: dict[str, tuple[int, int]] = {
    "layer_0": (3, 96),
    "layer_1": (12, 12),
    "layer_2": (12, 6),
}
LAYER_KEYS: tuple[str, ...] = tuple(LAYER_SHAPES)
N_LAYERS = len(LAYER_KEYS)
N_CELLS: dict[str, int] = {k: r * c for k, (r, c) in LAYER_SHAPES.items()}
N_CELLS_TOTAL = sum(N_CELLS.values())  # 504

#: Cell size along (first array axis, second array axis), mm.
CELL_SIZE_MM: dict[str, tuple[float, float]] = {
    "layer_0": (160.0, 5.0),
    "layer_1": (40.0, 40.0),
    "layer_2": (40.0, 80.0),
}
#: Transverse extent of the readout along each axis, mm (centred on the beam).
TRANSVERSE_SIZE_MM = 480.0
#: Layer boundaries along the beam axis, mm, and the resulting depths 90 / 347 / 43 mm.
Z_BOUNDARIES_MM: tuple[float, ...] = (-240.0, -150.0, 197.0, 240.0)
LAYER_DEPTH_MM: tuple[float, ...] = (90.0, 347.0, 43.0)
#: Effective radiation length of the 2 mm Pb + 4 mm LAr stack, mm (X0(Pb)=5.6, X0(LAr)=140).
X0_EFFECTIVE_MM = 15.5

#: Incident energy range of the published files, GeV (uniform).
ENERGY_RANGE_GEV: tuple[float, float] = (1.0, 100.0)

#: Particle species of the published files, with the integer label hepgen uses.
PARTICLES: tuple[str, ...] = ("eplus", "gamma", "piplus")


def cell_centres_mm(key: str) -> tuple[np.ndarray, np.ndarray]:
    """Cell-centre coordinates (mm) along the first and second array axes of a layer.

    The first axis follows the CaloGAN analysis: centres of ``linspace(-240, 240, n + 1)``.
    """
    rows, cols = LAYER_SHAPES[key]
    half = TRANSVERSE_SIZE_MM / 2
    edges_r = np.linspace(-half, half, rows + 1)
    edges_c = np.linspace(-half, half, cols + 1)
    return 0.5 * (edges_r[1:] + edges_r[:-1]), 0.5 * (edges_c[1:] + edges_c[:-1])
