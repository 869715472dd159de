"""ViT-ModNet generator of UVCGAN2 and UVCGAN-S (arXiv:2303.16280, arXiv:2510.23717).

A UNet whose bottleneck is a pixel-wise vision transformer and whose decoder convolutions are
style-modulated, StyleGAN2-fashion (arXiv:1912.04958), by a single vector: the output of one extra
learned token that the transformer carries along with the image tokens. The style token sees the
whole bottleneck through attention, so it is the network's global channel (in background
subtraction: the event's overall activity), while the skips carry the local detail.

    x (B, C_in, H, W) -> Conv3x3 -> [encoder level]*n -> ViT (+ style token) -> [modulated decoder level]*n
      -> Conv1x1 -> y (B, C_out, H, W), linear output.

Every encoder level halves H and W, so H and W must be divisible by 2**n, n = len(unet_features).
At the reference sizes (features 384, 12 blocks, unet_features (96, 192, 384)) the transformer
holds 21.7M of the 32.1M parameters.

ReZero (arXiv:2003.04887) is used twice: each transformer block and each style scale is the
identity at initialisation, with a learnable gate alpha = 0. The untrained generator is therefore
a plain convolutional UNet whose bottleneck passes its (projected) tokens straight through.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

LEAKY_SLOPE = 0.01  # the reference's nn.LeakyReLU() default, everywhere outside the transformer


def init_generator_weights(module: nn.Module) -> None:
    """The reference's ``kaiming`` init: He-normal (fan_in, gain sqrt(2)) weights, zero biases.

    It covers every ``nn.Conv2d`` and ``nn.Linear``, including the attention's output projection and
    the convolution inside each :class:`ModulatedConv2d`. The attention's fused input projection is
    a bare parameter of ``nn.MultiheadAttention`` (not a Linear), so it keeps torch's Xavier-uniform
    default, as in the reference. LayerNorms, ReZero gates and the style token are left alone.
    """
    for layer in module.modules():
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(layer.weight, a=0, mode="fan_in")
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


def demodulation_scale(style: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """d_o = 1 / sqrt(sum_{i,k} (s_i w_{o,i,k})^2 + eps): the inverse norm of each modulated filter.

    Args:
        style: s, (B, C_in).
        weight: w, (C_out, C_in, kh, kw).

    Returns:
        d, (B, C_out).
    """
    filter_norms_sq = weight.square().sum(dim=(2, 3))  # (C_out, C_in)
    return torch.rsqrt(style.square() @ filter_norms_sq.T + eps)


class StyleScale(nn.Module):
    """Per-channel style s = 1 + alpha * (A mod + b), (B, C), from the style vector mod (B, M).

    With alpha = 0 at initialisation (ReZero) every modulated convolution starts as a plain one;
    the style is switched on as training finds it useful rather than as random noise from step one.
    """

    def __init__(self, mod_features: int, channels: int) -> None:
        super().__init__()
        self.affine = nn.Linear(mod_features, channels)
        self.alpha = nn.Parameter(torch.zeros(1))

    def forward(self, mod: torch.Tensor) -> torch.Tensor:
        return 1 + self.alpha * self.affine(mod)


class ModulatedConv2d(nn.Module):
    """StyleGAN2 modulated convolution: y = d * (conv(x * s) + b), 'same' padding.

    The style s (B, C_in) scales the input channels, which is the same as scaling the filters' input
    slices; demodulation d (B, C_out) then rescales each output channel so that its effective filter
    s_i w_{o,i,k} has unit norm, keeping unit-variance activations unit-variance whatever the style.

    Args:
        in_channels, out_channels: C_in, C_out.
        mod_features: M, size of the style vector.
        kernel_size: odd kernel size.
        demodulate: apply d (the reference always does).
        eps: regulariser of d.

    Shapes: x (B, C_in, H, W), mod (B, M) -> y (B, C_out, H, W).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        mod_features: int,
        kernel_size: int = 3,
        demodulate: bool = True,
        eps: float = 1e-6,
    ) -> None:
        super().__init__()
        self.style = StyleScale(mod_features, in_channels)
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2)
        self.demodulate = demodulate
        self.eps = eps

    def forward(self, x: torch.Tensor, mod: torch.Tensor) -> torch.Tensor:
        s = self.style(mod)
        # The conv bias is added before demodulation, so it is rescaled by d too. StyleGAN2 adds it
        # after; the reference (uvcgan2/uvcgan-s) does it this way and we keep it, so trained
        # behaviour and the reference's hyperparameters carry over. At initialisation b = 0.
        y = self.conv(x * s[:, :, None, None])
        if self.demodulate:
            y = y * demodulation_scale(s, self.conv.weight, self.eps)[:, :, None, None]
        return y


class ModNetEncoderLevel(nn.Module):
    """One encoder level: two Conv3x3 + LeakyReLU (the skip), then a stride-2 Conv2x2 down.

    The reference's encoder has no normalisation (``modnet_norm=None``); the learned 2x2 stride-2
    convolution downsamples instead of pooling.

    Shapes: x (B, C_in, H, W) -> down (B, F, H/2, W/2), skip (B, F, H, W).
    """

    def __init__(self, in_channels: int, features: int) -> None:
        super().__init__()
        self.block = nn.Sequential(
            nn.Conv2d(in_channels, features, 3, padding=1),
            nn.LeakyReLU(LEAKY_SLOPE),
            nn.Conv2d(features, features, 3, padding=1),
            nn.LeakyReLU(LEAKY_SLOPE),
        )
        self.down = nn.Conv2d(features, features, 2, stride=2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        skip = self.block(x)
        return self.down(skip), skip


class ModNetDecoderLevel(nn.Module):
    """One decoder level: upsample, join the skip, two modulated Conv3x3 + LeakyReLU.

    Upsampling is nearest x2 followed by a Conv3x3 (cheaper and free of the checkerboard artefacts
    of a transposed convolution). The two modulated convolutions map C + S -> C -> C_out, all
    modulated by the same style vector.

    Shapes: x (B, C, h, w), skip (B, S, 2h, 2w), mod (B, M) -> (B, C_out, 2h, 2w).
    """

    def __init__(
        self, in_channels: int, skip_channels: int, out_channels: int, mod_features: int, demodulate: bool = True
    ) -> None:
        super().__init__()
        self.up = nn.Sequential(
            nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(in_channels, in_channels, 3, padding=1)
        )
        self.conv1 = ModulatedConv2d(in_channels + skip_channels, in_channels, mod_features, 3, demodulate)
        self.conv2 = ModulatedConv2d(in_channels, out_channels, mod_features, 3, demodulate)
        self.activation = nn.LeakyReLU(LEAKY_SLOPE)

    def forward(self, x: torch.Tensor, skip: torch.Tensor, mod: torch.Tensor) -> torch.Tensor:
        y = torch.cat([self.up(x), skip], dim=1)
        y = self.activation(self.conv1(y, mod))
        return self.activation(self.conv2(y, mod))


class FourierPositionEmbedding(nn.Module):
    """sin(A (x, y) + b) at every pixel of an (h, w) grid, (1, h*w, E), tokens in row-major order.

    Fourier features of the normalised coordinates x, y in [-1, 1] (x along W, y along H), as in
    CIPS (arXiv:2011.13775), with a learned frequency matrix A (E, 2).
    """

    def __init__(self, embed_features: int, grid_shape: tuple[int, int]) -> None:
        super().__init__()
        h, w = grid_shape
        # linspace rather than 2k/(n-1) - 1: the same values, and a 1-pixel axis gets -1, not 0/0
        y, x = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
        self.register_buffer("coords", torch.stack([x, y], dim=-1).reshape(1, h * w, 2), persistent=False)
        self.projection = nn.Linear(2, embed_features)

    def forward(self) -> torch.Tensor:
        return torch.sin(self.projection(self.coords))


class ReZeroTransformerBlock(nn.Module):
    """Pre-LN transformer block with ReZero: y = x + a MHA(LN(x)), z = y + a FFN(LN(y)).

    One gate a per block, shared by both sub-layers and initialised to 0, so the block starts as the
    identity (arXiv:2003.04887): a deep transformer then trains without warm-up tricks. No dropout.

    Shapes: x (B, L, F) -> (B, L, F).
    """

    def __init__(self, features: int, n_heads: int, ffn_features: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(features)
        self.attention = nn.MultiheadAttention(features, n_heads, batch_first=True)
        self.norm2 = nn.LayerNorm(features)
        self.ffn = nn.Sequential(nn.Linear(features, ffn_features), nn.GELU(), nn.Linear(ffn_features, features))
        self.alpha = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        y = x + self.alpha * self.attention(h, h, h, need_weights=False)[0]
        return y + self.alpha * self.ffn(self.norm2(y))


class PixelwiseViTBottleneck(nn.Module):
    """Transformer over the bottleneck pixels, one token per pixel, plus one style token.

    Each pixel's C features are joined with its Fourier position code and projected to F; the learned
    style token (N(0, 1) at init, no position) is appended as token L; after the blocks the image
    tokens are projected back to C and the style token's output is the style vector ``mod``.

    Deviation from the reference: the reference lists the position codes column-major (x outer)
    while it flattens the tokens row-major, so on a non-square grid token k = (k // w, k % w) gets
    the code of another pixel (a fixed scramble, a transpose on square grids). Here codes and tokens
    share the row-major order, so each token's code is its own pixel's position.

    Args:
        in_channels: C, bottleneck channels of the UNet.
        grid_shape: (h, w), the bottleneck's spatial size.
        features: F, token width.
        n_heads, n_blocks, ffn_features: transformer sizes.
        embed_features: E, width of the position code.

    Shapes: x (B, C, h, w) -> (y (B, C, h, w), mod (B, F)).
    """

    def __init__(
        self,
        in_channels: int,
        grid_shape: tuple[int, int],
        features: int,
        n_heads: int,
        n_blocks: int,
        ffn_features: int,
        embed_features: int,
    ) -> None:
        super().__init__()
        self.position = FourierPositionEmbedding(embed_features, grid_shape)
        self.input_projection = nn.Linear(embed_features + in_channels, features)
        self.style_token = nn.Parameter(torch.randn(1, 1, features))
        self.blocks = nn.Sequential(*[ReZeroTransformerBlock(features, n_heads, ffn_features) for _ in range(n_blocks)])
        self.output_projection = nn.Linear(features, in_channels)

    def input_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) -> the blocks' input (B, h*w + 1, F), the style token last."""
        pixels = x.flatten(2).transpose(1, 2)  # (B, L, C), row-major
        position = self.position().expand(x.shape[0], -1, -1)
        tokens = self.input_projection(torch.cat([position, pixels], dim=2))
        return torch.cat([tokens, self.style_token.expand(x.shape[0], -1, -1)], dim=1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = self.blocks(self.input_tokens(x))
        y = self.output_projection(tokens[:, :-1]).transpose(1, 2).reshape(x.shape)
        return y, tokens[:, -1]


class ViTModNetGenerator(nn.Module):
    """UVCGAN2/UVCGAN-S generator: a UNet with a ViT bottleneck and a style-modulated decoder.

    Input and output channel counts may differ (UVCGAN-S maps a (background, signal) pair to one
    mixture and back). The output is linear: the data's normalisation, not the network, sets the range.

    Args:
        in_channels, out_channels: C_in, C_out.
        image_shape: (H, W); both divisible by 2**len(unet_features).
        features: F, transformer token width and size of the style vector.
        n_heads, n_blocks, ffn_features: transformer sizes.
        embed_features: width of the Fourier position code.
        unet_features: channels of the encoder levels, outermost first.
        demodulate: demodulate the decoder's modulated convolutions.

    Shapes: x (B, C_in, H, W) -> (B, C_out, H, W).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        image_shape: tuple[int, int],
        features: int = 384,
        n_heads: int = 6,
        n_blocks: int = 12,
        ffn_features: int = 1536,
        embed_features: int = 384,
        unet_features: Sequence[int] = (96, 192, 384),
        demodulate: bool = True,
    ) -> None:
        super().__init__()
        unet_features = [int(f) for f in unet_features]
        if not unet_features:
            raise ValueError("unet_features is empty: the UNet needs at least one level.")
        height, width = (int(s) for s in image_shape)
        factor = 2 ** len(unet_features)
        if height % factor or width % factor:
            raise ValueError(
                f"image_shape=({height}, {width}): H and W must be divisible by 2**len(unet_features) = {factor}, "
                "since every UNet level halves them."
            )
        self.image_shape = (height, width)
        # level i maps the previous level's channels to unet_features[i]; the decoder maps them back
        level_inputs = [unet_features[0], *unet_features[:-1]]

        self.input_layer = nn.Sequential(
            nn.Conv2d(in_channels, unet_features[0], 3, padding=1), nn.LeakyReLU(LEAKY_SLOPE)
        )
        self.encoder = nn.ModuleList(ModNetEncoderLevel(c, f) for c, f in zip(level_inputs, unet_features))
        grid = (height // factor, width // factor)
        self.bottleneck = PixelwiseViTBottleneck(
            unet_features[-1], grid, features, n_heads, n_blocks, ffn_features, embed_features
        )
        self.decoder = nn.ModuleList(
            ModNetDecoderLevel(f, f, c, features, demodulate) for c, f in zip(level_inputs[::-1], unet_features[::-1])
        )
        self.output_layer = nn.Conv2d(unet_features[0], out_channels, 1)
        init_generator_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != self.image_shape:
            # the position codes are built for one grid size
            raise ValueError(
                f"input of shape {tuple(x.shape)}: this generator was built for (H, W) = {self.image_shape}."
            )
        y = self.input_layer(x)
        skips = []
        for level in self.encoder:
            y, skip = level(y)
            skips.append(skip)
        y, mod = self.bottleneck(y)
        for level, skip in zip(self.decoder, reversed(skips)):
            y = level(y, skip, mod)
        return self.output_layer(y)
