"""Fréchet and kernel physics distances (FPD, KPD) between two feature samples.

Kansal et al., arXiv:2211.10295; the definitions are those of jetnet's ``jetnet.evaluation.fpd``
and ``kpd`` (jetnet 0.2.5, ``gen_metrics.py``), which the CaloChallenge evaluation calls on the
high-level feature vector (``evaluate.py``: ``fpd(ref, gen, min_samples=10000)``,
``kpd(ref, gen, batch_size=10000)``, reported x 10^3). jetnet itself is not a dependency: it
pulls in energyflow, coffea, awkward, numba, pandas and tables for these two functions.

Both first divide every feature by the reference's max |x| (a feature that is 0 throughout is
left as is), so that the distances do not depend on the features' units.

**FPD.** The Fréchet distance of two Gaussians with the samples' means and covariances,

    d^2 = |mu_1 - mu_2|^2 + Tr(S_1 + S_2 - 2 (S_1 S_2)^(1/2)),

is biased upwards at finite N by O(1/N). It is computed at ``num_points`` sample sizes N evenly
spaced in 1/N from ``min_samples`` to ``max_samples`` (each the mean of ``num_batches`` draws with
replacement of N events from each sample), and a straight line in 1/N (intercept and slope
constrained >= 0) is extrapolated to 1/N = 0: the FPD is the intercept, its error the fit's.

**KPD.** The unbiased estimator of the squared maximum mean discrepancy with the polynomial
kernel k(x, y) = (x.y / d + 1)^4 (d features),

    MMD^2_u = sum_{i != j} k(x_i, x_j) / (m (m-1)) + sum_{i != j} k(y_i, y_j) / (n (n-1))
              - 2 sum_{i, j} k(x_i, y_j) / (m n),

on ``num_batches`` draws with replacement of ``batch_size`` events from each sample. The KPD is
the median over draws, its error half the 16.275 - 83.725 % inter-quantile range (the central
68 % of a Gaussian). Being unbiased it can be slightly negative when the samples agree.

The random draws follow jetnet's (``numpy.random.default_rng``, same seeds and order), so the
same input gives jetnet's numbers up to round-off: the matrix square root here goes through
symmetric eigendecompositions instead of ``scipy.linalg.sqrtm``, and the kernel sums run in blocks.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import curve_fit


def _feature_matrix(x, name: str) -> np.ndarray:
    """A finite (N, D) float64 matrix."""
    x = np.asarray(x, dtype=np.float64)
    x = x.reshape(-1, 1) if x.ndim == 1 else x
    if x.ndim != 2 or len(x) < 2:
        raise ValueError(f"{name} must be an (N, D) array with N >= 2, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or inf")
    return x


def _inputs(reference, generated, normalise: bool) -> tuple[np.ndarray, np.ndarray]:
    x, y = _feature_matrix(reference, "reference"), _feature_matrix(generated, "generated")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"feature counts differ: reference {x.shape}, generated {y.shape}")
    return normalise_features(x, y) if normalise else (x, y)


def normalise_features(reference: np.ndarray, generated: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both samples divided, feature by feature, by the reference's max |x| (1 where that is 0)."""
    scale = np.max(np.abs(reference), axis=0)
    scale = np.where(scale > 0, scale, 1.0)
    return reference / scale, generated / scale


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric positive semi-definite matrix (round-off clipped)."""
    w, v = np.linalg.eigh(matrix)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray) -> float:
    """Squared Fréchet (2-Wasserstein) distance of N(mu1, sigma1) and N(mu2, sigma2).

    d^2 = |mu1 - mu2|^2 + Tr(sigma1) + Tr(sigma2) - 2 Tr((sigma1 sigma2)^(1/2)), where the last
    trace is sum_i sqrt(lambda_i) over the eigenvalues of the symmetric PSD matrix
    sigma1^(1/2) sigma2 sigma1^(1/2), which has those of sigma1 sigma2: no complex round-off,
    and singular covariances (a constant feature) need no regularisation.

    Args:
        mu1, mu2: (D,) means.
        sigma1, sigma2: (D, D) covariances.
    """
    mu1, mu2 = np.atleast_1d(mu1), np.atleast_1d(mu2)
    sigma1, sigma2 = np.atleast_2d(sigma1), np.atleast_2d(sigma2)
    root1 = _psd_sqrt(sigma1)
    middle = root1 @ sigma2 @ root1
    eigenvalues = np.linalg.eigvalsh(0.5 * (middle + middle.T))
    tr_covmean = np.sum(np.sqrt(np.clip(eigenvalues, 0.0, None)))
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean)


def _line(x, intercept, slope):
    return intercept + slope * x


def frechet_physics_distance(
    reference,
    generated,
    *,
    min_samples: int = 10_000,
    max_samples: int = 50_000,
    num_batches: int = 20,
    num_points: int = 10,
    normalise: bool = True,
    seed: int = 42,
) -> tuple[float, float]:
    """FPD of ``generated`` from ``reference``: the Fréchet distance extrapolated to N -> infinity.

    Defaults: the CaloChallenge call (``min_samples=10000``) with jetnet's other defaults
    (jetnet's own ``min_samples`` default is 20,000). Draws are with replacement, so samples
    smaller than ``max_samples`` work (jetnet recommends >= 50,000 events each).

    Args:
        reference: (N, D) features of the reference (Geant4) sample.
        generated: (M, D) features of the generated sample.
        min_samples, max_samples: the smallest and largest sample size of the extrapolation.
        num_batches: draws averaged at each sample size.
        num_points: sample sizes, evenly spaced in 1/N.
        normalise: divide the features by the reference's max |x| first.
        seed: seed of the draws.

    Returns:
        (FPD, error): the intercept at 1/N = 0 (>= 0) and its standard error from the fit.
    """
    x, y = _inputs(reference, generated, normalise)
    sizes = (1.0 / np.linspace(1.0 / min_samples, 1.0 / max_samples, num_points)).astype(np.int32)
    rng = np.random.default_rng(seed)
    means = []
    for size in sizes:
        values = []
        for _ in range(num_batches):
            a = x[rng.choice(len(x), size=size)]
            b = y[rng.choice(len(y), size=size)]
            values.append(
                frechet_distance(a.mean(axis=0), np.cov(a, rowvar=False), b.mean(axis=0), np.cov(b, rowvar=False))
            )
        means.append(np.mean(values))
    params, covariance = curve_fit(_line, 1.0 / sizes, means, bounds=([0.0, 0.0], [np.inf, np.inf]))
    return float(params[0]), float(np.sqrt(covariance[0, 0]))


def _power_in_place(k: np.ndarray, degree: int) -> np.ndarray:
    """k**degree, by repeated squaring when degree is a power of two (20x faster than ``**``)."""
    if degree > 0 and degree & (degree - 1) == 0:
        while degree > 1:
            k *= k
            degree //= 2
        return k
    return k**degree


def _kernel_sum(a: np.ndarray, b: np.ndarray | None, gamma: float, degree: int, block: int) -> float:
    """sum_{i,j} (gamma a_i.b_j + 1)^degree, a block of rows of ``a`` at a time (bounded memory).

    ``b=None`` means b = a: the sum is symmetric, so each block of rows is paired only with the
    rows from its own on (the block itself once, the rest twice), half the work.
    """
    symmetric = b is None
    total = 0.0
    for start in range(0, len(a), block):
        rows = a[start : start + block]
        k = rows @ (a[start:] if symmetric else b).T
        k *= gamma
        k += 1.0
        k = _power_in_place(k, degree)
        if symmetric:
            own = len(rows)
            total += float(k[:, :own].sum()) + 2.0 * float(k[:, own:].sum())
        else:
            total += float(k.sum())
    return total


def mmd_polynomial_unbiased(x: np.ndarray, y: np.ndarray, degree: int = 4, block: int = 1024) -> float:
    """Unbiased MMD^2 of samples x (m, D) and y (n, D) with kernel (x.y / D + 1)^degree."""
    m, n, d = len(x), len(y), x.shape[1]
    gamma = 1.0 / d
    # The diagonals k(x_i, x_i) are left out of the within-sample sums (the unbiased estimator).
    diag_x = np.sum((gamma * np.einsum("ij,ij->i", x, x) + 1.0) ** degree)
    diag_y = np.sum((gamma * np.einsum("ij,ij->i", y, y) + 1.0) ** degree)
    xx = (_kernel_sum(x, None, gamma, degree, block) - diag_x) / (m * (m - 1))
    yy = (_kernel_sum(y, None, gamma, degree, block) - diag_y) / (n * (n - 1))
    xy = _kernel_sum(x, y, gamma, degree, block) / (m * n)
    return float(xx + yy - 2.0 * xy)


def kernel_physics_distance(
    reference,
    generated,
    *,
    num_batches: int = 10,
    batch_size: int = 10_000,
    normalise: bool = True,
    seed: int = 42,
) -> tuple[float, float]:
    """KPD of ``generated`` from ``reference``: median unbiased polynomial-kernel MMD^2.

    Defaults: the CaloChallenge call (``batch_size=10000``; jetnet's default is 5,000). Cost: two
    (batch_size x batch_size) kernel sums per draw (the within-sample ones are symmetric), a few
    seconds per draw at 10,000 on one CPU core.

    Args:
        reference: (N, D) features of the reference sample.
        generated: (M, D) features of the generated sample.
        num_batches: independent draws (batch ``i`` uses the seed ``seed + 1000 i``, as jetnet).
        batch_size: events drawn with replacement from each sample per draw.
        normalise: divide the features by the reference's max |x| first.
        seed: base seed of the draws.

    Returns:
        (KPD, error): the median over draws and half its 16.275 - 83.725 % inter-quantile range.
    """
    x, y = _inputs(reference, generated, normalise)
    values = []
    for i in range(num_batches):
        rng = np.random.default_rng(seed + i * 1000)
        a = x[rng.choice(len(x), size=batch_size)]
        b = y[rng.choice(len(y), size=batch_size)]
        values.append(mmd_polynomial_unbiased(a, b))
    low, high = np.percentile(values, [16.275, 83.725])
    return float(np.median(values)), float((high - low) / 2.0)
