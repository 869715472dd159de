"""Datamodules: one LightningDataModule per data family."""

from datamodules.base import HepDataModule
from datamodules.calogan import CaloGANDataModule

__all__ = ["CaloGANDataModule", "HepDataModule"]
