"""CaloGAN observables against values worked out by hand on tiny showers."""

import math

import numpy as np
import pytest

from hepgen.physics.calo_geometry import LAYER_SHAPES
from hepgen.physics.calo_observables import (
    OBSERVABLE_BINNING,
    OBSERVABLE_LABELS,
    OBSERVABLE_NAMES,
    compute_observables,
    layer_energies,
)


def empty_showers(n: int) -> dict[str, np.ndarray]:
    return {k: np.zeros((n, *shape), dtype=np.float32) for k, shape in LAYER_SHAPES.items()}


@pytest.fixture
def three_events():
    """Event 0: a few cells in every layer; event 1: empty; event 2: only layer 1 hit.

    Cell centres along the first axis: layer 0 rows at -160 / 0 / +160 mm, layers 1 and 2
    rows at -220, -180, ..., +220 mm (40 mm pitch).
    """
    s = empty_showers(3)
    s["layer_0"][0, 0, 5] = 3.0  # row centre -160 mm
    s["layer_0"][0, 2, 7] = 1.0  # row centre +160 mm
    s["layer_1"][0, 5, 3] = 2.0  # row centre -20 mm
    s["layer_1"][0, 6, 9] = 2.0  # row centre +20 mm
    s["layer_2"][0, 4, 1] = 2.0
    s["layer_1"][2, 0, 0] = 1.0  # row centre -220 mm
    s["layer_1"][2, 11, 11] = 1.0  # row centre +220 mm
    energy_gev = np.array([[0.02], [50.0], [0.004]])
    return s, energy_gev


def test_layer_energies(three_events):
    showers, _ = three_events
    np.testing.assert_allclose(layer_energies(showers), [[4, 4, 2], [0, 0, 0], [0, 2, 0]])


def test_energies_fractions_and_response(three_events):
    obs = compute_observables(*three_events)
    # Event 0: E = 4 + 4 + 2 = 10 MeV = 0.01 GeV, incident 0.02 GeV.
    np.testing.assert_allclose(obs["E_tot"], [0.01, 0.0, 0.002])
    np.testing.assert_allclose([obs[f"E_{i}"][0] for i in range(3)], [0.004, 0.004, 0.002])
    np.testing.assert_allclose([obs[f"f_{i}"][0] for i in range(3)], [0.4, 0.4, 0.2])
    np.testing.assert_allclose(obs["response"], [0.5, 0.0, 0.5])


def test_shower_depth_and_width(three_events):
    obs = compute_observables(*three_events)
    # s_d = (E_1 + 2 E_2)/E_tot = (4 + 4)/10; sigma^2 = (4 + 4*2)/10 - 0.8^2 = 0.56.
    np.testing.assert_allclose(obs["shower_depth"], [0.8, 0.0, 1.0])
    np.testing.assert_allclose(obs["depth_width"], [math.sqrt(0.56), 0.0, 0.0], atol=1e-12)


def test_lateral_widths(three_events):
    obs = compute_observables(*three_events)
    # Layer 0: 3 MeV at -160, 1 MeV at +160: mean -80, <x^2> = 160^2, var = 160^2 - 80^2.
    np.testing.assert_allclose(obs["width_0"], [80 * math.sqrt(3), 0.0, 0.0])
    # Layer 1: equal cells at -20 / +20 mm give 20 mm; at -220 / +220 mm give 220 mm.
    np.testing.assert_allclose(obs["width_1"], [20.0, 0.0, 220.0])
    # A single cell has no spread.
    np.testing.assert_allclose(obs["width_2"], [0.0, 0.0, 0.0], atol=1e-12)


def test_brightest_cell_ratio(three_events):
    obs = compute_observables(*three_events)
    np.testing.assert_allclose(obs["E_ratio_0"], [0.5, 0.0, 0.0])  # (3 - 1)/(3 + 1)
    np.testing.assert_allclose(obs["E_ratio_1"], [0.0, 0.0, 0.0])  # two equal cells
    np.testing.assert_allclose(obs["E_ratio_2"], [1.0, 0.0, 0.0])  # a single cell


def test_ratio_uses_two_brightest_cells_not_neighbours():
    s = empty_showers(1)
    s["layer_1"][0, 0, 0] = 6.0
    s["layer_1"][0, 11, 11] = 2.0
    s["layer_1"][0, 0, 1] = 1.0
    obs = compute_observables(s, np.ones(1))
    np.testing.assert_allclose(obs["E_ratio_1"], [0.5])  # (6 - 2)/(6 + 2)


def test_occupancy(three_events):
    obs = compute_observables(*three_events)
    np.testing.assert_allclose(obs["sparsity_0"], [2 / 288, 0.0, 0.0])
    np.testing.assert_allclose(obs["sparsity_1"], [2 / 144, 0.0, 2 / 144])
    np.testing.assert_allclose(obs["sparsity_2"], [1 / 72, 0.0, 0.0])


def test_threshold_applies_to_occupancy_only():
    s = empty_showers(1)
    s["layer_2"][0, 0, 0] = 0.5
    s["layer_2"][0, 1, 0] = 2.0
    s["layer_2"][0, 2, 0] = 1.0  # exactly at threshold: not above it
    no_cut = compute_observables(s, np.ones(1))
    cut = compute_observables(s, np.ones(1), threshold_mev=1.0)
    np.testing.assert_allclose(no_cut["sparsity_2"], [3 / 72])
    np.testing.assert_allclose(cut["sparsity_2"], [1 / 72])
    np.testing.assert_allclose(cut["E_tot"], no_cut["E_tot"])


def test_empty_showers_give_zero_not_nan():
    obs = compute_observables(empty_showers(4), np.zeros(4))
    for name, value in obs.items():
        assert np.all(value == 0.0), name


def test_random_showers_shapes_and_ranges():
    rng = np.random.default_rng(0)
    s = {
        k: rng.gamma(0.5, 10.0, size=(50, *shape)) * (rng.random((50, *shape)) < 0.3)
        for k, shape in LAYER_SHAPES.items()
    }
    s["layer_2"][:10] = 0.0  # some empty layers mixed in
    obs = compute_observables(s, rng.uniform(1, 100, size=50))
    assert list(obs) == list(OBSERVABLE_NAMES)
    for name, value in obs.items():
        assert value.shape == (50,) and np.isfinite(value).all(), name
    for name in ("f_0", "f_1", "f_2", "E_ratio_0", "sparsity_1"):
        assert ((obs[name] >= 0) & (obs[name] <= 1)).all(), name
    assert ((obs["shower_depth"] >= 0) & (obs["shower_depth"] <= 2)).all()
    np.testing.assert_allclose(obs["f_0"] + obs["f_1"] + obs["f_2"], 1.0)


def test_wrong_layer_shape_and_energy_length_rejected():
    s = empty_showers(2)
    with pytest.raises(ValueError, match="energy_gev"):
        compute_observables(s, np.ones(3))
    s["layer_1"] = np.zeros((2, 12, 6))
    with pytest.raises(ValueError, match="layer_1"):
        compute_observables(s, np.ones(2))


def test_every_observable_has_label_and_binning():
    assert set(OBSERVABLE_LABELS) == set(OBSERVABLE_NAMES) == set(OBSERVABLE_BINNING)
    assert "[GeV]" in OBSERVABLE_LABELS["E_tot"] and "[mm]" in OBSERVABLE_LABELS["width_1"]
