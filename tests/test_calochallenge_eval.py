"""The CaloChallenge evaluation: high-level features, separation power, FPD/KPD, the DNN
classifier protocol and the CaloChallengeMetrics callback, on hand-made and toy showers."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import scipy.linalg
import torch
from matplotlib.figure import Figure

from callbacks import CaloChallengeMetrics
from callbacks.calochallenge import METRIC_TABLE_HEADER, metric_table
from hepgen.metrics.calo_classifier import (
    IsotonicCalibration,
    binary_cross_entropy,
    challenge_split,
    classifier_test,
    low_level_inputs,
    pool_adjacent_violators,
    train_classifier,
)
from hepgen.metrics.distributions import binned_separation_power
from hepgen.metrics.frechet import (
    frechet_distance,
    frechet_physics_distance,
    kernel_physics_distance,
    mmd_polynomial_unbiased,
)
from hepgen.physics.calochallenge import load_binning
from hepgen.physics.calochallenge_features import (
    feature_names,
    feature_vector,
    high_level_features,
    histogram_edges,
)

PHOTONS = load_binning("1-photons")  # layers 0 (8 r x 1 alpha), 1 (16 x 10), 2 (19 x 10), 3 (5 x 1), 12 (5 x 1)


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def voxel(binning, layer_id: int, alpha_bin: int, r_bin: int) -> int:
    """Index in the flat shower of voxel (alpha_bin, r_bin) of layer ``layer_id``."""
    index = [layer.layer_id for layer in binning.layers].index(layer_id)
    return binning.layer_slices[index].start + alpha_bin * binning.layers[index].n_r + r_bin


def toy_showers(binning, n: int, rng, width_mm: float = 20.0, response: float = 0.95):
    """Made showers: per layer an exponential radial profile with gamma-distributed voxels.

    Returns:
        (showers (n, n_voxels) float32 MeV, incident energies (n, 1) float32 MeV).
    """
    energies = np.asarray(binning.discrete_energies_mev)
    e_inc = rng.choice(energies, size=(n, 1))
    share = np.linspace(1.0, 2.0, len(binning.layers))
    share /= share.sum()
    parts = []
    for layer, fraction in zip(binning.layers, share):
        edges = np.asarray(layer.r_edges_mm)
        r_mid = np.tile(0.5 * (edges[1:] + edges[:-1]), layer.n_alpha)
        v = np.exp(-r_mid / width_mm) * rng.gamma(2.0, 0.5, (n, layer.n_voxels))
        parts.append(fraction * v / v.sum(axis=1, keepdims=True))
    showers = np.concatenate(parts, axis=1) * e_inc * rng.normal(response, 0.03, (n, 1))
    return showers.astype(np.float32), e_inc.astype(np.float32)


# ------------------------------------------------------------------------------ high-level features
def hand_made_shower():
    """One ds1-photon event with 5 lit voxels (one below the 1 MeV threshold) and E_inc = 256 MeV.

    Layer 1, radial bin 1 (2..4 mm, centre r = 3 mm): alpha bins 2 and 7 have centres -pi/2 and
    +pi/2, i.e. (x, y) = (0, -3) and (0, +3) mm, with 1 and 3 MeV; alpha bin 0 holds 0.5 MeV,
    below the threshold. Layer 0, radial bins 0 and 1 (centres 2.5 and 7.5 mm): 2 MeV each.
    """
    shower = np.zeros((1, PHOTONS.n_voxels), dtype=np.float32)
    shower[0, voxel(PHOTONS, 1, 2, 1)] = 1.0
    shower[0, voxel(PHOTONS, 1, 7, 1)] = 3.0
    shower[0, voxel(PHOTONS, 1, 0, 1)] = 0.5
    shower[0, voxel(PHOTONS, 0, 0, 0)] = 2.0
    shower[0, voxel(PHOTONS, 0, 0, 1)] = 2.0
    return shower, np.array([[256.0]], dtype=np.float32)


def test_high_level_features_of_a_hand_made_shower():
    f = {k: float(v[0]) for k, v in high_level_features(*hand_made_shower(), PHOTONS).items()}
    assert f["e_tot"] == pytest.approx(8.0)
    assert f["e_ratio"] == pytest.approx(8.0 / 256.0)
    assert f["e_layer_1"] == pytest.approx(4.0) and f["e_layer_0"] == pytest.approx(4.0)
    # layer 1: <y> = (-3 * 1 + 3 * 3) / 4, <y^2> = 9; x = 0 for both voxels; r = 3 mm for both
    assert f["ec_phi_1"] == pytest.approx(1.5)
    assert f["width_phi_1"] == pytest.approx(math.sqrt(9.0 - 1.5**2))
    assert f["ec_eta_1"] == pytest.approx(0.0, abs=1e-12) and f["width_eta_1"] == pytest.approx(0.0, abs=1e-6)
    assert f["ec_r_1"] == pytest.approx(3.0) and f["width_r_1"] == pytest.approx(0.0, abs=1e-6)
    assert f["sparsity_1"] == pytest.approx(1.0 - 2.0 / 160.0)  # the 0.5 MeV voxel is below threshold
    # layer 0 (one angular bin): <r> = 5 mm, width 2.5 mm; no eta/phi features
    assert f["ec_r_0"] == pytest.approx(5.0) and f["width_r_0"] == pytest.approx(2.5)
    assert f["sparsity_0"] == pytest.approx(1.0 - 2.0 / 8.0)
    assert "ec_eta_0" not in f and "width_phi_3" not in f
    # empty layers: 0 energy, centre and width 0 (the challenge's 1e-16 convention), sparsity 1
    for l in (2, 3, 12):
        assert f[f"e_layer_{l}"] == 0.0 and f[f"ec_r_{l}"] == 0.0 and f[f"width_r_{l}"] == 0.0
        assert f[f"sparsity_{l}"] == 1.0
    assert f["ec_eta_2"] == 0.0 and f["width_phi_2"] == 0.0


def test_threshold_off_keeps_the_soft_voxel():
    f = high_level_features(*hand_made_shower(), PHOTONS, threshold=False)
    assert f["e_layer_1"][0] == pytest.approx(4.5)
    assert f["sparsity_1"][0] == pytest.approx(1.0 - 3.0 / 160.0)


def test_feature_vector_order_and_size():
    shower, e_inc = hand_made_shower()
    features = high_level_features(shower, e_inc, PHOTONS)
    x = feature_vector(features, e_inc, PHOTONS)
    names = feature_names(PHOTONS)
    assert x.shape == (1, 30) == (1, len(names))
    column = dict(zip(names, x[0]))
    assert column["log10(e_inc)"] == pytest.approx(math.log10(256.0))
    assert column["log10(e_layer_1 + 1e-8)"] == pytest.approx(math.log10(4.0))
    assert column["log10(e_layer_3 + 1e-8)"] == pytest.approx(-8.0)
    assert column["ec_phi_1/100"] == pytest.approx(0.015)
    assert column["log10(e_tot + 1e-8)"] == pytest.approx(math.log10(8.0))
    assert column["ec_r_0/100"] == pytest.approx(0.05)
    # the challenge's block order: E_inc, E_layer, EC_eta, EC_phi, widths, E_tot, sparsity, EC_r, width_r
    assert names[:7] == ["log10(e_inc)", *(f"log10(e_layer_{l} + 1e-8)" for l in (0, 1, 2, 3, 12)), "ec_eta_1/100"]
    assert names[13:16] == ["width_phi_2/100", "log10(e_tot + 1e-8)", "sparsity_0"]
    pions, ds2 = load_binning("1-pions"), load_binning("2")
    assert len(feature_names(pions)) == 1 + 7 + 4 * 4 + 1 + 3 * 7
    assert len(feature_names(ds2)) == 1 + 45 + 4 * 45 + 1 + 3 * 45


# ------------------------------------------------------------------------------- separation power
def test_binned_separation_power_limits_and_value():
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, 1000)
    edges = np.linspace(0, 1, 11)
    assert binned_separation_power(x, x, edges) == 0.0
    assert binned_separation_power(x, x + 2.0, np.linspace(0, 3, 31)) == pytest.approx(1.0)
    # h_a = (1/2, 1/2), h_b = (1, 0): S = 1/2 (0.25 / 1.5 + 0.25 / 0.5) = 1/3
    assert binned_separation_power([0.2, 0.7], [0.1, 0.3], [0.0, 0.5, 1.0]) == pytest.approx(1.0 / 3.0)
    # values outside the edges and NaN are dropped, as the challenge's histograms drop them
    assert binned_separation_power([0.2, 0.7, 5.0], [0.2, 0.7, np.nan], [0.0, 0.5, 1.0]) == 0.0
    assert math.isnan(binned_separation_power(x, x + 5.0, edges))


def test_histogram_edges_follow_the_challenge():
    ref = np.array([0.0, 3.0, 400.0])
    assert np.allclose(histogram_edges("e_ratio", ref, PHOTONS), np.linspace(0.5, 1.5, 101))
    e_layer = histogram_edges("e_layer_1", ref, PHOTONS)
    assert len(e_layer) == 40 and e_layer[0] == pytest.approx(1.0) and e_layer[-1] == pytest.approx(400.0)
    assert histogram_edges("e_layer_1", np.zeros(3), PHOTONS) is None
    assert histogram_edges("ec_eta_1", ref, PHOTONS)[[0, -1]].tolist() == [-100.0, 100.0]
    assert histogram_edges("width_r_12", ref, PHOTONS)[[0, -1]].tolist() == [0.0, 1500.0]
    assert histogram_edges("ec_phi_12", ref, load_binning("1-pions"))[[0, -1]].tolist() == [-500.0, 500.0]
    assert histogram_edges("width_eta_5", ref, load_binning("2"))[[0, -1]].tolist() == [0.0, 30.0]
    assert len(histogram_edges("sparsity_0", ref, PHOTONS)) == 21
    assert histogram_edges("e_tot", ref, PHOTONS) is None


# ---------------------------------------------------------------------------------------- FPD, KPD
def test_frechet_distance_matches_the_closed_form():
    # diagonal covariances: d^2 = |mu1 - mu2|^2 + sum (sqrt(a) - sqrt(b))^2
    a, b = np.array([1.0, 4.0, 9.0]), np.array([4.0, 1.0, 9.0])
    mu1, mu2 = np.zeros(3), np.array([1.0, 2.0, 0.0])
    expected = 5.0 + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected)
    # general covariances: the textbook formula with scipy's matrix square root
    rng = np.random.default_rng(1)
    m1, m2 = rng.normal(size=(4, 4)), rng.normal(size=(4, 4))
    s1, s2 = m1 @ m1.T + 0.1 * np.eye(4), m2 @ m2.T + 0.1 * np.eye(4)
    textbook = np.trace(s1 + s2 - 2 * scipy.linalg.sqrtm(s1 @ s2).real) + 1.0
    assert frechet_distance(np.zeros(4), s1, np.eye(4)[0], s2) == pytest.approx(textbook, rel=1e-8)


FPD_SIZES = dict(min_samples=500, max_samples=2000, num_batches=5, num_points=5)


def test_fpd_is_zero_for_one_distribution_and_delta_squared_for_a_shift():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(4000, 3)), rng.normal(size=(4000, 3))
    value, error = frechet_physics_distance(x, y, **FPD_SIZES)
    assert value >= 0 and value < 3 * error + 1e-3
    delta = 0.5
    shifted, shift_error = frechet_physics_distance(x, y + [delta, 0, 0], normalise=False, **FPD_SIZES)
    assert shifted == pytest.approx(delta**2, abs=max(3 * shift_error, 0.01))


def test_fpd_scales_features_by_the_reference_maximum():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(3000, 2)), rng.normal(size=(3000, 2)) + [0.5, 0.0]
    scale = np.array([1000.0, 0.001])
    assert frechet_physics_distance(x * scale, y * scale, **FPD_SIZES)[0] == pytest.approx(
        frechet_physics_distance(x, y, **FPD_SIZES)[0], rel=1e-6
    )


def test_mmd_matches_the_direct_sum():
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(50, 3)), rng.normal(size=(40, 3)) + 0.3

    def k(a, b):
        return (a @ b.T / 3 + 1.0) ** 4

    kxx, kyy = k(x, x), k(y, y)
    direct = (
        (kxx.sum() - np.trace(kxx)) / (50 * 49) + (kyy.sum() - np.trace(kyy)) / (40 * 39) - 2 * k(x, y).mean()
    )
    assert mmd_polynomial_unbiased(x, y, block=7) == pytest.approx(direct, rel=1e-10)


def test_kpd_is_zero_for_one_distribution_and_grows_with_a_shift():
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(3000, 3)), rng.normal(size=(3000, 3))
    same, same_err = kernel_physics_distance(x, y, batch_size=500)
    assert abs(same) < 3 * same_err + 1e-4
    small = kernel_physics_distance(x, y + 0.2, batch_size=500)[0]
    large, large_err = kernel_physics_distance(x, y + 1.0, batch_size=500)
    assert large > small > 0 and large > 5 * large_err


# ------------------------------------------------------------------------------------- classifier
def test_pava_and_isotonic_calibration():
    y = np.array([1.0, 3.0, 2.0, 2.0, 5.0, 4.0])
    fitted = pool_adjacent_violators(y, np.ones_like(y))
    assert np.all(np.diff(fitted) >= 0)
    assert np.allclose(fitted, [1.0, 7 / 3, 7 / 3, 7 / 3, 4.5, 4.5])
    scipy_isotonic = pytest.importorskip("scipy.optimize").isotonic_regression
    rng = np.random.default_rng(6)
    noisy, weights = rng.normal(size=200).cumsum(), rng.uniform(0.5, 2.0, 200)
    assert np.allclose(pool_adjacent_violators(noisy, weights), scipy_isotonic(noisy, weights=weights).x)

    # an over-confident score sigmoid(3 z) of the true probability sigmoid(z)
    z = rng.normal(0, 1.5, 20_000)
    label = (rng.uniform(size=z.size) < 1 / (1 + np.exp(-z))).astype(float)
    score = 1 / (1 + np.exp(-3 * z))
    calibration = IsotonicCalibration().fit(score[:10_000], label[:10_000])
    calibrated = calibration.predict(score[10_000:])
    assert np.all(np.diff(calibration.predict(np.linspace(0, 1, 101))) >= 0)
    assert calibrated.min() >= 1e-6 and calibrated.max() <= 1 - 1e-6
    held_out = label[10_000:]
    assert binary_cross_entropy(calibrated, held_out) < binary_cross_entropy(score[10_000:], held_out) - 0.05


TINY_DNN = dict(hidden=32, n_layer=1, epochs=4, batch_size=100, lr=1e-3)


def test_classifier_auc_half_for_one_distribution_and_one_for_separated():
    rng = np.random.default_rng(7)
    x_ref, x_gen = rng.normal(size=(2000, 4)), rng.normal(size=(2000, 4))
    same = train_classifier(x_ref, x_gen, seed=0, **TINY_DNN)
    assert same.n_val == 400
    assert abs(same.auc - 0.5) < 4 * math.sqrt(1 / (6 * same.n_val))
    assert abs(same.jsd) < 0.05
    apart = train_classifier(x_ref, x_gen + 3.0, seed=0, **TINY_DNN)
    assert apart.auc > 0.97 and apart.jsd > 0.7 and 1 <= apart.best_epoch <= TINY_DNN["epochs"]


def test_classifier_is_deterministic_and_restores_the_global_rng():
    rng = np.random.default_rng(8)
    x_ref, x_gen = rng.normal(size=(600, 3)), rng.normal(size=(500, 3)) + 0.5
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    first = classifier_test(x_ref, x_gen, repeats=2, **TINY_DNN)
    assert torch.equal(torch.rand(3), expected_next)
    assert first == classifier_test(x_ref, x_gen, repeats=2, **TINY_DNN)
    assert first["auc_std"] > 0 and set(first) >= {"auc", "auc_std", "jsd", "jsd_std"}


def test_challenge_split_and_low_level_inputs():
    assert challenge_split("1-photons") == pytest.approx((80 / 121, 20 / 121, 21 / 121))
    assert challenge_split(None) == (0.6, 0.2, 0.2)
    shower, e_inc = hand_made_shower()
    x = low_level_inputs(shower, e_inc, threshold_mev=1.0)
    assert x.shape == (1, 1 + PHOTONS.n_voxels) and x.dtype == np.float32
    assert x[0, 0] == pytest.approx(math.log10(256.0))
    assert x[0, 1 + voxel(PHOTONS, 1, 7, 1)] == pytest.approx(3.0 / 256.0)
    assert x[0, 1 + voxel(PHOTONS, 1, 0, 1)] == 0.0  # below threshold


# --------------------------------------------------------------------------------------- callback
SMALL = dict(
    classifier_repeats=2, classifier_epochs=2, classifier_hidden=16, classifier_layers=1, classifier_batch_size=200,
    fpd_min_samples=300, fpd_max_samples=1000, kpd_batch_size=300,
)  # fmt: skip


def samples(n: int = 1500):
    rng = np.random.default_rng(9)
    ref = dict(zip(("showers", "incident_energies"), toy_showers(PHOTONS, n, rng)))
    gen = dict(zip(("showers", "incident_energies"), toy_showers(PHOTONS, n, rng, width_mm=25.0, response=0.9)))
    return ref, gen


def test_callback_compute_returns_the_documented_finite_metrics():
    ref, gen = samples()
    values = CaloChallengeMetrics(dataset="1-photons", **SMALL).compute(ref, gen, "test")
    layers = [layer.layer_id for layer in PHOTONS.layers]
    expected = {"sep/e_ratio", "sep/voxel_energy", "fpd_x1e3", "fpd_x1e3_err", "kpd_x1e3", "kpd_x1e3_err"}
    expected |= {f"sep/{g}_{l}" for g in ("e_layer", "sparsity", "ec_r", "width_r") for l in layers}
    expected |= {f"sep/{g}_{l}" for g in ("ec_eta", "ec_phi", "width_eta", "width_phi") for l in (1, 2)}
    expected |= {f"sep_mean/{g}" for g in ("e_layer", "ec_eta", "width_r", "sparsity")}
    expected |= {f"{c}/{k}" for c in ("cls_low", "cls_high") for k in ("auc", "auc_std", "jsd", "jsd_std")}
    expected |= {f"sep/e_ratio_at_{2**k}mev" for k in range(8, 23)}
    assert expected <= set(values)
    assert all(np.isfinite(v) for v in values.values())
    # the generated response is 0.9 instead of 0.95: E_tot/E_inc separates clearly
    assert values["sep/e_ratio"] > 0.3 and values["fpd_x1e3"] > values["fpd_x1e3_err"]


def test_callback_validation_skips_the_costly_metrics_and_finds_the_binning():
    ref, gen = samples(400)
    metric = CaloChallengeMetrics(**SMALL)  # no dataset: the datamodule's binning
    trainer = SimpleNamespace(datamodule=SimpleNamespace(binning=PHOTONS))
    metric.before_compute(trainer, SimpleNamespace(device=torch.device("cpu")), 400)
    values = metric.compute(ref, gen, "val")
    assert "sep/e_ratio" in values and not any(k.startswith(("cls_", "fpd", "kpd")) for k in values)
    # without dataset or datamodule, the voxel count names the dataset
    assert CaloChallengeMetrics(**SMALL)._binning(368).dataset == "1-photons"
    with pytest.raises(ValueError, match="533 voxels"):
        CaloChallengeMetrics(dataset="1-photons")._binning(533)


def test_callback_figures():
    ref, gen = samples(300)
    figures = CaloChallengeMetrics(dataset="1-photons", max_plotted_layers=3).figures(ref, gen, "val")
    assert {"hlf_e_layer", "hlf_ec_eta", "hlf_sparsity", "hlf_totals", "e_ratio_per_energy", "mean_shower"} <= set(
        figures
    )
    assert all(isinstance(f, Figure) for f in figures.values())
    assert len(figures["hlf_e_layer"].axes) == 3


def test_metric_table_row():
    values = {
        "test/cls_low/auc": 0.8891, "test/cls_low/auc_std": 0.0031, "test/cls_high/auc": 0.966,
        "test/cls_high/auc_std": 0.002, "test/fpd_x1e3": 14.59, "test/fpd_x1e3_err": 0.17,
    }  # fmt: skip
    row = metric_table(values, name="CaloVAE")
    assert row == "| CaloVAE | 0.889 ± 0.0031 | 0.966 ± 0.002 | 14.6 ± 0.17 | – |"
    assert metric_table(values, header=True).startswith(METRIC_TABLE_HEADER)
