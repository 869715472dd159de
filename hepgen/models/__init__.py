"""Methods: one LightningModule per method."""

from hepgen.models.aidapt import FoldingGAN, UnfoldingGAN
from hepgen.models.calo_vae import CaloVAE

__all__ = ["CaloVAE", "FoldingGAN", "UnfoldingGAN"]
