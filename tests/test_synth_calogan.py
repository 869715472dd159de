"""Made CaloGAN showers: format, units, reproducibility and the physics they promise."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from hepgen.io.calogan import read_calogan
from hepgen.synth import calogan as synth
from hepgen.synth.calogan import make_calogan, particle_seed, simulate_showers

SHAPES = {"energy": (1,), "layer_0": (3, 96), "layer_1": (12, 12), "layer_2": (12, 6), "overflow": (3,)}


def fixed(n: int, energy_gev: float, particle: str = "eplus", seed: int = 0) -> dict[str, np.ndarray]:
    """n showers at one incident energy."""
    return simulate_showers(n, particle, seed=seed, energies_gev=np.full(n, energy_gev))


def layer_energies(showers: dict[str, np.ndarray]) -> np.ndarray:
    """(N, 3) energy per layer, MeV."""
    return np.stack([showers[f"layer_{i}"].reshape(len(showers["energy"]), -1).sum(1) for i in range(3)], 1)


def response(showers: dict[str, np.ndarray]) -> np.ndarray:
    """(N,) E_tot / E_inc, with E_tot in MeV and E_inc in GeV."""
    return layer_energies(showers).sum(1) / (1000.0 * showers["energy"][:, 0])


def shower_depth(showers: dict[str, np.ndarray]) -> np.ndarray:
    """(N,) s_d = (E_1 + 2 E_2) / E_tot."""
    e = layer_energies(showers)
    return (e[:, 1] + 2 * e[:, 2]) / e.sum(1)


def occupancy(showers: dict[str, np.ndarray], key: str | None = None) -> np.ndarray:
    """(N,) fraction of cells > 0 in one layer, or in all 504 cells."""
    keys = [key] if key else ["layer_0", "layer_1", "layer_2"]
    n = len(showers["energy"])
    return np.concatenate([showers[k].reshape(n, -1) for k in keys], 1).__gt__(0).mean(1)


@pytest.fixture(scope="module")
def eplus() -> dict[str, np.ndarray]:
    return simulate_showers(1500, "eplus", seed=3)


# ---------------------------------------------------------------- format and units


def test_keys_shapes_dtypes_and_finite(eplus):
    assert set(eplus) == set(SHAPES)
    for key, shape in SHAPES.items():
        assert eplus[key].shape == (1500, *shape), key
        assert eplus[key].dtype == np.float32, key
        assert np.all(np.isfinite(eplus[key])), key
        assert np.all(eplus[key] >= 0), key


def test_incident_energy_in_gev_uniform_in_range(eplus):
    e = eplus["energy"][:, 0]
    assert e.min() >= 1.0 and e.max() <= 100.0
    # Uniform on [1, 100]: mean 50.5, standard deviation 99/sqrt(12) = 28.6.
    assert abs(e.mean() - 50.5) < 3.0
    assert abs(e.std() - 28.6) < 2.0


def test_cells_in_mev_mean_response_in_band(eplus):
    # Cells are MeV, the incident energy GeV: E_tot/(1000 E_inc) sits just below 1.
    assert 0.85 < response(eplus).mean() < 1.0


def test_energy_is_conserved_up_to_leakage(eplus):
    deposited = layer_energies(eplus).sum(1) + eplus["overflow"].sum(1)
    ratio = deposited / (1000.0 * eplus["energy"][:, 0])
    assert 0.93 < ratio.mean() <= 1.0
    # The readout holds nearly all of an EM shower: the overflow is a small lateral tail.
    assert 0.0 < (eplus["overflow"].sum(1) / deposited).mean() < 0.05


def test_zero_suppression_threshold(eplus):
    cells = np.concatenate([eplus[f"layer_{i}"].ravel() for i in range(3)])
    assert cells[cells > 0].min() >= synth.ZERO_SUPPRESSION_MEV * (1 - 1e-6)


def test_fixed_energies_accepted_as_n_or_n_by_1():
    e = np.linspace(2.0, 90.0, 20)
    a = simulate_showers(20, seed=1, energies_gev=e)
    b = simulate_showers(20, seed=1, energies_gev=e.reshape(-1, 1))
    np.testing.assert_allclose(a["energy"][:, 0], e.astype(np.float32))
    for key in SHAPES:
        np.testing.assert_array_equal(a[key], b[key])


# ---------------------------------------------------------------- EM physics


def test_response_nearly_energy_independent():
    low, high = response(fixed(400, 5.0)).mean(), response(fixed(400, 80.0)).mean()
    assert 0.85 < low < 1.0 and 0.85 < high < 1.0
    assert abs(low - high) < 0.03


def test_resolution_improves_with_energy():
    r10, r90 = response(fixed(800, 10.0)), response(fixed(800, 90.0))
    res10, res90 = r10.std() / r10.mean(), r90.std() / r90.mean()
    # 10 %/sqrt(E) (+) 1 %: 3.3 % at 10 GeV, 1.5 % at 90 GeV.
    assert 0.02 < res10 < 0.05
    assert 0.008 < res90 < 0.025
    assert res10 > 1.5 * res90


def test_shower_depth_grows_with_energy():
    # t_max = ln(E/E_c) + C: an 80 GeV shower peaks ~2.8 X0 deeper than a 5 GeV one.
    assert shower_depth(fixed(300, 80.0)).mean() > shower_depth(fixed(300, 5.0)).mean() + 0.1


def test_photons_deeper_than_positrons():
    e_plus = shower_depth(fixed(400, 20.0, "eplus"))
    gamma = shower_depth(fixed(400, 20.0, "gamma"))
    assert gamma.mean() > e_plus.mean() + 0.02
    f0 = layer_energies(fixed(400, 20.0, "gamma"))[:, 0].mean() / layer_energies(fixed(400, 20.0))[:, 0].mean()
    assert f0 < 0.9  # photons leave less in the first layer


def test_longitudinal_fractions_fluctuate():
    # The event-by-event t_max spread makes f_0 vary well beyond sampling noise.
    e = layer_energies(fixed(300, 50.0))
    f0 = e[:, 0] / e.sum(1)
    assert f0.std() > 0.03


def test_layer2_fraction_small_for_positrons(eplus):
    e = layer_energies(eplus)
    f2 = e[:, 2] / e.sum(1)
    assert np.mean(f2 < 0.01) > 0.98
    assert f2.mean() < 0.005


def test_lateral_core_around_the_beam():
    # The beam enters at the corner of the four central 40 x 40 mm cells of layer 1:
    # with R_M ≈ 33 mm they hold most of the layer's energy.
    s = fixed(300, 30.0)
    central = s["layer_1"][:, 5:7, 5:7].sum((1, 2)) / s["layer_1"].sum((1, 2))
    assert 0.6 < central.mean() < 0.97


def test_impact_point_jitters():
    s = fixed(300, 30.0)
    centres = (np.arange(96) - 47.5) * 5.0  # layer 0 strip centres along the second axis, mm
    strips = s["layer_0"].sum(1)
    centroid = (strips * centres).sum(1) / strips.sum(1)
    assert 1.0 < centroid.std() < 10.0


# ---------------------------------------------------------------- occupancy


def test_overall_occupancy_in_plausible_band(eplus):
    assert 0.35 < occupancy(eplus).mean() < 0.65


def test_occupancy_grows_with_energy():
    low, high = fixed(300, 5.0), fixed(300, 80.0)
    assert occupancy(high).mean() > occupancy(low).mean() + 0.1
    for key in ("layer_0", "layer_1", "layer_2"):
        assert occupancy(high, key).mean() > occupancy(low, key).mean(), key


def test_layer2_sparse_at_low_energy():
    assert occupancy(fixed(300, 2.0), "layer_2").mean() < 0.05


# ---------------------------------------------------------------- pions


def test_pions_respond_less_and_fluctuate_more():
    e_plus, pions = response(fixed(600, 30.0)), response(fixed(600, 30.0, "piplus"))
    assert pions.mean() < 0.8 * e_plus.mean()
    assert pions.std() / pions.mean() > 3 * e_plus.std() / e_plus.mean()


def test_pions_penetrate_deeper():
    e_plus, pions = fixed(400, 30.0), fixed(400, 30.0, "piplus")
    assert shower_depth(pions).mean() > shower_depth(e_plus).mean()
    f2 = layer_energies(pions)[:, 2] / np.maximum(layer_energies(pions).sum(1), 1e-9)
    assert f2.mean() > 0.02


# ---------------------------------------------------------------- reproducibility


def test_same_seed_same_showers_different_seed_different():
    a, b, c = (simulate_showers(200, "gamma", seed=s) for s in (7, 7, 8))
    for key in SHAPES:
        np.testing.assert_array_equal(a[key], b[key])
    assert not np.array_equal(a["layer_1"], c["layer_1"])
    assert not np.array_equal(a["energy"], c["energy"])


def test_chunks_use_independent_streams(monkeypatch):
    monkeypatch.setattr(synth, "CHUNK_EVENTS", 8)
    a = fixed(24, 10.0, seed=5)
    b = fixed(24, 10.0, seed=5)
    for key in SHAPES:
        np.testing.assert_array_equal(a[key], b[key])
    # Same energies, consecutive chunks: the streams must differ.
    assert not np.array_equal(a["layer_1"][:8], a["layer_1"][8:16])


def test_progress_bar_does_not_change_results():
    a = simulate_showers(30, seed=2)
    b = simulate_showers(30, seed=2, progress=True)
    np.testing.assert_array_equal(a["layer_0"], b["layer_0"])


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"n_events": 10, "particle": "muon"}, "particle"),
        ({"n_events": 0}, "n_events"),
        ({"n_events": 10, "seed": -1}, "seed"),
        ({"n_events": 10, "energy_range_gev": (50.0, 10.0)}, "energy_range_gev"),
        ({"n_events": 10, "energy_range_gev": (0.0, 10.0)}, "energy_range_gev"),
        ({"n_events": 10, "energies_gev": np.ones(9)}, "energies_gev"),
        ({"n_events": 2, "energies_gev": np.array([1.0, -1.0])}, "energies_gev"),
    ],
)
def test_simulate_rejects_bad_arguments(kwargs, name):
    with pytest.raises(ValueError, match=name):
        simulate_showers(**kwargs)


def test_make_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="particles"):
        make_calogan(tmp_path, events=5, particles=("eplus", "kaon"), progress=False)
    with pytest.raises(ValueError, match="events"):
        make_calogan(tmp_path, events=0, progress=False)
    assert not list(tmp_path.iterdir())


# ---------------------------------------------------------------- files


def test_make_calogan_round_trip(tmp_path):
    paths = make_calogan(tmp_path / "made", events=40, seed=11, particles=("eplus", "piplus"), progress=True)
    assert [p.name for p in paths] == ["eplus.hdf5", "piplus.hdf5"]
    seeds = []
    for path, particle in zip(paths, ("eplus", "piplus")):
        data = read_calogan(path)
        with h5py.File(path, "r") as f:
            attrs = dict(f.attrs)
        assert attrs["hepgen_made"] == "calogan"
        assert attrs["particle"] == particle
        assert attrs["events"] == 40
        assert attrs["seed"] == particle_seed(11, particle)
        seeds.append(int(attrs["seed"]))
        again = simulate_showers(40, particle, seed=int(attrs["seed"]))
        for key in SHAPES:
            assert data[key].shape == (40, *SHAPES[key])
            np.testing.assert_array_equal(data[key], again[key])
    assert seeds[0] != seeds[1]


def test_make_calogan_refuses_to_overwrite(tmp_path):
    (path,) = make_calogan(tmp_path, events=5, seed=0, progress=False)
    before = path.read_bytes()
    with pytest.raises(FileExistsError):
        make_calogan(tmp_path, events=5, seed=1, progress=False)
    assert path.read_bytes() == before
