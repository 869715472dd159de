"""Network building blocks."""

from hepgen.nn.mlp import mlp

__all__ = ["mlp"]
