"""M independent MLPs evaluated as one network: an ensemble whose members train side by side.

Weakly supervised anomaly detection averages the scores of many classifiers that differ only in
their initialisation (the seed code uses 20). Trained one after the other, each is a tiny MLP
whose step costs little more than Python overhead; stacked along a leading member axis, one
batched matrix product per layer advances all of them, and on CPU the ensemble trains in about
the time of a few single members. The members share nothing: their weights, gradients and Adam
moments are separate slices, so member m is exactly the MLP it would be alone.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class EnsembleLinear(nn.Module):
    """``M`` affine maps ``in -> out`` applied to the same or to per-member inputs.

    Each member is initialised as :class:`torch.nn.Linear` would be (Kaiming-uniform weight,
    uniform bias in ±1/sqrt(in)), from the global torch generator.

    Args:
        members: M.
        in_features: inputs per event.
        out_features: outputs per event.
    """

    def __init__(self, members: int, in_features: int, out_features: int) -> None:
        super().__init__()
        bound = 1.0 / math.sqrt(in_features)
        # Kaiming-uniform with a = sqrt(5), torch's Linear default, has this same bound
        self.weight = nn.Parameter(torch.empty(members, in_features, out_features).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(members, 1, out_features).uniform_(-bound, bound))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in) shared by all members, or (M, B, in) per member -> (M, B, out)."""
        if x.dim() == 2:
            return torch.einsum("bi,mio->mbo", x, self.weight) + self.bias
        return torch.baddbmm(self.bias, x, self.weight)

    def extra_repr(self) -> str:
        members, n_in, n_out = self.weight.shape
        return f"members={members}, in_features={n_in}, out_features={n_out}"


class EnsembleMLP(nn.Module):
    """``M`` MLPs ``in -> hidden... -> 1`` with ReLU between layers, returning one logit each.

    Args:
        members: M.
        in_features: inputs per event.
        hidden: widths of the hidden layers (the seed's SR classifier: 64, 64, 64).
    """

    def __init__(self, members: int, in_features: int, hidden: tuple[int, ...] = (64, 64, 64)) -> None:
        super().__init__()
        sizes = [in_features, *hidden, 1]
        self.layers = nn.ModuleList(EnsembleLinear(members, a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.members = members

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in) -> logits (M, B)."""
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = torch.relu(x)
        return x.squeeze(-1)
