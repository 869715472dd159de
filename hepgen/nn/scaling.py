"""Feature scaling that lives inside a model, so it travels with the weights."""

from __future__ import annotations

import torch
from torch import nn


class MinMaxScaler(nn.Module):
    """Per-feature affine map of [min, max] onto [-1, 1], the AIDAPT ``numpy_minmax_scaler``.

    ``x' = 2 (x - min) / range - 1`` with ``range = max - min`` (a range below 1e-5 counts as 1,
    so a constant feature maps to -1 instead of dividing by zero). The minimum and range are
    buffers: they are saved in the checkpoint and restored with it, and :meth:`fit` refuses to
    run twice, so a scaler is never silently refitted on other data.

    Args:
        features: number of features F.
    """

    def __init__(self, features: int) -> None:
        super().__init__()
        self.register_buffer("data_min", torch.zeros(features, dtype=torch.float64))
        self.register_buffer("data_range", torch.ones(features, dtype=torch.float64))
        self.register_buffer("fitted", torch.tensor(False))

    @torch.no_grad()
    def fit(self, x: torch.Tensor) -> MinMaxScaler:
        """Fit on x (N, F) in physical units; the statistics are kept in float64."""
        if bool(self.fitted):
            raise RuntimeError("this scaler is already fitted; hepgen never refits a scaler.")
        x = x.to(self.data_min.device, torch.float64)
        low, high = x.min(0).values, x.max(0).values
        value_range = high - low
        self.data_min.copy_(low)
        self.data_range.copy_(torch.where(value_range < 1e-5, torch.ones_like(value_range), value_range))
        self.fitted.fill_(True)
        return self

    def _check(self) -> None:
        if torch.compiler.is_exporting():  # a graph cannot branch on a buffer: the exporter checks first
            return
        if not bool(self.fitted):
            raise RuntimeError("the scaler is not fitted: fit it on training data (or load a checkpoint) first.")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Physical (N, F) -> scaled (N, F) in [-1, 1] on the fitted sample; dtype of x is kept."""
        self._check()
        low, value_range = self.data_min.to(x.dtype), self.data_range.to(x.dtype)
        return 2.0 * (x - low) / value_range - 1.0

    def inverse(self, x: torch.Tensor) -> torch.Tensor:
        """Scaled (N, F) -> physical (N, F); the exact inverse of :meth:`forward`."""
        self._check()
        low, value_range = self.data_min.to(x.dtype), self.data_range.to(x.dtype)
        return (x + 1.0) * 0.5 * value_range + low

    def extra_repr(self) -> str:
        return f"features={len(self.data_min)}"


class StandardScaler(nn.Module):
    """Per-feature standardisation ``x' = (x - mean) / std`` that lives inside a model.

    Mean and standard deviation (float64 buffers) are fitted once on training data, saved in the
    checkpoint and never refitted, like :class:`MinMaxScaler`. A feature with std below 1e-12
    is only centred.

    Args:
        features: number of features F.
    """

    def __init__(self, features: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(features, dtype=torch.float64))
        self.register_buffer("std", torch.ones(features, dtype=torch.float64))
        self.register_buffer("fitted", torch.tensor(False))

    @torch.no_grad()
    def fit(self, x: torch.Tensor, weight: torch.Tensor | None = None) -> StandardScaler:
        """Fit on x (N, F), optionally with event weights (N,); statistics in float64."""
        if bool(self.fitted):
            raise RuntimeError("this scaler is already fitted; hepgen never refits a scaler.")
        x = x.to(self.mean.device, torch.float64)
        w = torch.ones(len(x), dtype=torch.float64, device=x.device) if weight is None else weight.to(x).clamp_min(0)
        w = w / w.sum()
        mean = (w[:, None] * x).sum(0)
        std = ((w[:, None] * (x - mean) ** 2).sum(0)).sqrt()
        self.mean.copy_(mean)
        self.std.copy_(torch.where(std < 1e-12, torch.ones_like(std), std))
        self.fitted.fill_(True)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Physical (N, F) -> standardised (N, F); dtype of x is kept."""
        if not bool(self.fitted):
            raise RuntimeError("the scaler is not fitted: fit it on training data (or load a checkpoint) first.")
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def extra_repr(self) -> str:
        return f"features={len(self.mean)}"
