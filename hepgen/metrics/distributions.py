"""Distances between two 1-D samples of an observable: reference (Geant4) vs generated.

- :func:`ks_statistic`: the two-sample Kolmogorov-Smirnov distance sup_x |F_a(x) - F_b(x)|.
- :func:`separation_power`: the CaloChallenge ``hist-chi`` score (triangular discrimination,
  eq. 15 of arXiv:2009.03796), S = 1/2 sum_bins (h_a - h_b)^2 / (h_a + h_b) with each
  histogram normalised to unit sum; 0 for identical histograms, 1 for disjoint ones.
- :func:`binned_separation_power`: the same score on given bin edges, exactly as the challenge's
  ``evaluate.py`` histograms it (values outside the edges are dropped).
"""

from __future__ import annotations

import numpy as np


def _sample(x: np.ndarray, name: str) -> np.ndarray:
    """A non-empty sample flattened to 1-D float64."""
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    if x.size == 0:
        raise ValueError(f"sample {name} is empty")
    return x


def ks_statistic(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sample Kolmogorov-Smirnov distance between the empirical CDFs of ``a`` and ``b``.

    Args:
        a, b: samples of any shape (flattened), sizes may differ.

    Returns:
        D in [0, 1]; 0 for identical samples, 1 for disjoint supports. NaN sorts above every
        number, so a fraction of NaN in one sample adds to D like mass beyond its maximum.
    """
    a, b = np.sort(_sample(a, "a")), np.sort(_sample(b, "b"))
    # The sup of |F_a - F_b| is attained at a data point, so evaluating both CDFs there suffices.
    x = np.concatenate([a, b])
    cdf_a = np.searchsorted(a, x, side="right") / a.size
    cdf_b = np.searchsorted(b, x, side="right") / b.size
    return float(np.max(np.abs(cdf_a - cdf_b)))


def reference_bin_edges(reference: np.ndarray, bins: int = 50) -> np.ndarray:
    """Bin edges at the quantiles 0, 1/bins, ..., 1 of the finite values of ``reference``.

    Quantile bins hold equal reference mass, so the score weighs every part of the reference
    distribution alike and does not depend on the observable's scale (energies spanning
    decades, long tails). Repeated quantiles (discrete observables) are merged.

    Returns:
        Increasing edges, shape (k,), 2 <= k <= bins + 1.
    """
    finite = reference[np.isfinite(reference)]
    if finite.size == 0:
        raise ValueError("reference sample has no finite value")
    edges = np.unique(np.quantile(finite, np.linspace(0.0, 1.0, bins + 1)))
    # A constant reference gives one edge; [c, c] makes one closed bin holding exactly c.
    return np.repeat(edges, 2) if edges.size == 1 else edges


def _bin_fractions(x: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Fraction of ``x`` in [underflow, edges bins (last one closed), overflow].

    The underflow and overflow bins catch generated values outside the reference range, which
    a histogram on the reference range alone would silently drop. NaN lands in the overflow.
    """
    idx = np.searchsorted(edges, x, side="right")
    idx[x == edges[-1]] = edges.size - 1  # the last edge belongs to the last regular bin
    counts = np.bincount(idx, minlength=edges.size + 1)
    return counts / counts.sum()


def separation_power(a: np.ndarray, b: np.ndarray, bins: int = 50) -> float:
    """CaloChallenge separation power of sample ``b`` from the reference sample ``a``.

    S = 1/2 sum_k (h_a,k - h_b,k)^2 / (h_a,k + h_b,k), with h normalised to unit sum; bins
    empty in both samples are skipped. Binning: ``bins`` quantile bins of the reference ``a``
    (:func:`reference_bin_edges`) plus an underflow and an overflow bin.

    Args:
        a: reference sample, any shape (flattened).
        b: compared sample, any shape (flattened).
        bins: number of quantile bins of the reference.

    Returns:
        S in [0, 1]: 0 for identical histograms, 1 for disjoint ones.
    """
    a, b = _sample(a, "a"), _sample(b, "b")
    edges = reference_bin_edges(a, bins)
    h_a, h_b = _bin_fractions(a, edges), _bin_fractions(b, edges)
    total = h_a + h_b
    filled = total > 0
    return float(0.5 * np.sum((h_a[filled] - h_b[filled]) ** 2 / total[filled]))


def binned_separation_power(a: np.ndarray, b: np.ndarray, edges: np.ndarray) -> float:
    """Separation power of ``b`` from ``a`` on fixed bin ``edges``, the CaloChallenge way.

    S = 1/2 sum_k (h_a,k - h_b,k)^2 / (h_a,k + h_b,k), where h is the histogram of the values
    inside [edges[0], edges[-1]] (last bin closed, as ``np.histogram``) normalised to unit sum,
    and bins empty in both samples count 0. As in the challenge's ``evaluate.py``
    (``plt.hist(density=True)`` times the bin widths), values outside the edges and NaN are
    dropped before normalising: the score compares shapes inside the plotted range.

    Args:
        a: reference sample, any shape (flattened).
        b: compared sample, any shape (flattened).
        edges: increasing bin edges, (k + 1,).

    Returns:
        S in [0, 1]; NaN if either sample has no value inside the edges (its histogram is
        undefined, as the challenge's density would be 0/0).
    """
    edges = np.asarray(edges, dtype=np.float64)
    a, b = _sample(a, "a"), _sample(b, "b")
    h_a, _ = np.histogram(a[np.isfinite(a)], bins=edges)
    h_b, _ = np.histogram(b[np.isfinite(b)], bins=edges)
    if h_a.sum() == 0 or h_b.sum() == 0:
        return float("nan")
    h_a, h_b = h_a / h_a.sum(), h_b / h_b.sum()
    total = h_a + h_b
    filled = total > 0
    return float(0.5 * np.sum((h_a[filled] - h_b[filled]) ** 2 / total[filled]))


def density_chi2(generated: np.ndarray, target: np.ndarray, bins: int = 100, value_range=(-1.0, 1.0)) -> float:
    """The AIDAPT chi2: sum_i (g_i - t_i)^2 / t_i over density histograms (empty t_i -> 1e-6).

    This is the reference's convergence metric, kept for continuity with its plots: a distance
    between two densities, not a test statistic. For two independent samples of N events each
    its expectation is about 2 * (filled bins) / (N * bin width), i.e. 1e4 / N for 100 bins on
    [-1, 1]. Values outside ``value_range`` are ignored, as in ``np.histogram``.

    Args:
        generated, target: 1-D samples (scaled units).
        bins, value_range: the binning (reference: 100 bins on [-1, 1]).
    """
    g, _ = np.histogram(_sample(generated, "generated"), bins=bins, range=value_range, density=True)
    t, _ = np.histogram(_sample(target, "target"), bins=bins, range=value_range, density=True)
    t = np.where(t == 0, 1e-6, t)
    return float(np.sum((g - t) ** 2 / t))


def binned_chi2_ndf(a: np.ndarray, b: np.ndarray, bins: int = 100, value_range=(-1.0, 1.0)) -> tuple[float, int]:
    """Pearson chi2 of two binned samples with their statistical errors, and its ndf.

    chi2 = sum_i (n_i/N - m_i/M)^2 / (n_i/N^2 + m_i/M^2) over bins filled in either sample,
    ndf = number of those bins. chi2/ndf is about 1 for two independent samples of one
    distribution (smaller when the samples are correlated, e.g. generated from the same
    conditions as the reference). Values outside ``value_range`` are ignored.

    Returns:
        (chi2, ndf).
    """
    n, _ = np.histogram(_sample(a, "a"), bins=bins, range=value_range)
    m, _ = np.histogram(_sample(b, "b"), bins=bins, range=value_range)
    big_n, big_m = max(n.sum(), 1), max(m.sum(), 1)
    filled = (n + m) > 0
    variance = n[filled] / big_n**2 + m[filled] / big_m**2
    chi2 = np.sum((n[filled] / big_n - m[filled] / big_m) ** 2 / variance)
    return float(chi2), int(filled.sum())
