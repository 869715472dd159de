"""Collecting Python objects from all DDP ranks.

Samples that a non-additive statistic needs whole (a chi2 of histograms, a ROC curve) differ in
size between ranks (the last evaluation batch is short), which ``LightningModule.all_gather``'s
equal-shape tensors cannot carry; ``all_gather_object`` pickles them instead.
"""

from __future__ import annotations

import torch


def gather_objects(trainer, obj) -> list:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank; ``[obj]`` in a single process."""
    world_size = getattr(trainer, "world_size", 1) if trainer is not None else 1
    if world_size == 1:
        return [obj]
    parts = [None] * world_size
    torch.distributed.all_gather_object(parts, obj)
    return parts
