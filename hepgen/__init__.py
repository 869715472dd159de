"""hepgen: generative models for high-energy and nuclear physics on PyTorch Lightning."""

__version__ = "0.1.0"
