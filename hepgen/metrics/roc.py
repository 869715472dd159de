"""Weighted ROC curve, AUC and significance improvement (SIC) of a score separating signal from background.

The score ranks events, larger meaning more signal-like; a cut ``score >= c`` keeps the signal
fraction eps_s(c) (signal efficiency, true-positive rate) and the background fraction eps_b(c)
(false-positive rate), each a weighted fraction (event weights, e.g. cross-section weights).

* AUC = integral of eps_s d(eps_b) = P(score_sig > score_bkg) + 1/2 P(score_sig = score_bkg).
* SIC = eps_s / sqrt(eps_b): the factor by which the cut improves S / sqrt(B), the usual
  figure of merit of anomaly detection (e.g. CWoLa, CATHODE).
"""

from __future__ import annotations

import numpy as np


def _inputs(score, label, weight) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    score = np.asarray(score, dtype=np.float64).reshape(-1)
    label = np.asarray(label).reshape(-1).astype(bool)
    weight = np.ones_like(score) if weight is None else np.asarray(weight, dtype=np.float64).reshape(-1)
    if not len(score) == len(label) == len(weight):
        raise ValueError(f"score, label and weight differ in length: {len(score)}, {len(label)}, {len(weight)}")
    if not np.isfinite(score).all():
        raise ValueError("score has NaN or inf values; a ROC curve needs finite scores")
    if weight[label].sum() <= 0 or weight[~label].sum() <= 0:
        raise ValueError("a ROC curve needs signal (label 1) and background (label 0) with positive total weight")
    return score, label, weight


def roc_curve(score, label, weight=None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Signal and background efficiencies of the cuts ``score >= c`` at every distinct score c.

    Args:
        score: (N,) finite scores, larger = more signal-like.
        label: (N,) 1/True for signal, 0/False for background.
        weight: (N,) event weights (default 1).

    Returns:
        ``(eps_s, eps_b, thresholds)``: eps_s and eps_b (K + 1,), non-decreasing from (0, 0) to
        (1, 1); thresholds (K,) the distinct scores in decreasing order, the cut of point k + 1.
    """
    score, label, weight = _inputs(score, label, weight)
    order = np.argsort(-score, kind="stable")
    score, label, weight = score[order], label[order], weight[order]
    signal = np.cumsum(np.where(label, weight, 0.0))
    background = np.cumsum(np.where(label, 0.0, weight))
    # one point per distinct score: tied events pass or fail a cut together
    last_of_tie = np.r_[np.flatnonzero(np.diff(score) != 0), len(score) - 1]
    eps_s = np.r_[0.0, signal[last_of_tie] / signal[-1]]
    eps_b = np.r_[0.0, background[last_of_tie] / background[-1]]
    return eps_s, eps_b, score[last_of_tie]


def auc(eps_s: np.ndarray, eps_b: np.ndarray) -> float:
    """Area under the ROC curve (trapezoids in eps_b, which count ties as one half)."""
    return float(np.sum(np.diff(eps_b) * (eps_s[1:] + eps_s[:-1]) / 2))


def sic_curve(eps_s: np.ndarray, eps_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(eps_s, SIC)`` at the ROC points with eps_b > 0 (SIC = eps_s / sqrt(eps_b))."""
    kept = eps_b > 0
    return eps_s[kept], eps_s[kept] / np.sqrt(eps_b[kept])


def max_sic(eps_s: np.ndarray, eps_b: np.ndarray, min_eps_b: float = 0.0) -> float:
    """The largest SIC over cuts keeping at least ``min_eps_b`` of the background.

    The floor guards against the statistical spike of the tightest cuts, where eps_b is one or
    two background events: with ``n_b`` background events, ``min_eps_b = 25 / n_b`` keeps the
    relative error of eps_b below 20 %.
    """
    kept = (eps_b > 0) & (eps_b >= min_eps_b)
    if not kept.any():
        return float("nan")
    return float(np.max(eps_s[kept] / np.sqrt(eps_b[kept])))


def background_efficiency_at(eps_s: np.ndarray, eps_b: np.ndarray, signal_efficiency) -> np.ndarray:
    """eps_b of the best cut reaching each ``signal_efficiency``, interpolated linearly on the ROC.

    Between two cuts the ROC is the straight line of a randomised choice of the two; where several
    cuts share one eps_s the one with the smallest eps_b counts.
    """
    eps_s_unique, first = np.unique(eps_s, return_index=True)
    return np.interp(signal_efficiency, eps_s_unique, eps_b[first])


def sic_at(eps_s: np.ndarray, eps_b: np.ndarray, signal_efficiency) -> np.ndarray:
    """SIC = eps_s / sqrt(eps_b) at the given signal efficiencies (inf where eps_b is 0)."""
    target = np.asarray(signal_efficiency, dtype=np.float64)
    with np.errstate(divide="ignore"):
        return target / np.sqrt(background_efficiency_at(eps_s, eps_b, target))


def signal_efficiency_at(eps_s: np.ndarray, eps_b: np.ndarray, background_efficiency) -> np.ndarray:
    """eps_s of the best cut at each ``background_efficiency``, interpolated linearly on the ROC."""
    eps_b_unique, last = np.unique(eps_b[::-1], return_index=True)  # the largest eps_s of tied eps_b
    return np.interp(background_efficiency, eps_b_unique, eps_s[::-1][last])


def sic_at_rejection(eps_s: np.ndarray, eps_b: np.ndarray, rejection) -> np.ndarray:
    """SIC at background rejection 1/eps_b = ``rejection`` (e.g. 1e3, 1e4), as the seed reads it off."""
    eps_b_target = 1.0 / np.asarray(rejection, dtype=np.float64)
    return signal_efficiency_at(eps_s, eps_b, eps_b_target) / np.sqrt(eps_b_target)


def sic_floor(n_background: int, relative_error: float = 0.4) -> float:
    """The smallest eps_b a max SIC may use: 1 / (relative_error^2 N_B), so that the background
    count behind it has a relative Poisson error of at most ``relative_error`` (the seed's and
    CATHODE's 40 %: 3.1e-5 for 200k test background events)."""
    return 1.0 / (relative_error**2 * n_background)


def roc_summary(score, label, weight=None, signal_efficiencies=(0.2, 0.5), min_eps_b: float = 0.0) -> dict[str, float]:
    """``auc``, ``max_sic`` and ``sic_at_<eff>`` of one score (see the functions above)."""
    eps_s, eps_b, _ = roc_curve(score, label, weight)
    values = {"auc": auc(eps_s, eps_b), "max_sic": max_sic(eps_s, eps_b, min_eps_b)}
    for eff, sic in zip(signal_efficiencies, sic_at(eps_s, eps_b, signal_efficiencies)):
        values[f"sic_at_{eff:g}"] = float(sic)
    return values


def anomaly_summary(score, label, weight=None, relative_error: float = 0.4, rejections=(1e3, 1e4)) -> dict[str, float]:
    """The anomaly-detection numbers of one score: ``auc``, ``max_sic`` above the floor
    :func:`sic_floor` of the score's own background count, and ``sic_at_rejection_1e3`` etc."""
    eps_s, eps_b, _ = roc_curve(score, label, weight)
    n_background = int(np.sum(np.asarray(label) == 0))
    values = {"auc": auc(eps_s, eps_b), "max_sic": max_sic(eps_s, eps_b, sic_floor(n_background, relative_error))}
    for rejection, sic in zip(rejections, sic_at_rejection(eps_s, eps_b, rejections)):
        values[f"sic_at_rejection_{rejection:.0e}".replace("+0", "")] = float(sic)
    return values
