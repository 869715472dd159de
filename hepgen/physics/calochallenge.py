"""Geometry of the Fast Calorimeter Simulation Challenge 2022 (CaloChallenge) datasets.

Each calorimeter layer is binned in polar coordinates around the particle's direction: radial
bins with edges ``r_edges`` (mm) and ``n_alpha`` equal angular bins covering alpha in [-pi, pi).
A shower file stores, per event, the voxel energies (MeV) flattened layer by layer, within a
layer angle-major and radius-minor: voxel ``a * n_r + r`` of a layer is angular bin ``a``,
radial bin ``r``. Layers listed in a binning file without radial bins hold no voxels.

The four published binnings are built in (:data:`BINNINGS`), so that made data need no file;
:func:`read_binning_xml` reads the challenge's own ``binning_dataset_*.xml`` files, and a test
checks that both agree. Voxel centres follow the challenge's evaluation: the radial bin's
midpoint r and the angular bin's midpoint alpha give x = r cos(alpha) ("eta" direction) and
y = r sin(alpha) ("phi" direction), in mm; a layer with one angular bin puts its centres on the
x axis.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from hepgen.io.errors import DataFileError


@dataclass(frozen=True)
class LayerBinning:
    """One readout layer: ``n_alpha`` angular bins times the radial bins of ``r_edges_mm``."""

    layer_id: int
    r_edges_mm: tuple[float, ...]
    n_alpha: int

    @property
    def n_r(self) -> int:
        return len(self.r_edges_mm) - 1

    @property
    def n_voxels(self) -> int:
        return self.n_r * self.n_alpha

    @property
    def binned_in_alpha(self) -> bool:
        return self.n_alpha > 1

    def alpha_edges(self) -> np.ndarray:
        """(n_alpha + 1,) angular bin edges in rad, from -pi to pi."""
        return np.linspace(-math.pi, math.pi, self.n_alpha + 1)

    def voxel_centres_mm(self) -> tuple[np.ndarray, np.ndarray]:
        """(x, y) of each voxel's centre, each (n_voxels,) mm, in the file's voxel order."""
        edges = np.asarray(self.r_edges_mm)
        r_mid = 0.5 * (edges[1:] + edges[:-1])
        a_edges = self.alpha_edges()
        a_mid = 0.5 * (a_edges[1:] + a_edges[:-1]) if self.binned_in_alpha else np.zeros(1)
        r = np.tile(r_mid, self.n_alpha)
        alpha = np.repeat(a_mid, self.n_r)
        return r * np.cos(alpha), r * np.sin(alpha)

    def voxel_index(self, r_mm: np.ndarray, alpha: np.ndarray) -> np.ndarray:
        """Voxel index within the layer of points at radius ``r_mm`` and angle ``alpha`` (rad, any
        branch); -1 for points at or beyond the outermost radial edge."""
        r_bin = np.searchsorted(np.asarray(self.r_edges_mm), r_mm, side="right") - 1
        wrapped = np.mod(np.asarray(alpha) + math.pi, 2 * math.pi)  # [0, 2 pi), bin 0 starts at -pi
        a_bin = np.minimum((wrapped / (2 * math.pi) * self.n_alpha).astype(np.int64), self.n_alpha - 1)
        inside = (r_bin >= 0) & (r_bin < self.n_r)
        return np.where(inside, a_bin * self.n_r + r_bin, -1)


@dataclass(frozen=True)
class CaloChallengeBinning:
    """A dataset's binning and the facts of its files.

    Attributes:
        dataset: the challenge's name, ``1-photons``, ``1-pions``, ``2`` or ``3``.
        particle: the ``name`` of its ``<Bin>`` in the binning file (``photon``, ``pion``, ``electron``).
        layers: the layers that hold voxels, in file order.
        threshold_mev: readout threshold of the evaluation; voxels below it count as empty.
        energy_range_mev: smallest and largest incident energy of the dataset.
        discrete_energies_mev: the incident energies of dataset 1 (2^8 .. 2^22 MeV); empty for
            datasets 2 and 3, whose energies are log-uniform over ``energy_range_mev``.
    """

    dataset: str
    particle: str
    layers: tuple[LayerBinning, ...]
    threshold_mev: float
    energy_range_mev: tuple[float, float]
    discrete_energies_mev: tuple[float, ...] = ()

    @cached_property
    def n_voxels(self) -> int:
        return sum(layer.n_voxels for layer in self.layers)

    @cached_property
    def layer_slices(self) -> tuple[slice, ...]:
        """Where each layer's voxels sit in a flattened shower."""
        ends = np.cumsum([0] + [layer.n_voxels for layer in self.layers])
        return tuple(slice(int(a), int(b)) for a, b in zip(ends[:-1], ends[1:]))

    def split_layers(self, showers):
        """(N, n_voxels) -> one (N, n_alpha, n_r) array (or tensor) per layer, as views."""
        return [showers[:, s].reshape(-1, layer.n_alpha, layer.n_r) for s, layer in zip(self.layer_slices, self.layers)]

    def voxel_centres_mm(self) -> tuple[np.ndarray, np.ndarray]:
        """(x, y) of every voxel, each (n_voxels,) mm, in file order."""
        centres = [layer.voxel_centres_mm() for layer in self.layers]
        return np.concatenate([c[0] for c in centres]), np.concatenate([c[1] for c in centres])

    def with_layers(self, layers: tuple[LayerBinning, ...]) -> CaloChallengeBinning:
        return CaloChallengeBinning(
            self.dataset, self.particle, layers, self.threshold_mev, self.energy_range_mev, self.discrete_energies_mev
        )


# ------------------------------------------------------------------------------- the four datasets
# Radial edges (mm) and angular bins of the published binning files (CaloChallenge code/binning_*.xml).
_DS1_ENERGIES = tuple(float(2**k) for k in range(8, 23))  # 256 MeV .. 4.19 TeV
_DS2_R = tuple(round(4.65 * i, 3) for i in range(10))  # 9 bins of 4.65 mm (about half a Moliere radius)
_DS3_R = tuple(round(2.325 * i, 4) for i in range(19))  # 18 bins of 2.325 mm


def _layers(spec: list[tuple[int, tuple[float, ...], int]]) -> tuple[LayerBinning, ...]:
    return tuple(LayerBinning(i, tuple(float(r) for r in edges), n_alpha) for i, edges, n_alpha in spec)


BINNINGS: dict[str, CaloChallengeBinning] = {
    "1-photons": CaloChallengeBinning(
        "1-photons",
        "photon",
        _layers([
            (0, (0, 5, 10, 30, 50, 100, 200, 400, 600), 1),
            (1, (0, 2, 4, 6, 8, 10, 12, 15, 20, 30, 40, 50, 70, 90, 120, 150, 200), 10),
            (2, (0, 2, 5, 10, 15, 20, 25, 30, 40, 50, 60, 80, 100, 130, 160, 200, 250, 300, 350, 400), 10),
            (3, (0, 50, 100, 200, 400, 600), 1),
            (12, (0, 100, 200, 400, 1000, 2000), 1),
        ]),
        threshold_mev=1.0,
        energy_range_mev=(_DS1_ENERGIES[0], _DS1_ENERGIES[-1]),
        discrete_energies_mev=_DS1_ENERGIES,
    ),
    "1-pions": CaloChallengeBinning(
        "1-pions",
        "pion",
        _layers([
            (0, (0, 5, 10, 30, 50, 100, 200, 400, 600), 1),
            (1, (0, 1, 4, 7, 10, 15, 30, 50, 90, 150, 200), 10),
            (2, (0, 5, 10, 20, 30, 50, 80, 130, 200, 300, 400), 10),
            (3, (0, 50, 100, 200, 400, 600), 1),
            (12, (0, 10, 20, 30, 50, 80, 100, 130, 160, 200, 250, 300, 350, 400, 1000, 2000), 10),
            (13, (0, 10, 20, 30, 50, 80, 100, 130, 160, 200, 250, 300, 350, 400, 600, 1000, 2000), 10),
            (14, (0, 50, 100, 150, 200, 250, 300, 400, 600, 1000, 2000), 1),
        ]),
        threshold_mev=1.0,
        energy_range_mev=(_DS1_ENERGIES[0], _DS1_ENERGIES[-1]),
        discrete_energies_mev=_DS1_ENERGIES,
    ),
    # 45 layers of two W/Si pairs (3.4 mm, about 0.8 X0 each); threshold 0.5 keV / 0.033 sampling fraction
    "2": CaloChallengeBinning(
        "2", "electron", _layers([(i, _DS2_R, 16) for i in range(45)]), 0.01515, (1.0e3, 1.0e6)
    ),
    "3": CaloChallengeBinning(
        "3", "electron", _layers([(i, _DS3_R, 50) for i in range(45)]), 0.01515, (1.0e3, 1.0e6)
    ),
}  # fmt: skip

#: The voxel count of each dataset (``evaluate.py`` checks files against these).
VOXELS = {"1-photons": 368, "1-pions": 533, "2": 6480, "3": 40500}


def load_binning(dataset: str) -> CaloChallengeBinning:
    """The built-in binning of ``dataset`` (``1-photons``, ``1-pions``, ``2``, ``3``)."""
    try:
        return BINNINGS[dataset]
    except KeyError:
        raise ValueError(f"unknown CaloChallenge dataset {dataset!r}: choose one of {', '.join(BINNINGS)}.") from None


def read_binning_xml(path: str | Path, dataset: str) -> CaloChallengeBinning:
    """The binning in a challenge ``binning_dataset_*.xml`` file, with ``dataset``'s threshold and energies.

    Raises:
        DataFileError: the file is missing, is not XML, or lacks a ``<Bin>`` with the dataset's
            particle or a layer's ``r_edges``/``n_bin_alpha``.
    """
    path = Path(path)
    base = load_binning(dataset)
    if not path.is_file():
        raise DataFileError(f"{path}: binning file not found (CaloChallenge code/binning_dataset_*.xml).")
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as err:
        raise DataFileError(f"{path}: not a readable XML binning file ({err}).") from None
    bins = [b for b in root.iter("Bin") if b.get("name") == base.particle]
    if not bins:
        raise DataFileError(f"{path}: no <Bin name=\"{base.particle}\"> for dataset {dataset}.")
    layers = []
    for element in bins[0].iter("Layer"):
        try:
            edges = tuple(float(r) for r in element.attrib["r_edges"].split(","))
            layer = LayerBinning(int(element.attrib["id"]), edges, int(element.attrib["n_bin_alpha"]))
        except (KeyError, ValueError) as err:
            raise DataFileError(f"{path}: layer {element.attrib.get('id', '?')} is malformed ({err}).") from None
        if layer.n_voxels > 0:
            layers.append(layer)
    return base.with_layers(tuple(layers))
