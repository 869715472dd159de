"""Methods: one LightningModule per method."""

from hepgen.models.ad_classifier import TreeClassifier, WeakClassifier
from hepgen.models.ad_generate import ConditionalFlow
from hepgen.models.ad_morph import MorphFlow
from hepgen.models.aidapt import FoldingGAN, UnfoldingGAN
from hepgen.models.calo_vae import CaloVAE, CompiledShowerGenerator
from hepgen.models.sde_gan import SDEGAN
from hepgen.models.uvcgan_s import StratifiedCycleGAN

__all__ = [
    "CaloVAE", "CompiledShowerGenerator", "ConditionalFlow", "FoldingGAN", "MorphFlow", "SDEGAN",
    "StratifiedCycleGAN", "TreeClassifier", "UnfoldingGAN", "WeakClassifier",
]  # fmt: skip
