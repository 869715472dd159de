"""Made toys for weakly supervised anomaly detection, with the optimal classifier known exactly.

Weak supervision looks for a small signal in a *signal region* (SR) of some context variables by
learning the SR background from elsewhere: from the *control region* (CR, here the complement of
the SR) of data, and/or from a mismodelled simulation ("MC"). Every method (idealised AD, CATHODE,
SALAD/Reweight, FETA/Morph) tends, with infinite statistics, to a monotone function of the
features-only likelihood ratio LR(x) = p_s(x | SR) / p_b(x | SR) (Neyman-Pearson, and
p_data / p_b = 1 + (S/B) LR in the SR). These toys make p_s and p_b exact, so the optimal ROC/SIC
is a number, the line every method's max SIC vs S/B should approach.

Two toys, each event a row ``[context..., x1..x4, noise1..noise_k]`` (context first, the seed's
layout: ``hep-lbdl/non-resonant-AD-extrapolation``, 2 context columns then features):

* :class:`ToyNR` (non-resonant, seed-like). Context c in R^2, background c ~ N(0, I2); the SR is
  the corner c1 > 1 and c2 > 1 (2.5 % of the background, the seed toy's SR fraction; the seed's
  HT > 800 GeV and MET > 75 GeV). Background x | c ~ N(B c, I4): two features lean on the context,
  so the SR background must be *extrapolated* from the CR, which is what the seed's
  Reweight/Generate/Morph do. Signal: a blob at c ~ (1.8, 1.8), x ~ N(mu_s, 0.35^2 I4) independent
  of c. Unlike the seed's own toy (features-only optimum max SIC ≈ 1.03), the features carry the
  signal: optimal max SIC ≈ 8.9 on x alone, ≈ 16.3 on (c, x).
* :class:`ToyR` (resonant, CATHODE/LHCO-like). One context m ~ Exp(1) (a falling "mass"
  spectrum); the SR is the window 1.0 <= m <= 1.5 and the sidebands are everything outside.
  Background x | m ~ N(A m, I4), so a naive sideband template is biased and interpolation in m
  matters. Signal: a narrow resonance m ~ N(1.25, 0.05^2), x ~ N(mu_s, 0.35^2 I4). Optimal
  features-only max SIC ≈ 13.7 (AUC ≈ 0.997), close to the LHCO idealised AD (≈ 14-15).

Both have a "simulation" (MC) that mismodels the context and the features by known amounts, so
the weight p_data / p_MC that SALAD/Reweight learns is exact too (:meth:`log_data_mc_weight`).
``noise_features`` k appends k independent N(0, 1) columns to every sample: they carry no
information, the optimum is unchanged, and they test a method's robustness to useless inputs.

:func:`make_ad_toy` writes the seed's final-era ``.npz`` files (``gen_siginj_phys_dataset.py``),
so one reader reads the seed's files and these. Units: all variables are dimensionless (think
"scaled"), so densities are per unit of each coordinate.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from functools import cached_property, lru_cache, partial
from pathlib import Path
from typing import ClassVar

import numpy as np
from scipy.special import log_ndtr, ndtr, ndtri

from hepgen import __version__
from hepgen.io.anomaly import data_file_name
from hepgen.io.files import write_atomically
from hepgen.metrics.roc import auc, max_sic, roc_curve, sic_at_rejection

#: Defaults of :func:`make_ad_toy` (the S/B values of the seed's scans, and its injection seeds).
SIGNAL_FRACTIONS = (0.0, 0.002, 0.005, 0.01, 0.02)
SEEDS = (1, 2, 3, 4, 5)

#: Rows drawn at a time (bounds memory whatever the sizes asked for).
CHUNK = 500_000
_POOL_BLOCK = 1024  # signal is drawn in blocks of this size (see _signal_pool)

#: The seed's max-SIC floor: eps_b >= 1 / (0.4^2 N_B,test) with its 200k-background test set,
#: i.e. at most 40 % relative statistical error on the background count passing the cut.
SEED_MIN_EPS_B = 1.0 / (0.4**2 * 200_000)

_LOG_2PI = np.log(2.0 * np.pi)

# Gauss-Legendre nodes for the bivariate-normal integral below (Genz 2004 uses 20 for strong correlations)
_GL_NODES, _GL_WEIGHTS = np.polynomial.legendre.leggauss(20)


# ------------------------------------------------------------------------------ small maths


def log_bivariate_normal_cdf(h, k, rho: float) -> np.ndarray:
    """log P(Z1 <= h, Z2 <= k) for standard normals Z1, Z2 with correlation ``rho``, |rho| <= 0.5.

    Plackett's identity dPhi2/drho = phi2 integrates to (Drezner-Wesolowsky form, r = sin theta)

        Phi2(h, k; rho) = Phi(h) Phi(k)
                          + 1/(2 pi) int_0^{arcsin rho} exp(-(h^2 + k^2 - 2 h k sin t) / (2 cos^2 t)) dt,

    done with 20-point Gauss-Legendre and kept in logs relative to Phi(h) Phi(k), so that far
    tails do not underflow. For rho < 0 in both lower tails the (negative) integral cancels
    Phi(h) Phi(k) almost entirely; points where more than half would cancel are integrated one
    by one instead (:func:`_log_bivariate_normal_cdf_quad`; slow if that is most points, which
    needs a strongly negative rho). Checked against adaptive quadrature on |h|, |k| <= 30: the
    log agrees to 1e-10 for rho <= 0 and at Toy NR's rho = -0.056; for rho = +0.5 it drifts to
    2e-5 at h = k = -25. Vectorised: h, k broadcast together; 3e5 points take about 0.2 s.
    """
    h, k = np.broadcast_arrays(np.asarray(h, dtype=np.float64), np.asarray(k, dtype=np.float64))
    if not abs(rho) <= 0.5:
        raise ValueError(f"log_bivariate_normal_cdf: |rho| <= 0.5 needed (checked range), got rho={rho}.")
    shape, h, k = h.shape, h.reshape(-1), k.reshape(-1)
    log_independent = log_ndtr(h) + log_ndtr(k)
    if rho == 0.0:
        return log_independent.reshape(shape)
    theta = 0.5 * np.arcsin(rho) * (_GL_NODES + 1.0)  # nodes mapped onto [0, arcsin rho]
    log_weight = np.log(0.5 * abs(np.arcsin(rho)) * _GL_WEIGHTS) - _LOG_2PI
    # exponent at node j: -(h^2 + k^2) a_j + h k b_j + log_weight_j
    a, b = 0.5 / np.cos(theta) ** 2, np.sin(theta) / np.cos(theta) ** 2
    out = np.empty_like(h)
    for start in range(0, h.size, 100_000):  # (chunk, 20) temporaries only
        part = slice(start, start + 100_000)
        exponent = np.multiply.outer(h[part] * k[part], b) - np.multiply.outer(h[part] ** 2 + k[part] ** 2, a) + log_weight
        if rho > 0:  # a positive correction, possibly far larger than Phi(h) Phi(k): log-sum-exp
            top = exponent.max(axis=1)
            log_correction = top + np.log(np.exp(exponent - top[:, None]).sum(axis=1))
            out[part] = np.logaddexp(log_independent[part], log_correction)
        else:  # each negative term is smaller than Phi(h) Phi(k) (Phi2 > 0), so relative to it nothing overflows
            out[part] = np.exp(exponent - log_independent[part, None]).sum(axis=1)  # |integral| / (Phi(h) Phi(k))
    if rho > 0:
        return out.reshape(shape)
    ratio = out
    lost = np.flatnonzero(ratio > 0.5)  # more than one bit would cancel: 20 nodes no longer suffice
    out = log_independent + np.log1p(-np.minimum(ratio, 0.5))
    for i in lost:
        out[i] = _log_bivariate_normal_cdf_quad(h[i], k[i], rho)
    return out.reshape(shape)


def _log_bivariate_normal_cdf_quad(h: float, k: float, rho: float) -> float:
    """log Phi2(h, k; rho) = log int_{-inf}^h phi(z) Phi((k - rho z) / sqrt(1 - rho^2)) dz, by adaptive
    quadrature, scaled by the integrand at z = h (its maximum when rho < 0 and h < 0)."""
    from scipy.integrate import quad

    def log_f(z: float) -> float:
        return -0.5 * z * z - 0.5 * _LOG_2PI + log_ndtr((k - rho * z) / np.sqrt(1.0 - rho * rho))

    shift = log_f(h)
    value, _ = quad(lambda z: np.exp(log_f(z) - shift), -np.inf, h, epsabs=0.0, epsrel=1e-12, limit=200)
    return float(shift + np.log(value))


def _log_gauss_diag(x: np.ndarray, mean, sigma: float) -> np.ndarray:
    """sum_i log N(x_i; mean_i, sigma^2) over the last axis."""
    z = (x - mean) / sigma
    return -0.5 * np.sum(z**2, axis=-1) - x.shape[-1] * (0.5 * _LOG_2PI + np.log(sigma))


def _log_gauss(x: np.ndarray, cov: np.ndarray) -> np.ndarray:
    """log N(x; 0, cov) for rows x (N, d)."""
    chol = np.linalg.cholesky(cov)
    z = np.linalg.solve(chol, x.T)
    return -0.5 * np.sum(z**2, axis=0) - np.sum(np.log(np.diag(chol))) - 0.5 * x.shape[1] * _LOG_2PI


def _log_phi_interval(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """log[Phi(b) - Phi(a)] for a < b, without cancellation in either tail."""
    # in the upper tail use Phi(b) - Phi(a) = Phi(-a) - Phi(-b), where both terms are small
    upper = a > 0
    lo, hi = np.where(upper, -b, a), np.where(upper, -a, b)
    log_hi, log_lo = log_ndtr(hi), log_ndtr(lo)
    return log_hi + np.log1p(-np.exp(log_lo - log_hi))


# ------------------------------------------------------------------------------ the toys


@dataclass(frozen=True)
class _ADToy:
    """What both toys share: the column layout, noise features, SR sampling and the optimal score."""

    noise_features: int = 0

    kind: ClassVar[str]
    context_names: ClassVar[tuple[str, ...]]
    n_features: ClassVar[int] = 4
    sr_words: ClassVar[str]

    def __post_init__(self):
        k = self.noise_features
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
            raise ValueError(f"noise_features: need an integer >= 0, got {k!r}.")

    @property
    def n_context(self) -> int:
        return len(self.context_names)

    @property
    def columns(self) -> list[str]:
        """Column names of an event row: context, x1..x4, noise1..noise_k."""
        features = [f"x{i + 1}" for i in range(self.n_features)]
        noise = [f"noise{i + 1}" for i in range(self.noise_features)]
        return [*self.context_names, *features, *noise]

    def context(self, events: np.ndarray) -> np.ndarray:
        return np.asarray(events)[:, : self.n_context]

    def features(self, events: np.ndarray) -> np.ndarray:
        """The columns a features-only classifier sees: x1..x4 and the noise columns."""
        return np.asarray(events)[:, self.n_context :]

    def _rows(self, context: np.ndarray, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        noise = rng.standard_normal((len(x), self.noise_features))
        return np.hstack([context, x, noise])

    def _check_features(self, x) -> tuple[np.ndarray, np.ndarray]:
        """(physics features (N, 4), log density of the noise columns (N,)) of x (N, 4 + k)."""
        x = np.asarray(x, dtype=np.float64)
        width = self.n_features + self.noise_features
        if x.ndim != 2 or x.shape[1] != width:
            raise ValueError(f"{type(self).__name__}: features need shape (N, {width}), got {x.shape}.")
        noise = x[:, self.n_features :]
        return x[:, : self.n_features], _log_gauss_diag(noise, 0.0, 1.0) if self.noise_features else np.zeros(len(x))

    def _check_events(self, events) -> np.ndarray:
        events = np.asarray(events, dtype=np.float64)
        if events.ndim != 2 or events.shape[1] != len(self.columns):
            raise ValueError(f"{type(self).__name__}: events need shape (N, {len(self.columns)}), got {events.shape}.")
        return events

    def sample_signal_sr(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` signal events inside the SR, drawn from the signal and kept if in the SR."""
        kept, have = [], 0
        while have < n:
            events = self.sample_signal(max(1000, int(1.1 * (n - have) / self.p_signal_sr)), rng)
            events = events[self.in_sr(events)]
            kept.append(events)
            have += len(events)
        return np.concatenate(kept)[:n]

    def optimal_score(self, x) -> np.ndarray:
        """The Neyman-Pearson optimal features-only score: log p_s(x | SR) - log p_b(x | SR), (N,)."""
        return self.log_signal_sr(x) - self.log_background_sr(x)

    # each toy defines: sample_background, sample_signal, sample_mc, sample_background_sr, in_sr,
    # log_background_sr, log_signal_sr, log_data_mc_weight, p_background_sr, p_signal_sr, p_mc_sr


@dataclass(frozen=True)
class ToyNR(_ADToy):
    """Non-resonant toy: two context variables c = (c1, c2), SR = {c1 > t and c2 > t} (t = 1).

    * background ("data"): c ~ N(0, I2), x | c ~ N(B c, I4);
    * signal: c ~ N(mu_c, 0.3^2 I2), x ~ N(mu_s, 0.35^2 I4), x independent of c; 99.2 % in the SR;
    * MC ("simulation", mismodelled): c ~ N(0, 1.2^2 I2), x | c ~ N(B c + delta, 1.1^2 I4).

    Exact SR density of the background features. (c, x) is jointly Gaussian: x ~ N(0, S) with
    S = B B^T + I, and c | x ~ N(K x, Sigma) with K = B^T S^-1, Sigma = I - B^T S^-1 B, so

        p_b(x | SR) = N(x; 0, S) P(c1 > t, c2 > t | x) / P_b(SR),   P_b(SR) = Phi(-t)^2,

    where the orthant probability is Phi2(-a1, -a2; rho), a_i = (t - (K x)_i) / sigma_i, with
    sigma_i and rho from Sigma.
    """

    b: tuple[tuple[float, float], ...] = ((0.5, 0.3), (-0.4, 0.2), (0.0, 0.0), (0.0, 0.0))
    sr_threshold: float = 1.0
    signal_context_mean: tuple[float, float] = (1.8, 1.8)
    signal_context_width: float = 0.3
    signal_mean: tuple[float, ...] = (1.6, 0.2, 1.2, -1.2)
    signal_width: float = 0.35
    mc_context_width: float = 1.2
    mc_shift: tuple[float, ...] = (0.1, 0.0, 0.0, 0.1)
    mc_width: float = 1.1

    kind: ClassVar[str] = "nr"
    context_names: ClassVar[tuple[str, ...]] = ("c1", "c2")
    sr_words: ClassVar[str] = "SR: c1 > 1 and c2 > 1 (the corner of the two context variables); CR: everything else"

    @cached_property
    def _b(self) -> np.ndarray:
        return np.array(self.b, dtype=np.float64)  # (4, 2)

    @cached_property
    def _posterior(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
        """(S (4, 4), K (2, 4), sigma (2,), rho) of x ~ N(0, S) and c | x ~ N(K x, Sigma)."""
        b = self._b
        s = b @ b.T + np.eye(4)
        k = np.linalg.solve(s, b).T  # B^T S^-1 (S is symmetric)
        cov = np.eye(2) - k @ b
        sigma = np.sqrt(np.diag(cov))
        return s, k, sigma, float(cov[0, 1] / (sigma[0] * sigma[1]))

    # ---- sampling: every method returns rows [c1, c2, x1..x4, noise...] (N, 6 + k)

    def sample_background(self, n: int, rng: np.random.Generator) -> np.ndarray:
        c = rng.standard_normal((n, 2))
        return self._rows(c, c @ self._b.T + rng.standard_normal((n, 4)), rng)

    def sample_background_sr(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` background events in the SR, exactly: c1, c2 are independent, so each is drawn
        from N(0, 1) truncated to (t, inf) by inverting its CDF (no rejection of 97.5 %)."""
        u = 1.0 - rng.random((n, 2))  # (0, 1]
        c = -ndtri(u * ndtr(-self.sr_threshold))  # Phi(-c) = u Phi(-t)
        return self._rows(c, c @ self._b.T + rng.standard_normal((n, 4)), rng)

    def sample_signal(self, n: int, rng: np.random.Generator) -> np.ndarray:
        c = np.asarray(self.signal_context_mean) + self.signal_context_width * rng.standard_normal((n, 2))
        x = np.asarray(self.signal_mean) + self.signal_width * rng.standard_normal((n, 4))
        return self._rows(c, x, rng)

    def sample_mc(self, n: int, rng: np.random.Generator) -> np.ndarray:
        c = self.mc_context_width * rng.standard_normal((n, 2))
        x = c @ self._b.T + np.asarray(self.mc_shift) + self.mc_width * rng.standard_normal((n, 4))
        return self._rows(c, x, rng)

    def in_sr(self, events) -> np.ndarray:
        c = self.context(events)
        return (c[:, 0] > self.sr_threshold) & (c[:, 1] > self.sr_threshold)

    @property
    def p_background_sr(self) -> float:
        return float(ndtr(-self.sr_threshold) ** 2)

    @property
    def p_signal_sr(self) -> float:
        z = (np.asarray(self.signal_context_mean) - self.sr_threshold) / self.signal_context_width
        return float(np.prod(ndtr(z)))

    @property
    def p_mc_sr(self) -> float:
        return float(ndtr(-self.sr_threshold / self.mc_context_width) ** 2)

    # ---- exact densities

    def log_background_sr(self, x) -> np.ndarray:
        """log p_b(x | SR) of features x (N, 4 + k), per unit x (see the class docstring)."""
        x4, log_noise = self._check_features(x)
        s, k, sigma, rho = self._posterior
        a = (self.sr_threshold - x4 @ k.T) / sigma  # (N, 2): standardised distance of c | x to the corner
        log_orthant = log_bivariate_normal_cdf(-a[:, 0], -a[:, 1], rho)
        return _log_gauss(x4, s) + log_orthant - np.log(self.p_background_sr) + log_noise

    def log_signal_sr(self, x) -> np.ndarray:
        """log p_s(x | SR): x is independent of c for the signal, so the SR cut leaves it N(mu_s, 0.35^2 I4)."""
        x4, log_noise = self._check_features(x)
        return _log_gauss_diag(x4, np.asarray(self.signal_mean), self.signal_width) + log_noise

    def _log_signal_context(self, c: np.ndarray) -> np.ndarray:
        return _log_gauss_diag(c, np.asarray(self.signal_context_mean), self.signal_context_width)

    def optimal_score_with_context(self, events) -> np.ndarray:
        """Optimal score on (c, x) in the SR: log[p_s(c) p_s(x) / (p_b(c) N(x; B c, I4))], (N,).

        The SR normalisations P_s(SR), P_b(SR) are constants and dropped; the noise columns cancel.
        """
        events = self._check_events(events)
        c, x4 = self.context(events), self.features(events)[:, :4]
        log_signal = self._log_signal_context(c) + _log_gauss_diag(x4, np.asarray(self.signal_mean), self.signal_width)
        log_background = _log_gauss_diag(c, 0.0, 1.0) + _log_gauss_diag(x4, c @ self._b.T, 1.0)
        return log_signal - log_background

    def log_data_mc_weight(self, events) -> np.ndarray:
        """log p_bkg(c, x) / p_MC(c, x) of events (N, 6 + k): the weight a perfect data-vs-MC
        classifier learns on background, w = f / (1 - f). Bounded, as the MC is the wider one."""
        events = self._check_events(events)
        c, x4 = self.context(events), self.features(events)[:, :4]
        mean = c @ self._b.T
        return (
            _log_gauss_diag(c, 0.0, 1.0)
            - _log_gauss_diag(c, 0.0, self.mc_context_width)
            + _log_gauss_diag(x4, mean, 1.0)
            - _log_gauss_diag(x4, mean + np.asarray(self.mc_shift), self.mc_width)
        )


@dataclass(frozen=True)
class ToyR(_ADToy):
    """Resonant toy: one context m (a "mass"), SR = [m1, m2] = [1.0, 1.5], sidebands = the rest.

    * background: m ~ Exp(rate lam = 1), x | m ~ N(A m, I4), A = (0.6, -0.4, 0, 0);
    * signal: m ~ N(1.25, 0.05^2) (all in the SR), x ~ N(mu_s, 0.35^2 I4) independent of m;
    * MC: m ~ Exp(rate 0.9), x | m ~ N(1.1 A m + delta, 1.1^2 I4).

    Exact SR density of the background features. Write c = |A|, u = x . A/c (the feature along
    A), |x_perp|^2 = |x|^2 - u^2. The m integral of lam e^{-lam m} N(u; c m, 1) over the SR is a
    Gaussian integral around m* = (c u - lam) / c^2:

        p_b(x | SR) = N(x_perp; 0, I3) (lam / c) exp(lam^2 / (2 c^2) - lam u / c)
                      [Phi(c (m2 - m*)) - Phi(c (m1 - m*))] / (e^{-lam m1} - e^{-lam m2}).
    """

    a: tuple[float, ...] = (0.6, -0.4, 0.0, 0.0)
    background_rate: float = 1.0
    sr: tuple[float, float] = (1.0, 1.5)
    signal_mass: float = 1.25
    signal_mass_width: float = 0.05
    signal_mean: tuple[float, ...] = (1.8, 0.5, 1.2, -1.2)
    signal_width: float = 0.35
    mc_rate: float = 0.9
    mc_slope_scale: float = 1.1
    mc_shift: tuple[float, ...] = (0.1, 0.0, 0.0, 0.1)
    mc_width: float = 1.1

    kind: ClassVar[str] = "r"
    context_names: ClassVar[tuple[str, ...]] = ("m",)
    sr_words: ClassVar[str] = "SR: 1.0 <= m <= 1.5 (a mass window); CR: the sidebands m < 1.0 and m > 1.5"

    @cached_property
    def _a(self) -> np.ndarray:
        return np.array(self.a, dtype=np.float64)

    def _rows_m(self, m: np.ndarray, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return self._rows(m[:, None], x, rng)

    # ---- sampling: rows [m, x1..x4, noise...] (N, 5 + k)

    def sample_background(self, n: int, rng: np.random.Generator) -> np.ndarray:
        m = rng.exponential(1.0 / self.background_rate, n)
        return self._rows_m(m, m[:, None] * self._a + rng.standard_normal((n, 4)), rng)

    def sample_background_sr(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` background events in the SR, exactly: m from Exp(lam) truncated to [m1, m2] by inverting its CDF."""
        lam, (m1, m2) = self.background_rate, self.sr
        upper, lower = np.exp(-lam * m1), np.exp(-lam * m2)
        m = -np.log(upper - rng.random(n) * (upper - lower)) / lam
        return self._rows_m(m, m[:, None] * self._a + rng.standard_normal((n, 4)), rng)

    def sample_signal(self, n: int, rng: np.random.Generator) -> np.ndarray:
        m = self.signal_mass + self.signal_mass_width * rng.standard_normal(n)
        x = np.asarray(self.signal_mean) + self.signal_width * rng.standard_normal((n, 4))
        return self._rows_m(m, x, rng)

    def sample_mc(self, n: int, rng: np.random.Generator) -> np.ndarray:
        m = rng.exponential(1.0 / self.mc_rate, n)
        x = self.mc_slope_scale * m[:, None] * self._a + np.asarray(self.mc_shift)
        return self._rows_m(m, x + self.mc_width * rng.standard_normal((n, 4)), rng)

    def in_sr(self, events) -> np.ndarray:
        m = self.context(events)[:, 0]
        return (m >= self.sr[0]) & (m <= self.sr[1])

    def _p_exponential_sr(self, rate: float) -> float:
        return float(np.exp(-rate * self.sr[0]) - np.exp(-rate * self.sr[1]))

    @property
    def p_background_sr(self) -> float:
        return self._p_exponential_sr(self.background_rate)

    @property
    def p_signal_sr(self) -> float:
        z = (np.asarray(self.sr) - self.signal_mass) / self.signal_mass_width
        return float(ndtr(z[1]) - ndtr(z[0]))

    @property
    def p_mc_sr(self) -> float:
        return self._p_exponential_sr(self.mc_rate)

    # ---- exact densities

    def log_background_sr(self, x) -> np.ndarray:
        """log p_b(x | SR) of features x (N, 4 + k), per unit x (see the class docstring)."""
        x4, log_noise = self._check_features(x)
        lam, (m1, m2) = self.background_rate, self.sr
        c = float(np.linalg.norm(self._a))
        u = x4 @ (self._a / c)
        perp2 = np.sum(x4**2, axis=1) - u**2
        m_star = (c * u - lam) / c**2  # where lam e^{-lam m} N(u; c m, 1) peaks in m
        log_window = _log_phi_interval(c * (m1 - m_star), c * (m2 - m_star))
        return (
            -0.5 * perp2
            - 1.5 * _LOG_2PI
            + np.log(lam / c)
            + lam**2 / (2 * c**2)
            - lam * u / c
            + log_window
            - np.log(self.p_background_sr)
            + log_noise
        )

    def log_signal_sr(self, x) -> np.ndarray:
        """log p_s(x | SR): x is independent of m for the signal, so the window leaves it N(mu_s, 0.35^2 I4)."""
        x4, log_noise = self._check_features(x)
        return _log_gauss_diag(x4, np.asarray(self.signal_mean), self.signal_width) + log_noise

    def log_data_mc_weight(self, events) -> np.ndarray:
        """log p_bkg(m, x) / p_MC(m, x) of events (N, 5 + k): the weight a perfect data-vs-MC
        classifier learns on background. Bounded, as the MC is wider in m and in x."""
        events = self._check_events(events)
        m, x4 = self.context(events)[:, 0], self.features(events)[:, :4]
        log_m = np.log(self.background_rate / self.mc_rate) - (self.background_rate - self.mc_rate) * m
        mc_mean = self.mc_slope_scale * m[:, None] * self._a + np.asarray(self.mc_shift)
        return log_m + _log_gauss_diag(x4, m[:, None] * self._a, 1.0) - _log_gauss_diag(x4, mc_mean, self.mc_width)


TOYS: dict[str, type[_ADToy]] = {"nr": ToyNR, "r": ToyR}


def make_toy(kind: str = "nr", noise_features: int = 0) -> ToyNR | ToyR:
    """The toy ``"nr"`` (:class:`ToyNR`) or ``"r"`` (:class:`ToyR`) with its reference parameters."""
    if kind not in TOYS:
        raise ValueError(f"kind: need one of {sorted(TOYS)}, got {kind!r}.")
    return TOYS[kind](noise_features=noise_features)


# ------------------------------------------------------------------------------ the optimum


def optimal_performance(
    toy: ToyNR | ToyR,
    n_background: int = 2_000_000,
    n_signal: int = 200_000,
    seed: int = 0,
    min_eps_b: float | None = None,
    with_context: bool = False,
) -> dict[str, float]:
    """ROC figures of the exact optimal score on exact SR samples (the line methods approach).

    Args:
        toy: a :class:`ToyNR` or :class:`ToyR`.
        n_background, n_signal: SR events drawn (Monte Carlo error of max SIC ~ 1 % at the defaults).
        seed: seed of the draws.
        min_eps_b: floor of eps_b for max SIC; default :data:`SEED_MIN_EPS_B` = 1/(0.4^2 200000).
        with_context: score (c, x) with :meth:`ToyNR.optimal_score_with_context` (Toy NR only).

    Returns:
        ``max_sic``, ``auc``, ``sic_at_rejection_1e3``, ``sic_at_rejection_1e4``, and
        ``eps_s_at_max_sic``, ``eps_b_at_max_sic`` (where the maximum is, for its error).
    """
    if with_context and not hasattr(toy, "optimal_score_with_context"):
        raise ValueError(f"with_context: only Toy NR has a context score, not {type(toy).__name__}.")
    min_eps_b = SEED_MIN_EPS_B if min_eps_b is None else float(min_eps_b)
    rng = np.random.default_rng(seed)
    background, signal = toy.sample_background_sr(n_background, rng), toy.sample_signal_sr(n_signal, rng)
    events = np.concatenate([background, signal])
    score = toy.optimal_score_with_context(events) if with_context else toy.optimal_score(toy.features(events))
    eps_s, eps_b, _ = roc_curve(score, np.r_[np.zeros(n_background), np.ones(n_signal)])
    kept = np.flatnonzero((eps_b > 0) & (eps_b >= min_eps_b))
    best = kept[np.argmax(eps_s[kept] / np.sqrt(eps_b[kept]))]
    return {
        "max_sic": max_sic(eps_s, eps_b, min_eps_b),
        "auc": auc(eps_s, eps_b),
        "sic_at_rejection_1e3": float(sic_at_rejection(eps_s, eps_b, 1e3)),
        "sic_at_rejection_1e4": float(sic_at_rejection(eps_s, eps_b, 1e4)),
        "eps_s_at_max_sic": float(eps_s[best]),
        "eps_b_at_max_sic": float(eps_b[best]),
    }


@lru_cache(maxsize=8)
def _reference_performance(toy: ToyNR | ToyR, with_context: bool) -> dict[str, float]:
    """optimal_performance at its defaults, once per toy and process (it takes a few seconds)."""
    return optimal_performance(toy, with_context=with_context)


# ------------------------------------------------------------------------------ the files


def _target_names(signal_fractions: Sequence[float], seeds: Sequence[int]) -> list[str]:
    names = ["mc_events.npz", "ideal_bkg_events.npz", "test_SR.npz", "fullsup_SR.npz"]
    names += [f"seed{g}/{data_file_name(s)}" for g in seeds for s in signal_fractions]
    return [*names, "ad_toy.json"]


def _sample_regions(
    sample: Callable, toy: _ADToy, draws: int, cr_keep: float, rng: np.random.Generator, bar
) -> tuple[np.ndarray, np.ndarray]:
    """``draws`` events of ``sample`` split into (SR, CR kept with probability cr_keep), in chunks."""
    sr, cr = [], []
    for start in range(0, draws, CHUNK):
        m = min(CHUNK, draws - start)
        events = sample(m, rng)
        inside, keep = toy.in_sr(events), rng.random(m) < cr_keep
        sr.append(events[inside])
        cr.append(events[~inside & keep])
        bar.update(m)
    return np.concatenate(sr), np.concatenate(cr)


def _signal_pool(toy: _ADToy, n: int, cr_keep: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """n signal events and their CR keep flags (the CR is thinned for signal too), drawn in blocks
    of a fixed size, so that the first m events are the same whatever n >= m is asked for: a file
    made alone for one fraction equals the same file from a scan."""
    events, kept = [], []
    for _ in range(0, n, _POOL_BLOCK):
        events.append(toy.sample_signal(_POOL_BLOCK, rng))
        kept.append(rng.random(_POOL_BLOCK) < cr_keep)
    if not events:
        return toy.sample_signal(0, rng), np.zeros(0, dtype=bool)
    return np.concatenate(events)[:n], np.concatenate(kept)[:n]


def _shuffled(rng: np.random.Generator, events: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = rng.permutation(len(events))
    return events[order], labels[order]


def _save(path: Path, **arrays) -> Path:
    return write_atomically(path, lambda f: np.savez(f, **arrays))


def _check_int(value, name: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise ValueError(f"{name}: need an integer >= {low}, got {value!r}.")
    return int(value)


@dataclass
class _Bar:
    """tqdm when progress is wanted, else a no-op with the same update()."""

    total: int
    desc: str
    enabled: bool
    _bar: object = field(default=None, repr=False)

    def __enter__(self):
        if self.enabled:
            from tqdm.auto import tqdm

            self._bar = tqdm(total=self.total, desc=self.desc, unit="ev", unit_scale=True)
        return self

    def update(self, n: int) -> None:
        if self._bar is not None:
            self._bar.update(n)

    def __exit__(self, *exc):
        if self._bar is not None:
            self._bar.close()


def make_ad_toy(
    out: str | Path,
    kind: str = "nr",
    events: int = 100_000,
    signal_fractions: Sequence[float] = SIGNAL_FRACTIONS,
    seeds: Sequence[int] = SEEDS,
    noise_features: int = 0,
    cr_keep: float = 0.1,
    test_background: int = 200_000,
    test_signal: int = 50_000,
    fullsup_background: int = 100_000,
    fullsup_signal: int = 50_000,
    seed: int = 0,
    progress: bool = True,
) -> list[Path]:
    """Write a toy's weak-supervision data set into ``out`` in the seed's final-era layout.

    Files (arrays (N, n_context + 4 + noise_features) float64, rows shuffled within each array):

    * ``mc_events.npz``: ``mc_events_cr``, ``mc_events_sr`` (the simulation);
    * ``ideal_bkg_events.npz``: ``ideal_bkg_events_cr``, ``ideal_bkg_events_sr`` (an independent
      background sample: the idealised AD's template);
    * ``seed{g}/data_{s}.npz`` (:func:`signal_file_name`) per injection seed g and signal
      fraction s: ``data_events_cr``, ``data_events_sr``, ``sig_percent`` (realised SR S/B,
      0-d), and ``data_labels_cr``, ``data_labels_sr`` (int8, 1 = injected signal; extra keys,
      for diagnostics only). As in the seed, int(s N_bkg,SR) signal events are drawn from the whole
      signal (a few land in the CR), mixed with the background and split by region. Within one g
      the background is the same for every s and the signal is the first n_sig of one pool;
    * ``test_SR.npz`` and ``fullsup_SR.npz``: ``bkg_events_SR``, ``sig_events_SR``, independent
      SR samples (evaluation, and the fully supervised classifier);
    * ``ad_toy.json``: the toy, column names, sizes, seeds, realised S/B per file, and the optimal
      ROC figures (:func:`optimal_performance` at its defaults).

    Sizes: the data background is round(events / P_b(SR)) draws, so ≈ ``events`` in the SR; ideal
    background and MC are as many draws. Every CR event of data, ideal background and MC is kept
    with probability ``cr_keep``: the CR density is unchanged, only its statistics are cut (the
    full CR of Toy NR is 40 times its SR). SR samples are never thinned.

    Randomness: each sample has its own stream ``default_rng([seed, stream, g])``, so a file
    depends on (seed, toy, sizes, g, s) only, not on which other seeds or fractions are made: a
    study made for one (g, s) holds the same ``seed{g}/data_{s}.npz`` as a whole scan.

    Returns:
        the written paths, in writing order (ad_toy.json last).

    Raises:
        ValueError: unknown kind, bad sizes, seeds or fractions.
        FileExistsError: a target file exists (checked before anything is made).
    """
    toy = make_toy(kind, noise_features)
    events = _check_int(events, "events", 1)
    sizes = {
        name: _check_int(value, name, 1)
        for name, value in [("test_background", test_background), ("test_signal", test_signal),
                            ("fullsup_background", fullsup_background), ("fullsup_signal", fullsup_signal)]
    }
    seed = _check_int(seed, "seed", 0)
    seeds = [_check_int(g, "seeds", 0) for g in seeds]
    signal_fractions = [float(s) for s in signal_fractions]
    if not seeds or len(set(seeds)) != len(seeds):
        raise ValueError(f"seeds: need distinct integers, got {seeds}.")
    names = [data_file_name(s) for s in signal_fractions]
    if not signal_fractions or len(set(names)) != len(names) or not all(0.0 <= s < 1.0 for s in signal_fractions):
        raise ValueError(f"signal_fractions: need distinct values in [0, 1), got {signal_fractions}.")
    if not 0.0 < cr_keep <= 1.0:
        raise ValueError(f"cr_keep: need a probability in (0, 1], got {cr_keep}.")
    out = Path(out)
    targets = [out / name for name in _target_names(signal_fractions, seeds)]
    for path in targets:
        if path.exists():
            raise FileExistsError(f"{path} exists; hepgen never overwrites a data file. Remove it or choose another folder.")

    def stream(*key: int) -> np.random.Generator:
        return np.random.default_rng([seed, *key])

    draws = round(events / toy.p_background_sr)
    region = partial(_sample_regions, toy=toy, draws=draws, cr_keep=cr_keep)
    written: list[Path] = []
    counts: dict[str, int] = {}
    for desc, sample, key, stem in [("MC", toy.sample_mc, 0, "mc"), ("ideal bkg", toy.sample_background, 1, "ideal_bkg")]:
        rng = stream(key)
        with _Bar(draws, desc, progress) as bar:
            sr, cr = region(sample, rng=rng, bar=bar)
        arrays = {f"{stem}_events_cr": rng.permutation(cr), f"{stem}_events_sr": rng.permutation(sr)}
        counts.update({k: len(v) for k, v in arrays.items()})
        written.append(_save(out / f"{stem}_events.npz", **arrays))
    for key, stem in [(2, "test"), (3, "fullsup")]:
        rng = stream(key)
        bkg = toy.sample_background_sr(sizes[f"{stem}_background"], rng)
        sig = toy.sample_signal_sr(sizes[f"{stem}_signal"], rng)
        written.append(_save(out / f"{stem}_SR.npz", bkg_events_SR=bkg, sig_events_SR=sig))

    injections = []
    for g in seeds:
        with _Bar(draws, f"data seed {g}", progress) as bar:
            bkg_sr, bkg_cr = region(toy.sample_background, rng=stream(10, g), bar=bar)
        n_bkg_sr = len(bkg_sr)
        # one signal pool per g: a scan over s differs only by how much of it is injected
        pool, pool_cr_kept = _signal_pool(toy, max(int(s * n_bkg_sr) for s in signal_fractions), cr_keep, stream(11, g))
        pool_sr = toy.in_sr(pool)
        for s in signal_fractions:
            n_sig = int(s * n_bkg_sr)  # the seed's count, from the realised SR background
            signal, inside, kept = pool[:n_sig], pool_sr[:n_sig], pool_cr_kept[:n_sig]
            rng = stream(12, g, n_sig)
            sr, sr_labels = _shuffled(
                rng, np.concatenate([bkg_sr, signal[inside]]), np.r_[np.zeros(n_bkg_sr), np.ones(inside.sum())].astype(np.int8)
            )
            cr, cr_labels = _shuffled(
                rng,
                np.concatenate([bkg_cr, signal[~inside & kept]]),
                np.r_[np.zeros(len(bkg_cr)), np.ones((~inside & kept).sum())].astype(np.int8),
            )
            sig_percent = float(inside.sum()) / n_bkg_sr
            name = f"seed{g}/{data_file_name(s)}"
            written.append(
                _save(out / name, data_events_cr=cr, data_events_sr=sr, sig_percent=np.float64(sig_percent),
                      data_labels_cr=cr_labels, data_labels_sr=sr_labels)
            )
            injections.append({"file": name, "seed": g, "signal_fraction": s, "n_signal_injected": n_sig,
                               "n_signal_sr": int(inside.sum()), "n_background_sr": n_bkg_sr,
                               "n_cr": len(cr), "sig_percent": sig_percent})

    optimal = {"features": dict(_reference_performance(toy, False))}
    if isinstance(toy, ToyNR):
        optimal["features_and_context"] = dict(_reference_performance(toy, True))
    made = {
        "hepgen_made": "ad_toy",
        "hepgen_version": __version__,
        "kind": toy.kind,
        "toy": {"class": type(toy).__name__, **asdict(toy)},
        "columns": toy.columns,
        "n_context": toy.n_context,
        "n_features": toy.n_features,
        "noise_features": toy.noise_features,
        "regions": toy.sr_words,
        "p_sr": {"background": toy.p_background_sr, "signal": toy.p_signal_sr, "mc": toy.p_mc_sr},
        "events": events,
        "draws_per_sample": draws,
        "cr_keep": cr_keep,
        "sizes": {**counts, **sizes},
        "seed": seed,
        "seeds": seeds,
        "signal_fractions": signal_fractions,
        "data": injections,
        "optimal": optimal,
        "optimal_settings": {"n_background": 2_000_000, "n_signal": 200_000, "seed": 0, "min_eps_b": SEED_MIN_EPS_B},
    }
    text = (json.dumps(made, indent=2) + "\n").encode()
    written.append(write_atomically(out / "ad_toy.json", lambda f: f.write(text)))
    return written
