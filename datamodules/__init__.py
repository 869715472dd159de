"""Datamodules: one LightningDataModule per data family."""

from datamodules.ad_regions import RegionDataModule
from datamodules.aidapt import AIDAPTDataModule
from datamodules.anomaly import WeakSupervisionDataModule
from datamodules.base import HepDataModule
from datamodules.calochallenge import CaloChallengeDataModule
from datamodules.calogan import CaloGANDataModule
from datamodules.sphenix import SPhenixDataModule, ToyMixDataModule
from datamodules.timeseries import CSVSeriesDataModule, OUDataModule, TrajectoryDataModule

__all__ = [
    "AIDAPTDataModule", "CSVSeriesDataModule", "CaloChallengeDataModule", "CaloGANDataModule", "HepDataModule",
    "OUDataModule", "RegionDataModule", "SPhenixDataModule", "ToyMixDataModule", "TrajectoryDataModule",
    "WeakSupervisionDataModule",
]  # fmt: skip
