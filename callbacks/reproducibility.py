"""Random-number state in checkpoints, so that a resumed run continues exactly."""

from __future__ import annotations

import random

import numpy as np
import torch
from lightning.pytorch import Callback


class RNGStateCheckpoint(Callback):
    """Save the torch, numpy and Python RNG states with every checkpoint; restore them on resume.

    Lightning restores weights, optimizer and loop state but not the random streams, so the
    data shuffling and the VAE's sampling noise would differ after a resume. The states are
    restored in ``on_train_start``, after the sanity-check validation, so the resumed run draws
    exactly the numbers the uninterrupted run would have drawn. Under DDP every rank draws its
    own noise (``hepgen.models.seeding``): the states of all ranks are gathered into the
    checkpoint, and a resume on as many ranks gives each its own back (on another number of
    ranks, ranks > 0 are reseeded as at a fresh start). Stored as tensors and plain lists, so
    checkpoints still load with ``weights_only=True``.
    """

    def __init__(self) -> None:
        self._to_restore: dict | None = None

    @staticmethod
    def _local_state() -> dict:
        kind, keys, pos, has_gauss, gauss = np.random.get_state()
        version, py_state, py_gauss = random.getstate()
        state = {
            "torch": torch.get_rng_state(),
            "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
            "python": [version, list(py_state), py_gauss],
        }
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def state_dict(self) -> dict:
        state = self._local_state()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # Lightning builds a checkpoint on every rank (rank 0 writes it): a collective is safe here
            ranks = [None] * torch.distributed.get_world_size()
            torch.distributed.all_gather_object(ranks, state)
            state["ranks"] = ranks
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        self._to_restore = state_dict

    def on_train_start(self, trainer, pl_module) -> None:
        state, self._to_restore = self._to_restore, None
        if not state:
            return
        ranks = state.get("ranks")
        if ranks is not None and len(ranks) == trainer.world_size:
            state = ranks[trainer.global_rank]
            trainer.rank_streams_restored = True  # hepgen.models.seeding.reseed_for_rank leaves them
        torch.set_rng_state(state["torch"])
        kind, keys, pos, has_gauss, gauss = state["numpy"]
        np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
        version, py_state, py_gauss = state["python"]
        random.setstate((version, tuple(py_state), py_gauss))
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])
