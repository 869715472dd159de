"""Path metrics against known truth, and the PathMetrics callback against a mocked Trainer.

Known truths: the signature of a straight line, the shuffle identity, Levy areas worked by
hand, Chen's identity; W1 by hand and of shifted samples; the autocovariance of an AR(1)
process. The callback sees a fake module implementing only ``evaluation_samples`` with OU-like
paths (30 % of the reference missing) and a generator whose offset from them is known.
"""

from __future__ import annotations

import math
from itertools import accumulate
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from callbacks import PathMetrics
from hepgen.io.timeseries import fill_missing
from hepgen.metrics.classifier import two_sample_accuracy
from hepgen.metrics.paths import (
    autocovariance,
    ensemble_mean,
    marginal_w1,
    mean_autocov_error,
    signature,
    signature_mmd,
    wasserstein_1d,
)
from tests.test_callbacks_contract import FakeModule, mock_trainer, read_metrics, run_epoch


def ou_paths(n: int, length: int = 32, drift: float = 0.0, generator: torch.Generator | None = None) -> torch.Tensor:
    """OU-like paths (n, length, 1), as the SDE-GAN reference's data: start uniform on [-1, 1],
    dy = (0.02 t - 0.1 y + drift) dt + 0.4 dW, unit steps (Euler-Maruyama)."""
    generator = generator or torch.Generator().manual_seed(0)
    y = 2 * torch.rand(n, generator=generator, dtype=torch.float64) - 1
    steps = [y]
    for t in range(length - 1):
        y = y + (0.02 * t - 0.1 * y + drift) + 0.4 * torch.randn(n, generator=generator, dtype=torch.float64)
        steps.append(y)
    return torch.stack(steps, dim=1)[:, :, None]


def levels(sig: np.ndarray, channels: int, depth: int) -> list[np.ndarray]:
    """Split a flat signature (N, F) into its levels, level k shaped (N, D, ..., D)."""
    sizes = [channels**k for k in range(1, depth + 1)]
    parts = np.split(sig, list(accumulate(sizes))[:-1], axis=1)
    return [p.reshape(len(sig), *([channels] * k)) for k, p in enumerate(parts, start=1)]


# --------------------------------------------------------------------- signature


def test_signature_of_a_straight_line_is_the_tensor_exponential():
    delta = np.array([0.5, -1.0, 2.0])
    # unevenly spaced points on one line: a reparametrisation, joined with Chen's identity
    path = np.array([1.0, 1.0, 1.0]) + np.array([0.0, 0.1, 0.15, 0.6, 1.0])[:, None] * delta
    for k, level in enumerate(levels(signature(path[None], 4), 3, 4), start=1):
        power = delta
        for _ in range(k - 1):
            power = np.multiply.outer(power, delta)
        np.testing.assert_allclose(level[0], power / math.factorial(k), rtol=1e-12, atol=1e-14)


def test_level_two_symmetric_part_is_half_the_increment_squared():
    path = np.random.default_rng(0).normal(size=(4, 9, 3)).cumsum(axis=1)
    s1, s2 = levels(signature(path, 2), 3, 2)
    symmetric = (s2 + s2.transpose(0, 2, 1)) / 2
    np.testing.assert_allclose(symmetric, np.einsum("ni,nj->nij", s1, s1) / 2, rtol=1e-12)
    np.testing.assert_allclose(s1, path[:, -1] - path[:, 0], rtol=1e-12)


@pytest.mark.parametrize(
    ("points", "area"),
    [
        ([[0, 0], [1, 0], [1, 1], [0, 1], [0, 0]], 1.0),  # unit square, anticlockwise
        ([[0, 0], [1, 0], [0, 1], [0, 0]], 0.5),  # right triangle, anticlockwise
        ([[0, 0], [0, 1], [1, 0], [0, 0]], -0.5),  # the same, clockwise
    ],
)
def test_level_two_antisymmetric_part_is_the_levy_area(points, area):
    """For a closed loop S^2 = [[0, A], [-A, 0]], A the signed enclosed area: e.g. for the square
    S^{12} = int x dy = 1 (right side) and S^{21} = int y dx = -1 (top side, leftwards)."""
    _, s2 = levels(signature(np.array(points, dtype=float)[None], 2), 2, 2)
    np.testing.assert_allclose(s2[0], [[0.0, area], [-area, 0.0]], atol=1e-15)


def tensor_product(a: list[np.ndarray], b: list[np.ndarray]) -> list[np.ndarray]:
    """Truncated tensor-algebra product of two signatures given as levels (level 0 = 1)."""
    one = np.ones(())
    a, b = [one, *a], [one, *b]
    return [sum(np.multiply.outer(a[i], b[k - i]) for i in range(k + 1)) for k in range(1, len(a))]


def test_chen_identity_signature_of_a_concatenation():
    rng = np.random.default_rng(1)
    first = rng.normal(size=(5, 2)).cumsum(axis=0)
    second = first[-1] + np.concatenate([np.zeros((1, 2)), rng.normal(size=(3, 2)).cumsum(axis=0)])
    whole = np.concatenate([first, second[1:]])  # second starts where first ends
    depth = 4
    sig = [levels(signature(p[None], depth), 2, depth) for p in (first, second, whole)]
    expected = tensor_product([x[0] for x in sig[0]], [x[0] for x in sig[1]])
    for got, want in zip(sig[2], expected):
        np.testing.assert_allclose(got[0], want, rtol=1e-10, atol=1e-12)


def test_signature_rejects_bad_input():
    with pytest.raises(ValueError, match="depth"):
        signature(np.zeros((1, 3, 2)), 0)
    with pytest.raises(ValueError, match="non-empty"):
        signature(np.zeros((3, 2)), 2)


# --------------------------------------------------------------------- filling and the MMD


def test_signature_mmd_is_unbiased_and_grows_with_the_drift_change():
    """Over independent pairs of one process the MMD^2 estimates scatter around 0 (a skewed
    distribution, heavy right tail: 200 pairs gave mean 0.014 +- 0.023, std 0.32), so their mean
    over 40 pairs lies within 3 standard errors of 0; a drift change moves it far above that
    scatter, and more so the larger the change (same noise for every drift)."""
    def pair(seed: int, drift: float) -> float:
        x = ou_paths(100, 16, generator=torch.Generator().manual_seed(2 * seed)).numpy()
        y = ou_paths(100, 16, drift, torch.Generator().manual_seed(2 * seed + 1)).numpy()
        return signature_mmd(x, y)

    null = np.array([pair(seed, 0.0) for seed in range(40)])
    assert abs(null.mean()) < 3 * null.std() / math.sqrt(len(null))
    shifted = [pair(0, drift) for drift in (0.05, 0.1, 0.2)]
    assert shifted[0] < shifted[1] < shifted[2]
    assert shifted[1] > 5 * null.std()


def test_signature_mmd_does_not_depend_on_units():
    """Values standardised and times scaled by the reference's statistics: changing the units
    (an affine map of values and of times, the same for both samples) changes nothing."""
    x = ou_paths(60, 12, generator=torch.Generator().manual_seed(3)).numpy()
    y = ou_paths(60, 12, 0.1, torch.Generator().manual_seed(4)).numpy()
    times = np.broadcast_to(np.arange(12.0), (60, 12))
    value = signature_mmd(x, y, depth=4)
    changed = signature_mmd(1e3 * x - 7.0, 1e3 * y - 7.0, depth=4, x_times=60 * times + 5, y_times=60 * times + 5)
    assert changed == pytest.approx(value, rel=1e-6)
    assert math.isnan(signature_mmd(x, np.where(y > 1, np.nan, y)))  # a diverged generator
    with pytest.raises(ValueError, match="fill missing"):
        signature_mmd(np.where(x > 1, np.nan, x), y)


# --------------------------------------------------------------------- marginals


def test_wasserstein_by_hand():
    # quantile functions: a = 0 | 1 | 3 on thirds, b = 1 | 2 on halves; |difference| = 1 on
    # (0, 1/3), 0 on (1/3, 1/2), 1 on (1/2, 2/3), 1 on (2/3, 1): W1 = 1/3 + 1/6 + 1/3
    assert wasserstein_1d(np.array([0.0, 1.0, 3.0]), np.array([1.0, 2.0])) == pytest.approx(5 / 6, rel=1e-14)
    assert wasserstein_1d(np.array([0.0, 1.0]), np.array([0.5])) == pytest.approx(0.5, rel=1e-14)
    a = np.random.default_rng(5).normal(size=101)
    assert wasserstein_1d(a, a) == 0.0
    assert wasserstein_1d(a, a + 0.3) == pytest.approx(0.3, rel=1e-12)


def test_wasserstein_of_shifted_gaussians_is_the_shift():
    """W1(N(0,1), N(mu,1)) = |mu|. For samples a, b of N(0,1), the triangle inequality bounds
    |W1(a, b + mu) - |mu|| = |W1(a, b + mu) - W1(b, b + mu)| <= W1(a, b), measured here."""
    rng = np.random.default_rng(6)
    a, b = rng.normal(size=20_000), rng.normal(size=15_000)
    floor = wasserstein_1d(a, b)
    assert floor < 0.05  # sampling noise, O(1 / sqrt(n))
    for mu in (-1.5, 0.2, 1.0):
        assert abs(wasserstein_1d(a, b + mu) - abs(mu)) <= floor + 1e-12


def test_marginal_w1_ignores_missing_reference_values():
    rng = np.random.default_rng(7)
    reference, generated = rng.normal(size=(50, 4, 2)), rng.normal(0.5, 1.0, size=(40, 4, 2))
    reference[::3, 1, 0] = np.nan
    reference[:, 2, 1] = np.nan  # never observed at t = 2: nothing to compare
    generated[0, 3, 1] = np.inf  # a diverged generated value
    w1 = marginal_w1(reference, generated, [0, 1, 2, 3])
    assert w1.shape == (4, 2)
    observed = reference[:, 1, 0][~np.isnan(reference[:, 1, 0])]
    assert w1[1, 0] == wasserstein_1d(observed, generated[:, 1, 0])
    assert np.isnan(w1[2, 1]) and np.isnan(w1[3, 1])
    assert np.isfinite(np.delete(w1.ravel(), [5, 7])).all()


# --------------------------------------------------------------------- moments


def ar1_paths(n: int, length: int, phi: float, seed: int) -> np.ndarray:
    """Stationary AR(1), X_{t+1} = phi X_t + sqrt(1 - phi^2) eps: Var X = 1, gamma(k) = phi^k."""
    rng = np.random.default_rng(seed)
    x = np.empty((n, length, 1))
    x[:, 0, 0] = rng.normal(size=n)
    for t in range(1, length):
        x[:, t, 0] = phi * x[:, t - 1, 0] + math.sqrt(1 - phi**2) * rng.normal(size=n)
    return x


def test_autocovariance_of_ar1_is_phi_to_the_lag():
    """Each gamma(k, t) is a mean of n products X_t X_{t+k}, of variance 1 + phi^2k <= 2 for
    Gaussians: 4 standard errors are 4 sqrt(2 / n) = 0.08 at n = 5000 (the mean over t only
    narrows it)."""
    phi, n = 0.7, 5000
    x = ar1_paths(n, 20, phi, seed=8)
    np.testing.assert_allclose(autocovariance(x, 5)[:, 0], phi ** np.arange(1, 6), atol=4 * math.sqrt(2 / n))
    np.testing.assert_allclose(ensemble_mean(x)[:, 0], 0.0, atol=4 / math.sqrt(n))
    # missing values at random: pairwise-complete covariances stay unbiased
    x[np.random.default_rng(9).random(x.shape) < 0.3] = np.nan
    np.testing.assert_allclose(autocovariance(x, 5)[:, 0], phi ** np.arange(1, 6), atol=4 * math.sqrt(2 / (0.49 * n)))


def test_mean_autocov_error_of_a_shift_and_of_another_process():
    x = ar1_paths(2000, 16, 0.7, seed=10)
    mean_err, autocov_err = mean_autocov_error(x, x + 0.25, max_lag=3)
    assert mean_err == pytest.approx([0.25], rel=1e-12)  # a shift moves the mean only
    assert autocov_err == pytest.approx([0.0], abs=1e-12)

    y = ar1_paths(2000, 16, 0.3, seed=11)
    _, autocov_err = mean_autocov_error(x, y, max_lag=3)
    expected = np.mean(np.abs(0.7 ** np.arange(1, 4) - 0.3 ** np.arange(1, 4)))  # 0.415
    # two independent estimates, each within 4 standard errors (see the test above)
    assert autocov_err[0] == pytest.approx(expected, abs=2 * 4 * math.sqrt(2 / 2000))
    assert np.isnan(mean_autocov_error(x, np.where(y > 2, np.nan, y), 3)[0]).all()


# --------------------------------------------------------------------- the classifier accuracy


def test_two_sample_accuracy_near_half_for_one_distribution_and_one_for_separated():
    """Held-out labels are independent of the features when both samples come from one
    distribution, whatever the network learnt: accuracy 0.5 +- 0.5 / sqrt(2 n_test), 0.014 for
    n_test = 600 per class; 4 of those is the tolerance."""
    rng = np.random.default_rng(12)
    a, b = rng.normal(size=(2000, 4)), rng.normal(size=(2000, 4))
    assert two_sample_accuracy(a, b, epochs=5) == pytest.approx(0.5, abs=4 * 0.5 / math.sqrt(1200))
    assert two_sample_accuracy(a, b + 3.0, epochs=5) > 0.95


# --------------------------------------------------------------------- the callback


class PathModule(FakeModule):
    """reference: the batch's OU paths with its missing values; generated: the same paths + shift,
    or (``independent``) new paths of the same process drawn with the evaluation generator."""

    def __init__(self, shift: float = 0.0, independent: bool = False) -> None:
        super().__init__()
        self.shift, self.independent = shift, independent

    def evaluation_samples(self, batch, generator):
        clean = batch["paths"]
        if self.independent:
            generated = ou_paths(len(clean), clean.shape[1], generator=generator)
        else:
            generated = clean + self.shift
        reference = clean.masked_fill(batch["missing"], float("nan"))
        filled = torch.from_numpy(fill_missing(reference.numpy(), batch["times"].numpy()))
        return {"values": (reference, generated), "filled": (filled, generated), "times": (batch["times"],) * 2}


def ou_batches(n: int, batch_size: int, length: int = 32, seed: int = 0) -> list[dict]:
    """OU paths with 30 % of the values missing at random, in batches."""
    generator = torch.Generator().manual_seed(seed)
    paths = ou_paths(n, length, generator=generator)
    missing = torch.rand(paths.shape, generator=generator) < 0.3
    times = torch.arange(length, dtype=torch.float64).expand(n, length)
    data = {"paths": paths, "missing": missing, "times": times}
    return [{k: v[i : i + batch_size] for k, v in data.items()} for i in range(0, n, batch_size)]


def logged_values(module, stage: str = "val") -> dict[str, float]:
    return {k.removeprefix(f"{stage}/"): v for k, v in module.logged.items()}


def test_default_marginal_times_are_the_papers_on_64_points():
    metric = PathMetrics()
    assert metric.marginal_indices(np.arange(64.0)[None])[1] == [6, 19, 32, 44, 57]
    assert metric.marginal_indices(np.arange(32.0)[None])[1] == [3, 9, 16, 22, 28]
    assert PathMetrics(marginal_times=[2.4, 10.0, 9.8]).marginal_indices(np.arange(16.0)[None])[1] == [2, 10]


def test_path_metrics_see_a_known_shift_through_missing_values(tmp_path):
    """generated = reference + delta: W1(real, real + delta) = |delta| exactly for the full
    sample; the real marginal lacks its 30 % missing values, which moves W1 by at most
    W1(observed, full) (triangle inequality), i.e. the value for delta = 0."""
    batches = ou_batches(200, 50)
    metric, module = PathMetrics(max_events=200), PathModule(shift=0.5)
    run_epoch(metric, mock_trainer(tmp_path), module, batches)
    shifted = logged_values(module)
    unshifted = metric.compute(*metric.samples(PathModule(), batches), "val")
    times = [3, 9, 16, 22, 28]
    expected = {*(f"w1/t{t}" for t in times), "w1_mean", "mean_abs_err", "autocov_abs_err", "sig_mmd"}
    assert set(shifted) == set(unshifted) == expected
    assert all(math.isfinite(v) for v in (*shifted.values(), *unshifted.values()))
    for t in times:
        floor = unshifted[f"w1/t{t}"]
        assert floor < 0.1
        assert abs(shifted[f"w1/t{t}"] - 0.5) <= floor + 1e-9
    assert shifted["mean_abs_err"] == pytest.approx(0.5, abs=unshifted["mean_abs_err"] + 1e-9)
    assert unshifted["autocov_abs_err"] < 0.05
    # same paths, same missing values: equal signatures, where the unbiased estimator is
    # -(tr Cov_x / n + tr Cov_y / m) < 0 (it subtracts the self-similarity of each sample)
    assert unshifted["sig_mmd"] < 0 < shifted["sig_mmd"]

    record = read_metrics(tmp_path)["val"]
    assert record["events"] == 200 and record["w1_mean"] == shifted["w1_mean"]
    for name in ("paths", "marginals"):
        assert (tmp_path / "plots" / "val" / f"{name}.png").stat().st_size > 0


def test_path_metrics_classifier_accuracy_in_test_only():
    """Independent paths of the same process: accuracy 0.5 within 4 x 0.5 / sqrt(2 n_test) =
    0.09 (n_test = 300 of 1000 paths per class); a shift of 2 (5 times the noise per step)
    is found almost always."""
    batches = ou_batches(1000, 250, seed=1)
    metric = PathMetrics(max_events=1000, classifier_epochs=10)
    same = metric.samples(PathModule(independent=True), batches)
    assert "classifier_accuracy" not in metric.compute(*same, "val")
    assert metric.compute(*same, "test")["classifier_accuracy"] == pytest.approx(0.5, abs=4 * 0.5 / math.sqrt(600))
    shifted = metric.samples(PathModule(shift=2.0), batches)
    assert metric.compute(*shifted, "test")["classifier_accuracy"] > 0.95


def test_path_metrics_name_channels_and_survive_a_diverged_generator(tmp_path):
    rng = np.random.default_rng(13)
    paths = torch.from_numpy(rng.normal(size=(40, 10, 2)).cumsum(axis=1))
    missing = torch.from_numpy(rng.random(paths.shape) < 0.2)
    batch = {"paths": paths, "missing": missing, "times": torch.arange(10.0, dtype=torch.float64).expand(40, 10)}
    datamodule = SimpleNamespace(channel_names=["price", "volume"], units=["USD", ""])
    metric = PathMetrics(marginal_times=[5.0], max_lag=20)  # max_lag beyond T - 1 is cut
    module = PathModule(shift=1.0)
    run_epoch(metric, mock_trainer(tmp_path, datamodule=datamodule), module, [batch])
    logged = logged_values(module)
    assert {"w1/price/t5", "w1/volume/t5", "mean_abs_err/price", "autocov_abs_err/volume"} <= set(logged)
    assert logged["w1_mean"] == pytest.approx((logged["w1/price/t5"] + logged["w1/volume/t5"]) / 2)
    reference, generated = metric.samples(module, [batch])
    figure = metric.figures(reference, generated, "val")["paths"]
    assert [ax.get_ylabel() for ax in figure.axes[::2]] == ["price [USD]", "volume"]

    generated["values"][3, 5, 0] = np.nan
    values = metric.compute(reference, generated, "test")
    assert math.isnan(values["w1/price/t5"]) and math.isnan(values["sig_mmd"])
    assert math.isnan(values["classifier_accuracy"]) and math.isfinite(values["w1/volume/t5"])
