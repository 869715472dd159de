"""UVCGAN-S networks: reference sizes, shapes, ReZero at initialisation, demodulation, spectral norm.

The reference numbers are those measured by instantiating the classes of LS4GAN/uvcgan-s
(commit 4d3a226) on CPU, ``sum(p.numel() for p in net.parameters())``.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import parametrize

from hepgen.nn.image_discriminators import PatchGANDiscriminator, ResNetDiscriminator
from hepgen.nn.vit_modnet import (
    FourierPositionEmbedding,
    ModulatedConv2d,
    ReZeroTransformerBlock,
    StyleScale,
    ViTModNetGenerator,
    init_generator_weights,
)

TINY_VIT = dict(features=16, n_heads=2, n_blocks=2, ffn_features=24, embed_features=8)


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: a second intra-op thread only waits on a busy core (60x slower on 2 shared cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def n_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def tiny_generator(in_channels: int = 1, out_channels: int = 2, image_shape=(24, 64), unet_features=(4, 8, 8)):
    torch.manual_seed(0)
    return ViTModNetGenerator(in_channels, out_channels, image_shape, unet_features=unet_features, **TINY_VIT)


# --- reference sizes ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "in_channels, out_channels, image_shape, unet_features, reference",
    [
        (2, 1, (24, 64), (96, 192, 384), 32_086_291),  # sPHENIX gen_ab, (background, jet) -> mixture
        (1, 2, (24, 64), (96, 192, 384), 32_085_524),  # sPHENIX gen_ba, mixture -> (background, jet)
        (6, 3, (256, 256), (48, 96, 192, 384), 32_193_527),  # toy gen_ab
        (3, 6, (256, 256), (48, 96, 192, 384), 32_192_378),  # toy gen_ba
    ],
)
def test_generator_has_the_reference_parameter_count(in_channels, out_channels, image_shape, unet_features, reference):
    # built on the CPU (under a second); the meta device is slower here, on its first use
    net = ViTModNetGenerator(in_channels, out_channels, image_shape, unet_features=unet_features)
    # the architecture is the reference's layer for layer, so the count matches exactly, not just to 1 %
    assert n_parameters(net) == reference


@pytest.mark.parametrize("spectral_norm", [True, False])
def test_resnet_discriminator_has_the_reference_parameter_count(spectral_norm):
    net = ResNetDiscriminator(1, spectral_norm=spectral_norm)
    # Spectral norm does not change the count: the raw weight is the parameter
    # ``parametrizations.weight.original`` (same size), and u, v of the power iteration are buffers.
    # The reference measured its network with spectral norm on, with the same parametrization.
    assert n_parameters(net) == 19_508_109
    names = [name for name, _ in net.named_parameters()]
    assert any(name.endswith("parametrizations.weight.original") for name in names) == spectral_norm
    n_convs = sum(isinstance(m, nn.Conv2d) for m in net.modules())
    n_vector_buffers = sum(name.endswith(("_u", "_v")) for name, _ in net.named_buffers())
    assert n_vector_buffers == (2 * n_convs if spectral_norm else 0)


def test_patchgan_discriminator_has_the_reference_parameter_count():
    net = PatchGANDiscriminator(3)
    assert n_parameters(net) == 11_154_369


# --- shapes ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "in_channels, out_channels, image_shape, unet_features",
    [
        (1, 2, (24, 64), (4, 8, 8)),  # sPHENIX layout: 3 levels, (3, 8) bottleneck
        (2, 1, (24, 64), (4, 8, 8)),
        (6, 3, (32, 32), (4, 4, 8, 8)),  # toy layout: 4 levels, square
        (1, 1, (8, 32), (4, 8, 8)),  # a one-row (1, 4) bottleneck
    ],
)
def test_generator_keeps_the_image_shape_and_sets_the_channels(in_channels, out_channels, image_shape, unet_features):
    net = tiny_generator(in_channels, out_channels, image_shape, unet_features)
    y = net(torch.randn(2, in_channels, *image_shape))
    assert y.shape == (2, out_channels, *image_shape)
    assert torch.isfinite(y).all()


@pytest.mark.parametrize("image_shape", [(24, 60), (20, 64), (12, 64)])
def test_generator_rejects_an_image_the_levels_cannot_halve(image_shape):
    with pytest.raises(ValueError, match="divisible by 2\\*\\*len\\(unet_features\\) = 8"):
        ViTModNetGenerator(1, 1, image_shape, unet_features=(4, 8, 8), **TINY_VIT)


def test_generator_rejects_an_input_of_another_size():
    net = tiny_generator()
    with pytest.raises(ValueError, match="built for"):
        net(torch.randn(1, 1, 32, 64))


def test_position_codes_follow_the_row_major_token_order():
    """Token k is pixel (k // w, k % w): its x runs along W, its y along H (the reference scrambles them)."""
    coords = FourierPositionEmbedding(4, (3, 8)).coords.reshape(3, 8, 2)
    torch.testing.assert_close(coords[..., 0], torch.linspace(-1, 1, 8).expand(3, 8))
    torch.testing.assert_close(coords[..., 1], torch.linspace(-1, 1, 3)[:, None].expand(3, 8))


@pytest.mark.parametrize(
    "net, in_shape, out_shape",
    [
        (ResNetDiscriminator(1, (4, 4, 8, 8), 1), (1, 24, 64), (1, 3, 8)),  # the reference's 4 stages
        (ResNetDiscriminator(1, (8, 16), 1), (1, 24, 64), (1, 12, 32)),
        (ResNetDiscriminator(3, (8, 16), 1, spectral_norm=False), (3, 32, 32), (1, 16, 16)),
        (PatchGANDiscriminator(3, n_layers=2, base_channels=8), (3, 32, 32), (1, 6, 6)),
        (PatchGANDiscriminator(1, n_layers=2, base_channels=8), (1, 24, 64), (1, 4, 14)),
    ],
)
def test_discriminators_return_a_patch_logit_map(net, in_shape, out_shape):
    assert net(torch.randn(2, *in_shape)).shape == (2, *out_shape)


def test_unknown_norm_is_rejected():
    with pytest.raises(ValueError, match="norm='layer'"):
        PatchGANDiscriminator(3, norm="layer")
    with pytest.raises(ValueError, match="norm='layer'"):
        ResNetDiscriminator(3, (8,), norm="layer")


# --- ReZero at initialisation ------------------------------------------------------------------------
def test_style_scales_are_exactly_one_at_initialisation():
    net = tiny_generator()
    mod = 10 * torch.randn(3, TINY_VIT["features"])
    scales = [m for m in net.modules() if isinstance(m, StyleScale)]
    assert len(scales) == 2 * 3  # two modulated convs per decoder level
    for scale in scales:
        assert torch.equal(scale(mod), torch.ones(3, scale.affine.out_features))


def test_transformer_bottleneck_passes_its_tokens_through_at_initialisation():
    net = tiny_generator()
    bottleneck = net.bottleneck
    x = torch.randn(2, 8, 3, 8)  # bottleneck input (B, C, h, w)
    tokens = bottleneck.input_tokens(x)
    assert tokens.shape == (2, 3 * 8 + 1, TINY_VIT["features"])
    for block in bottleneck.blocks:
        assert isinstance(block, ReZeroTransformerBlock)
        assert torch.equal(block(tokens), tokens)
    y, mod = bottleneck(x)
    expected = bottleneck.output_projection(tokens[:, :-1]).transpose(1, 2).reshape(x.shape)
    assert torch.equal(y, expected)
    assert torch.equal(mod, bottleneck.style_token[0].expand(2, -1))


def test_untrained_generator_ignores_its_style_token():
    """Identity blocks and unit style scales: the style token cannot reach the output yet."""
    net = tiny_generator()
    x = torch.randn(2, 1, 24, 64)
    with torch.no_grad():
        y = net(x)
        net.bottleneck.style_token.normal_()
        assert torch.equal(net(x), y)


# --- demodulation -----------------------------------------------------------------------------------
def switched_on_modulated_conv(demodulate: bool = True) -> tuple[ModulatedConv2d, torch.Tensor]:
    """A 5 -> 4 modulated conv with a style far from 1, and a style vector mod (1, 6)."""
    torch.manual_seed(1)
    conv = ModulatedConv2d(5, 4, mod_features=6, demodulate=demodulate)
    init_generator_weights(conv)  # zero conv bias, as in the generator
    with torch.no_grad():
        conv.style.alpha.fill_(0.7)
        conv.style.affine.weight.normal_()
    return conv, torch.randn(1, 6)


def effective_filters(conv: ModulatedConv2d, mod: torch.Tensor) -> torch.Tensor:
    """The conv's effective filters (C_out, C_in * 9), read off its response to unit impulses."""
    c_in = conv.conv.in_channels
    impulses = torch.eye(c_in * 9).reshape(c_in * 9, c_in, 3, 3)  # one input pixel of the 3x3 window each
    with torch.no_grad():
        response = conv(impulses, mod.expand(c_in * 9, -1))[:, :, 1, 1]  # the centre output
    return response.T


def test_demodulated_filters_have_unit_norm_whatever_the_style():
    conv, mod = switched_on_modulated_conv()
    assert not torch.allclose(conv.style(mod), torch.ones(1, 5))
    norms = effective_filters(conv, mod).norm(dim=1)
    torch.testing.assert_close(norms, torch.ones(4), rtol=1e-5, atol=0)
    plain, _ = switched_on_modulated_conv(demodulate=False)
    assert (effective_filters(plain, mod).norm(dim=1) - 1).abs().min() > 0.1


def test_demodulated_conv_keeps_unit_variance():
    conv, mod = switched_on_modulated_conv()
    with torch.no_grad():
        y = conv(torch.randn(8, 5, 32, 32), mod.expand(8, -1))[:, :, 1:-1, 1:-1]  # away from the zero padding
    torch.testing.assert_close(y.var(dim=(0, 2, 3)), torch.ones(4), rtol=0.1, atol=0)


def test_conv_bias_is_demodulated_too():
    """The reference's order: the bias is added before the demodulation scale, so it is rescaled with it."""
    conv, mod = switched_on_modulated_conv()
    with torch.no_grad():
        conv.conv.bias.fill_(1.0)
        y = conv(torch.zeros(1, 5, 3, 3), mod)
        filters = conv.conv.weight * conv.style(mod)[0, None, :, None, None]
        scale = 1 / (filters.square().sum(dim=(1, 2, 3)) + conv.eps).sqrt()
    torch.testing.assert_close(y[0, :, 1, 1], scale)


# --- spectral norm ------------------------------------------------------------------------------------
def largest_singular_value(conv: nn.Conv2d) -> float:
    return torch.linalg.matrix_norm(conv.weight.flatten(1), ord=2).item()


def test_resnet_discriminator_normalises_every_conv():
    torch.manual_seed(0)
    net = ResNetDiscriminator(1, (8, 16), blocks_per_stage=1).train()
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 2 * (1 + 2) + 1  # per stage a stem and two per block; the head
    assert all(parametrize.is_parametrized(conv, "weight") for conv in convs)
    with torch.no_grad():
        for _ in range(3):  # one power iteration per training forward (after 15 when it was added)
            net(torch.randn(4, 1, 24, 64))
        for conv in convs:  # u, v still converge on the square 16 x 144 convs: 1.005 here, 1.0003 after 12
            assert largest_singular_value(conv) == pytest.approx(1.0, abs=1e-2)
    # N(0, 0.02) went to the raw weights before the parametrization was added
    raw = net.body[3].branch[0].parametrizations.weight.original
    assert raw.std().item() == pytest.approx(0.02, rel=0.1)


def test_resnet_discriminator_without_spectral_norm_keeps_raw_weights():
    torch.manual_seed(0)
    net = ResNetDiscriminator(1, (8, 16), blocks_per_stage=1, spectral_norm=False)
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert not any(parametrize.is_parametrized(conv, "weight") for conv in convs)
    assert all(largest_singular_value(conv) < 0.5 for conv in convs)  # N(0, 0.02) weights are far below 1
    norms = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all((bn.weight - 1).abs().max() < 0.2 and bn.weight.std() > 0 for bn in norms)  # N(1, 0.02)


# --- gradients ------------------------------------------------------------------------------------------
def gradients_of_output_sum(net: nn.Module) -> dict[str, torch.Tensor]:
    net.zero_grad(set_to_none=True)
    net(torch.randn(2, 1, 24, 64)).sum().backward()
    return {name: p.grad for name, p in net.named_parameters()}


def is_behind_a_closed_gate(name: str) -> bool:
    """Parameters that only act through a ReZero gate at 0: the transformer blocks' sub-layers, the
    style maps, and the style token (which reaches the output only through the style maps)."""
    in_block = name.startswith("bottleneck.blocks.") and not name.endswith(".alpha")
    return in_block or ".style.affine." in name or name == "bottleneck.style_token"


def test_gradients_reach_every_parameter_and_the_closed_gates_get_exactly_zero():
    net = tiny_generator()
    grads = gradients_of_output_sum(net)
    assert all(g is not None for g in grads.values())
    zero = {name for name, g in grads.items() if not g.any()}
    assert zero == {name for name in grads if is_behind_a_closed_gate(name)}
    # the gates themselves do learn: that is how training leaves the identity
    gates = [name for name in grads if name.endswith("alpha")]
    assert len(gates) == TINY_VIT["n_blocks"] + 2 * 3
    assert all(grads[name].abs().item() > 0 for name in gates)


def test_once_the_gates_open_every_parameter_gets_a_gradient():
    net = tiny_generator()
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith("alpha"):
                p.fill_(0.1)
    grads = gradients_of_output_sum(net)
    assert [name for name, g in grads.items() if g is None or not g.any()] == []
