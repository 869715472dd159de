"""Conditional normalizing flows (nflows transforms) for low-dimensional densities.

Used as a learned latent density: a VAE's aggregate posterior q(z | c) is rarely N(0, I), and
sampling the prior then gives codes the decoder never saw in training (off-manifold showers).
A flow fitted to posterior samples draws codes where the data put them.
"""

from __future__ import annotations

import math

import torch
from nflows.nn.nets import ResidualNet
from nflows.transforms import ActNorm, AffineCouplingTransform, CompositeTransform, RandomPermutation
from torch import nn


class ConditionalCouplingFlow(nn.Module):
    """p(z | c) for z (B, features) given a condition c (B, context): affine couplings (RealNVP,
    Dinh et al. 2017; the INN of CaloVAE+INN) over a standard normal.

    Couplings, not autoregressive layers: density evaluation (training) and sampling each cost one
    pass per layer, so drawing 10,000 codes stays a small part of generating 10,000 showers (a MAF
    samples one dimension at a time; spline couplings cost about ten times more per layer on CPU).

    Args:
        features: dimension of z (at least 2: a coupling splits it in two halves).
        context: dimension of c.
        transforms: number of coupling layers (the halves alternate, with fixed permutations between).
        hidden: width of each coupling's residual network (one residual block, conditioned on c).
    """

    def __init__(self, features: int, context: int, transforms: int = 6, hidden: int = 64) -> None:
        super().__init__()
        if features < 2:
            raise ValueError(f"a coupling flow needs at least 2 features, got {features}.")
        self.features = features
        generator = torch.Generator().manual_seed(features)  # fixed permutations: part of the architecture
        layers = []
        for i in range(transforms):
            # A learnt per-dimension scale and shift before each coupling (Glow's actnorm): nflows'
            # affine couplings only contract towards the base density, so without it a code that
            # the encoder pins down to 1e-3 could never be spread onto N(0, 1). Starting as the
            # identity (no data-dependent initialisation) keeps DDP ranks identical.
            norm = ActNorm(features)
            norm.initialized.fill_(True)
            layers.append(norm)
            mask = (torch.arange(features) + i) % 2  # alternate which half is transformed
            layers.append(
                AffineCouplingTransform(
                    mask,
                    lambda n_in, n_out: ResidualNet(n_in, n_out, hidden, context_features=context, num_blocks=1),
                )
            )
            if i < transforms - 1:
                layers.append(_FixedPermutation(torch.randperm(features, generator=generator)))
        self.transform = CompositeTransform(layers)
        # The smallest box around every z the flow was fitted to (see widen_support): outside the
        # data the couplings extrapolate, and a rare base draw can land at |z| ~ 1e12.
        self.register_buffer("support_low", torch.full((features,), math.inf))
        self.register_buffer("support_high", torch.full((features,), -math.inf))

    @torch.no_grad()
    def widen_support(self, low: torch.Tensor, high: torch.Tensor) -> None:
        """Grow the support box to include [low, high] (each (features,))."""
        torch.minimum(self.support_low, low, out=self.support_low)
        torch.maximum(self.support_high, high, out=self.support_high)

    def log_prob(self, z: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """log p(z | c), (B,), in nats."""
        u, log_det = self.transform(z, context=context)
        base = -0.5 * (u**2).sum(1) - 0.5 * self.features * math.log(2 * math.pi)
        return base + log_det

    def sample(self, context: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """One z (B, features) per row of ``context`` (B, context), drawn with ``generator``
        (:meth:`from_base`)."""
        u = torch.randn((len(context), self.features), generator=generator, device=context.device, dtype=context.dtype)
        return self.from_base(u, context)

    def from_base(self, u: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """z (B, features) for base-density draws ``u`` (B, features) given ``context`` (B, context),
        clipped to the support box once one is known (1 draw in 1,000 lands outside it for a VAE's
        codes). No branch on the data: a compiled generator traces it whole."""
        z, _ = self.transform.inverse(u, context=context)
        known = torch.isfinite(self.support_low)  # +inf until the box is first widened
        return torch.where(known, torch.maximum(torch.minimum(z, self.support_high), self.support_low), z)


class _FixedPermutation(RandomPermutation):
    """A permutation chosen by the caller (nflows' RandomPermutation draws from the global stream)."""

    def __init__(self, permutation: torch.Tensor) -> None:
        super(RandomPermutation, self).__init__(permutation, dim=1)
