"""Distribution distances and the classifier two-sample test on samples of known truth."""

import math

import numpy as np
import pytest
import torch
from scipy.stats import norm

from hepgen.metrics import ks_statistic, separation_power, two_sample_auc


@pytest.fixture
def rng():
    return np.random.default_rng(42)


def test_identical_samples_score_zero(rng):
    a = rng.normal(size=1000)
    assert ks_statistic(a, a) == 0.0
    assert separation_power(a, a) == 0.0


@pytest.mark.parametrize("shift", [-3.0, 3.0])
def test_disjoint_supports_score_one(rng, shift):
    a, b = rng.uniform(0, 1, 500), rng.uniform(0, 1, 700) + shift
    assert ks_statistic(a, b) == 1.0
    assert separation_power(a, b) == pytest.approx(1.0)


def test_separation_power_by_hand():
    # Quantile edges of a with 2 bins: 0, 1.5, 3. Bins [under, [0,1.5), [1.5,3], over]:
    # h_a = (0, 1/2, 1/2, 0), h_b = (0, 3/4, 0, 1/4).
    # S = 1/2 (1/16 / 5/4 + 1/4 / 1/2 + 1/16 / 1/4) = 1/2 (0.05 + 0.5 + 0.25) = 0.4.
    a, b = np.array([0.0, 1.0, 2.0, 3.0]), np.array([0.0, 0.0, 0.0, 5.0])
    assert separation_power(a, b, bins=2) == pytest.approx(0.4)


def test_separation_power_constant_reference():
    a = np.ones(100)
    assert separation_power(a, np.ones(10)) == 0.0
    assert separation_power(a, np.full(10, 2.0)) == pytest.approx(1.0)


def test_separation_power_bounded_and_small_for_same_distribution(rng):
    a, b = rng.normal(size=20_000), rng.normal(size=20_000)
    # Expected noise floor: about (bins + 2) / (2 n) = 0.0013.
    assert 0.0 <= separation_power(a, b) < 0.005
    c = rng.exponential(size=3000)
    assert 0.0 < separation_power(a, c) < 1.0


def test_ks_matches_analytic_shifted_gaussians(rng):
    n = m = 50_000
    a, b = rng.normal(0.0, 1.0, n), rng.normal(0.5, 1.0, m)
    truth = 2 * norm.cdf(0.25) - 1  # sup |Phi(x) - Phi(x - 0.5)| at x = 0.25: 0.1974
    tolerance = 3 * math.sqrt((n + m) / (n * m))  # a few times the KS sampling scale
    assert ks_statistic(a, b) == pytest.approx(truth, abs=tolerance)


def test_ks_same_distribution_noise(rng):
    a, b = rng.normal(size=20_000), rng.normal(size=20_000)
    assert ks_statistic(a, b) < 0.02  # Kolmogorov tail: P(D > 0.02) ~ 7e-4 at n = 20k


def test_empty_sample_rejected():
    with pytest.raises(ValueError):
        ks_statistic(np.array([]), np.ones(3))


def test_auc_same_distribution_near_half(rng):
    a, b = rng.normal(size=(8000, 5)), rng.normal(size=(8000, 5))
    # 2400 held-out events per class: AUC noise ~ sqrt(1/(6*2400)) = 0.008.
    assert two_sample_auc(a, b) == pytest.approx(0.5, abs=0.05)


def test_auc_shifted_gaussians_near_optimal(rng):
    d = 1.0
    a, b = rng.normal(0.0, 1.0, (10_000, 1)), rng.normal(d, 1.0, (10_000, 1))
    optimal = norm.cdf(d / math.sqrt(2))  # 0.760: AUC of the likelihood ratio
    assert two_sample_auc(a, b) == pytest.approx(optimal, abs=0.03)


def test_auc_deterministic_and_leaves_global_state_alone(rng):
    a, b = rng.normal(size=(1000, 3)), rng.normal(0.3, 1.0, (600, 3))
    torch_state, numpy_state = torch.get_rng_state(), np.random.get_state()
    n_threads = torch.get_num_threads()
    first = two_sample_auc(a, b, epochs=3, seed=7)
    assert torch.equal(torch.get_rng_state(), torch_state)
    assert np.random.get_state()[1].tolist() == numpy_state[1].tolist()
    assert torch.get_num_threads() == n_threads
    assert two_sample_auc(a, b, epochs=3, seed=7) == first


def test_auc_rejects_bad_input(rng):
    with pytest.raises(ValueError, match="feature counts"):
        two_sample_auc(rng.normal(size=(10, 2)), rng.normal(size=(10, 3)))
    with pytest.raises(ValueError, match="NaN"):
        two_sample_auc(np.full((10, 2), np.nan), rng.normal(size=(10, 2)))


def test_nan_counts_against_a_sample(rng):
    a = rng.normal(size=1000)
    b = a.copy()
    b[:100] = np.nan  # 10 % of b is unusable
    assert ks_statistic(a, b) == pytest.approx(0.1, abs=0.01)
    assert separation_power(a, b) > 0.05


def test_auc_trains_inside_inference_mode():
    """Lightning's test loop runs callbacks under inference mode; the classifier must still train."""
    rng = np.random.default_rng(0)
    with torch.inference_mode():
        auc = two_sample_auc(rng.normal(0, 1, (600, 1)), rng.normal(2, 1, (600, 1)), epochs=5)
    assert auc > 0.8


def test_density_chi2_divides_by_the_target_density():
    """sum_i (g_i - t_i)^2 / t_i over density histograms, worked by hand: 2 bins of width 1 on
    [-1, 1]; the target has 3 of 4 events in bin 0 (t = 0.75, 0.25), the generated sample one
    in each (g = 0.5, 0.5): 0.0625 / 0.75 + 0.0625 / 0.25 = 1/3 (0.125 without the division)."""
    from hepgen.metrics.distributions import density_chi2

    target = np.array([-0.75, -0.75, -0.75, 0.25])
    assert density_chi2(np.array([-0.5, 0.5]), target, bins=2) == pytest.approx(1 / 3, rel=1e-12)
    # an empty target bin counts with density 1e-6, as in the reference
    expected = 0.25 + (0.5 - 1e-6) ** 2 / 1e-6
    assert density_chi2(np.array([-0.5, 0.5]), np.array([-0.5, -0.5]), bins=2) == pytest.approx(expected, rel=1e-12)
    # asymmetric: the generated sample is not the denominator
    assert density_chi2(target, np.array([-0.5, 0.5]), bins=2) == pytest.approx(0.0625 / 0.5 * 2, rel=1e-12)
