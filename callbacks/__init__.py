"""Callbacks: physics metrics (one per metric family), writers, and run plumbing."""

from callbacks.base import PhysicsMetric
from callbacks.calo import CaloGANWriter, CaloMetrics
from callbacks.reproducibility import RNGStateCheckpoint

__all__ = ["CaloGANWriter", "CaloMetrics", "PhysicsMetric", "RNGStateCheckpoint"]
