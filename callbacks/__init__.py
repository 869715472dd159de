"""Callbacks: physics metrics (one per metric family), writers, and run plumbing."""

from callbacks.aidapt import AIDAPTMetrics, AIDAPTWriter, GANMonitor
from callbacks.anomaly import AnomalyMetrics, AnomalyScoreWriter, ReweightTemplateWriter, TemplateWriter
from callbacks.base import PhysicsMetric
from callbacks.calo import CaloGANWriter, CaloMetrics
from callbacks.calochallenge import CaloChallengeMetrics, CaloChallengeWriter
from callbacks.decomposition import DecompositionMetrics, DecompositionWriter
from callbacks.paths import PathMetrics, PathWriter
from callbacks.reproducibility import RNGStateCheckpoint
from callbacks.requeue import SlurmRequeue
from callbacks.sweep import SweepTrial

__all__ = [
    "AIDAPTMetrics",
    "AIDAPTWriter",
    "AnomalyMetrics",
    "AnomalyScoreWriter",
    "CaloChallengeMetrics",
    "CaloChallengeWriter",
    "CaloGANWriter",
    "CaloMetrics",
    "DecompositionMetrics",
    "DecompositionWriter",
    "GANMonitor",
    "PathMetrics",
    "PathWriter",
    "PhysicsMetric",
    "RNGStateCheckpoint",
    "ReweightTemplateWriter",
    "SlurmRequeue",
    "SweepTrial",
    "TemplateWriter",
]
