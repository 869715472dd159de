"""The conditional masked autoregressive flow of the Generate (CATHODE) method, and its inputs.

A MAF (Papamakarios, Pavlakou, Murray 2017) writes p(x | c) for x in R^D as a standard normal
pushed through invertible autoregressive affine maps, u_i = (x_i - m_i(x_<i, c)) exp(-a_i(x_<i, c)),
so that the density is exact,

    log p(x | c) = log N(u; 0, I_D) + sum over layers of log |det du/dx|,

and maximum likelihood is plain gradient descent. One pass evaluates the density (training);
sampling inverts the layers one dimension at a time (D passes per layer), cheap for the few
features of a weak-supervision analysis.

* :func:`conditional_maf`: the seed's flow (hep-lbdl/non-resonant-AD-extrapolation,
  ``helpers/SimpleMAF.py``), ``transforms`` x (ReversePermutation, MaskedAffineAutoregressive).
* :func:`sample_flow`: x = f^-1(u; c) for noise u the caller draws (so a ``torch.Generator``
  decides the samples; nflows' ``Flow.sample`` draws from the global stream).
* :class:`FlowPreprocessing`: CATHODE's feature map x -> y (standardise, or min-max -> logit ->
  standardise), its inverse and its log-Jacobian, so likelihoods can be quoted in physical units.
"""

from __future__ import annotations

import torch
from nflows.distributions import StandardNormal
from nflows.flows import Flow
from nflows.transforms import BatchNorm, CompositeTransform, MaskedAffineAutoregressiveTransform, ReversePermutation
from torch import nn

from hepgen.nn.scaling import MinMaxScaler, StandardScaler


def conditional_maf(
    features: int,
    context: int,
    transforms: int = 4,
    hidden: int = 128,
    blocks: int = 2,
    batch_norm: bool = False,
) -> Flow:
    """A conditional MAF p(x | c): ``transforms`` x (reverse the order, masked affine autoregressive).

    Reversing the order between layers lets every feature be conditioned on every other one
    somewhere in the stack (a single MADE only conditions x_i on x_<i).

    Args:
        features: D, the dimension of x.
        context: C, the dimension of the condition c (0: an unconditional flow).
        transforms: autoregressive layers (the seed: 4; CATHODE: 15).
        hidden: width of each MADE's hidden layers (the seed and CATHODE: 128).
        blocks: residual blocks per MADE (nflows' default 2, i.e. CATHODE's two hidden layers).
        batch_norm: a batch-normalisation layer between autoregressive layers, as CATHODE's
            MADE -> BatchNorm -> Reverse blocks. It normalises with the batch's statistics in
            training and with running averages (nflows' momentum 0.1) in evaluation; off in the seed.

    Returns:
        an nflows ``Flow``: ``log_prob(x (B, D), context=c (B, C)) -> (B,)`` in nats;
        ``sample(k, context=c (N, C)) -> (N, k, D)`` (or :func:`sample_flow`).
    """
    if features < 1 or transforms < 1:
        raise ValueError(f"conditional_maf: need features >= 1 and transforms >= 1, got {features}, {transforms}.")
    layers: list[nn.Module] = []
    for i in range(transforms):
        layers.append(ReversePermutation(features))
        layers.append(
            MaskedAffineAutoregressiveTransform(
                features=features, hidden_features=hidden, context_features=context or None, num_blocks=blocks
            )
        )
        if batch_norm and i < transforms - 1:
            layers.append(BatchNorm(features))
    return Flow(CompositeTransform(layers), StandardNormal([features]))


def sample_flow(flow: Flow, noise: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
    """x = f^-1(u; c): one sample per row, (M, D), from base noise u (M, D) ~ N(0, I) and context (M, C).

    The caller draws ``noise`` (with its own generator); this is what ``Flow.sample`` does after
    drawing from the global random stream, without the (N, k, D) reshaping.
    """
    embedded = None if context is None else flow._embedding_net(context)
    x, _ = flow._transform.inverse(noise, context=embedded)
    return x


class FlowPreprocessing(nn.Module):
    """The map x (physical) -> y (the flow's space) and back, fitted once on training features.

    ``standard``: y = (x - mean) / std, the seed-free default (the seed fed its min-max scaled
    inputs to the flow unchanged). ``logit`` (CATHODE): u = (x - lo) / (hi - lo) in a box
    [lo, hi] that is the training range widened by ``margin`` of its width on each side,
    z = log(u / (1 - u)), y = (z - mean_z) / std_z. The logit spreads features piled against a
    physical edge (tau21 <= 1, masses >= 0) over the real line, where a Gaussian base fits them,
    and every sample maps back inside the box. Held-out events outside the box have zero density
    under the logit model; they are clamped to u in [1e-6, 1 - 1e-6] so that a mean likelihood
    stays finite (a bad score instead of -inf).

    Computed in float64; the flow sees float32.

    Args:
        features: D.
        kind: ``standard`` or ``logit``.
        margin: the widening of the logit box, a fraction of the training range per side.
    """

    KINDS = ("standard", "logit")

    def __init__(self, features: int, kind: str = "standard", margin: float = 0.05) -> None:
        super().__init__()
        if kind not in self.KINDS:
            raise ValueError(f"preprocessing={kind!r}: choose one of {', '.join(self.KINDS)}.")
        if not 0.0 < margin < 1.0:
            raise ValueError(f"logit margin={margin}: give a fraction in (0, 1).")
        self.kind, self.margin = kind, margin
        self.box = MinMaxScaler(features) if kind == "logit" else None
        self.scaler = StandardScaler(features)

    @property
    def fitted(self) -> bool:
        return bool(self.scaler.fitted)

    @torch.no_grad()
    def fit(self, x: torch.Tensor) -> FlowPreprocessing:
        """Fit on training features x (N, D), physical units (once; scalers refuse to refit)."""
        x = x.to(torch.float64)
        if self.box is not None:
            self.box.fit(x)
            x = self._logit(x)[0]
        self.scaler.fit(x)
        return self

    def _logit(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(z (N, D), log|dz/dx| (N,)) of the logit branch, float64."""
        u = (0.5 * (self.box(x) + 1.0) + self.margin) / (1.0 + 2.0 * self.margin)
        u = u.clamp(1e-6, 1.0 - 1e-6)
        width = self.box.data_range.to(x) * (1.0 + 2.0 * self.margin)  # du/dx = 1 / width
        log_det = -(torch.log(width) + torch.log(u) + torch.log1p(-u)).sum(-1)
        return torch.log(u) - torch.log1p(-u), log_det

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (N, D) physical -> (y (N, D) float32, log|det dy/dx| (N,) float64).

        log p_x(x | c) = log p_y(y | c) + log|det dy/dx|: the flow's likelihood in physical units.
        """
        x = x.to(torch.float64)
        log_det = torch.zeros(len(x), dtype=torch.float64, device=x.device)
        if self.box is not None:
            x, log_det = self._logit(x)
        y = self.scaler(x)
        log_det = log_det - torch.log(self.scaler.std.to(x)).sum()
        return y.float(), log_det

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        """y (N, D) in the flow's space -> x (N, D) physical, float64; the inverse of :meth:`forward`."""
        z = y.to(torch.float64) * self.scaler.std.to(torch.float64) + self.scaler.mean.to(torch.float64)
        if self.box is None:
            return z
        u = torch.sigmoid(z) * (1.0 + 2.0 * self.margin) - self.margin  # back to [0, 1] on the training range
        return self.box.inverse(2.0 * u - 1.0)

    def extra_repr(self) -> str:
        return f"kind={self.kind}" + (f", margin={self.margin}" if self.box is not None else "")
