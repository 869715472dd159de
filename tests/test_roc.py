"""Weighted ROC, AUC and SIC (hepgen/metrics/roc.py) against hand-worked and analytic truth."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import norm

from hepgen.metrics.roc import auc, background_efficiency_at, max_sic, roc_curve, roc_summary, sic_at, sic_curve


def pairwise_auc(score, label, weight) -> float:
    """P(score_sig > score_bkg) + 1/2 P(=) over all weighted (signal, background) pairs."""
    s, b = score[label == 1], score[label == 0]
    ws, wb = weight[label == 1], weight[label == 0]
    pair = np.outer(ws, wb)
    wins = (s[:, None] > b[None, :]) + 0.5 * (s[:, None] == b[None, :])
    return float((pair * wins).sum() / pair.sum())


def test_hand_worked_curve():
    eps_s, eps_b, thresholds = roc_curve([4.0, 3.0, 2.0, 1.0], [1, 0, 1, 0])
    np.testing.assert_array_equal(eps_s, [0, 0.5, 0.5, 1, 1])
    np.testing.assert_array_equal(eps_b, [0, 0, 0.5, 0.5, 1])
    np.testing.assert_array_equal(thresholds, [4, 3, 2, 1])
    assert auc(eps_s, eps_b) == 0.75
    assert max_sic(eps_s, eps_b) == pytest.approx(1 / math.sqrt(0.5))  # the cut keeping both signal events
    assert max_sic(eps_s, eps_b, min_eps_b=0.75) == 1.0  # only the cut keeping everything is loose enough
    assert background_efficiency_at(eps_s, eps_b, 0.75) == pytest.approx(0.25)  # halfway between 2 cuts
    assert sic_at(eps_s, eps_b, [0.75])[0] == pytest.approx(0.75 / math.sqrt(0.25))


def test_ties_pass_a_cut_together_and_count_half():
    score = np.array([1.0, 1.0, 0.0, 0.0])
    label = np.array([1, 0, 1, 0])
    eps_s, eps_b, thresholds = roc_curve(score, label)
    np.testing.assert_array_equal(eps_s, [0, 0.5, 1])
    np.testing.assert_array_equal(eps_b, [0, 0.5, 1])
    np.testing.assert_array_equal(thresholds, [1, 0])
    assert auc(eps_s, eps_b) == 0.5


def test_weighted_auc_equals_the_pairwise_probability():
    rng = np.random.default_rng(0)
    score = rng.integers(0, 12, 400).astype(float)  # many ties
    label = rng.integers(0, 2, 400)
    weight = rng.uniform(0.1, 3.0, 400)
    eps_s, eps_b, _ = roc_curve(score, label, weight)
    assert auc(eps_s, eps_b) == pytest.approx(pairwise_auc(score, label, weight), abs=1e-12)


def test_integer_weights_are_repeated_events():
    rng = np.random.default_rng(1)
    score, label = rng.normal(size=300), rng.integers(0, 2, 300)
    weight = rng.integers(1, 4, 300)
    weighted = roc_curve(score, label, weight.astype(float))
    repeated = roc_curve(np.repeat(score, weight), np.repeat(label, weight))
    for a, b in zip(weighted, repeated):
        np.testing.assert_allclose(a, b, rtol=1e-12)


def test_gaussian_scores_match_the_analytic_roc():
    """Signal N(d, 1), background N(0, 1): AUC = Phi(d / sqrt 2); the cut at eps_s has
    eps_b = 1 - Phi(d + Phi^-1(1 - eps_s))."""
    d, n = 1.0, 200_000
    rng = np.random.default_rng(2)
    score = np.concatenate([rng.normal(d, 1.0, n), rng.normal(0.0, 1.0, n)])
    label = np.r_[np.ones(n), np.zeros(n)]
    values = roc_summary(score, label, signal_efficiencies=(0.2, 0.5))
    assert values["auc"] == pytest.approx(norm.cdf(d / math.sqrt(2)), abs=3e-3)
    for eff in (0.2, 0.5):
        eps_b = norm.sf(d + norm.ppf(1 - eff))
        assert values[f"sic_at_{eff:g}"] == pytest.approx(eff / math.sqrt(eps_b), rel=0.03)
    # the best cut with eps_b >= 1e-2: SIC(c) = sf(c - d) / sqrt(sf(c)) maximised on a fine grid of c
    eps_s, eps_b, _ = roc_curve(score, label)
    cuts = np.linspace(-3.0, norm.isf(1e-2), 20_000)
    expected = np.max(norm.sf(cuts - d) / np.sqrt(norm.sf(cuts)))
    assert max_sic(eps_s, eps_b, min_eps_b=1e-2) == pytest.approx(expected, rel=0.03)


def test_sic_curve_skips_cuts_without_background():
    eps_s, sic = sic_curve(np.array([0.0, 0.5, 1.0]), np.array([0.0, 0.25, 1.0]))
    np.testing.assert_allclose(eps_s, [0.5, 1.0])
    np.testing.assert_allclose(sic, [1.0, 1.0])


@pytest.mark.parametrize(
    "score, label, weight, match",
    [
        ([1.0, 2.0], [1, 1], None, "signal .* and background"),
        ([1.0, np.nan], [1, 0], None, "NaN"),
        ([1.0, 2.0], [1, 0, 1], None, "differ in length"),
        ([1.0, 2.0], [1, 0], [1.0, 0.0], "positive total weight"),
    ],
)
def test_bad_input_is_refused(score, label, weight, match):
    with pytest.raises(ValueError, match=match):
        roc_curve(score, label, weight)
