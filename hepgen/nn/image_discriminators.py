"""Patch discriminators for images: UVCGAN's ResNet critic and the pix2pix PatchGAN.

Both return a map of logits, one per receptive-field patch, not one logit per image: the GAN loss
averages over the map, so the critic judges local texture everywhere (for calorimeter images: the
fluctuations of the underlying event at the scale of a jet) rather than learning a global shortcut.

- :class:`ResNetDiscriminator` (UVCGAN2, arXiv:2303.16280; UVCGAN-S sPHENIX setting): stages of
  ReZero residual blocks with BatchNorm, spectral norm on every convolution.
- :class:`PatchGANDiscriminator` (pix2pix, arXiv:1611.07004; UVCGAN-S toy setting): strided 4x4
  convolutions with InstanceNorm.

Shapes: x (B, C, H, W) -> logits (B, 1, H', W'), with H', W' given in each class.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn.utils import parametrizations

NORMS = ("batch", "instance", "none")


def norm_layer(norm: str, channels: int) -> nn.Module:
    """BatchNorm2d (affine, running statistics), InstanceNorm2d (no affine, pix2pix's choice) or none."""
    if norm == "batch":
        return nn.BatchNorm2d(channels)
    if norm == "instance":
        return nn.InstanceNorm2d(channels)
    if norm == "none":
        return nn.Identity()
    raise ValueError(f"norm={norm!r}: choose one of {', '.join(NORMS)}.")


def init_discriminator_weights(module: nn.Module) -> None:
    """The reference's ``normal`` init with gain 0.02 (DCGAN's): conv/linear weights N(0, 0.02^2),
    biases 0, BatchNorm scales N(1, 0.02^2) and shifts 0. Call it before adding spectral norm."""
    for layer in module.modules():
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            nn.init.normal_(layer.weight, 0.0, 0.02)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)
        elif isinstance(layer, nn.BatchNorm2d):
            nn.init.normal_(layer.weight, 1.0, 0.02)
            nn.init.zeros_(layer.bias)


def add_spectral_norm(module: nn.Module) -> None:
    """Spectral norm (arXiv:1802.05957) on the weight of every conv and linear layer, one power
    iteration per training forward.

    The weight becomes W / sigma_max(W), with W reshaped to (C_out, C_in kh kw). With torch's
    parametrization the raw W is the parameter ``parametrizations.weight.original`` (same size as
    before) and the power-iteration vectors u, v are buffers, so the parameter count is unchanged.
    """
    for layer in list(module.modules()):
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            parametrizations.spectral_norm(layer, n_power_iterations=1)


class ReZeroResNetBlock(nn.Module):
    """LeakyReLU(x + alpha [Conv3x3 -> norm -> LeakyReLU -> Conv3x3 -> norm](x)), alpha = 0 at init.

    The ReZero gate (arXiv:2003.04887) makes every block start as a LeakyReLU of its input, so the
    untrained critic is shallow and its gradient is well conditioned from the first step. The convs
    keep their biases before the BatchNorm (redundant, but the reference's parameter count).

    Shapes: x (B, C, H, W) -> (B, C, H, W).
    """

    def __init__(self, channels: int, norm: str = "batch", negative_slope: float = 0.01) -> None:
        super().__init__()
        self.branch = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1),
            norm_layer(norm, channels),
            nn.LeakyReLU(negative_slope),
            nn.Conv2d(channels, channels, 3, padding=1),
            norm_layer(norm, channels),
        )
        self.activation = nn.LeakyReLU(negative_slope)
        self.alpha = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.activation(x + self.alpha * self.branch(x))


class ResNetDiscriminator(nn.Module):
    """UVCGAN's ResNet patch critic (the reference's ``resnet`` discriminator, sPHENIX setting).

    Stage s: a stem convolution to ``stage_channels[s]`` (Conv3x3 stride 1 for the first stage,
    Conv2x2 stride 2 after, no norm, no activation), then ``blocks_per_stage`` ReZero residual
    blocks; a Conv1x1 head reduces to one logit per position. The reference sizes hold 19.5M
    parameters and map a (1, 24, 64) calorimeter image to a (1, 3, 8) logit map.

    Spectral norm bounds each layer's Lipschitz constant; it is added after the weight
    initialisation (so the N(0, 0.02) init only sets the singular-vector directions, as in the
    reference). BatchNorm layers are not spectrally normalised.

    Args:
        in_channels: C.
        stage_channels: channels of the stages; S = len(stage_channels).
        blocks_per_stage: residual blocks after each stem.
        norm: ``batch`` (reference), ``instance`` or ``none``, inside the residual blocks.
        spectral_norm: spectral norm on every convolution.

    Shapes: x (B, C, H, W) -> logits (B, 1, H // 2**(S-1), W // 2**(S-1)).
    """

    def __init__(
        self,
        in_channels: int,
        stage_channels: Sequence[int] = (64, 128, 256, 512),
        blocks_per_stage: int = 3,
        norm: str = "batch",
        spectral_norm: bool = True,
    ) -> None:
        super().__init__()
        if not stage_channels:
            raise ValueError("stage_channels is empty: the critic needs at least one stage.")
        layers: list[nn.Module] = []
        channels = in_channels
        for stage, width in enumerate(stage_channels):
            if stage == 0:
                layers.append(nn.Conv2d(channels, width, 3, padding=1))
            else:
                layers.append(nn.Conv2d(channels, width, 2, stride=2))
            layers += [ReZeroResNetBlock(width, norm) for _ in range(blocks_per_stage)]
            channels = width
        self.body = nn.Sequential(*layers)
        self.head = nn.Conv2d(channels, 1, 1)
        init_discriminator_weights(self)
        if spectral_norm:
            add_spectral_norm(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


class PatchGANDiscriminator(nn.Module):
    """pix2pix's n-layer PatchGAN (the reference's ``n_layers`` discriminator, toy setting).

    Conv4x4 stride 2 to ``base_channels`` with LeakyReLU(0.2); then n_layers - 1 Conv4x4 stride 2
    and one Conv4x4 stride 1, each followed by the norm and LeakyReLU(0.2), the channels doubling
    up to ``max_multiplier * base_channels``; a final Conv4x4 stride 1 to one channel. At the
    reference sizes (n_layers 5, base 64, (3, 256, 256) input) it holds 11.2M parameters and returns a
    (1, 6, 6) map.

    The inner convs keep a bias except before BatchNorm, as pix2pix does; before the (non-affine)
    InstanceNorm that bias is removed again by the mean subtraction, so it never trains, but it is
    kept for the reference's parameter count. Deviation: pix2pix also drops it with ``norm='none'``,
    where it is the only shift; here it stays.

    Args:
        in_channels: C.
        n_layers: number of downsampling convs; H and W should be at least 2**n_layers * 3.
        base_channels: channels of the first conv.
        max_multiplier: cap on the channel multiplier.
        norm: ``instance`` (reference), ``batch`` or ``none``.

    Shapes: x (B, C, H, W) -> logits (B, 1, H // 2**n_layers - 2, W // 2**n_layers - 2).
    """

    def __init__(
        self,
        in_channels: int,
        n_layers: int = 5,
        base_channels: int = 64,
        max_multiplier: int = 8,
        norm: str = "instance",
    ) -> None:
        super().__init__()
        norm_layer(norm, 1)  # reject an unknown norm before building anything
        bias = norm != "batch"
        layers: list[nn.Module] = [nn.Conv2d(in_channels, base_channels, 4, stride=2, padding=1), nn.LeakyReLU(0.2)]
        channels = base_channels
        for n in range(1, n_layers + 1):
            width = base_channels * min(2**n, max_multiplier)
            stride = 2 if n < n_layers else 1
            layers += [
                nn.Conv2d(channels, width, 4, stride=stride, padding=1, bias=bias),
                norm_layer(norm, width),
                nn.LeakyReLU(0.2),
            ]
            channels = width
        self.body = nn.Sequential(*layers)
        self.head = nn.Conv2d(channels, 1, 4, stride=1, padding=1)
        init_discriminator_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))
