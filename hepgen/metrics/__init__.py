"""Metrics comparing generated and reference samples: 1-D distances and the classifier test."""

from hepgen.metrics.classifier import two_sample_auc
from hepgen.metrics.distributions import ks_statistic, reference_bin_edges, separation_power

__all__ = ["ks_statistic", "reference_bin_edges", "separation_power", "two_sample_auc"]
