"""Metrics comparing generated and reference samples (1-D distances, the classifier test) and
the ROC/SIC of a score (anomaly detection)."""

from hepgen.metrics.classifier import two_sample_auc
from hepgen.metrics.distributions import ks_statistic, reference_bin_edges, separation_power
from hepgen.metrics.roc import roc_curve, roc_summary

__all__ = ["ks_statistic", "reference_bin_edges", "roc_curve", "roc_summary", "separation_power", "two_sample_auc"]
