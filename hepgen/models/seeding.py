"""Random streams per DDP rank: different on every rank, reproducible from the run's seed.

``seed_everything`` gives every rank the same global random state, so every rank would draw the
same latent noise (a GAN's z, a VAE's reparametrisation noise): W ranks would then train on
W copies of one batch's noise. Rank 0 keeps the stream Lightning gives it; ranks > 0 are
reseeded at the start of training from (seed, rank, step).
"""

from __future__ import annotations

import os

import numpy as np
import torch


def rank_seed(seed: int, rank: int, step: int = 0) -> int:
    """A seed for DDP rank ``rank`` derived from the run's ``seed`` and the ``step`` it starts at.

    Hashing (numpy's SeedSequence) keeps the streams of neighbouring (seed, rank) pairs
    unrelated, unlike ``seed + rank``, which would give rank 1 of seed 0 the stream of rank 0 of
    seed 1. Returns an int in [0, 2^63).
    """
    words = np.random.SeedSequence([int(seed) % 2**32, int(rank), int(step)]).generate_state(2, dtype=np.uint32)
    return (int(words[0]) << 31) ^ int(words[1])


def run_seed() -> int:
    """The run's seed (``seed_everything``, kept by Lightning in ``PL_GLOBAL_SEED``), else 0."""
    return int(os.environ.get("PL_GLOBAL_SEED", 0))


def reseed_for_rank(trainer) -> None:
    """Give DDP ranks > 0 their own global random stream; call in ``on_train_start``.

    ``on_train_start`` of the module runs after the callbacks'. A resume on as many ranks as
    the checkpoint was written with continues every rank's own stream (RNGStateCheckpoint
    restored it and set ``trainer.rank_streams_restored``), as if never stopped. Otherwise the
    step enters the seed, so that a resumed rank does not replay the stream it drew from step 0.
    """
    if trainer.global_rank > 0 and not getattr(trainer, "rank_streams_restored", False):
        torch.manual_seed(rank_seed(run_seed(), trainer.global_rank, trainer.global_step))
