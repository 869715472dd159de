"""Datamodules: one LightningDataModule per data family."""

from datamodules.aidapt import AIDAPTDataModule
from datamodules.base import HepDataModule
from datamodules.calogan import CaloGANDataModule

__all__ = ["AIDAPTDataModule", "CaloGANDataModule", "HepDataModule"]
