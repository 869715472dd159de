"""Made CaloChallenge showers: the file layout, and physics checked against what the model predicts.

The expectations are derived from the shower model's formulas (:mod:`hepgen.synth.calogan`) by
quadrature, independently of the Monte Carlo: energy in a layer within a radius, per incident
energy, is (1 - albedo)·[(1 - f_far)·∫ Gamma(t; a, b)·F_lat(R; t/t_max) dt + f_far·ΔP_Gamma(a, b_far)·P_Cauchy(R)],
averaged over the t_max spread.
"""

from __future__ import annotations

import dataclasses
import hashlib

import h5py
import numpy as np
import pytest
from scipy.integrate import quad
from scipy.special import gammainc
from scipy.stats import gamma as gamma_dist

from hepgen.physics.calochallenge import VOXELS, CaloChallengeBinning, LayerBinning, load_binning
from hepgen.synth import calochallenge as cc
from hepgen.synth import calogan as mc
from hepgen.synth.calochallenge import make_calochallenge, simulate_calochallenge, simulate_chunk

# ---------------------------------------------------------------- the model's expectation by quadrature


def cauchy_disc(radius_mm: float, scale_mm: float) -> float:
    """P(x² + y² < R²) for the separable Cauchy far field: ∫ c(x)·P(|y| < √(R² - x²)) dx."""
    c = lambda x: scale_mm / np.pi / (x * x + scale_mm**2)  # noqa: E731
    inner = lambda x: c(x) * 2 / np.pi * np.arctan(np.sqrt(max(radius_mm**2 - x * x, 0.0)) / scale_mm)  # noqa: E731
    return 2 * quad(inner, 0, radius_mm, limit=200)[0]


def em_lateral_cdf(radius_mm, tau, moliere_mm):
    """Share of a spot's energy within radius_mm at relative depth τ: the two-component profile's CDF."""
    r_core = moliere_mm * (0.05 + 0.10 * tau)
    r_halo = moliere_mm * (0.50 + 0.20 * tau)
    p = np.clip(1.05 - 0.20 * tau, 0.2, 0.9)
    r2 = radius_mm**2
    return p * r2 / (r2 + r_core**2) + (1 - p) * r2 / (r2 + r_halo**2)


def expected_deposits(medium, depths_mm, radii_mm, energy_gev: float, particle: str) -> np.ndarray:
    """Mean energy per incident energy in each layer (depths (L, 2) mm) within each radius
    (radii (L, K) mm), before the readout threshold: (L, K). EM showers only."""
    radii = np.asarray(radii_mm, dtype=float)
    b, f_far = mc.PROFILE_SLOPE_B, medium.far_per_gev * medium.far_energy_mev / 1000.0
    deposited = (1 - mc.ALBEDO_FRACTION) * energy_gev
    t_lo, t_hi = medium.x0_between(np.zeros(1), np.asarray(depths_mm, float).reshape(-1))[0].reshape(-1, 2).T
    x, w = np.polynomial.legendre.leggauss(64)
    t = 0.5 * (t_hi - t_lo)[:, None] * x + 0.5 * (t_hi + t_lo)[:, None]  # (L, 64)
    wt = 0.5 * (t_hi - t_lo)[:, None] * w
    far_lateral = np.vectorize(lambda r: cauchy_disc(r, medium.far_scale_mm))(radii)
    nodes, weights = np.polynomial.hermite_e.hermegauss(40)  # t_max ~ N(mean, σ), clipped
    mean_t_max = np.log(deposited / medium.critical_gev) + mc.T_MAX_OFFSET_X0[particle]
    out = np.zeros(radii.shape)
    for node, weight in zip(nodes, weights / weights.sum()):
        t_max = max(mean_t_max + mc.T_MAX_SPREAD_X0 * node, mc.T_MAX_MIN_X0)
        a = 1 + b * t_max
        lateral = em_lateral_cdf(radii[:, None, :], (t / t_max)[:, :, None], medium.moliere_mm)
        main = (gamma_dist.pdf(t, a, scale=1 / b)[:, :, None] * wt[:, :, None] * lateral).sum(1)
        far = (gammainc(a, mc.FAR_SLOPE_B * t_hi) - gammainc(a, mc.FAR_SLOPE_B * t_lo))[:, None] * far_lateral
        out += weight * ((1 - f_far) * main + f_far * far)
    return (1 - mc.ALBEDO_FRACTION) * out


def outer_radii(binning: CaloChallengeBinning) -> np.ndarray:
    """(L, 1) outermost radial edge of each layer, mm."""
    return np.array([[layer.r_edges_mm[-1]] for layer in binning.layers])


def layer_energies(showers: np.ndarray, binning: CaloChallengeBinning) -> np.ndarray:
    """(N, L) energy per layer, MeV."""
    return np.stack([showers[:, s].sum(1) for s in binning.layer_slices], 1)


def response_tolerance(ratio: np.ndarray) -> float:
    """4 standard errors of the mean response, plus 0.3 % for the float32 spots and the quadrature."""
    return 4 * ratio.std() / np.sqrt(len(ratio)) + 0.003


# ---------------------------------------------------------------- samples

DS2_ENERGIES_GEV = (2.0, 20.0, 200.0)


@pytest.fixture(scope="module")
def ds2_fixed() -> dict[float, tuple[np.ndarray, np.ndarray]]:
    """300 ds2 electrons at each of 2, 20, 200 GeV (threshold applied, as in the files)."""
    return {e: simulate_calochallenge(300, "2", seed=1, energies_mev=np.full(300, 1000 * e)) for e in DS2_ENERGIES_GEV}


@pytest.fixture(scope="module")
def made_files(tmp_path_factory) -> dict[str, object]:
    out = tmp_path_factory.mktemp("calochallenge")
    sizes = {"1-photons": 600, "2": 40}
    return {ds: make_calochallenge(out / f"{ds}.hdf5", ds, events=n, seed=2, progress=False) for ds, n in sizes.items()}


# ---------------------------------------------------------------- format


@pytest.mark.parametrize("dataset", ["1-photons", "2"])
def test_file_layout_dtypes_and_attrs(made_files, dataset):
    binning = load_binning(dataset)
    with h5py.File(made_files[dataset]) as f:
        assert set(f) == {"incident_energies", "showers"}
        energies, showers = f["incident_energies"], f["showers"]
        n = f.attrs["events"]
        assert energies.shape == (n, 1) and showers.shape == (n, VOXELS[dataset]) == (n, binning.n_voxels)
        assert energies.dtype == np.float32 and showers.dtype == np.float32
        for ds in (energies, showers):
            assert ds.compression == "gzip"
            assert ds.chunks[1:] == ds.shape[1:] and ds.chunks[0] <= n  # chunked by whole events
        assert dict(f.attrs) == {"hepgen_made": "calochallenge", "dataset": dataset, "events": n, "seed": 2}
        e, s = energies[:], showers[:]
    assert np.all(np.isfinite(s)) and np.all(s >= 0)
    # the readout threshold: no voxel between 0 and threshold_mev
    assert s[s > 0].min() >= binning.threshold_mev
    lo, hi = binning.energy_range_mev
    assert e.min() >= lo and e.max() <= hi
    # each shower holds most of its energy (MeV against MeV)
    assert 0.5 < np.median(s.sum(1) / e[:, 0]) < 1.0


def test_file_is_the_simulation_and_never_overwritten(made_files):
    path = made_files["1-photons"]
    energies, showers = simulate_calochallenge(600, "1-photons", seed=2)
    with h5py.File(path) as f:
        np.testing.assert_array_equal(f["incident_energies"][:], energies)
        np.testing.assert_array_equal(f["showers"][:], showers)
    before = path.read_bytes()
    with pytest.raises(FileExistsError, match="never overwrites"):
        make_calochallenge(path, "1-photons", events=5, progress=False)
    assert path.read_bytes() == before
    assert [p.name for p in path.parent.iterdir() if p.name.endswith(".part")] == []


def test_large_files_are_streamed_in_the_same_layout(made_files, tmp_path, monkeypatch):
    # above IN_MEMORY_BYTES the maker writes chunk by chunk instead of through write_calochallenge
    monkeypatch.setattr(cc, "IN_MEMORY_BYTES", 0)
    streamed = make_calochallenge(tmp_path / "2.hdf5", "2", events=40, seed=2, progress=False)
    with h5py.File(made_files["2"]) as a, h5py.File(streamed) as b:
        assert dict(a.attrs) == dict(b.attrs)
        for key in ("incident_energies", "showers"):
            layout = lambda ds: (ds.dtype, ds.chunks, ds.compression)  # noqa: E731
            assert layout(a[key]) == layout(b[key])
            np.testing.assert_array_equal(a[key][:], b[key][:])


def test_bad_arguments():
    with pytest.raises(ValueError, match="unknown CaloChallenge dataset"):
        simulate_calochallenge(5, "4")
    with pytest.raises(ValueError, match="events"):
        make_calochallenge("unused.hdf5", "2", events=0)
    with pytest.raises(ValueError, match="energies_mev"):
        simulate_calochallenge(3, "2", energies_mev=[1e3, 1e4])


# ---------------------------------------------------------------- incident energies


def test_ds1_energies_are_exactly_the_15_discrete_values(made_files):
    with h5py.File(made_files["1-photons"]) as f:
        energies = f["incident_energies"][:, 0]
    discrete = np.array([2.0**k for k in range(8, 23)], dtype=np.float32)
    assert set(np.unique(energies)) == set(discrete)  # all 15 drawn in 600 events, nothing else
    # equal odds: 40 expected per value; a χ² with 14 degrees of freedom stays far below 50
    counts = np.array([(energies == e).sum() for e in discrete])
    assert ((counts - 40) ** 2 / 40).sum() < 50


def test_ds2_energies_are_log_uniform_from_1_gev_to_1_tev():
    energies = cc.draw_incident_energies(np.random.default_rng(0), load_binning("2"), 20_000)
    assert energies.dtype == np.float32
    u = np.log10(energies / 1e3) / 3  # uniform on [0, 1]
    assert u.min() >= 0 and u.max() <= 1
    assert abs(u.mean() - 0.5) < 0.01 and abs(u.std() - 1 / np.sqrt(12)) < 0.01


# ---------------------------------------------------------------- reproducibility


def test_same_seed_same_file_and_independent_of_how_chunks_are_run(tmp_path, monkeypatch):
    # small chunks so that 100 events span three of them
    spec = cc.DATASETS["1-photons"]
    monkeypatch.setitem(cc.DATASETS, "1-photons", dataclasses.replace(spec, chunk_events=40))
    a = make_calochallenge(tmp_path / "a.hdf5", "1-photons", events=100, seed=3, progress=False)
    b = make_calochallenge(tmp_path / "b.hdf5", "1-photons", events=100, seed=3, progress=False)
    c = make_calochallenge(tmp_path / "c.hdf5", "1-photons", events=100, seed=4, progress=False)
    read = lambda p: [h5py.File(p)[k][:] for k in ("incident_energies", "showers")]  # noqa: E731
    (ea, sa), (eb, sb), (_, sc) = read(a), read(b), read(c)
    np.testing.assert_array_equal(ea, eb)
    np.testing.assert_array_equal(sa, sb)
    assert not np.array_equal(sa, sc)
    # the chunks made one by one, last first, give the same rows
    parts = [simulate_chunk("1-photons", 3, i, n) for i, n in reversed(list(enumerate([40, 40, 20])))]
    np.testing.assert_array_equal(np.concatenate([p[1] for p in reversed(parts)]), sa)
    np.testing.assert_array_equal(np.concatenate([p[0] for p in reversed(parts)]), ea)


# Digests of simulate_showers(2050, particle, seed=5) (two chunks) made by the CaloGAN code *before*
# the shower MC was shared with the CaloChallenge maker (hepgen/synth/calogan.py with SHA-256
# 585318250ea7200c…, run on numpy 2.4.6): sha256 over the float32 bytes of energy, layer_0, layer_1,
# layer_2, overflow in that order, first 32 hex digits. make_calogan files of 3000 events per particle
# (seed 11) were also compared byte for byte before and after, and were identical.
CALOGAN_PRE_REFACTOR = {
    "eplus": "c4a31b8fd9a430fd03b583545e5c547b",
    "gamma": "1fdcc95c6f35132355950aaeb2bd525d",
    "piplus": "450fcac798a17bd649e14aa7cb9ea283",
}


@pytest.mark.parametrize("particle", sorted(CALOGAN_PRE_REFACTOR))
def test_calogan_made_data_bit_identical_to_before_the_shared_engine(particle):
    showers = mc.simulate_showers(2050, particle, seed=5)
    digest = hashlib.sha256()
    for key in ("energy", "layer_0", "layer_1", "layer_2", "overflow"):
        digest.update(np.ascontiguousarray(showers[key], dtype="<f4").tobytes())
    assert digest.hexdigest()[:32] == CALOGAN_PRE_REFACTOR[particle]


# ---------------------------------------------------------------- energy: sampling and leakage


@pytest.mark.parametrize("energy_gev", DS2_ENERGIES_GEV)
def test_ds2_electron_response_matches_the_containment_the_model_predicts(ds2_fixed, energy_gev):
    # Calibrated voxels (Si / 0.033): Σ voxels / E_inc = 1 - albedo - lateral leakage beyond 41.85 mm
    # (3.8 R_M) - longitudinal leakage beyond 36 X0 - the far field's tail; the 15 keV threshold
    # removes nothing measurable (visible hits are ≥ MeV).
    energies, showers = ds2_fixed[energy_gev]
    ratio = showers.sum(1) / energies[:, 0]
    spec = cc.DATASETS["2"]
    radii = outer_radii(spec.binning)
    expected = expected_deposits(spec.medium, spec.layer_depths_mm, radii, energy_gev, "eplus").sum()
    assert 0.9 < expected < 0.98
    assert abs(ratio.mean() - expected) < response_tolerance(ratio)
    # the stochastic term: σ/E ≈ 15 %/√E ⊕ 0.5 % (containment fluctuations add a little)
    sigma = np.hypot(0.15 / np.sqrt(energy_gev), 0.005)
    assert 0.85 * sigma < ratio.std() / ratio.mean() < 1.3 * sigma


@pytest.mark.parametrize("energy_mev", [2.0**14, 2.0**18])
def test_ds1_photon_response_matches_dead_material_and_leakage(energy_mev):
    # The photon files keep layers 0, 1, 2, 3, 12: what the shower leaves in the 1.5 X0 in front, the
    # dead slabs, the cryostat and Tile BC/D is lost. Compared before the 1 MeV threshold, which also
    # removes isolated far-field deposits (0.3 MeV each) at low energies.
    spec = cc.DATASETS["1-photons"]
    fixed = np.full(300, energy_mev)
    energies, showers = simulate_calochallenge(300, "1-photons", seed=4, energies_mev=fixed, threshold=False)
    ratio = showers.sum(1) / energies[:, 0]
    radii = outer_radii(spec.binning)
    expected = expected_deposits(spec.medium, spec.layer_depths_mm, radii, energy_mev / 1e3, "gamma")
    assert abs(ratio.mean() - expected.sum()) < response_tolerance(ratio)
    # per layer as well, and nearly all of what is recorded in the strips and the middle layer
    fractions = (layer_energies(showers, spec.binning) / energies).mean(0)
    np.testing.assert_allclose(fractions, expected[:, 0], atol=0.01)
    assert (fractions[1] + fractions[2]) / fractions.sum() > 0.93


def test_ds1_pions_reach_the_tile_and_photons_do_not():
    binning = load_binning("1-pions")
    _, pions = simulate_calochallenge(200, "1-pions", seed=5, energies_mev=np.full(200, 2.0**16))
    _, photons = simulate_calochallenge(200, "1-photons", seed=5, energies_mev=np.full(200, 2.0**16))
    tile = layer_energies(pions, binning)[:, 4:].sum(1) / pions.sum(1)
    # the Tile starts 1.76 λ_int in: e^-1.76 ≈ 17 % of pions interact only there, and the hadronic
    # part of the others (mean depth ≈ 1.3 λ_int after the interaction) reaches it too
    assert tile.mean() > 0.25
    assert layer_energies(photons, load_binning("1-photons"))[:, 4].sum() / photons.sum() < 0.03


# ---------------------------------------------------------------- longitudinal and lateral shape


def test_shower_depth_moves_deeper_with_log_energy(ds2_fixed):
    # ⟨t⟩ of the Gamma profile is a/b = 1/b + t_max, t_max = ln(E/E_c) + C: one X0 per e-fold of
    # energy for the main shower, b/b_far = 1.25 X0 for the far field (a share f_far of the energy).
    # A ds2 cell is 3.4 mm = CELL_MM / X0 radiation lengths.
    medium = cc.W_SI
    f_far = medium.far_per_gev * medium.far_energy_mev / 1000.0
    per_efold = ((1 - f_far) + f_far * mc.PROFILE_SLOPE_B / mc.FAR_SLOPE_B) * medium.x0_mm / cc.CELL_MM
    binning = load_binning("2")
    centre = {}
    for e, (_, showers) in ds2_fixed.items():
        layers = layer_energies(showers, binning)
        centre[e] = ((layers * np.arange(45)).sum(1) / layers.sum(1)).mean()
    assert centre[2.0] < centre[20.0] < centre[200.0]
    for lo, hi in ((2.0, 20.0), (20.0, 200.0)):
        assert centre[hi] - centre[lo] == pytest.approx(np.log(hi / lo) * per_efold, rel=0.06)


def test_ds1_photon_depth_moves_deeper_with_energy():
    spec = cc.DATASETS["1-photons"]
    depth_x0 = spec.medium.radiation_lengths(spec.layer_depths_mm.mean(1))  # layer centres, X0
    centres = []
    for energy in (2.0**10, 2.0**14, 2.0**18):
        _, showers = simulate_calochallenge(200, "1-photons", seed=6, energies_mev=np.full(200, energy))
        layers = layer_energies(showers, spec.binning)
        centres.append(((layers * depth_x0).sum(1) / layers.sum(1)).mean())
    assert centres[0] < centres[1] < centres[2]


def _rings_readout(medium: mc.Medium, depths_mm: np.ndarray) -> cc.ChallengeReadout:
    """Rings with edges at 0.25 ... 4 R_M of the medium (and a far outer edge) in every layer."""
    edges = tuple(float(v) for v in medium.moliere_mm * np.array([0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 100.0]))
    layers = tuple(LayerBinning(i, edges, 1) for i in range(len(depths_mm)))
    binning = CaloChallengeBinning("2", "electron", layers, 0.0, (1e3, 1e6))
    return cc.ChallengeReadout(binning, depths_mm, medium.far_scale_mm)


def test_lateral_spread_follows_the_moliere_radius():
    # Rings at fixed multiples of R_M, in three depth ranges (before, around and after the
    # maximum of a 20 GeV shower, t_max ≈ 7 X0): the energy share of every ring matches the
    # model's lateral CDF (with the far field's Cauchy at 1.8 R_M), in W/Si (R_M = 10.9 mm) and in a
    # medium whose only change is twice that R_M.
    energy_gev = 20.0
    base = cc.W_SI
    wide = dataclasses.replace(base, moliere_mm=2 * base.moliere_mm, far_scale_mm=2 * base.far_scale_mm)
    depths = base.x0_mm * np.array([[0.0, 4.0], [4.0, 10.0], [10.0, 36.0]])
    shares = {}
    for medium in (base, wide):
        readout = _rings_readout(medium, depths)
        rows = mc.simulate_rows(np.random.default_rng(7), np.full(300, energy_gev), "eplus", medium, readout)
        rings = rows.reshape(300, 3, -1).sum(0) / (300 * 1000 * energy_gev)  # (layer, ring) / E_inc
        edges = np.asarray(readout.binning.layers[0].r_edges_mm)
        cumulative = expected_deposits(medium, depths, np.tile(edges[1:], (3, 1)), energy_gev, "eplus")
        np.testing.assert_allclose(rings, np.diff(cumulative, prepend=0.0, axis=1), atol=0.006)
        shares[medium.moliere_mm] = rings
    # twice the Molière radius: the same shares in rings twice as wide
    np.testing.assert_allclose(shares[base.moliere_mm], shares[wide.moliere_mm], atol=0.004)
