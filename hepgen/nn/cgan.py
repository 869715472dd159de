"""Dense conditional generator and discriminator of the AIDAPT GANs (Keras ``tf_cgan_v0`` layout)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


def keras_dense_init_(module: nn.Module) -> None:
    """Keras ``Dense`` defaults: Glorot-uniform kernels, zero biases (torch would use Kaiming-uniform)."""
    for layer in module.modules():
        if isinstance(layer, nn.Linear):
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)


def dense_body(
    n_in: int,
    widths: Sequence[int],
    negative_slope: float = 0.2,
    batch_norm: bool = False,
    bn_momentum: float = 0.2,
    bn_eps: float = 1e-3,
) -> nn.Sequential:
    """Dense -> LeakyReLU [-> BatchNorm] per width, the order of the reference.

    Keras' ``BatchNormalization(momentum=0.8)`` keeps 0.8 of the old running statistics; torch's
    ``momentum`` is the weight of the new batch, so 0.8 there is 0.2 here. Keras' eps is 1e-3.
    """
    layers: list[nn.Module] = []
    for width in widths:
        layers += [nn.Linear(n_in, width), nn.LeakyReLU(negative_slope)]
        if batch_norm:
            layers.append(nn.BatchNorm1d(width, eps=bn_eps, momentum=bn_momentum))
        n_in = width
    return nn.Sequential(*layers)


class ConditionalGenerator(nn.Module):
    """x = G(label, z): label (B, L) and noise z (B, Z) -> sample (B, F) in scaled units.

    The output is ``tanh(head)`` in [-1, 1], matching min-max scaled targets. With
    ``residual_scale`` set it is ``residual_scale * tanh(head)``, a bounded correction that the
    caller adds to a value it already has, and the head starts at zero (no correction). The
    folding GAN adds it to the vertex value: a detector moves invariants by a few resolution
    widths and rarely more, and the zero correction is the no-smearing detector.

    Args:
        label_dim: L.
        noise_dim: Z.
        out_dim: F.
        widths: hidden widths.
        batch_norm: BatchNorm after every hidden activation.
        negative_slope: LeakyReLU slope.
        bn_momentum, bn_eps: BatchNorm settings (torch convention).
        residual_scale: largest correction; ``None`` for the plain tanh output.
    """

    def __init__(
        self,
        label_dim: int,
        noise_dim: int = 100,
        out_dim: int = 4,
        widths: Sequence[int] = (128, 256, 512),
        batch_norm: bool = True,
        negative_slope: float = 0.2,
        bn_momentum: float = 0.2,
        bn_eps: float = 1e-3,
        residual_scale: float | None = None,
    ) -> None:
        super().__init__()
        self.noise_dim = noise_dim
        self.residual_scale = residual_scale
        self.body = dense_body(label_dim + noise_dim, widths, negative_slope, batch_norm, bn_momentum, bn_eps)
        self.head = nn.Linear(widths[-1] if widths else label_dim + noise_dim, out_dim)
        keras_dense_init_(self)
        if residual_scale is not None:
            nn.init.zeros_(self.head.weight)

    def forward(self, label: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.head(self.body(torch.cat([label, noise], dim=1))))
        return h if self.residual_scale is None else self.residual_scale * h


class ConditionalDiscriminator(nn.Module):
    """D(label, x): label (B, L) and sample (B, F) -> logit (B,) of "x is real".

    The reference's ``Dense(1, sigmoid)`` head is used with a binary cross-entropy that Keras
    evaluates on the logits; returning the logit and using ``binary_cross_entropy_with_logits``
    is the same loss, and it accepts the noisy targets above 1.
    """

    def __init__(
        self, label_dim: int, in_dim: int = 4, widths: Sequence[int] = (256, 128, 64), negative_slope: float = 0.2
    ) -> None:
        super().__init__()
        self.body = dense_body(label_dim + in_dim, widths, negative_slope)
        self.head = nn.Linear(widths[-1] if widths else label_dim + in_dim, 1)
        keras_dense_init_(self)

    def forward(self, label: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(torch.cat([label, x], dim=1))).squeeze(1)
